"""Regenerate the README's notebook pictures into docs/figures/ (``make figures``).

One small PNG per notebook, each written atomically by ``ssvi_lite.plots.save_figure``:

    01_entropy_map.png    two-moons predictive entropy, MAP vs dense VI   (01_dense_vi)
    02_masks.png          per-layer densities of three masks + masks      (02_mask_initialization)
    03_score_plane.png    removal scores magnitude and snr_abs on (μ, σ)   (03_snr_removal)
    04_swap_schedule.png  swap fraction ζ(t) and the churn of SSVI        (04_gradient_addition)
    05_reliability.png    reliability diagrams of MAP, VI, SSVI@0.1       (05_calibration)
    06_zoo.png            accuracy vs density and vs training FLOPs        (06_sparse_bnn_zoo)
                          from the committed results/compare/results.csv (no training)

Usage: ``python scripts/make_figures.py [--out DIR] [--fast] [--only 01 05]``. The full run trains
a few short models on the embedded MNIST subset (about a minute on two CPU cores); ``--fast``
trains tiny ones (seconds; what tests/test_figures.py uses). Every run is seeded.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # a script: never open a window
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

import ssvi_lite as sl  # noqa: E402
from ssvi_lite import criteria, plots  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "docs" / "figures"
COMPARE_TABLE = ROOT / "results" / "compare" / "results.csv"
N_BINS = 15


def short_run_config(fast: bool, **changes) -> sl.TrainConfig:
    """The lessons' setting: the ``kit`` preset as it is (MLP 100-100, the plain ELBO, 60 epochs,
    K = 10), or a tiny run for the tests."""
    size = dict(epochs=1, n_train=400, hidden=(32,), n_eval_samples=2) if fast else {}
    return sl.make_config("kit", progress=False, **{**size, **changes})


def _save(fig: plt.Figure, path: Path) -> Path:
    plots.save_figure(fig, path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- one per notebook
def fig_01_entropy_map(out: Path, fast: bool = False) -> Path:
    """Two-moons: predictive entropy of a MAP net and a dense VI net of the same size."""
    moons = sl.load_dataset("moons", seed=0)
    cfg = sl.make_config("kit", method="vi", dataset="moons", batch_size=512, progress=False,
                         **({"epochs": 2} if fast else {}))  # lesson 01's two-moons setting
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 3.4))
    for ax, method in zip(axes, ("map", "vi")):
        net = sl.run(cfg.replace(method=method), data=moons, with_ood=False).model
        k = 1 if method == "map" else 30
        plots.plot_entropy_map(lambda pts, net=net, k=k: sl.predict_proba(net, pts, k),
                               moons.x_test, moons.y_test, ax=ax, grid=40 if fast else 120)
        ax.set_title(f"{'MAP' if method == 'map' else 'dense VI'}: predictive entropy (K = {k})")
    fig.tight_layout()
    return _save(fig, out / "01_entropy_map.png")


def fig_02_masks(out: Path, fast: bool = False) -> Path:
    """Per-layer density of uniform / ERK / first-layer-dense masks at D = 0.1, and two masks."""
    small = {"hidden": (64, 64)} if fast else {}
    cfg = sl.make_config("kit", method="ssvi", density=0.1, **small)
    hidden = cfg.hidden
    gen = sl.seed_everything(0)
    inits = {"uniform": {}, "erk": {"method": "erk"},
             "first-layer-dense": {"first_layer_dense": True}}
    models = {name: sl.build_model(cfg, (1, 28, 28), 10, gen) for name in inits}
    table = {name: sl.init_masks(m, 0.1, generator=gen, **inits[name])
             for name, m in models.items()}
    names = [name for name, _ in sl.mean_field_layers(models["uniform"])]
    fig, axes = plt.subplots(1, 3, figsize=(11.0, 3.2), gridspec_kw={"width_ratios": [1.3, 1, 1]})
    pd.DataFrame(table, index=names).plot.bar(ax=axes[0], rot=0, edgecolor="black")
    axes[0].set(xlabel="layer", ylabel=plots.DENSITY_LABEL, ylim=(0, 1.05),
                title="per-layer density of the initial mask")
    axes[0].legend(title="mask init", fontsize="small")
    plots.plot_masks(models["uniform"], max_layers=2, ax=axes[1:])
    widths = "-".join(str(w) for w in (784, *hidden, 10))
    fig.suptitle(f"initial masks at density 0.1 (MLP {widths}; black = active weight)",
                 fontsize="medium")
    fig.tight_layout()
    return _save(fig, out / "02_masks.png")


def fig_03_score_plane(out: Path, fast: bool = False) -> Path:
    """magnitude |μ| (ignores σ) next to snr_abs, the SNR of |θ| (paper default), which stays
    ≥ √(2/(π−2)) ≈ 1.32 at μ = 0."""
    grid = 40 if fast else 121
    floor = math.sqrt(2 / (math.pi - 2))
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.6))
    for ax, key, threshold in zip(axes, ("magnitude", "snr_abs"), (0.01, 2.0)):
        plots.plot_score_plane(criteria.REMOVAL_SCORES[key], (-0.05, 0.05), (1e-3, 0.05), ax=ax,
                               threshold=threshold, grid=grid)
        note = f" (≥ {floor:.2f} at μ = 0)" if key == "snr_abs" else " (σ is ignored)"
        ax.set_title(f"removal score {key}{note}")
    fig.tight_layout()
    return _save(fig, out / "03_score_plane.png")


def fig_04_swap_schedule(out: Path, fast: bool = False) -> Path:
    """ζ(t) of the schedule against what one SSVI run swapped, and how much of it was re-grown."""
    cfg = short_run_config(fast, method="ssvi", density=0.1, epochs=2 if fast else 20,
                           **({"update_interval": 2} if fast else {}))
    data = sl.load_dataset("mnist5k", seed=0, n_train=cfg.n_train)
    log: list[dict] = []

    def record(step: int, swaps: list) -> None:
        n_swap = sum(s.n_swap for s in swaps)
        active = sum(int(s.removed.numel()) for s in swaps) * cfg.density
        log.append({"step": step, "swapped": n_swap / active,
                    "regrown": sum(s.n_regrown for s in swaps) / max(n_swap, 1)})

    model = sl.prepare_model(cfg, data, sl.seed_everything(cfg.seed))
    history = sl.fit(model, data, cfg, on_update=record)
    total = int(history["step"].iloc[-1])
    schedule = sl.SwapSchedule(total, cfg.update_interval, cfg.alpha, cfg.t_end_fraction)
    steps = torch.arange(total + 1)
    fig, axes = plt.subplots(1, 2, figsize=(9.5, 3.2))
    axes[0].plot(steps, [schedule.zeta(int(t)) for t in steps],
                 label="ζ(t) = (α/2)(1 + cos πt/T_end)")
    axes[0].plot([r["step"] for r in log], [r["swapped"] for r in log], "o", markersize=3,
                 label="swapped / active, measured")
    axes[0].set(xlabel="optimiser step t", ylabel="fraction of active weights swapped",
                title=f"swap schedule (α = {cfg.alpha}, ΔT = {cfg.update_interval})")
    axes[0].legend(fontsize="small")
    axes[1].bar([r["step"] for r in log], [r["regrown"] for r in log],
                width=0.8 * cfg.update_interval, color="C2")
    axes[1].set(xlabel="optimiser step t", ylabel="re-added / swapped",
                title="churn: removed weights the gradient re-adds at once", ylim=(0, 1))
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save(fig, out / "04_swap_schedule.png")


def fig_05_reliability(out: Path, fast: bool = False) -> Path:
    """Reliability diagrams (15 bins) of MAP, dense VI and SSVI at density 0.1 on the test split."""
    base = short_run_config(fast)
    data = sl.load_dataset("mnist5k", seed=0, n_train=base.n_train)
    runs = {"MAP": dict(method="map", density=1.0), "dense VI": dict(method="vi", density=1.0),
            "SSVI, density 0.1": dict(method="ssvi", density=0.1)}
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.6))
    for ax, (name, kw) in zip(axes, runs.items()):
        model = sl.run(base.replace(**kw), data=data, with_ood=False).model
        probs = sl.predict_proba(model, data.x_test, base.n_eval_samples)  # (K, N, C)
        plots.reliability_diagram(probs, data.y_test, n_bins=N_BINS, ax=ax, label=name)
    fig.tight_layout()
    return _save(fig, out / "05_reliability.png")


def fig_06_zoo(out: Path, fast: bool = False) -> Path:
    """Every method's test accuracy against density and training FLOPs, from the committed table."""
    table = pd.read_csv(COMPARE_TABLE)  # written by `python -m ssvi_lite compare` (see the README)
    table = table[table["status"] == "ok"] if "status" in table.columns else table
    fig, axes = plt.subplots(1, 2, figsize=(10.5, 3.6))
    plots.plot_metric_vs_density(table, "accuracy", hue="method", ax=axes[0])
    plots.plot_metric_vs_flops(table, "accuracy", hue="method", ax=axes[1])
    axes[0].legend(fontsize="x-small", ncol=2)
    axes[1].get_legend().remove()
    fig.tight_layout()
    return _save(fig, out / "06_zoo.png")


