"""``python -m ssvi_lite demo``: MAP, dense VI, SSVI and the static mask on the embedded MNIST
subset, over several seeds, in one table of mean ± standard error and two pictures.

Each (method, seed) run is the ``kit`` preset through ``experiment.run`` (each seed draws its own
data split, initial weights, masks and batch order); the runs are spread over ``workers``
processes with a fair share of the CPU threads each. The table gives, per method, the test
accuracy, NLL, ECE (15 bins) and Brier score as mean ± standard error over the seeds, the density,
training FLOPs relative to dense VI, how many runs converged (``ssvi_lite.convergence``) and the
σ spread (q90/q10 of the first layer). The pictures: reliability diagrams of the first seed (with
the number of examples per bin) and the convergence of its dense-VI run (the objective's terms and
σ per layer).
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

METHODS = (("map", {}), ("vi", {}),
           ("ssvi", {"density": 0.1, "removal": "snr_abs", "addition": "grad"}),
           ("static", {"density": 0.1}))
SUMMARY_METRICS = ("accuracy", "nll", "ece", "brier")


def demo_configs(seeds: Sequence[int] = (0, 1, 2), epochs: int | None = None,
                 n_train: int | None = None, preset: str = "kit") -> list[TrainConfig]:
    """The demo's runs: each method of :data:`METHODS` for each seed (method-major order)."""
    common = {**({"epochs": epochs} if epochs else {}), **({"n_train": n_train} if n_train else {})}
    return [make_config(preset, method=m, seed=s, progress=False, **fields, **common)
            for m, fields in METHODS for s in seeds]


def _one_run(cfg: TrainConfig, threads: int) -> tuple[dict[str, Any], Any, pd.DataFrame]:
    """One run (in a worker process): its results row, its test predictive (N, C) and history."""
    from .experiment import load_data, run
    from .predict import predict_proba

    torch.set_num_threads(threads)
    result = run(cfg)
    data = load_data(cfg)
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
            say(f"  [{i + 1}/{len(configs)}] {cfg.method:>6} seed {cfg.seed}: accuracy "
                f"{result[0]['accuracy']:.4f} ({time.perf_counter() - start:.0f} s so far)",
                flush=True)
    finally:
        if futures is not None:
            pool.shutdown(cancel_futures=True)
    return out


def summary_table(rows: Sequence[dict[str, Any]]) -> pd.DataFrame:
    """One line per method: metrics as mean ± standard error over seeds, density, FLOPs ratio,
    converged runs, σ spread of the first layer, wall time."""
    df = pd.DataFrame(rows)
    lines = []
    for method, part in df.groupby("method", sort=False):
        line = {"method": method, "seeds": len(part), "density": part["density"].mean()}
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
    """Reliability diagrams of the first seed's runs and the convergence of its dense-VI run."""
    import matplotlib.pyplot as plt

    from .plots import plot_convergence, reliability_diagram, save_figure

    first = [r for r in results if r[0]["seed"] == results[0][0]["seed"]]
    fig, axes = plt.subplots(1, len(first), figsize=(3.4 * len(first), 3.6), sharey=True)
    for ax, (row, probs, _) in zip(axes, first):
        reliability_diagram(probs, labels, n_bins=15, ax=ax,
                            label=f"{row['method']} (d={row['density']:.2f})")
    fig.tight_layout()
    paths = [save_figure(fig, out / "reliability.png")]
    plt.close(fig)
    vi = next(h for row, _, h in first if row["method"] == "vi")
    fig = plot_convergence(vi)
    fig.suptitle(f"dense VI, seed {first[0][0]['seed']}: is it converged?")
    fig.tight_layout()
    paths.append(save_figure(fig, out / "convergence.png"))
    plt.close(fig)
    return paths
