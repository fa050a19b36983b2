"""``python -m ssvi_lite demo``: MAP, dense VI, SSVI and the static mask on the embedded MNIST
subset, plus dense VI under the tempered preset, over several seeds, in one table of mean ±
standard error and three pictures.

Each (method, preset, seed) run of :data:`METHODS` goes through ``experiment.run`` (each seed draws
its own data split, initial weights, masks and batch order); the runs are spread over ``workers``
processes with a fair share of the CPU threads each. The table gives, per method and preset (κ
stated), the test accuracy, NLL, ECE (15 bins) and Brier score as mean ± standard error over the
seeds, the density, training FLOPs relative to dense VI, how many runs converged
(``ssvi_lite.convergence``) and the σ spread (q90/q10 of the first layer). The pictures:
reliability diagrams of the first seed (with the number of examples per bin) and the convergence
of its two dense-VI runs (the objective's terms and σ per layer), one per preset.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .config import TrainConfig, make_config

# (method, preset, fields): the kit preset (plain ELBO) for all four methods, and dense VI under
# the tempered preset, whose first layer learns per-weight σ (the plain ELBO's keeps ~95 % at the
# prior: docs/method.md §3)
METHODS = (("map", "kit", {}), ("vi", "kit", {}),
           ("ssvi", "kit", {"density": 0.1, "removal": "snr_abs", "addition": "grad"}),
           ("static", "kit", {"density": 0.1}), ("vi", "kit_tempered", {}))
FIGURES = {"kit": "convergence.png", "kit_tempered": "convergence_tempered.png"}  # dense VI's
SUMMARY_METRICS = ("accuracy", "nll", "ece", "brier")


def demo_configs(seeds: Sequence[int] = (0, 1, 2), epochs: int | None = None,
                 n_train: int | None = None) -> list[TrainConfig]:
    """The demo's runs: each entry of :data:`METHODS` for each seed (entry-major order)."""
    common = {**({"epochs": epochs} if epochs else {}), **({"n_train": n_train} if n_train else {})}
    return [make_config(preset, method=m, seed=s, progress=False, **fields, **common)
            for m, preset, fields in METHODS for s in seeds]


def _one_run(cfg: TrainConfig, threads: int) -> tuple[dict[str, Any], Any, pd.DataFrame]:
    """One run (in a worker process): its results row, its test predictive (N, C) and history."""
    from .experiment import load_data, run
    from .predict import predict_proba

    torch.set_num_threads(threads)
    data = load_data(cfg)
    result = run(cfg, data=data)
    probs = predict_proba(result.model, data.x_test, cfg.n_eval_samples).mean(0)  # (N, C)
    return result.row, probs, result.history


def run_all(configs: Sequence[TrainConfig], workers: int = 1, say: Any = print) -> list[tuple]:
    """Run every config, ``workers`` at a time (1: in this process); results in config order."""
    threads = max(1, (os.cpu_count() or 1) // workers)
    start, out = time.perf_counter(), [None] * len(configs)
    if workers == 1:
        futures = None
        results = (_one_run(cfg, threads) for cfg in configs)
    else:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        futures = [pool.submit(_one_run, cfg, threads) for cfg in configs]
        results = (f.result() for f in futures)
    try:
        for i, (cfg, result) in enumerate(zip(configs, results)):
            out[i] = result
            say(f"  [{i + 1}/{len(configs)}] {cfg.method:>6} {cfg.preset:<12} seed {cfg.seed}: "
                f"accuracy {result[0]['accuracy']:.4f} ({time.perf_counter() - start:.0f} s so "
                "far)", flush=True)
    finally:
        if futures is not None:
            pool.shutdown(cancel_futures=True)
    return out


def summary_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One line per (method, preset): metrics as mean ± standard error over seeds, density, FLOPs
    ratio, converged runs, σ spread of the first layer, wall time."""
    df = pd.DataFrame(rows)
    lines = []
    for (method, preset, kappa), part in df.groupby(["method", "preset", "kl_scale"], sort=False):
        line = {"method": method, "preset": f"{preset} (κ={kappa:g})", "seeds": len(part),
                "density": part["density"].mean()}
        for metric in SUMMARY_METRICS:
            line[metric] = f"{part[metric].mean():.4f} ± {part[metric].sem(ddof=1):.4f}"
        converged = part["converged"].dropna() if "converged" in part else pd.Series([])
        line["converged"] = f"{int(converged.sum())}/{len(converged)}" if len(converged) else "—"
        spread = part.get("sigma_q90_q10_first_layer")
        line["σ q90/q10 (layer 1)"] = (f"{spread.mean():.2f}" if spread is not None
                                       and spread.notna().any() else "—")
        line["train FLOPs / dense VI"] = part["train_flops_ratio"].mean()
        line["wall time (s)"] = part["wall_time_s"].mean()
        lines.append(line)
    return pd.DataFrame(lines)


def figures(results: Sequence[tuple], labels: Any, out: Path) -> list[Path]:
    """Reliability diagrams of the first seed's runs and the convergence of its dense-VI runs."""
    from .plots import close_figure, plot_convergence, reliability_panels, save_figure

    first = [r for r in results if r[0]["seed"] == results[0][0]["seed"]]
    fig = reliability_panels([(f"{row['method']} (d={row['density']:.2f}, κ={row['kl_scale']:g})",
                               probs) for row, probs, _ in first], labels)
    paths = [save_figure(fig, out / "reliability.png")]
    close_figure(fig)
    for row, _, history in first:
        if row["method"] == "vi":
            fig = plot_convergence(history)
            fig.suptitle(f"dense VI, {row['preset']} (κ = {row['kl_scale']:g}), seed {row['seed']}:"
                         " is it converged?")
            fig.tight_layout()
            paths.append(save_figure(fig, out / FIGURES[row["preset"]]))
            close_figure(fig)
    return paths