FIGURES: dict[str, Callable[[Path, bool], Path]] = {
    "01": fig_01_entropy_map, "02": fig_02_masks, "03": fig_03_score_plane,
    "04": fig_04_swap_schedule, "05": fig_05_reliability, "06": fig_06_zoo,
}


def make_figures(out: str | Path = DEFAULT_OUT, fast: bool = False,
                 only: list[str] | None = None) -> list[Path]:
    """Draw the chosen figures (all by default) into ``out``; return the paths written."""
    keys = list(FIGURES) if not only else only
    unknown = [k for k in keys if k not in FIGURES]
    if unknown:
        raise ValueError(f"unknown figure(s) {unknown}; choose from {', '.join(FIGURES)}")
    out = Path(out)
    written = []
    for key in keys:
        start = time.perf_counter()
        written.append(FIGURES[key](out, fast))
        print(f"{written[-1]}  ({time.perf_counter() - start:.1f} s)", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(DEFAULT_OUT), help="folder for the PNGs")
    parser.add_argument("--fast", action="store_true", help="tiny training runs (for tests)")
    parser.add_argument("--only", nargs="+", metavar="NN", help=f"a subset of {list(FIGURES)}")
    args = parser.parse_args(argv)
    try:
        make_figures(args.out, args.fast, args.only)
    except ValueError as err:
        parser.error(str(err))
    return 0


if __name__ == "__main__":
    sys.exit(main())
