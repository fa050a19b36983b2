"""One run, end to end: data → model → fit → evaluate → one results row (the CLI's ``--json``).

Every method goes through the verbs of its registry record (``ssvi_lite.methods``), in order:
``build`` → ``fit`` (the one epoch loop over the method's stages) → ``predict_proba`` →
``report``, so one table holds them all (notebook 06_sparse_bnn_zoo).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from . import metrics
from .config import NOT_IN_RUN_ID, TrainConfig, config_id, run_id, seed_everything
from .convergence import assess
from .costs import dense_vi_training_flops, inference_flops, layer_costs, model_size_bytes
from .data import DataSplits, load_dataset, ood_sets
from .methods import get_method
from .predict import is_bayesian, predict_proba
from .subspace import model_density
from .train import cpu_threads, fit


def load_data(cfg: TrainConfig) -> DataSplits:
    """The dataset named by ``cfg`` with its fixed, seeded split."""
    return load_dataset(cfg.dataset, root=cfg.data_root, seed=cfg.seed,
                        val_fraction=cfg.val_fraction, n_train=cfg.n_train)


def prepare_model(cfg: TrainConfig, data: DataSplits,
                  generator: torch.Generator | None = None) -> nn.Module:
    """The untrained model of ``cfg.method`` for ``data`` (its registry record's ``build``; for
    ssvi/static the masks are drawn). Notebook 01_dense_vi."""
    return get_method(cfg.method).build(cfg, data, generator)


def evaluate_model(model: nn.Module, data: DataSplits, predict: Any, n_samples: int,
                   with_ood: bool = True, seed: int = 0) -> dict[str, float]:
    """Test-set metrics of docs/method.md §9 (the mean network's accuracy too, for mean-field
    models), OOD AUROC/AUPR per offline OOD set included."""
    torch.manual_seed(seed)
    probs = predict(model, data.x_test, n_samples)  # (K, N, C)
    result = metrics.summarize(probs, data.y_test.cpu())
    if is_bayesian(model):
        mean_probs = predict_proba(model, data.x_test, 1, "mean")[0]
        result["mean_net_accuracy"] = metrics.accuracy(mean_probs, data.y_test.cpu())
    if with_ood:
        for name, x_out in ood_sets(data, seed=seed).items():
            result.update(_ood_scores(name, probs, predict(model, x_out, n_samples)))
    return result


def validation_metrics(model: nn.Module, data: DataSplits, predict: Any, n_samples: int,
                       seed: int = 0) -> dict[str, float]:
    """Accuracy, NLL and ECE on the validation split of the model a run returns, with the same
    predictive as its test metrics: the numbers a selection may look at (``compare --tune``)."""
    torch.manual_seed(seed)
    val = metrics.summarize(predict(model, data.x_val, n_samples), data.y_val.cpu())
    return {"val_accuracy": val["accuracy"], "val_nll": val["nll"], "val_ece": val["ece"]}


def _ood_scores(name: str, probs_in: Any, probs_out: Any) -> dict[str, float]:
    """AUROC/AUPR of telling the test set from OOD set ``name`` by predictive entropy and, with
    K > 1 posterior samples, by mutual information (epistemic uncertainty), plus the mean MI on
    the OOD inputs."""
    by_entropy = metrics.ood_auroc(probs_in.mean(0), probs_out.mean(0), score="entropy")
    out = {f"ood_auroc_{name}": by_entropy["auroc"], f"ood_aupr_{name}": by_entropy["aupr"]}
    if probs_in.shape[0] > 1 and probs_out.shape[0] > 1:
        out[f"ood_auroc_mi_{name}"] = metrics.ood_auroc(probs_in, probs_out,
                                                        "mutual_information")["auroc"]
        out[f"mean_mutual_information_{name}"] = float(
            metrics.mutual_information(probs_out).mean())
    return out


@dataclass
class RunResult:
    """What :func:`run` produced: the results row, the trained model and its history."""

    row: dict[str, Any]
    model: nn.Module
    history: pd.DataFrame


def run(cfg: TrainConfig, *, data: DataSplits | None = None, checkpoint: str | Path | None = None,
        resume: bool = False, with_ood: bool = True) -> RunResult:
    """Train and evaluate one configuration; the row's keys are listed in the README. The row
    knows what it is: ``run_id``, ``config_id`` (the seed left out: what ``report`` groups by)
    and the full ``config``."""
    generator = seed_everything(cfg.seed)
    data = data if data is not None else load_data(cfg)
    method = get_method(cfg.method)
    model = method.build(cfg, data, generator)
    start = time.perf_counter()
    history = fit(model, data, cfg, checkpoint=checkpoint, resume=resume)
    wall = float(history["wall_time_s"].iloc[-1]) if len(history) else time.perf_counter() - start
    with cpu_threads(cfg, model):
        result = evaluate_model(model, data, method.predict_proba, cfg.n_eval_samples, with_ood,
                                cfg.seed)
        val = validation_metrics(model, data, method.predict_proba, cfg.n_eval_samples, cfg.seed)
    costs = layer_costs(model, data.input_shape)
    train_flops = float(history["train_flops"].iloc[-1])
    dense_vi = dense_vi_training_flops(costs, cfg.epochs * data.n_train)
    row = {
        "run_id": run_id(cfg), "config_id": config_id(cfg),
        "method": cfg.method, "preset": cfg.preset, "kl_scale": cfg.kl_scale,
        "dataset": cfg.dataset, "model": cfg.model,
        "density": model_density(model), "target_density": cfg.density,
        "removal": cfg.removal, "addition": cfg.addition,
        **{k: result[k] for k in ("accuracy", "nll", "ece", "brier")}, **val,
        "n_samples": int(result.get("n_samples", cfg.n_eval_samples)),
        "epochs": cfg.epochs, "train_flops": train_flops,
        "train_flops_ratio": train_flops / dense_vi,
        "inference_flops_per_example": inference_flops(costs, cfg.n_eval_samples),
        "model_size_bytes": model_size_bytes(model)["total"],
        "wall_time_s": wall, "kernels": cfg.kernels, "seed": cfg.seed, "n_train": data.n_train,
        **{k: v for k, v in result.items() if k not in ("accuracy", "nll", "ece", "brier",
                                                        "n_samples")},
        **_convergence_columns(history, cfg),
        **method.report(model, history.attrs.get("notes", {})),
        "config": {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_RUN_ID},
    }
    return RunResult(row, model, history)


def _convergence_columns(history: pd.DataFrame, cfg: TrainConfig) -> dict[str, Any]:
    """Whether the run's variational objective converged and its last epoch's σ spread (q90/q10
    of the first mean-field layer), so a table can label unconverged results."""
    last = history[history["stage"] == history["stage"].iloc[-1]]
    if cfg.method in ("map", "em_mcmc") or last["kl"].eq(0).all():
        return {"converged": None}
    verdict = assess(last)
    spread = next(iter(verdict.sigma_spread.values()), float("nan"))
    return {"converged": verdict.converged, "objective_change_per_epoch": verdict.relative_slope,
            "sigma_q90_q10_first_layer": spread, "kl_per_example": float(last["kl_per_example"]
                                                                         .iloc[-1])}
