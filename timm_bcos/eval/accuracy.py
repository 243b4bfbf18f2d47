"""Top-k accuracy over a data loader of {"images", "labels"} batches (or (images, labels) pairs)."""
from __future__ import annotations

import torch
from torch import Tensor, nn


def top_k_correct(logits: Tensor, labels: Tensor, ks=(1, 5)) -> dict[int, Tensor]:
    """Number of samples whose label is among the top-k logits, for each k (k capped at C)."""
    k_max = min(max(ks), logits.shape[-1])
    top = logits.topk(k_max, dim=-1).indices
    hit = top.eq(labels[:, None])
    return {k: hit[:, : min(k, k_max)].any(dim=1).sum() for k in ks}


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


@torch.no_grad()
def accuracy_and_confidence(model: nn.Module, loader, *, device=None, ks=(1, 5), threshold: float = 0.5):
    """One pass over `loader` ({"images", "labels", "indices"} batches, e.g. data.collate_indexed):
    top-k accuracy as `evaluate_accuracy`, and per class the data-set indices of the images
    classified correctly with sigmoid(logit) > threshold, most confident first (what
    `pointing_game.confident_per_class` gives for tensors in memory)."""
    model.eval()
    correct, seen, skipped = dict.fromkeys(ks, 0), 0, 0
    kept: list[tuple[float, int, int]] = []  # (confidence, label, index) of the confident and correct
    classes: set[int] = set()
    for batch in loader:
        skipped += int(batch.get("skipped", 0))
        images, labels = batch["images"], batch["labels"]
        if images.numel() == 0:
            continue
        logits = model(images.to(device) if device is not None else images).float().cpu()
        for k, v in top_k_correct(logits, labels, ks).items():
            correct[k] += int(v)
        seen += labels.numel()
        conf = torch.sigmoid(logits.gather(1, labels[:, None]).squeeze(1))
        ok = (logits.argmax(1) == labels) & (conf > threshold)
        classes.update(labels.tolist())
        kept += zip(conf[ok].tolist(), labels[ok].tolist(), batch["indices"][ok].tolist())
    metrics = {f"top{k}": 100.0 * correct[k] / max(seen, 1) for k in ks}
    metrics.update(n=seen, skipped=skipped)
    candidates: dict[int, list[int]] = {c: [] for c in sorted(classes)}
    for _, label, index in sorted(kept, key=lambda t: -t[0]):
        candidates[label].append(index)
    return metrics, candidates

