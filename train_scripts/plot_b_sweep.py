"""The B sweep of train_scripts/b_sweep_cifar10.sh as the paper's Fig. 5 (accuracy and localisation against B) and
a table: OUT/b_sweep.png and OUT/b_sweep.md, from each run's export (B, MaxOut), training log and evaluation.

    python train_scripts/plot_b_sweep.py OUT    (OUT: the sweep's output folder)
"""
from __future__ import annotations

import json
import math
import statistics
import sys
import textwrap
from datetime import datetime
from pathlib import Path

from timm_bcos.eval.attribution import METHOD_LABELS
from timm_bcos.utils.atomic import atomic_path

METRIC_LABELS = {"pixel_flipping": "pixel flipping", "random_logit": "RandomLogit", "mprt": "MPRT",
                 "sparseness": "sparseness"}
NAN = float("nan")


def training_log(path: Path, export: Path) -> dict:
    """Epochs validated, the last validation top-1, median images/s, and minutes from the first start to the
    export (a resumed run's pause included), from train.py's JSON lines and the sweep's '== DATE' lines."""
    epochs, speeds, starts = {}, [], []
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.startswith("== "):
            starts.append(datetime.fromisoformat(line.split()[1]))
        elif line.startswith("{"):
            row = json.loads(line)
            if "top1" in row:
                epochs[row["epoch"]] = row["top1"]  # a resumed run may repeat an epoch: the last one counts
            elif "train/images_per_s" in row:
                speeds.append(row["train/images_per_s"])
    minutes = ((export.stat().st_mtime - starts[0].timestamp()) / 60 if starts and export.is_file() else NAN)
    return {"epochs": len(epochs), "val_top1": epochs[max(epochs)] if epochs else NAN,
            "images_per_s": statistics.median(speeds) if speeds else NAN, "minutes": minutes, "starts": len(starts)}


def collect(out: Path) -> list[dict]:
    """One row per trained model (its export's B and max_out), with its evaluation where there is one."""
    rows = []
    for config in sorted(out.glob("*/export/config.json")):
        name = config.parent.parent.name
        args = json.loads(config.read_text())["model_args"]
        row = {"name": name, "b": float(args["b"]), "max_out": int(args.get("max_out", 2)),
               **training_log(out / f"{name}.log", config.parent / "model.safetensors")}
        res = out / "eval" / name / "results.json"
        r = json.loads(res.read_text()) if res.is_file() else {}
        row["top1"] = r.get("accuracy", {}).get(name, {}).get("top1", NAN)
        for grid in ("2x2", "3x3"):
            row[grid] = r.get("pointing_game", {}).get(grid, {}).get(name, {}).get("own", {})
        row["metrics"] = r.get("metrics", {}).get(name, {}).get("own", {})
        rows.append(row)
    return sorted(rows, key=lambda row: (row["max_out"] == 1, row["b"]))


def fmt(v: float, digits: int = 3) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def table(rows: list[dict], budget: str) -> str:
    metrics = list(dict.fromkeys(m for row in rows for m in row["metrics"]))
    better = {m: row["metrics"][m]["better"] for row in rows for m in row["metrics"]}
    lines = ["# B sweep, CIFAR-10 (bcos_cifar10)", "", f"Budget of every run: `{budget}`.", "",
             f"Top-1 on the test split; grid pointing game of the {METHOD_LABELS['own']} explanations (mean, with its "
             "quartiles; uniform 0.250 / 0.111); Quantus metrics of the own explanations of the first test images for "
             "the predicted class, mean [95% bootstrap interval]; training speed (median images/s) and minutes from "
             "the first start to the export.", "",
             "| B | MaxOut | epochs | top-1 | 2x2 | 3x3 | " + "".join(f"{METRIC_LABELS.get(m, m)} ({better[m]}) | "
                                                           for m in metrics) + "images/s | min |",
             "|---:|---|---:|---:|---:|---:|" + "---:|" * len(metrics) + "---:|---:|"]
    for row in rows:
        grids = [f"{fmt(g['mean'])} [{fmt(g['q1'])}, {fmt(g['q3'])}]" if g else "-" for g in (row["2x2"], row["3x3"])]
        cells = [f"{fmt(s['mean'])} [{fmt(s['ci95'][0])}, {fmt(s['ci95'][1])}]" if (s := row["metrics"].get(m)) else "-"
                 for m in metrics]
        lines.append(f"| {row['b']:g} | {'yes (2)' if row['max_out'] > 1 else 'no'} | {row['epochs']} | "
                     f"{fmt(row['top1'], 2)} | {' | '.join(grids)} | " + "".join(f"{c} | " for c in cells)
                     + f"{fmt(row['images_per_s'], 0)} | {fmt(row['minutes'], 1)} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path, budget: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    maxout = [r for r in rows if r["max_out"] > 1]
    plain = [r for r in rows if r["max_out"] == 1]
    shift = 0.05  # the plain models are drawn beside the MaxOut model of the same B
    fig, (acc, loc) = plt.subplots(1, 2, figsize=(9.5, 4), sharex=True)
    acc.plot([r["b"] for r in maxout], [r["top1"] for r in maxout], "o-", color="C0", label="MaxOut (max_out=2)")
    acc.plot([r["b"] + shift for r in plain], [r["top1"] for r in plain], "*", ms=13, color="C3",
             label=f"no MaxOut (drawn at B+{shift:g})")
    acc.set(xlabel="B", ylabel="test top-1 (%)", title="accuracy")
    for grid, colour, chance in (("2x2", "C0", 0.25), ("3x3", "C2", 1 / 9)):
        pts = [(r["b"], r[grid]) for r in maxout if r[grid]]
        if pts:
            b = [p[0] for p in pts]
            loc.plot(b, [p[1]["mean"] for p in pts], "o-", color=colour, label=f"{grid}, MaxOut")
            loc.fill_between(b, [p[1]["q1"] for p in pts], [p[1]["q3"] for p in pts], color=colour, alpha=0.15, lw=0)
        pts = [(r["b"], r[grid]) for r in plain if r[grid]]
        if pts:
            loc.plot([p[0] + shift for p in pts], [p[1]["mean"] for p in pts], "*", ms=13, color=colour, mec="C3",
                     label=f"{grid}, no MaxOut (at B+{shift:g})")
        loc.axhline(chance, color=colour, ls=":", lw=1, label=f"uniform, {grid}")
    if not any(r[g] for r in rows for g in ("2x2", "3x3")):
        loc.text(0.5, 0.5, "no pointing game yet\n(too few classes with confidently\ncorrect images, or not evaluated)",
                 ha="center", va="center", transform=loc.transAxes, color="0.4")
    loc.set(xlabel="B", ylabel="pointing game (mean; band: quartiles)", title="localisation (own explanations)",
            ylim=(0, 1))
    for ax in (acc, loc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    knobs = " ".join(k for k in budget.split() if not k.endswith("="))  # the knobs that are set
    fig.suptitle("\n".join(textwrap.wrap(f"B-cos CIFAR-10 networks at one budget: {knobs}", 120)), fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def main(out: Path) -> None:
    rows = collect(out)
    if not rows:
        sys.exit(f"error: no trained model in {out} (no */export/config.json)")
    budget = (out / "budget.txt").read_text().strip() if (out / "budget.txt").is_file() else "?"
    plot(rows, out / "b_sweep.png", budget)
    with atomic_path(out / "b_sweep.md") as tmp:
        tmp.write_text(table(rows, budget) + "\n![B sweep](b_sweep.png)\n")
    print(f"wrote {out / 'b_sweep.png'} and {out / 'b_sweep.md'} ({len(rows)} models)")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
