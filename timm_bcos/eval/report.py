"""Pointing-game summaries: a markdown table and a box plot in the style of the paper's Fig. 6."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from ..utils.atomic import atomic_path


def bootstrap_ci(values: Sequence[float], n_resamples: int = 1000, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean and the percentile bootstrap interval of the mean (fixed seed)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or not np.isfinite(v).all():
        bad = int((~np.isfinite(v)).sum())
        raise ValueError(f"bootstrap_ci needs finite values, got {v.size} with {bad} not finite")
    means = np.random.default_rng(seed).choice(v, size=(n_resamples, v.size)).mean(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(v.mean()), float(low), float(high)


def summarise(scores: Tensor) -> dict[str, float]:
    """Mean with its 95% bootstrap interval, quartiles, median and count of a 1-d tensor of scores (float64), as
    the results tables show them."""
    s = scores.double()
    q = torch.quantile(s, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))
    _, low, high = bootstrap_ci(s.numpy())
    return {"mean": float(s.mean()), "ci95": [low, high], "q1": float(q[0]), "median": float(q[1]),
            "q3": float(q[2]), "n": len(s)}


def markdown_table(results: dict[str, dict[str, Tensor]], labels: dict[str, str] | None = None) -> str:
    """results: {model: {method: scores}} -> one row per (model, method)."""
    labels = labels or {}
    rows = ["| model | method | mean | 95% CI | median | Q1 | Q3 | n |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for model, per_method in results.items():
        for method, scores in per_method.items():
            s = summarise(scores)
            rows.append(f"| {model} | {labels.get(method, method)} | {s['mean']:.3f} | "
                        f"[{s['ci95'][0]:.3f}, {s['ci95'][1]:.3f}] | {s['median']:.3f} | "
                        f"{s['q1']:.3f} | {s['q3']:.3f} | {s['n']} |")
    return "\n".join(rows) + "\n"


def box_plot(results: dict[str, dict[str, Tensor]], path: str | Path, *, title: str = "",
             labels: dict[str, str] | None = None, chance: float | None = None) -> Path:
    """One group of boxes per model, one box per method; written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = labels or {}
    methods = list(dict.fromkeys(m for per in results.values() for m in per))
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(methods) * len(results), 3.6))
    colours = plt.get_cmap("tab10")
    pos, data, cols = [], [], []
    for gi, (model, per_method) in enumerate(results.items()):
        for mi, method in enumerate(methods):
            if method in per_method:
                pos.append(gi * (len(methods) + 1) + mi)
                data.append(per_method[method].numpy())
                cols.append(colours(mi))
    parts = ax.boxplot(data, positions=pos, widths=0.7, patch_artist=True, showfliers=False)
    for patch, c in zip(parts["boxes"], cols):
        patch.set_facecolor(c)
    ax.set_xticks([gi * (len(methods) + 1) + (len(methods) - 1) / 2 for gi in range(len(results))])
    ax.set_xticklabels(list(results))
    if chance is not None:
        ax.axhline(chance, color="grey", ls="--", lw=1, label="uniform")
    handles = [plt.Rectangle((0, 0), 1, 1, color=colours(i)) for i in range(len(methods))]
    ax.legend(handles, [labels.get(m, m) for m in methods], fontsize=7, ncol=len(methods), loc="upper center",
              bbox_to_anchor=(0.5, -0.12))
    ax.set_ylabel("localisation score")
    ax.set_ylim(0, 1)
    ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=120, format="png")
    finally:
        plt.close(fig)
    return path
