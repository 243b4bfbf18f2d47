"""Top-k accuracy over a data loader of {"images", "labels"} batches (or (images, labels) pairs)."""
from __future__ import annotations

import torch
from torch import nn

from ..losses import top_k_correct


def _unpack(batch):
    if isinstance(batch, dict):
        return batch["images"], batch["labels"]
    return batch[0], batch[1]


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, loader, *, accelerator=None, device=None, dtype=None,
                      ks=(1, 5)) -> dict[str, float]:
    """Percent top-k accuracy; with an Accelerate `accelerator`, gathered over processes.
    `dtype` casts the images (for a model kept in float64, say)."""
    was_training = model.training
    model.eval()
    correct = dict.fromkeys(ks, 0)
    seen = 0
    for batch in loader:
        images, labels = _unpack(batch)
        if images.numel() == 0:
            continue
        if device is not None:
            images, labels = images.to(device), labels.to(device)
        if dtype is not None:
            images = images.to(dtype)
        logits = model(images)
        if accelerator is not None:
            logits, labels = accelerator.gather_for_metrics((logits, labels))
        for k, v in top_k_correct(logits.float(), labels, ks).items():
            correct[k] += int(v)
        seen += labels.numel()
    model.train(was_training)
    out = {f"top{k}": 100.0 * correct[k] / max(seen, 1) for k in ks}
    out["n"] = seen
    return out
