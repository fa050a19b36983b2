"""Methods on common axes: a metric against density or training FLOPs, mean ± standard error over
seeds (seaborn; ``ssvi_lite.compare``, notebook 06_sparse_bnn_zoo)."""
from __future__ import annotations

from typing import Any

import pandas as pd
import seaborn as sns
from matplotlib.axes import Axes

from .base import DENSITY_LABEL, FLOPS_LABEL, METRIC_LABELS, _axes, _frame


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
