"""Reliability diagrams (docs/method.md §9; notebook 05_calibration)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from .. import metrics
from .base import _axes, _predictive


# ----------------------------------------------------------------------------- calibration
def reliability_diagram(probs: Any, labels: Any, n_bins: int = 15, ax: Axes | None = None,
                        label: str | None = None) -> Axes:
    """Reliability diagram: per-bin accuracy bars with the number of examples at the foot of each
    bar, the gap to the diagonal, ECE in the legend.

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
    for x, w, count in zip(left, width, bins["count"]):
        if count:  # how many examples each bar rests on, at its foot
            ax.text(x + w / 2, 0.015, str(int(count)), rotation=90, ha="center", va="bottom",
                    fontsize=6, bbox={"boxstyle": "square,pad=0.1", "fc": "white", "ec": "none",
                                      "alpha": 0.75})
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (numbers: examples per bin)",
           ylabel="accuracy (fraction correct)")
    bins_text = f"{n_bins} bin{'' if n_bins == 1 else 's'}"  # the bin count is on every plot (§9)
    ax.set_title(f"{label}, {bins_text}" if label else f"reliability diagram, {bins_text}")
    ax.legend(loc="best", fontsize="small", framealpha=0.85)  # under- or overconfident: it varies
    return ax


def reliability_panels(curves: Sequence[tuple[str, Any]], labels: Any, n_bins: int = 15
                       ) -> Figure:
    """One reliability diagram per (title, probs) of ``curves``, side by side, one y axis
    (``python -m ssvi_lite demo``)."""
    fig, axes = plt.subplots(1, len(curves), figsize=(3.4 * len(curves), 3.6), sharey=True,
                             squeeze=False)
    for ax, (title, probs) in zip(axes[0], curves):
        reliability_diagram(probs, labels, n_bins=n_bins, ax=ax, label=title)
    fig.tight_layout()
    return fig
