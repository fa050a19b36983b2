"""2-D pictures: the predictive entropy over an input plane and a removal score over the (μ, σ)
plane (notebooks 01_dense_vi, 03_snr_removal)."""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from torch import Tensor

from .. import metrics
from .base import _axes


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
                     log_sigma: bool | None = None, rank: bool = False) -> Axes:
    """The (μ, σ) plane coloured by a removal score, with the contour score = ``threshold``.

    ``score_fn(mu, sigma)`` is e.g. ``criteria.REMOVAL_SCORES["snr_abs"]`` (higher = keep), called
    on float64 (grid, grid) tensors; σ is log-spaced when ``log_sigma`` (default: when
    sigma_range spans ≥ 10×). With ``rank`` the colour is the score's percentile on the plotted
    grid: removal only uses the order of the scores, and raw scores that span decades leave most
    of the plane one colour. Notebook 03_snr_removal.
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
    shown = _percentiles(z) if rank else z
    ax = _axes(ax, (5.0, 4.0))
    mesh = ax.pcolormesh(m.numpy(), sig.numpy(), shown, shading="auto", cmap="magma")
    ax.figure.colorbar(mesh, ax=ax, label=("percentile of the score on this grid (higher = keep)"
                                           if rank else "removal score (higher = keep)"))
    if threshold is not None:
        _boundary(ax, m.numpy(), sig.numpy(), z, float(threshold))
    if log_sigma:
        ax.set_yscale("log")
    name = getattr(getattr(score_fn, "func", score_fn), "__name__", "score")
    ax.set(xlabel="μ (posterior mean of the weight)", ylabel="σ (posterior std of the weight)",
           title=f"removal score {name} on the (μ, σ) plane")
    return ax


def _percentiles(z: np.ma.MaskedArray) -> np.ma.MaskedArray:
    """Each finite entry's rank among the finite entries, scaled to [0, 100]."""
    flat = z.compressed()
    ranks = np.searchsorted(np.sort(flat), z.filled(np.nan), side="right")
    return np.ma.masked_array(100.0 * ranks / max(len(flat), 1), mask=np.ma.getmaskarray(z))


def _boundary(ax: Axes, mu: np.ndarray, sigma: np.ndarray, z: np.ma.MaskedArray, t: float) -> None:
    inside = z.count() > 0 and z.min() < t < z.max()
    if inside:
        ax.contour(mu, sigma, z, levels=[t], colors="cyan", linewidths=1.5)
    note = "" if inside else ", outside the plotted range"
    line = Line2D([], [], color="cyan", label=f"removal boundary (score = {t:.3g}{note})")
    ax.legend(handles=[line], loc="upper right", fontsize="small")
