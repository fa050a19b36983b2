"""Figures of the kit: calibration, training curves, masks, sweeps, 2-D entropy maps, score planes.

The only module that imports matplotlib. Every drawing function takes an optional ``ax`` (or
Axes, one per panel) and returns the Axes or Figure it drew on. Axes name quantity and unit,
calibration plots state their bin count (docs/method.md §9), cost plots their FLOPs convention (§8),
density is the active fraction (1 − sparsity). :func:`save_figure` writes PNGs atomically.

Notebooks: 01_dense_vi (plot_history, plot_entropy_map), 03_snr_removal (plot_score_plane,
plot_masks), 05_calibration (reliability_diagram), the comparison notebook (plot_metric_vs_*).
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor, nn

from . import metrics
from .fileio import atomic_path

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


# ----------------------------------------------------------------------------- calibration
def reliability_diagram(probs: Any, labels: Any, n_bins: int = 15, ax: Axes | None = None,
                        label: str | None = None) -> Axes:
    """Reliability diagram: per-bin accuracy bars, the gap to the diagonal, ECE in the legend.

    Bins are the top-label equal-width bins of :func:`metrics.reliability_bins` (Guo et al.,
    ICML 2017); the title states their number. ``probs``: (N, C), or (K, N, C) averaged over K.
    Notebook 05_calibration.
    """
    p = _predictive(probs)  # (N, C)
    bins = metrics.reliability_bins(p, labels, n_bins)
    value = metrics.ece(p, labels, n_bins)
    ax = _axes(ax, (4.0, 4.0))
    left, width = bins["edges"][:-1], np.diff(bins["edges"])
    full = bins["count"] > 0
    acc = np.where(full, bins["accuracy"], 0.0)
    gap = np.where(full, bins["confidence"] - acc, 0.0)
    ax.bar(left, acc, width=width, align="edge", color="C0", edgecolor="black", linewidth=0.5,
           label=f"accuracy per bin (ECE = {value:.4f})")
    ax.bar(left, gap, bottom=acc, width=width, align="edge", color="C3", alpha=0.35,
           edgecolor="C3", hatch="//", linewidth=0.5, label="gap to confidence")
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top-label probability)",
           ylabel="accuracy (fraction correct)")
    bins_text = f"{n_bins} bin{'' if n_bins == 1 else 's'}"  # the bin count is on every plot (§9)
    ax.set_title(f"{label}, {bins_text}" if label else f"reliability diagram, {bins_text}")
    ax.legend(loc="best", fontsize="small", framealpha=0.85)  # under- or overconfident: it varies
    return ax


# ----------------------------------------------------------------------------- training history
def _draw_history(history: pd.DataFrame, columns: Sequence[str], axes: Sequence[Axes]) -> None:
    x = history["epoch"].to_numpy() if "epoch" in history else np.arange(len(history))
    for ax, column in zip(axes, columns):
        ax.plot(x, history[column].to_numpy(dtype=float), marker="o", markersize=3)
        ax.set(xlabel="epoch" if "epoch" in history else "row of the history",
               ylabel=HISTORY_LABELS.get(column, column), title=column)
        ax.grid(alpha=0.3)


def _history_columns(history: Any, columns: Sequence[str]) -> tuple[pd.DataFrame, list[str]]:
    history = history if isinstance(history, pd.DataFrame) else pd.DataFrame(history)
    columns = (columns,) if isinstance(columns, str) else columns
    present = [c for c in columns if c in history.columns]
    if not present or history.empty:
        raise ValueError(f"history has none of the columns {list(columns)} (or no rows); "
                         f"it has {list(history.columns)}")
    return history, present


def plot_history(history: Any, columns: Sequence[str] = HISTORY_COLUMNS,
                 ax: Any = None) -> Figure:
    """One panel per history column that exists (of ``columns``), against the epoch.

    ``history`` is what ``ssvi_lite.fit`` returns (epoch, loss, nll, kl, kl_weight, train_acc,
    val_acc, val_nll, val_ece, density, train_flops, wall_time_s, lr); missing columns are skipped.
    ``ax``: optional Axes (or sequence of Axes, one per drawn column). Notebook 01_dense_vi.
    """
    history, present = _history_columns(history, columns)
    axes = _axes_list(ax, len(present), (3.4, 3.0))
    _draw_history(history, present[:len(axes)], axes)
    fig = axes[0].figure
    if ax is None:
        fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- masks
def mask_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every module with a tensor ``mask`` (the sparse mean-field layers)."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(getattr(m, "mask", None), torch.Tensor)]


def plot_masks(model: nn.Module, max_layers: int = 4, ax: Any = None) -> Figure:
    """Image of each sparse layer's support mask (black = active weight), density in the title.

    Weights are shown as (out, in) for Linear and (out, in·k·k) for Conv2d; at most ``max_layers``
    layers (or as many as Axes given). Notebook 03_snr_removal.
    """
    if isinstance(max_layers, bool) or not isinstance(max_layers, int) or max_layers < 1:
        raise ValueError(f"max_layers must be an integer >= 1, got {max_layers!r}")
    layers = mask_layers(model)[:max_layers]
    if not layers:
        raise ValueError("model has no layer with a `mask` tensor (no sparse mean-field layer); "
                         "build it with ssvi_lite.bayesianize / build_model first")
    axes = _axes_list(ax, len(layers), (3.2, 3.2))
    for panel, (name, module) in zip(axes, layers):
        mask = module.mask.detach().cpu().bool()
        image = mask.reshape(mask.shape[0], -1) if mask.ndim > 1 else mask[None]  # (out, in·k·k)
        panel.imshow(image.numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto",
                     interpolation="nearest")
        panel.set_title(f"{name or type(module).__name__}: density {image.float().mean():.3f}",
                        fontsize="medium")
        panel.set(xlabel="input index (in·k·k for conv)", ylabel="output unit")
    fig = axes[0].figure
    if ax is None:
        fig.suptitle("support masks (black = active weight)")
        fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------- sweeps
def _finite(df: pd.DataFrame, values: list[str]) -> pd.DataFrame:
    df = df.dropna(subset=values)
    if df.empty:
        raise ValueError(f"every row has NaN in {values}: nothing to plot")
    return df


def _seed_note(df: pd.DataFrame) -> str:
    n = df["seed"].nunique() if "seed" in df.columns else 1
    return f" (mean ± standard error over {n} seeds)" if n > 1 else ""


def _lines(ax: Axes, df: pd.DataFrame, x: str, y: str, hue: str | None) -> None:
    """One line per ``hue`` through the means of ``y`` at each ``x``, with bars of ± one standard
    error over the rows (seeds) of each point (seaborn)."""
    sns.lineplot(data=df, x=x, y=y, hue=hue, errorbar="se", err_style="bars", marker="o",
                 ax=ax, err_kws={"capsize": 3}, hue_order=sorted(df[hue].unique()) if hue else None)
    if hue:
        ax.legend(title=hue, fontsize="small")
    ax.grid(alpha=0.3)


def plot_metric_vs_density(df: Any, metric: str, hue: str | None = "method",
                           ax: Axes | None = None, logx: bool = True) -> Axes:
    """``metric`` against density (active fraction), one line per ``hue``, mean ± standard error
    over seeds.

    ``df`` is tidy: one row per run with columns density, ``metric`` and ``hue`` (plus seed).
    Used by ``ssvi_lite.compare`` and notebook 06_sparse_bnn_zoo.
    """
    df = _finite(_frame(df, ["density", metric] + ([hue] if hue else [])), [metric])
    if logx and (df["density"] <= 0).any():
        raise ValueError("density must be > 0 for a log x axis; pass logx=False")
    ax = _axes(ax)
    _lines(ax, df, "density", metric, hue)
    if logx:
        ax.set_xscale("log")
    ax.set(xlabel=DENSITY_LABEL, ylabel=METRIC_LABELS.get(metric, metric),
           title=f"{metric} vs density{_seed_note(df)}")
    return ax


def plot_metric_vs_flops(df: Any, metric: str = "accuracy", hue: str | None = "method",
                         ax: Axes | None = None, logx: bool = True) -> Axes:
    """``metric`` against training FLOPs relative to dense VI (column ``train_flops_ratio``).

    One point per (hue, density) configuration at its mean FLOPs ratio, ``metric`` as mean ±
    standard error over seeds; FLOPs are 2 × multiply-adds (docs/method.md §8). Used by
    ``ssvi_lite.compare``.
    """
    x = "train_flops_ratio"
    df = _finite(_frame(df, [x, metric] + ([hue] if hue else [])), [x, metric]).copy()
    by = ([hue] if hue else []) + (["density"] if "density" in df.columns else [])
    if by:  # a configuration's seeds share one x: its mean FLOPs ratio
        df[x] = df.groupby(by, dropna=False)[x].transform("mean")
    ax = _axes(ax)
    _lines(ax, df, x, metric, hue)
    if logx and (df[x] > 0).all():
        ax.set_xscale("log")
    ax.set(xlabel=FLOPS_LABEL, ylabel=METRIC_LABELS.get(metric, metric),
           title=f"{metric} vs training cost{_seed_note(df)}")
    return ax


# ----------------------------------------------------------------------------- 2-D pictures
def _grid_points(x: np.ndarray, grid: int) -> tuple[np.ndarray, np.ndarray, Tensor]:
    lo, hi = x.min(0), x.max(0)
    pad = 0.15 * (hi - lo) + 1e-3
    g0 = np.linspace(lo[0] - pad[0], hi[0] + pad[0], grid)
    g1 = np.linspace(lo[1] - pad[1], hi[1] + pad[1], grid)
    xx, yy = np.meshgrid(g0, g1)  # (grid, grid)
    points = torch.as_tensor(np.stack([xx.ravel(), yy.ravel()], 1), dtype=torch.float32)
    return xx, yy, points  # points: (grid², 2)


def plot_entropy_map(predict_fn: Callable[[Tensor], Tensor], x: Any, y: Any,
                     ax: Axes | None = None, grid: int = 200) -> Axes:
    """Predictive entropy H[p(y|x)] over the plane (filled contours) with the data on top.

    ``predict_fn(points)`` maps a float32 (M, 2) tensor to probabilities (M, C) or (K, M, C).
    For 2-D inputs such as two-moons. Notebook 01_dense_vi.
    """
    pts = np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x, dtype=float)
    lab = np.asarray(y.detach().cpu() if isinstance(y, Tensor) else y)
    if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) == 0 or lab.shape != (len(pts),):
        raise ValueError(f"x must have shape (N, 2) and y shape (N,), got {pts.shape} and "
                         f"{lab.shape}")
    if isinstance(grid, bool) or not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid must be an integer >= 2, got {grid!r}")
    xx, yy, points = _grid_points(pts, grid)
    with torch.no_grad():
        probs = predict_fn(points)
    entropy = metrics.predictive_entropy(probs).cpu()  # (grid²,)
    if entropy.shape != (grid * grid,):
        raise ValueError(f"predict_fn returned {tuple(probs.shape)} for {grid * grid} points")
    top = math.log(probs.shape[-1])
    ax = _axes(ax, (5.0, 4.0))
    filled = ax.contourf(xx, yy, entropy.clamp(0, top).reshape(grid, grid).numpy(),
                         levels=np.linspace(0, top, 21), cmap="viridis")
    ax.figure.colorbar(filled, ax=ax, label=f"predictive entropy (nats; max log C = {top:.2f})")
    ax.scatter(pts[:, 0], pts[:, 1], c=lab, cmap="coolwarm", s=8, edgecolors="white",
               linewidths=0.3)
    ax.set(xlabel="x₁ (input feature 1)", ylabel="x₂ (input feature 2)",
           title=f"predictive entropy, {grid}×{grid} grid")
    return ax


def _range(values: Any, name: str, positive: bool = False) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a pair (low, high), got {values!r}") from err
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) or (positive and lo <= 0):
        raise ValueError(f"{name} must be finite with low < high{' and low > 0' * positive}, "
                         f"got {values!r}")
    return lo, hi


def plot_score_plane(score_fn: Callable[[Tensor, Tensor], Tensor], mu_range: Any, sigma_range: Any,
                     ax: Axes | None = None, threshold: float | None = None, grid: int = 121,
                     log_sigma: bool | None = None) -> Axes:
    """The (μ, σ) plane coloured by a removal score, with the contour score = ``threshold``.

    ``score_fn(mu, sigma)`` is e.g. ``criteria.REMOVAL_SCORES["snr_abs"]`` (higher = keep), called
    on float64 (grid, grid) tensors; σ is log-spaced when ``log_sigma`` (default: when
    sigma_range spans ≥ 10×). Notebook 03_snr_removal.
    """
    (m0, m1), (s0, s1) = _range(mu_range, "mu_range"), _range(sigma_range, "sigma_range", True)
    log_sigma = s1 / s0 >= 10 if log_sigma is None else log_sigma
    mu = torch.linspace(m0, m1, grid, dtype=torch.float64)
    sigma = (torch.logspace(math.log10(s0), math.log10(s1), grid, dtype=torch.float64)
             if log_sigma else torch.linspace(s0, s1, grid, dtype=torch.float64))
    sig, m = torch.meshgrid(sigma, mu, indexing="ij")  # (grid, grid): rows σ, columns μ
    scores = score_fn(m, sig)
    if not isinstance(scores, Tensor) or scores.shape != m.shape:
        raise ValueError(f"score_fn must return a tensor of shape {tuple(m.shape)}")
    z = np.ma.masked_invalid(scores.detach().cpu().double().numpy())
    ax = _axes(ax, (5.0, 4.0))
    mesh = ax.pcolormesh(m.numpy(), sig.numpy(), z, shading="auto", cmap="magma")
    ax.figure.colorbar(mesh, ax=ax, label="removal score (higher = keep)")
    if threshold is not None:
        _boundary(ax, m.numpy(), sig.numpy(), z, float(threshold))
    if log_sigma:
        ax.set_yscale("log")
    name = getattr(getattr(score_fn, "func", score_fn), "__name__", "score")
    ax.set(xlabel="μ (posterior mean of the weight)", ylabel="σ (posterior std of the weight)",
           title=f"removal score {name} on the (μ, σ) plane")
    return ax


def _boundary(ax: Axes, mu: np.ndarray, sigma: np.ndarray, z: np.ma.MaskedArray, t: float) -> None:
    inside = z.count() > 0 and z.min() < t < z.max()
    if inside:
        ax.contour(mu, sigma, z, levels=[t], colors="cyan", linewidths=1.5)
    note = "" if inside else ", outside the plotted range"
    line = Line2D([], [], color="cyan", label=f"removal boundary (score = {t:.3g}{note})")
    ax.legend(handles=[line], loc="upper right", fontsize="small")


# ----------------------------------------------------------------------------- widget panels
def pruning_figure(probs: Any, labels: Any, model: nn.Module, n_bins: int = 15,
                   title: str | None = None, max_layers: int = 3) -> Figure:
    """Reliability diagram next to the model's masks (the pruning explorer widget's picture)."""
    n_masks = min(len(mask_layers(model)), max_layers)
    fig, axes = plt.subplots(1, 1 + n_masks, figsize=(3.6 * (1 + n_masks), 3.6), squeeze=False)
    reliability_diagram(probs, labels, n_bins, ax=axes[0, 0])
    if n_masks:
        plot_masks(model, max_layers, ax=axes[0, 1:])
    fig.suptitle(title or "")
    fig.tight_layout()
    return fig


def trainer_figure(history: Any, probs: Any, labels: Any, n_bins: int = 15,
                   title: str | None = None, columns: Sequence[str] = HISTORY_COLUMNS) -> Figure:
    """Training curves next to the reliability diagram (the SSVI trainer widget's picture)."""
    history, present = _history_columns(history, columns)
    fig, axes = plt.subplots(1, len(present) + 1, figsize=(3.3 * (len(present) + 1), 3.3),
                             squeeze=False)
    _draw_history(history, present, axes[0, :-1])
    reliability_diagram(probs, labels, n_bins, ax=axes[0, -1])
    fig.suptitle(title or "")
    fig.tight_layout()
    return fig


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
