"""What every figure of the kit shares: axis labels, the Axes helpers, saving PNGs atomically."""
from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import Tensor

from ..fileio import atomic_path

DPI = 120
DENSITY_LABEL = "density (active fraction)"
FLOPS_LABEL = "training FLOPs / dense VI (FLOPs = 2 × multiply-adds)"
HISTORY_COLUMNS = ("nll", "kl", "val_acc", "density")
HISTORY_LABELS = {
    "loss": "loss = NLL + β·κ·KL / N_train (nats)", "nll": "NLL term (nats / example)",
    "kl": "KL (nats, summed over weights)", "kl_weight": "KL weight β·κ",
    "train_acc": "training accuracy (fraction)", "val_acc": "validation accuracy (fraction)",
    "val_nll": "validation NLL (nats / example)", "val_ece": "validation ECE (15 bins)",
    "density": DENSITY_LABEL, "train_flops": "training FLOPs (cumulative, 2 × MACs)",
    "wall_time_s": "wall time (s)", "lr": "learning rate",
}
METRIC_LABELS = {
    "accuracy": "test accuracy (fraction)", "nll": "test NLL (nats / example)",
    "ece": "test ECE (top-label, 15 bins)", "brier": "test Brier score",
    "train_flops_ratio": FLOPS_LABEL, "model_size_bytes": "model size (bytes)",
    "wall_time_s": "wall time (s)", "mean_entropy": "mean predictive entropy (nats)",
    "mean_mutual_information": "mean mutual information (nats)",
}


# ----------------------------------------------------------------------------- helpers
def _axes(ax: Axes | None, figsize: tuple[float, float] = (4.5, 3.5)) -> Axes:
    if ax is None:
        _, ax = plt.subplots(figsize=figsize)
    elif not isinstance(ax, Axes):
        raise ValueError(f"ax must be a matplotlib Axes or None, got {type(ax).__name__}")
    return ax


def _axes_list(ax: Any, n: int, panel: tuple[float, float]) -> list[Axes]:
    """``n`` Axes in a row (a new figure when ``ax`` is None), else the given Axes (≤ n used)."""
    if ax is None:
        _, axes = plt.subplots(1, n, figsize=(panel[0] * n, panel[1]), squeeze=False)
        return list(axes[0])
    axes = [ax] if isinstance(ax, Axes) else list(np.asarray(ax, dtype=object).ravel())
    if not axes or not all(isinstance(a, Axes) for a in axes):
        raise ValueError("ax must be a matplotlib Axes, a sequence of Axes, or None")
    return axes[:n]


def _predictive(probs: Any) -> Tensor:
    """(N, C) stays, (K, N, C) → mean over K; validated by :mod:`metrics`."""
    t = probs if isinstance(probs, Tensor) else torch.as_tensor(np.asarray(probs))
    return t.detach().float().mean(0) if t.ndim == 3 else t


def _frame(df: Any, needed: Sequence[str]) -> pd.DataFrame:
    df = df if isinstance(df, pd.DataFrame) else pd.DataFrame(df)
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; it has {list(df.columns)}")
    if df.empty:
        raise ValueError("table is empty: nothing to plot")
    return df


def close_figure(fig: Figure | Axes) -> None:
    """Release a figure (or an Axes' figure) from pyplot's registry, e.g. after displaying it."""
    plt.close(fig.figure if isinstance(fig, Axes) else fig)


# ----------------------------------------------------------------------------- files
def save_figure(fig: Figure | Axes, path: str | os.PathLike) -> Path:
    """Write ``fig`` (or an Axes' figure) as PNG, dpi 120, tight bounding box, atomically."""
    figure = fig.figure if isinstance(fig, Axes) else fig
    if not isinstance(figure, Figure):
        raise ValueError(  # noqa: TRY004 (the kit reports bad input as ValueError)
            f"fig must be a matplotlib Figure or Axes, got {type(fig).__name__}")
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"save_figure writes PNG; path must end in .png, got {str(path)!r}")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=DPI, bbox_inches="tight")
    return path


def png_bytes(fig: Figure | Axes, dpi: int = 96) -> bytes:
    """The figure (or an Axes' figure) as PNG bytes, tight bounding box (for widget outputs)."""
    figure = fig.figure if isinstance(fig, Axes) else fig
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()
