"""Figures of the kit: calibration, training curves, masks, sweeps, 2-D entropy maps, score planes.

The only package that imports matplotlib and seaborn. Every drawing function takes an optional
``ax`` (or Axes, one per panel) and returns the Axes or Figure it drew on. Axes name quantity and
unit, calibration plots state their bin count (docs/method.md §9), cost plots their FLOPs
convention (§8), density is the active fraction (1 − sparsity). :func:`save_figure` writes PNGs
atomically. Modules: ``base``, ``calibration``, ``training``, ``comparison``, ``planes``.

Notebooks: 01_dense_vi (plot_history, plot_convergence, plot_entropy_map), 03_snr_removal
(plot_score_plane, plot_masks), 05_calibration (reliability_diagram), 06_sparse_bnn_zoo
(plot_metric_vs_*).
"""
from .base import (
    DENSITY_LABEL,
    DPI,
    FLOPS_LABEL,
    HISTORY_COLUMNS,
    HISTORY_LABELS,
    METRIC_LABELS,
    close_figure,
    png_bytes,
    save_figure,
)
from .calibration import reliability_diagram, reliability_panels
from .comparison import plot_metric_vs_density, plot_metric_vs_flops
from .planes import plot_entropy_map, plot_score_plane
from .training import (
    mask_layers,
    plot_convergence,
    plot_history,
    plot_masks,
    pruning_figure,
    trainer_figure,
)

__all__ = ["DENSITY_LABEL", "DPI", "FLOPS_LABEL", "HISTORY_COLUMNS", "HISTORY_LABELS",
           "METRIC_LABELS", "close_figure", "mask_layers", "plot_convergence", "plot_entropy_map",
           "plot_history", "plot_masks", "plot_metric_vs_density", "plot_metric_vs_flops",
           "plot_score_plane", "png_bytes", "pruning_figure", "reliability_diagram",
           "reliability_panels", "save_figure", "trainer_figure"]
