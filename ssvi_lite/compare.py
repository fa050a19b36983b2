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

An equal tuning budget (``--tune``). Without it every method runs at the preset plus its registry
defaults — settings some methods had tuned for them and others did not. With it every method gets
the same number of trials: the settings of :data:`TUNING` (four per method, over its one or two
most sensitive knobs), each trained on the tuning seeds (:data:`TUNE_SEEDS`, their own data
splits, never reported) for every density it targets. Per method and density the setting with the
lowest mean **validation** NLL wins (the test split is never read; a setting with a failed trial
cannot win; ties go to the earlier setting, the preset's or the registry's default), and only the
winner runs on the reported seeds. The trials are a sweep of their own in OUT/tuning/ (resumable;
``report OUT`` leaves them out), the selection is OUT/tuning.csv (one line per trial, its setting,
validation numbers and whether it was selected), and OUT/results.csv gives each final run the
``setting`` that won and the validation numbers it won on (``tuning_val_nll``,
``tuning_val_accuracy``, ``tuning_trials``).
"""
from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from .config import FIELDS, TrainConfig, run_id
from .fileio import atomic_path
from .flags import add_config_flags
from .guards import non_negative_int
from .methods import NAMES, REGISTRY, Setting
from .report import TUNING_DIR, paper_table
from .sweep import (
    DENSITY_FREE,
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


# ----------------------------------------------------------------------------- the tuning budget
# Each method's four settings live in its registry record (``Method.tuning``, with the reason for
# its knobs). Knobs that set how far a method prunes (EM-MCMC's quantiles, Turbo-VBI's Gamma rates,
# sparse VD's threshold, 2DGBNN's G) stay at their defaults: chosen by validation NLL they would
# simply buy accuracy with density.
TUNING: dict[str, tuple[Setting, ...]] = {name: m.tuning for name, m in REGISTRY.items()}
TUNE_SEEDS = (100,)  # their own data splits; never among the reported seeds


def setting_text(setting: Setting) -> str:
    """``kl_scale=0.1, prior_sigma=0.5`` (options as ``option.key=value``)."""
    parts = [f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}"
             for k, v in setting.items() if k != "method_options"]
    parts += [f"option.{k}={v}" for k, v in setting.get("method_options", {}).items()]
    return ", ".join(parts) or "(defaults)"


def apply_setting(cfg: TrainConfig, setting: Setting) -> TrainConfig:
    """``cfg`` with the fields of ``setting`` (its ``method_options`` merged into cfg's)."""
    unknown = sorted(set(setting) - set(FIELDS))
    if unknown or "method" in setting or "seed" in setting:
        raise ValueError(f"a tuning setting may not set {unknown or ['method/seed']}; give "
                         "config fields (and method_options)")
    changes = {k: v for k, v in setting.items() if k != "method_options"}
    if "method_options" in setting:
        changes["method_options"] = {**cfg.method_options, **setting["method_options"]}
    return cfg.replace(**changes)


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


def tuning_trials(base: TrainConfig, methods: Sequence[str], densities: Sequence[float],
                  tune_seeds: Sequence[int], grid: Mapping[str, Sequence[Setting]] | None = None
                  ) -> list[tuple[TrainConfig, int]]:
    """The trials of an equal tuning budget: (config, index of its setting in ``grid[method]``)
    for every method, density it targets, setting and tuning seed."""
    grid = TUNING if grid is None else grid
    missing = [m for m in check_methods(methods) if not grid.get(m)]
    if missing:
        raise ValueError(f"no tuning settings for method(s) {', '.join(missing)}")
    return [(apply_setting(cfg, setting), i) for cfg in compare_configs(base, methods, densities,
                                                                          tune_seeds)
            for i, setting in enumerate(grid[cfg.method])]


def select_settings(trials: pd.DataFrame) -> pd.DataFrame:
    """Mark the winner of each (method, target_density): the setting with the lowest mean
    ``val_nll`` over its trials (its tuning seeds). A setting with a trial that did not finish, or
    without a finite validation NLL, cannot win; ties go to the lower ``setting_index``. Only
    validation columns are read. Returns ``trials`` with ``setting_val_nll`` (the mean) and
    ``selected`` (True on every trial of the winning setting) columns."""
    trials = trials.copy()
    ok = (trials["status"] == "ok") & trials["val_nll"].apply(
        lambda v: isinstance(v, (int, float)) and math.isfinite(v))
    keys = ["method", "target_density", "setting_index"]
    mean = trials.groupby(keys)["val_nll"].transform("mean")
    eligible = ok.groupby([trials[k] for k in keys]).transform("all")
    trials["setting_val_nll"] = mean.where(eligible)
    trials["selected"] = False
    for _, cell in trials.groupby(["method", "target_density"], sort=False):
        scores = cell.groupby("setting_index")["setting_val_nll"].first().dropna()
        if len(scores):
            best = scores.index[scores.to_numpy().argmin()]  # first of equal minima
            trials.loc[cell.index[cell["setting_index"] == best], "selected"] = True
    return trials


def tune(base: TrainConfig, methods: Sequence[str], densities: Sequence[float],
         tune_seeds: Sequence[int], out_dir: str | Path,
         grid: Mapping[str, Sequence[Setting]] | None = None, **jobs: Any) -> pd.DataFrame:
    """Run (or resume) the trials in OUT/tuning/, select, write OUT/tuning.csv; returns it."""
    grid = TUNING if grid is None else grid
    trials = tuning_trials(base, methods, densities, tune_seeds, grid)
    table = run_sweep([cfg for cfg, _ in trials], Path(out_dir) / TUNING_DIR, **jobs)
    rows = table.set_index("run_id")
    records = []
    for cfg, index in trials:
        row = rows.loc[run_id(cfg)]
        records.append({
            "method": cfg.method, "target_density": cfg.density, "seed": cfg.seed,
            "setting_index": index, "setting": setting_text(grid[cfg.method][index]),
            "setting_json": json.dumps(grid[cfg.method][index], sort_keys=True),
            "status": row["status"], **{k: row.get(k, float("nan")) for k in (
                "val_nll", "val_accuracy", "val_ece", "density", "converged")},
            "run_id": run_id(cfg)})
    selection = select_settings(pd.DataFrame(records))
    with atomic_path(Path(out_dir) / "tuning.csv") as tmp:
        selection.to_csv(tmp, index=False)
    return selection


def run_compare(base: TrainConfig, methods: Sequence[str], densities: Sequence[float],
                seeds: Sequence[int], out_dir: str | Path, *, workers: int | None = None,
                devices: Sequence[str] | None = None, timeout_s: float | None = None,
                cluster: str | Cluster = "local", figures: bool = True,
                tune_seeds: Sequence[int] | None = None,
                grid: Mapping[str, Sequence[Setting]] | None = None) -> pd.DataFrame:
    """Run (or resume) the comparison; returns the tidy table and writes results.csv + figures.

    With ``tune_seeds`` every method first gets the equal tuning budget (:func:`tune`, settings
    from ``grid``, default :data:`TUNING`) and the reported seeds run only the winning setting of
    each method and density; a method and density whose trials all failed is left out (its line
    is missing from the table: the returned table's ``attrs["untuned"]`` lists them)."""
    jobs = dict(workers=workers, devices=devices, timeout_s=timeout_s, cluster=cluster)
    configs = compare_configs(base, methods, densities, seeds)
    won: dict[str, dict[str, Any]] = {}
    untuned: list[tuple[str, float]] = []
    if tune_seeds is not None:
        if not tune_seeds or set(tune_seeds) & set(seeds):
            raise ValueError(f"tuning seeds {list(tune_seeds)} must be given and differ from the "
                             f"reported seeds {list(seeds)}: a run reported on the seed it was "
                             "selected on carries the selection's luck")
        selection = tune(base, methods, densities, tune_seeds, out_dir, grid, **jobs)
        configs, untuned = _winners(configs, selection, won)
    table = run_sweep(configs, out_dir, **jobs)
    if won:
        table = _record_selection(table, won, Path(out_dir))
    table.attrs["untuned"] = untuned
    done = table[table["status"] == "ok"]
    if figures and len(done):
        for path in make_figures(done, out_dir):
            print(f"figure: {path}")
    return table


def _winners(configs: list[TrainConfig], selection: pd.DataFrame, won: dict[str, dict[str, Any]]
             ) -> tuple[list[TrainConfig], list[tuple[str, float]]]:
    """The final configurations: each with its cell's winning setting (recorded in ``won`` by run
    id); the cells without a winner."""
    finals, untuned = [], []
    chosen = selection[selection["selected"]].groupby(["method", "target_density"]).agg(
        setting=("setting", "first"), setting_json=("setting_json", "first"),
        tuning_val_nll=("val_nll", "mean"), tuning_val_accuracy=("val_accuracy", "mean"),
        tuning_seeds=("seed", lambda s: " ".join(map(str, sorted(s)))))
    trials = selection.groupby(["method", "target_density"])["setting_index"].nunique()
    for cfg in configs:
        cell = (cfg.method, cfg.density)
        if cell not in chosen.index:
            untuned.append(cell)
            continue
        pick = chosen.loc[cell]
        final = apply_setting(cfg, json.loads(pick["setting_json"]))
        finals.append(final)
        won[run_id(final)] = {"setting": pick["setting"], "tuning_val_nll": pick["tuning_val_nll"],
                              "tuning_val_accuracy": pick["tuning_val_accuracy"],
                              "tuning_seeds": pick["tuning_seeds"],
                              "tuning_trials": int(trials.loc[cell])}
    if not finals:
        raise RuntimeError("every tuning trial failed: nothing to compare (see the logs in "
                           "OUT/tuning/runs)")
    return finals, sorted(set(untuned))


def _record_selection(table: pd.DataFrame, won: dict[str, dict[str, Any]], out_dir: Path
                      ) -> pd.DataFrame:
    """Add the winning setting and its validation numbers to the final runs' lines, in the
    returned table and in OUT/results.csv (other lines untouched)."""
    def annotate(df: pd.DataFrame) -> pd.DataFrame:
        df = df.copy()
        for key in next(iter(won.values())):
            df[key] = [won.get(rid, {}).get(key, prev) for rid, prev in
                       zip(df["run_id"], df.get(key, pd.Series(None, index=df.index)))]
        return df

    csv = pd.read_csv(out_dir / "results.csv")
    with atomic_path(out_dir / "results.csv") as tmp:
        annotate(csv).to_csv(tmp, index=False)
    return annotate(table)


def at_mean_density(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with the ``density`` of each method that reaches its own (em_mcmc, turbo_vbi, svd,
    weight_sharing) replaced by its mean over the seeds of its configuration (for plots)."""
    df = df.copy()
    own = df["method"].isin(DENSITY_FREE)
    if own.any():
        keys = [k for k in ("method", "target_density", "config_id") if k in df.columns]
        df.loc[own, "density"] = df[own].groupby(keys)["density"].transform("mean")
    return df


def make_figures(df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Accuracy, NLL, ECE vs density and accuracy vs training FLOPs (ssvi_lite.plots), as PNGs.

    A method that reaches a density of its own is drawn at its mean density over seeds, so that
    its seeds make one point with an error bar."""
    from .plots import close_figure, plot_metric_vs_density, plot_metric_vs_flops, save_figure

    df = at_mean_density(df)
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
    parser.add_argument("--tune", action="store_true",
                        help="equal tuning budget: each method tries its settings of "
                             "compare.TUNING on the tuning seeds, the lowest validation NLL wins "
                             "and only the winner runs on --seeds (trials in OUT/tuning/)")
    parser.add_argument("--tune-seeds", nargs="+", type=non_negative_int,
                        help=f"tuning seeds (default {' '.join(map(str, TUNE_SEEDS))}; they "
                             "must differ from --seeds)")
    add_job_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run (or resume) the comparison: by default every method, densities 0.5 0.2 0.1 0.05 for
    the methods that target one, seeds 0 1 2."""
    if args.tune_seeds and not args.tune:
        raise ValueError("--tune-seeds needs --tune")
    tune_seeds = (args.tune_seeds or list(TUNE_SEEDS)) if args.tune else None
    try:
        table = run_compare(base_config(args, COMPARE_AXES), args.method or list(NAMES),
                            args.density or list(DEFAULT_DENSITIES), args.seed or [0, 1, 2],
                            args.out, workers=args.workers, devices=args.devices,
                            timeout_s=args.timeout, cluster=cluster_from_args(args),
                            figures=not args.no_figures, tune_seeds=tune_seeds)
    except KeyboardInterrupt:
        return 130
    done = table[table["status"] == "ok"]
    if tune_seeds is not None:
        print(selection_summary(pd.read_csv(Path(args.out) / "tuning.csv")).to_string(index=False))
    if len(done):
        print(paper_table(done).to_string(index=False))
    for method, density in table.attrs.get("untuned", []):
        print(f"{method} at density {density:g}: every tuning trial failed, no final runs "
              f"(logs in {Path(args.out) / TUNING_DIR / 'runs'})")
    print(f"results: {Path(args.out) / 'results.csv'}")
    return 0 if len(done) == len(table) and not table.attrs.get("untuned") else 1


def selection_summary(selection: pd.DataFrame) -> pd.DataFrame:
    """One line per method and target density: each setting tried with its mean validation NLL
    (failed: "failed"), the winner marked with *."""
    lines = []
    for (method, density), cell in selection.groupby(["method", "target_density"], sort=False):
        tried = []
        for _, trial in cell.groupby("setting_index").first().iterrows():
            nll = trial["setting_val_nll"]
            text = "failed" if pd.isna(nll) else f"{nll:.4f}"
            tried.append(f"{'*' if trial['selected'] else ''}{trial['setting']}: {text}")
        lines.append({"method": method, "target density": f"{density:g}",
                      "settings tried (mean validation NLL; * = selected)": " | ".join(tried)})
    return pd.DataFrame(lines)
