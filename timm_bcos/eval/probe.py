"""How good a frozen backbone's features are without its head: a k-NN classifier and a linear probe
fitted on one split's pooled pre-logits features and scored on another (as ALOE and DINO report
backbones). Works for any timm model, B-cos or not."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attribution import Normalised, model_device


@torch.no_grad()
def extract_features(model: torch.nn.Module, loader, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(pooled pre-logits features [N, D] in float32, labels [N]) of every image of `loader` (batches of
    [0, 1] images as `open_split` gives), the model behind its own mean/std normalisation."""
    net = Normalised(model.eval())
    device = device or model_device(model)
    feats, labels = [], []
    for batch in loader:
        images = batch["images"].to(device)
        x = (images - net.mean) / net.std
        feats.append(model.forward_head(model.forward_features(x), pre_logits=True).flatten(1).float().cpu())
        labels.append(batch["labels"].cpu())
    if not feats:
        raise ValueError("no images to compute features of")
    return torch.cat(feats), torch.cat(labels)


def knn_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, test_labels: torch.Tensor,
                 k: int = 20, temperature: float = 0.07, chunk: int = 1024) -> float:
    """Top-1 (%) of a weighted k-NN vote on cosine similarity (DINO's: weights exp(sim / T))."""
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    train, test = F.normalize(train, dim=1), F.normalize(test, dim=1)
    k = min(k, train.shape[0])
    correct = 0
    for i in range(0, test.shape[0], chunk):
        sims, idx = (test[i:i + chunk] @ train.T).topk(k, dim=1)
        votes = torch.zeros(sims.shape[0], classes, dtype=sims.dtype)
        votes.scatter_add_(1, train_labels[idx], (sims / temperature).exp())
        correct += int((votes.argmax(1) == test_labels[i:i + chunk]).sum())
    return 100.0 * correct / test.shape[0]


def linear_probe_accuracy(train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor,
                          test_labels: torch.Tensor, weight_decay: float = 1e-4, steps: int = 100) -> float:
    """Top-1 (%) of a multinomial logistic regression on standardised features, fitted full-batch
    with L-BFGS in float64 (deterministic: no learning rate or epochs to tune)."""
    classes = int(max(train_labels.max(), test_labels.max())) + 1
    train, test = train.double(), test.double()
    mean, std = train.mean(0), train.std(0).clamp_min(1e-12)
    train, test = (train - mean) / std, (test - mean) / std
    linear = torch.nn.Linear(train.shape[1], classes, dtype=torch.float64)
    torch.nn.init.zeros_(linear.weight), torch.nn.init.zeros_(linear.bias)
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(linear(train), train_labels) + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return 100.0 * float((linear(test).argmax(1) == test_labels).double().mean())
