"""Evidence for notebook 05_calibration: every comparison the lesson makes, on 3 seeds.

    OMP_NUM_THREADS=1 python scripts/evidence_05.py            # seeds 0 1 2; resumes
    OMP_NUM_THREADS=1 python scripts/evidence_05.py --seeds 0 1 2 3 --out FILE.csv

Writes ``results/evidence/05_calibration.csv``: one row per evaluated model (its configuration,
seed and metrics). Runs are the presets' full runs (60 epochs, the last epoch kept) on
``mnist5k`` (3,500 / 500 / 1,000, each seed its own split), one process, one thread:

- ``task=main``: MAP, dense VI and SSVI at densities 0.5, 0.1, 0.05 and 0.03 with
  ``kit_tempered`` (κ = 0.03, σ_p = 1, μ lr 1e-2); MAP, dense VI and SSVI at 0.1 with ``kit``
  (the plain ELBO, κ = 1, σ_p = 0.5, μ lr 3e-2). Each dense VI posterior is also pruned one-shot
  (no retraining) by ``snr_abs`` to each density of ``PRUNE_DENSITIES`` (method ``vi_pruned``), as
  the notebook's widget does.
- ``task=prior_swap``: dense VI with κ and σ_p crossed the other way (κ = 1 with the tempered
  preset's σ_p, the tempered κ with the kit's σ_p) — the control that tells whether calibration
  follows κ or σ_p; ``task=lr_swap``: the kit (κ = 1) at the tempered preset's μ lr — the same for
  the learning rate, the presets' third difference.
- ``task=heldout_8_9``: MAP, dense VI and SSVI at 0.1 (``kit_tempered``) trained without digits
  8 and 9; AUROC of telling the test digits 0–7 from the unseen 8s and 9s by predictive entropy
  and by mutual information.

Metrics per row: test accuracy, NLL, ECE (15 bins), Brier, mean top-label confidence (and
confidence − accuracy), mean entropy and mutual information (K = 10 posterior samples), OOD AUROC
by entropy and by MI with the mean MI per OOD set, misclassification AUROC, the mean network's
accuracy, confidence and ECE; the same three on the validation split (``val_*``); convergence
(``converged``, objective change per epoch, KL/N, σ q90/q10 and the fraction of first-layer
weights at the prior, σ > 0.9 σ_p). The CSV is rewritten atomically after each run (a dense VI
run together with its pruned copies), and a rerun skips the rows already there. About 20 minutes
for three seeds on a shared 2-core machine (the notebook prints the summed training time).
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import pandas as pd
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ssvi_lite as sl  # noqa: E402
from ssvi_lite import metrics  # noqa: E402
from ssvi_lite.data import heldout_class_split  # noqa: E402
from ssvi_lite.experiment import evaluate_model  # noqa: E402
from ssvi_lite.fileio import atomic_path  # noqa: E402
from ssvi_lite.methods.posthoc import prune_to_density  # noqa: E402
from ssvi_lite.predict import is_bayesian  # noqa: E402

OUT = ROOT / "results" / "evidence" / "05_calibration.csv"
K, N_BINS, REMOVAL = 10, 15, "snr_abs"
SSVI_DENSITIES = (0.5, 0.1, 0.05, 0.03)
PRUNE_DENSITIES = (0.5, 0.2, 0.1, 0.07, 0.05, 0.03)
# (task, preset, method, density, overrides)
JOBS = [
    ("main", "kit_tempered", "map", 1.0, {}),
    ("main", "kit_tempered", "vi", 1.0, {}),
    *[("main", "kit_tempered", "ssvi", d, {}) for d in SSVI_DENSITIES],
    ("main", "kit", "map", 1.0, {}),
    ("main", "kit", "vi", 1.0, {}),
    ("main", "kit", "ssvi", 0.1, {}),
    ("prior_swap", "kit", "vi", 1.0, {"prior_sigma": sl.PRESETS["kit_tempered"]["prior_sigma"]}),
    ("prior_swap", "kit_tempered", "vi", 1.0, {"prior_sigma": sl.PRESETS["kit"]["prior_sigma"]}),
    ("lr_swap", "kit", "vi", 1.0, {"lr": sl.PRESETS["kit_tempered"]["lr"]}),
    ("heldout_8_9", "kit_tempered", "map", 1.0, {}),
    ("heldout_8_9", "kit_tempered", "vi", 1.0, {}),
    ("heldout_8_9", "kit_tempered", "ssvi", 0.1, {}),
]
KEY = ["task", "preset", "kappa", "prior_sigma", "method", "target_density", "seed", "epochs"]


def confidence_columns(probs: torch.Tensor, labels: torch.Tensor, prefix: str = "") -> dict:
    """Mean top-label confidence of the predictive (K, N, C) and its gap to the accuracy."""
    mean = probs.mean(0)
    conf, acc = float(mean.max(-1).values.mean()), metrics.accuracy(mean, labels)
    return {f"{prefix}mean_confidence": conf, f"{prefix}confidence_minus_accuracy": conf - acc}


def model_columns(model, data, cfg) -> dict:
    """Test metrics with OOD sets, validation metrics, the mean network and the first layer's
    fraction of weights at the prior, for a trained (or pruned) model."""
    predict = sl.get_method("vi" if is_bayesian(model) else "map").predict_proba
    row = evaluate_model(model, data, predict, K, with_ood=True, seed=cfg.seed)
    probs = sl.predict_proba(model, data.x_test, K)  # (K, N, C), the draws evaluate_model used
    row.update(confidence_columns(probs, data.y_test))
    val = sl.evaluate(model, data.x_val, data.y_val, K)
    row.update(val_accuracy=val["accuracy"], val_nll=val["nll"], val_ece=val["ece"])
    if is_bayesian(model):
        mean_net = sl.predict_proba(model, data.x_test, 1, "mean")
        row.update(mean_net_ece=metrics.ece(mean_net[0], data.y_test, N_BINS),
                   **confidence_columns(mean_net, data.y_test, "mean_net_"))
        _, first = sl.mean_field_layers(model)[0]
        sigma = first.sigma.detach()[first.mask]
        row["first_layer_frac_at_prior"] = float((sigma > 0.9 * cfg.prior_sigma).float().mean())
    row["density"] = sl.model_density(model)
    return row


def describe(task: str, preset: str, cfg, seed: int) -> dict:
    return {"task": task, "preset": preset, "kappa": cfg.kl_scale, "prior_sigma": cfg.prior_sigma,
            "method": cfg.method, "target_density": cfg.density, "seed": seed,
            "epochs": cfg.epochs, "lr": cfg.lr}


def run_job(task: str, preset: str, method: str, density: float, overrides: dict,
            seed: int) -> list[dict]:
    """The rows of one job: the trained model, plus its pruned copies for a main dense VI."""
    cfg = sl.make_config(preset, method=method, density=density, seed=seed, progress=False,
                         n_eval_samples=K, **overrides)
    if task == "heldout_8_9":
        data, x_out = heldout_class_split("mnist5k", classes_out=(8, 9), seed=seed)
    else:
        data = sl.load_dataset("mnist5k", seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the convergence verdict is recorded in the row
        result = sl.run(cfg, data=data, with_ood=task != "heldout_8_9")
    keep = ("converged", "objective_change_per_epoch", "kl_per_example",
            "sigma_q90_q10_first_layer", "train_flops_ratio", "wall_time_s", "run_id")
    base = describe(task, preset, cfg, seed) | {k: result.row.get(k) for k in keep}
    if task == "heldout_8_9":
        p_in = sl.predict_proba(result.model, data.x_test, K)
        p_out = sl.predict_proba(result.model, x_out, K)
        row = base | {"density": sl.model_density(result.model),
                      "accuracy": result.row["accuracy"], "ece": result.row["ece"],
                      "heldout_auroc_entropy": metrics.ood_auroc(p_in, p_out, "entropy")["auroc"]}
        if p_in.shape[0] > 1:
            row.update(heldout_auroc_mi=metrics.ood_auroc(p_in, p_out,
                                                          "mutual_information")["auroc"],
                       mean_mutual_information=float(metrics.mutual_information(p_in).mean()),
                       mean_mutual_information_heldout=float(
                           metrics.mutual_information(p_out).mean()))
        return [row]
    rows = [base | model_columns(result.model, data, cfg)]
    if task == "main" and method == "vi":
        for d in PRUNE_DENSITIES:
            pruned = copy.deepcopy(result.model)
            prune_to_density(pruned, d, REMOVAL)
            rows.append(describe(task, preset, cfg, seed) | {
                "method": "vi_pruned", "target_density": d, "removal": REMOVAL,
                "train_flops_ratio": result.row["train_flops_ratio"]}
                | model_columns(pruned, data, cfg))
    return rows


def key_of(row: dict) -> tuple:
    return tuple(round(float(row[k]), 6) if k in ("kappa", "prior_sigma", "target_density")
                 else row[k] for k in KEY)


def write(rows: list[dict], out: Path) -> None:
    table = pd.DataFrame(rows)
    with atomic_path(out) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--epochs", type=int, default=None,
                        help="override the presets' 60 epochs (smoke tests only; keep the "
                        "committed CSV at the presets' value)")
    args = parser.parse_args(argv)
    if args.epochs is not None:
        overrides_all = {"epochs": args.epochs}
        global JOBS
        JOBS = [(t, p, m, d, {**o, **overrides_all}) for t, p, m, d, o in JOBS]
    torch.set_num_threads(1)
    rows = pd.read_csv(args.out).to_dict("records") if args.out.is_file() else []
    done = {key_of(r) for r in rows}
    start = time.perf_counter()
    for seed in args.seeds:
        for task, preset, method, density, overrides in JOBS:
            cfg = sl.make_config(preset, method=method, density=density, **overrides)
            probe = describe(task, preset, cfg, seed)
            if key_of(probe) in done:
                continue
            t0 = time.perf_counter()
            new = run_job(task, preset, method, density, overrides, seed)
            rows += new
            done |= {key_of(r) for r in new}
            write(rows, args.out)
            acc = new[0].get("accuracy")
            print(f"seed {seed} {task:12s} {preset:13s} {method:5s} D={density:<5g} "
                  f"acc {acc:.3f} ECE {new[0].get('ece', float('nan')):.3f} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    out = args.out.resolve()
    where = out.relative_to(ROOT) if out.is_relative_to(ROOT) else out
    print(f"{len(rows)} rows in {where}; this call took {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
