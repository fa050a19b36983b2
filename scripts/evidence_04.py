"""Evidence for notebook 04_gradient_addition: SSVI with gradient vs random addition, several seeds.

    OMP_NUM_THREADS=1 python scripts/evidence_04.py            # ≈ 12 min of one core
    OMP_NUM_THREADS=1 python scripts/evidence_04.py --seeds 10 11 12   # more seeds, same file

One process, one thread. Writes ``results/evidence/04_addition.csv``, one row per run (config +
metrics + seed), rewritten atomically after every run; runs already in the file are skipped, so
an interrupted call resumes where it stopped.

Each run: the ``kit`` preset (MLP 784-100-100-10, plain ELBO κ = 1, 60 epochs), SSVI at density
0.1, removal ``snr_abs``, addition ``grad`` (RigL's rule) or ``random`` (the ablation). The two
runs of a seed share the data split, the initial mask and the initial (μ, ρ), so the notebook can
compare them seed by seed (paired differences). Besides the test metrics and the training FLOPs
(``train_flops``, ``train_flops_ratio`` = / dense VI, docs/method.md §8), every row records what
the updates did: the number of updates, whether every update swapped exactly ⌊ζ(t)·n_active⌋
weights per layer, the fraction of weights ever active, and the first-layer weights grown on
pixels that are 0 in every training image.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import evidence_table  # noqa: E402  (scripts/evidence_table.py)

import ssvi_lite as sl  # noqa: E402
from ssvi_lite.convergence import assess  # noqa: E402
from ssvi_lite.costs import dense_vi_training_flops  # noqa: E402

OUT = ROOT / "results" / "evidence" / "04_addition.csv"
PRESET, DENSITY = "kit", 0.1
ADDITIONS = ("grad", "random")


def one_run(addition: str, seed: int) -> dict:
    cfg = sl.make_config(PRESET, method="ssvi", density=DENSITY, addition=addition, seed=seed,
                         progress=False)
    gen = sl.seed_everything(cfg.seed)
    data = sl.load_dataset(cfg.dataset, seed=cfg.seed)
    model = sl.prepare_model(cfg, data, gen)
    layers = dict(sl.mean_field_layers(model))
    first = next(iter(layers))
    never_lit = data.x_train.reshape(len(data.x_train), -1).amax(0) == 0  # (784,)
    ever = {name: layer.mask.clone() for name, layer in layers.items()}
    log = {"n_updates": 0, "exact": True, "grown_never_lit": 0, "churn": []}
    steps_per_epoch = math.ceil(data.n_train / cfg.batch_size)
    schedule = sl.SwapSchedule(cfg.epochs * steps_per_epoch, cfg.update_interval, cfg.alpha,
                               cfg.t_end_fraction)

    def on_update(step: int, swaps: list) -> None:
        log["n_updates"] += 1
        for swap in swaps:
            layer = layers[swap.name]
            ever[swap.name] |= layer.mask
            log["exact"] &= swap.n_swap == math.floor(schedule.zeta(step) * layer.n_active)
            log["churn"].append(swap.n_grown / layer.n_active)
            if swap.name == first:
                log["grown_never_lit"] += int((swap.added & ~swap.removed)[:, never_lit].sum())

    start = time.perf_counter()
    history = sl.fit(model, data, cfg, on_update=on_update)
    result = sl.evaluate(model, data.x_test, data.y_test, cfg.n_eval_samples, seed=cfg.seed)
    verdict = assess(history)
    dense_vi = dense_vi_training_flops(sl.layer_costs(model, data.input_shape),
                                       cfg.epochs * data.n_train)
    last = history.iloc[-1]
    n_weights = sum(m.numel() for m in ever.values())
    return {"preset": PRESET, "method": cfg.method, "target_density": cfg.density,
            "removal": cfg.removal, "addition": addition, "epochs": cfg.epochs,
            "hidden": "-".join(map(str, cfg.hidden)), "kl_scale": cfg.kl_scale,
            "prior_sigma": cfg.prior_sigma, "update_interval": cfg.update_interval,
            "alpha": cfg.alpha, "n_eval_samples": cfg.n_eval_samples, "seed": seed,
            "accuracy": result["accuracy"], "nll": result["nll"], "ece": result["ece"],
            "mean_net_accuracy": result["mean_net_accuracy"],
            "val_acc": float(last["val_acc"]), "val_nll": float(last["val_nll"]),
            "converged": verdict.converged, "density": float(last["density"]),
            "train_flops": float(last["train_flops"]),
            "train_flops_ratio": float(last["train_flops"]) / dense_vi,
            "n_updates": log["n_updates"], "expected_updates": len(schedule.update_steps()),
            "swaps_exact": bool(log["exact"]),
            "ever_active_fraction": sum(int(m.sum()) for m in ever.values()) / n_weights,
            "mean_churn": sum(log["churn"]) / max(len(log["churn"]), 1),
            "grown_on_never_lit_pixels": log["grown_never_lit"],
            "n_never_lit_pixels": int(never_lit.sum()),
            "wall_time_s": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    return evidence_table.main(__doc__, OUT, "addition", ADDITIONS, one_run,
                               lambda row: f"{row['addition']:6s} acc {row['accuracy']:.3f} "
                                           f"flops ratio {row['train_flops_ratio']:.4f} "
                                           f"converged {row['converged']}",
                               seeds=range(10), argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
