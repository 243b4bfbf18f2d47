"""Attention-based attributions for vision transformers with `BcosAttention` blocks: attention rollout
(Abnar & Zuidema 2020) and Chefer et al.'s gradient-weighted rollout ("Generic Attention-model
Explainability", ICCV 2021). Each maps (model, images [N, 3, H, W] in [0, 1], targets [N]) to [N, H, W],
the token relevances upsampled to the image, as the other methods of timm_bcos.eval.attribution.

The relevance of the input tokens for the model's output is read off a [T, T] matrix R built block by block:
- rollout: R <- normalise_rows(0.5 A + 0.5 I) R, A the heads' mean attention (the 0.5 I: the residual path);
- Chefer: R <- R + mean_heads((dy/dA * A)^+) R from R = I, y the target's logit: class-specific.
The output reads its tokens' rows: the class token's row, or the mean of the patch tokens' rows where the
model pools them (`global_pool="avg"`, as the B-cos ViTs).
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers import BcosAttention


def rollout(attentions: list[Tensor]) -> Tensor:
    """[N, T, T] from per-block attention [N, heads, T, T] (first block first)."""
    n, _, t, _ = attentions[0].shape
    eye = torch.eye(t, dtype=attentions[0].dtype, device=attentions[0].device)
    r = eye.expand(n, t, t)
    for a in attentions:
        step = 0.5 * a.mean(1) + 0.5 * eye
        r = (step / step.sum(-1, keepdim=True)) @ r
    return r


def gradient_weighted_rollout(attentions: list[Tensor], gradients: list[Tensor]) -> Tensor:
    """[N, T, T]: Chefer et al.'s relevance propagation from per-block attention and its gradient."""
    n, _, t, _ = attentions[0].shape
    r = torch.eye(t, dtype=attentions[0].dtype, device=attentions[0].device).repeat(n, 1, 1)
    for a, g in zip(attentions, gradients):
        r = r + (g * a).clamp_min(0).mean(1) @ r
    return r


@contextlib.contextmanager
def kept_attention(model: nn.Module):
    """The model's `BcosAttention` blocks (forward order), each keeping its attention matrix while inside."""
    blocks = [m for m in model.modules() if isinstance(m, BcosAttention)]
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no BcosAttention blocks: attention-based attributions need "
                         "a B-cos vision transformer")
    for m in blocks:
        m.keep_attention = True
    try:
        yield blocks
    finally:
        for m in blocks:
            m.keep_attention, m.attention = False, None  # the kept matrices hold the autograd graph


def _token_map(model: nn.Module, relevance: Tensor, image_size: tuple[int, int]) -> Tensor:
    """[N, H, W]: the output tokens' rows of `relevance` [N, T, T], over the patch tokens, on the image."""
    prefix = getattr(model, "num_prefix_tokens", 0)
    rows = relevance[:, 0] if getattr(model, "global_pool", "avg") == "token" else relevance[:, prefix:].mean(1)
    patches = rows[:, prefix:]
    pe = model.patch_embed
    h, w = pe.dynamic_feat_size(image_size) if hasattr(pe, "dynamic_feat_size") else pe.grid_size
    if h * w != patches.shape[1]:
        raise ValueError(f"{patches.shape[1]} patch tokens do not form the {h}x{w} grid of a {image_size} image")
    grid = patches.reshape(-1, 1, h, w)
    return F.interpolate(grid, size=image_size, mode="bilinear", align_corners=False)[:, 0]


def attention_rollout(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Attention rollout (class-agnostic: `targets` only set the batch)."""
    with kept_attention(model) as blocks, torch.no_grad():
        model(images)
        relevance = rollout([m.attention for m in blocks])
    return _token_map(model, relevance, images.shape[-2:])


def chefer_relevance(model: nn.Module, images: Tensor, targets: Tensor) -> Tensor:
    """Chefer et al. (2021b): rollout weighted by the target logit's gradient of each attention matrix."""
    with kept_attention(model) as blocks, torch.enable_grad():
        if any(m.detach for m in blocks):
            raise ValueError("Chefer et al.'s relevance needs the attention matrices' gradients, which explanation "
                             "mode detaches: call it outside timm_bcos.layers.explanation_mode")
        # an input that requires grad: the attention stays in the graph when the weights are frozen
        logits = model(images.detach().requires_grad_(True))
        score = logits.gather(1, targets.view(-1, 1).to(logits.device)).sum()  # images are independent
        attentions = [m.attention for m in blocks]
        gradients = torch.autograd.grad(score, attentions)  # the parameters' .grad stay as they were
        relevance = gradient_weighted_rollout([a.detach() for a in attentions], list(gradients))
    return _token_map(model, relevance, images.shape[-2:])
