"""Training pictures: history curves, convergence of a variational run, support masks, and the
widgets' combined panels (notebooks 01_dense_vi, 02_mask_initialization)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from .base import HISTORY_COLUMNS, HISTORY_LABELS, _axes_list
from .calibration import reliability_diagram


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


def plot_convergence(history: Any, ax: Any = None) -> Figure:
    """Has the variational run converged (``ssvi_lite.convergence``)? Left: the per-example
    objective and its two terms per epoch — the NLL, the weighted KL β·κ·KL/N and their sum
    (−ELBO/N when κ = 1). Right: σ of each mean-field layer per epoch, the median as a line and
    the 10–90 % quantiles as a band: a band of zero width means every weight has one σ, i.e. the
    variances were not learned. Notebook 01_dense_vi."""
    history, _ = _history_columns(history, ["loss"])
    axes = _axes_list(ax, 2, (4.6, 3.4))
    x = history["epoch"].to_numpy()
    kl = (history["kl_weight"] * history["kl_per_example"]).to_numpy(dtype=float)
    for values, label in ((history["nll"], "NLL"), (kl, "β·κ·KL / N"),
                          (history["loss"], "objective = NLL + β·κ·KL / N")):
        axes[0].plot(x, np.asarray(values, dtype=float), marker="o", markersize=3, label=label)
    axes[0].set(xlabel="epoch", ylabel="nats per training example", yscale="log",
                title="the objective's terms")
    axes[0].legend(fontsize="small")
    if len(axes) > 1:
        _draw_sigma_bands(history, axes[1])
    for a in axes:
        a.grid(alpha=0.3)
    fig = axes[0].figure
    if ax is None:
        fig.tight_layout()
    return fig


def _draw_sigma_bands(history: pd.DataFrame, ax: Axes) -> None:
    x = history["epoch"].to_numpy()
    layers = [c.split(" ", 1)[1] for c in history.columns if c.startswith("sigma_q50 ")]
    for i, layer in enumerate(layers):
        q10, q50, q90 = (history[f"sigma_q{q} {layer}"].to_numpy(dtype=float)
                         for q in (10, 50, 90))
        ax.plot(x, q50, color=f"C{i}", label=layer)
        ax.fill_between(x, q10, q90, color=f"C{i}", alpha=0.25, linewidth=0)
    ax.set(xlabel="epoch", ylabel="σ (median; band: 10–90 % of weights)", yscale="log",
           title="σ per layer" if layers else "no mean-field layers")
    if layers:
        ax.legend(fontsize="small", title="layer")


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


# ----------------------------------------------------------------------------- widget panels
def pruning_figure(probs: Any, labels: Any, model: nn.Module, n_bins: int = 15,
                   title: str | None = None, max_layers: int = 2) -> Figure:
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
