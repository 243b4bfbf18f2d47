"""The alignment losses. Cosine is ALOE's choice: it ignores scale, and a B-cos layer's output is
scaled by |cos|^(B-1) (Eq. 3 of the B-cos paper), so its magnitudes cannot match the teacher's."""
from __future__ import annotations

import torch
import torch.nn.functional as F

FEATURE_LOSSES = ("cosine", "mse")
LOGIT_LOSSES = ("bce", "kl", "cosine", "none")


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, channels_last: bool = False) -> torch.Tensor:
    """Mean over positions (or tokens) of 1 - cos along the channels; or the mean squared error.
    Channels are dim 1 of a map [B, C, H, W] (the last dim with `channels_last`: Swin's [B, H, W, C])
    and the last dim of tokens [B, N, C] or vectors [B, C]."""
    if student.shape != teacher.shape:
        raise ValueError(f"student features {tuple(student.shape)} do not match the teacher's {tuple(teacher.shape)}")
    if kind == "mse":
        return F.mse_loss(student, teacher)
    dim = 1 if student.dim() == 4 and not channels_last else -1
    cos = F.cosine_similarity(student, teacher, dim=dim, eps=1e-12)
    # two zero vectors (a position where every ReLU is off in both) agree: no loss there
    agree = (student.abs().amax(dim) == 0) & (teacher.abs().amax(dim) == 0)
    return (1 - torch.where(agree, torch.ones_like(cos), cos)).mean()


def logit_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """bce: the B-cos loss (Eq. 16 of the B-cos paper) with the teacher's softmax at `temperature` as soft
    targets, so the student's sigmoids say what the teacher's softmax says (a confident class gets
    sigmoid > 0.5, as the pointing game and the explorer read it); kl: Hinton's distillation,
    KL(teacher || student) of the softmaxes at `temperature`, times T^2 (blind to a shared offset);
    cosine: 1 - cos of the centred logits (blind to offset and scale)."""
    if kind == "bce":
        targets = F.softmax(teacher / temperature, -1)
        return F.binary_cross_entropy_with_logits(student, targets)
    if kind == "kl":
        t = temperature
        return F.kl_div(F.log_softmax(student / t, -1), F.log_softmax(teacher / t, -1), log_target=True,
                        reduction="batchmean") * t * t
    centred = [z - z.mean(-1, keepdim=True) for z in (student, teacher)]
    return (1 - F.cosine_similarity(*centred, dim=-1, eps=1e-12)).mean()
