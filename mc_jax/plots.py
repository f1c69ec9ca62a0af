"""matplotlib figures of runs and evaluations (the ``plots`` extra: ``pip install 'mc_jax[plots]'``).

* :func:`plot_training_curves`: loss and accuracy against the step for one run or several runs of a job
  (train and held-out), written by ``train.py`` as ``<run>/curves.png`` and ``<out_dir>/curves.png``.
* :func:`plot_niah_heatmaps`: NIAH exact match and per-character accuracy over depth x length, with a colour bar,
  the model, the checkpoint step and the samples per cell, written by ``eval.py --niah``.

Figures are drawn with matplotlib's object API on the Agg canvas (no pyplot state, no display needed). Every function
returns the written path, or ``None`` when matplotlib is not installed (callers say so; nothing else changes).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _figure(width: float, height: float, ncols: int = 1):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        return None, None
    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _series(records: Sequence[Mapping[str, Any]], split: str, key: str) -> tuple[list[int], list[float]]:
    pts = [(int(r["step"]), float(r[key])) for r in records
           if r.get("split") == split and isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_training_curves(runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike[str], *,
                         title: str) -> Path | None:
    """Loss (left; log scale when the losses span more than two decades) and accuracy (right) against the step, for
    every ``{label: metrics records}`` run: training records as lines, held-out evaluations as markers on a dashed line
    of the same colour."""
    fig, (ax_loss, ax_acc) = _figure(11, 4.2, ncols=2)
    if fig is None:
        return None
    for i, (label, records) in enumerate(runs.items()):
        color = f"C{i}"
        for ax, key in ((ax_loss, "loss"), (ax_acc, "accuracy")):
            xs, ys = _series(records, "train", key)
            if xs:
                ax.plot(xs, ys, color=color, lw=1.2, alpha=0.85, label=f"{label} (train)")
            xs, ys = _series(records, "eval", key)
            if xs:
                ax.plot(xs, ys, color=color, ls="--", marker="o", ms=4, label=f"{label} (held-out)")
    losses = [y for records in runs.values() for split in ("train", "eval") for y in _series(records, split, "loss")[1]]
    spread = max(losses) / min(losses) if losses and min(losses) > 0 else 1.0
    ax_loss.set(xlabel="step", ylabel="cross-entropy (nats per token)", title="loss",
                yscale="log" if spread > 100 else "linear")  # log only when the losses span decades
    ax_acc.set(xlabel="step", ylabel="token accuracy", title="accuracy", ylim=(0, 1.02))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=7, loc="best")
    fig.suptitle(title, fontsize=10)
    out = Path(path)
    fig.savefig(out)
    return out


def plot_niah_heatmaps(grid: Mapping[str, Any], path: str | os.PathLike[str], *, model: str, step: int,
                       task: str) -> Path | None:
    """Exact match (left) and per-character accuracy (right) of a NIAH grid (:func:`mc_jax.eval.metrics.niah_grid`):
    rows = needle depth, columns = context length, each cell annotated in percent, one colour bar (0-100%)."""
    fig, axes = _figure(4.0 + 1.6 * len(grid["lengths"]), 1.6 + 0.45 * len(grid["depths"]), ncols=2)
    if fig is None:
        return None
    image = None
    for ax, key, name in zip(axes, ("exact", "char_accuracy"), ("exact match", "per-character accuracy")):
        values = 100 * np.asarray(grid[key], dtype=float)
        image = ax.imshow(values, cmap="viridis", vmin=0, vmax=100, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=8, color="white" if v < 60 else "black")
        ax.set_xticks(range(len(grid["lengths"])), [str(n) for n in grid["lengths"]])
        ax.set_yticks(range(len(grid["depths"])), [f"{d:.2f}" for d in grid["depths"]])
        ax.set(xlabel="context length (tokens)", title=name)
    axes[0].set_ylabel("needle depth (0 = start)")
    fig.colorbar(image, ax=list(axes), label="% (of samples / of answer characters)", shrink=0.9)
    fig.suptitle(f"NIAH {task}: {model}, step {step}, {grid['samples']} samples per cell", fontsize=9)
    out = Path(path)
    fig.savefig(out)
    return out


__all__ = ["plot_niah_heatmaps", "plot_training_curves"]
