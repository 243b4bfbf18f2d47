"""The grid pointing game (paper Sec. 4, "Evaluating explanations"; Figs. 5 and 6).

n x n grids are tiled from correctly and confidently classified images of n^2 distinct
classes; each cell's class is explained on the whole grid, and the score is the share
of positive attribution that falls inside that cell (after optional smoothing). An
explanation that points at its own cell alone scores 1; a uniform one scores 1/n^2.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .accuracy import accuracy_and_confidence
from .attribution import attribution_maps, model_device


@dataclass
class GridSet:
    n: int
    images: Tensor  # [G, 3, n*H, n*W]
    classes: Tensor  # [G, n*n]: the class of each cell, row-major
    sources: Tensor  # [G, n*n]: index of each cell's image in the data set


@torch.no_grad()
def confident_per_class(model: nn.Module, images: Tensor, labels: Tensor, *, threshold: float = 0.5,
                        batch_size: int = 256) -> dict[int, list[int]]:
    """Per class, the indices of images classified correctly with sigmoid(logit) > threshold,
    most confident first (pass the model behind its input normalisation, e.g. `Normalised`)."""
    batches = [{"images": images[i:i + batch_size], "labels": labels[i:i + batch_size],
                "indices": torch.arange(i, min(i + batch_size, len(images)))} for i in range(0, len(images), batch_size)]
    return accuracy_and_confidence(model, batches, threshold=threshold)[1]


def build_grids(images: Tensor, candidates: dict[int, list[int]], n: int, num_grids: int, *,
                pool: int | None = None, seed: int = 0) -> GridSet:
    """`num_grids` n x n grids of distinct classes, each cell a random image among the `pool`
    most confident ones of its class (all when None); fixed `seed`."""
    classes = [c for c, idx in sorted(candidates.items()) if idx]
    if len(classes) < n * n:
        raise ValueError(f"a {n}x{n} grid needs {n * n} classes with confidently correct images; "
                         f"only {len(classes)} have any ({sorted(candidates)})")
    g = torch.Generator().manual_seed(seed)
    h, w = images.shape[-2:]
    grid_images, grid_classes, grid_sources = [], [], []
    for _ in range(num_grids):
        chosen = [classes[i] for i in torch.randperm(len(classes), generator=g)[: n * n].tolist()]
        picks = []
        for c in chosen:
            pool_c = candidates[c][:pool] if pool else candidates[c]
            picks.append(pool_c[int(torch.randint(len(pool_c), (1,), generator=g))])
        cells = images[picks].view(n, n, 3, h, w)
        grid_images.append(cells.permute(2, 0, 3, 1, 4).reshape(3, n * h, n * w))
        grid_classes.append(chosen)
        grid_sources.append(picks)
    return GridSet(n, torch.stack(grid_images), torch.tensor(grid_classes), torch.tensor(grid_sources))


def pointing_scores(attributions: Tensor, n: int, smooth: int = 0) -> Tensor:
    """Scores [..., n*n] for attributions [..., n*n, H, W], where the map at index k explains cell k.

    smooth > 1 averages the maps over smooth x smooth windows first (15 for ImageNet-sized
    cells, 3 for CIFAR-sized ones in the paper's setting).
    """
    *lead, cells, h, w = attributions.shape
    if cells != n * n:
        raise ValueError(f"expected {n * n} maps (one per cell of a {n}x{n} grid), got {cells}")
    if h % n or w % n:
        raise ValueError(f"a {h}x{w} map does not split into {n}x{n} cells")
    a = attributions.reshape(-1, 1, h, w).double()
    if smooth and smooth > 1:
        a = F.avg_pool2d(a, smooth, stride=1, padding=smooth // 2, count_include_pad=False)[..., :h, :w]
    pos = a.clamp_min(0).reshape(-1, cells, n, h // n, n, w // n)
    per_cell = pos.sum((3, 5)).reshape(-1, cells, cells)  # [B, map k, cell j]
    total = per_cell.sum(-1)
    own = per_cell.diagonal(dim1=1, dim2=2)
    score = torch.where(total > 0, own / total.clamp_min(1e-300), torch.zeros_like(total))
    return score.reshape(*lead, cells).float()


def grid_pointing_game(model: nn.Module, grids: GridSet, methods, *, smooth: int = 0,
                       batch_size: int = 16) -> dict[str, Tensor]:
    """{method: scores [G * n*n]} for every cell of every grid, each cell's class explained."""
    model.eval()
    device = model_device(model)  # grids stay on the CPU; each batch visits the model's device
    k = grids.n * grids.n
    results: dict[str, Tensor] = {}
    for method in methods:
        scores = []
        for start in range(0, len(grids.images), max(1, batch_size // k)):
            imgs = grids.images[start:start + max(1, batch_size // k)]
            cls = grids.classes[start:start + len(imgs)]
            x = imgs.repeat_interleave(k, 0).to(device)  # each grid once per cell
            maps = attribution_maps(model, x, cls.reshape(-1).to(device), method).cpu()
            scores.append(pointing_scores(maps.view(len(imgs), k, *maps.shape[-2:]), grids.n, smooth))
        results[method] = torch.cat(scores).reshape(-1)
    return results
