"""Has a variational run converged? The evidence a Bayesian history carries (docs/method.md §3;
notebook 01_dense_vi introduces it).

Each epoch of a mean-field run records the two terms of the per-example objective (what the loop
minimises),

    objective = NLL + β(e)·κ·KL/N      (−ELBO/N for κ = 1; the tempered −ELBO/N otherwise),

and, per mean-field layer, the 10 %, 50 % and 90 % quantiles of σ over its active weights. A run
has **converged** when the objective has stopped moving: over the last ``window`` epochs the
least-squares slope of the objective is below 1 % of its mean per epoch *and* below 0.01 nats per
example per epoch, and κ·β has stopped changing (no warm-up still running). A slope fitted over
several epochs averages out the minibatch noise of each epoch's mean; the absolute bound keeps a
huge KL term (hundreds of nats per example) from hiding a fall of several nats per epoch behind a
small relative change. A posterior that learned per-weight
variances shows a **spread** of σ: q90/q10 well above 1 within a layer; σ identical everywhere
(q90/q10 = 1) means the variances have not been learned.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from .layers import mean_field_layers

TOLERANCE = 0.01  # relative change of the objective per epoch
TOLERANCE_NATS = 0.01  # absolute change of the objective per epoch, nats per example
SIGMA_QUANTILES = (0.1, 0.5, 0.9)


def sigma_column(q: float, layer: str) -> str:
    """History column of the ``q`` quantile of σ in ``layer``, e.g. ``sigma_q50 net.1``."""
    return f"sigma_q{round(100 * q)} {layer}"


@dataclass(frozen=True)
class Convergence:
    """Verdict on a history: the objective's relative slope over the last epochs and the σ spread
    (q90/q10) of each layer at the last epoch."""

    window: int
    relative_slope: float  # per epoch, slope / |mean objective| over the window
    slope: float  # per epoch, nats per example
    converged: bool
    sigma_spread: dict[str, float]  # layer -> q90/q10 of σ

    def summary(self) -> str:
        spread = ", ".join(f"{k} {v:.2f}" for k, v in self.sigma_spread.items()) or "no σ"
        state = "converged" if self.converged else "NOT converged"
        change = (f"objective changes {100 * self.relative_slope:+.2f} % ({self.slope:+.4f} "
                  f"nats/example) per epoch over the last {self.window} epochs (tolerance "
                  f"±{100 * TOLERANCE:g} % and ±{TOLERANCE_NATS:g} nats)" if self.window > 1
                  else "one epoch cannot show convergence")
        return f"{state}: {change}; σ q90/q10 per layer: {spread}"


def assess(history: pd.DataFrame, window: int | None = None,
           tolerance: float = TOLERANCE) -> Convergence:
    """The convergence of ``history`` (one row per epoch, columns ``loss`` and ``kl_weight``;
    σ quantile columns where the model has mean-field layers). ``window`` defaults to the last
    quarter of the epochs, at least 5 (all epochs if fewer)."""
    if "loss" not in history or history.empty:
        raise ValueError("assess needs a training history with a 'loss' column")
    n = len(history)
    window = min(n, window or max(5, n // 4))
    tail = history.iloc[-window:]
    objective = tail["loss"].to_numpy(dtype=float)
    slope = float(np.polyfit(np.arange(window), objective, 1)[0]) if window > 1 else math.nan
    relative = slope / max(abs(float(objective.mean())), 1e-12)
    steady_weight = tail["kl_weight"].nunique() == 1 if "kl_weight" in tail else True
    flat = abs(relative) < tolerance and abs(slope) < TOLERANCE_NATS
    converged = window > 1 and flat and steady_weight
    return Convergence(window, relative, slope, bool(converged), sigma_spread(history.iloc[-1]))


def sigma_spread(row: pd.Series) -> dict[str, float]:
    """q90/q10 of σ per layer, from one history row."""
    out = {}
    for column in row.index:
        if isinstance(column, str) and column.startswith("sigma_q10 "):
            layer = column.split(" ", 1)[1]
            q90 = row.get(sigma_column(0.9, layer))
            if q90 is not None and row[column] > 0:
                out[layer] = float(q90 / row[column])
    return out


@torch.no_grad()
def sigma_quantiles(model: nn.Module, max_values: int = 2**24) -> dict[str, float]:
    """The :data:`SIGMA_QUANTILES` of σ over the active weights of each mean-field layer, as
    history columns (:func:`sigma_column`). Deterministic: a layer larger than ``max_values``
    (torch.quantile's limit) is thinned by a fixed stride, no random state is touched."""
    out: dict[str, float] = {}
    qs = torch.tensor(SIGMA_QUANTILES)
    for name, layer in mean_field_layers(model):
        sigma = layer.active_sigma().detach().float().cpu()
        if sigma.numel() == 0:
            continue
        sigma = sigma[::-(-sigma.numel() // max_values)]
        for q, value in zip(SIGMA_QUANTILES, torch.quantile(sigma, qs).tolist()):
            out[sigma_column(q, name)] = value
    return out
