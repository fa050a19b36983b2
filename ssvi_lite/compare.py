"""Every method on the same axes: SSVI and its baselines across densities and seeds (issue 5 §3).

``python -m ssvi_lite compare --densities 0.5 0.2 0.1 0.05 --seeds 3`` trains, on the embedded MNIST
subset by default, each method through :func:`ssvi_lite.sweep.run_sweep` (one job per run, on this
machine by default, ``--cluster debug`` in this process, ``--cluster slurm`` on Slurm; resumable,
one comparison at a time per folder):
- methods that target a density (ssvi, static, posthoc) once per density and seed;
- map and dense VI once per seed, at density 1;
- methods that reach a density of their own (em_mcmc, turbo_vbi, svd, weight_sharing) once per
  seed, drawn on the same axes at the density they reach.
It writes the tidy table OUT/results.csv (one line per run, status ok/failed; merged with the lines
already there) and four figures (mean ± std over seeds): accuracy, NLL and ECE (15 bins) vs
density, accuracy vs training FLOPs. OUT defaults to ``runs/compare``; the committed table is
refreshed only on purpose, with ``--out results/compare``.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .config import TrainConfig
from .flags import add_config_flags
from .methods import NAMES, REGISTRY
from .report import paper_table
from .sweep import (
    Cluster,
    add_job_arguments,
    base_config,
    cluster_from_args,
    expand_grid,
    run_sweep,
)

DEFAULT_DENSITIES = (0.5, 0.2, 0.1, 0.05)
DEFAULT_OUT = "runs/compare"  # not results/compare: that table is committed
FIGURES = (("accuracy", "density"), ("nll", "density"), ("ece", "density"),
           ("accuracy", "flops"))


def check_methods(methods: Sequence[str]) -> list[str]:
    """``methods`` in the registry's order; ValueError naming unknown ones and the valid ones."""
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in REGISTRY]
    if unknown:
        raise ValueError(f"unknown method(s) {', '.join(map(str, unknown))}; "
                         f"choose from {', '.join(NAMES)}")
    if not methods:
        raise ValueError(f"give at least one method; choose from {', '.join(NAMES)}")
    return sorted(methods, key=NAMES.index)


def compare_configs(base: TrainConfig, methods: Sequence[str], densities: Sequence[float],
                    seeds: Sequence[int]) -> list[TrainConfig]:
    """The runs of a comparison: density-targeting methods × densities × seeds, the others × seeds.

    >>> cfgs = compare_configs(make_config("kit"), ["vi", "ssvi"], [0.1, 0.05],
    ...                        [0, 1])  # doctest: +SKIP
    >>> len(cfgs)   # vi: 2 seeds; ssvi: 2 densities × 2 seeds   # doctest: +SKIP
    6
    """
    if not densities:
        raise ValueError("give at least one density (active fraction in (0, 1])")
    if not seeds:
        raise ValueError("give at least one seed")
    configs: list[TrainConfig] = []
    for method in check_methods(methods):
        axes: dict[str, Any] = {"method": [method], "seed": list(seeds)}
        if REGISTRY[method].density == "target":
            axes["density"] = list(densities)
        configs += expand_grid(base, **axes)
    return configs


def run_compare(base: TrainConfig, methods: Sequence[str], densities: Sequence[float],
                seeds: Sequence[int], out_dir: str | Path, *, workers: int | None = None,
                devices: Sequence[str] | None = None, timeout_s: float | None = None,
                cluster: str | Cluster = "local", figures: bool = True) -> pd.DataFrame:
    """Run (or resume) the comparison; returns the tidy table and writes results.csv + figures."""
    table = run_sweep(compare_configs(base, methods, densities, seeds), out_dir, workers=workers,
                      devices=devices, timeout_s=timeout_s, cluster=cluster)
    done = table[table["status"] == "ok"]
    if figures and len(done):
        for path in make_figures(done, out_dir):
            print(f"figure: {path}")
    return table


def make_figures(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Accuracy, NLL, ECE vs density and accuracy vs training FLOPs (ssvi_lite.plots), as PNGs."""
    from .plots import close_figure, plot_metric_vs_density, plot_metric_vs_flops, save_figure

    paths = []
    for metric, axis in FIGURES:
        if axis == "density":
            ax = plot_metric_vs_density(df, metric, hue="method")
        else:
            ax = plot_metric_vs_flops(df, metric, hue="method")
        paths.append(save_figure(ax, Path(out_dir) / f"{metric}_vs_{axis}.png"))
        close_figure(ax)
    return paths


# ----------------------------------------------------------------------------- command line
COMPARE_AXES = ("method", "density", "seed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m ssvi_lite compare``: every method, one table, four figures. The config flags
    are generated from TrainConfig, as for ``train`` and ``sweep``."""
    add_config_flags(parser, axes=COMPARE_AXES, skip=("device", "progress"))
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help=f"folder of the table and figures (default {DEFAULT_OUT}; "
                             "--out results/compare refreshes the committed table)")
    parser.add_argument("--no-figures", action="store_true")
    add_job_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run (or resume) the comparison: by default every method, densities 0.5 0.2 0.1 0.05 for
    the methods that target one, seeds 0 1 2."""
    try:
        table = run_compare(base_config(args, COMPARE_AXES), args.method or list(NAMES),
                            args.density or list(DEFAULT_DENSITIES), args.seed or [0, 1, 2],
                            args.out, workers=args.workers, devices=args.devices,
                            timeout_s=args.timeout, cluster=cluster_from_args(args),
                            figures=not args.no_figures)
    except KeyboardInterrupt:
        return 130
    done = table[table["status"] == "ok"]
    if len(done):
        print(paper_table(done).to_string(index=False))
    print(f"results: {Path(args.out) / 'results.csv'}")
    return 0 if len(done) == len(table) else 1
