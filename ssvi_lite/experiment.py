"""One run, end to end: data → model → fit → evaluate → one results row (the CLI's ``--json``).

Every method goes through the same four verbs, in this order, so that one table holds them all:
``build(cfg, data, generator) -> model``, ``fit(model, data, cfg) -> history``,
``predict_proba(model, x, n_samples) -> (K, N, C)``, ``report(model) -> dict`` (its own measures).
The core methods (map, vi, ssvi, static) use models/subspace/train; the seed papers' baselines live
in ``ssvi_lite.methods.<name>`` and expose the same verbs (notebook 06_sparse_bnn_zoo).
"""
from __future__ import annotations

import importlib
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pandas as pd
import torch
from torch import nn

from . import metrics, train
from .config import BASELINE_METHODS, CORE_METHODS, TrainConfig, seed_everything
from .costs import forward_flops, inference_flops, layer_costs, model_size_bytes
from .data import DataSplits, load_dataset, ood_sets
from .models import build_model
from .subspace import init_masks, model_density, rescale_to_active_fan_in


def load_data(cfg: TrainConfig) -> DataSplits:
    """The dataset named by ``cfg`` with its fixed, seeded split."""
    return load_dataset(cfg.dataset, root=cfg.data_root, seed=cfg.seed,
                        val_fraction=cfg.val_fraction, n_train=cfg.n_train)


def prepare_model(cfg: TrainConfig, data: DataSplits,
                  generator: torch.Generator | None = None) -> nn.Module:
    """The model of `cfg` for `data`, masks drawn for ssvi/static (notebook 01_dense_vi)."""
    model = build_model(cfg, data.input_shape, data.n_classes, generator)
    if cfg.method in ("ssvi", "static"):
        init_masks(model, cfg.density, cfg.mask_init, cfg.first_layer_dense, generator)
        if cfg.mu_init == "kaiming":
            rescale_to_active_fan_in(model)
        if cfg.method == "static":
            for layer in (m for m in model.modules() if hasattr(m, "sparse")):
                layer.sparse = False  # the static baseline never swaps
    return model


def _report_core(model: nn.Module) -> dict[str, Any]:
    return {}


CORE = SimpleNamespace(build=prepare_model, fit=train.fit, report=_report_core,
                       predict_proba=lambda model, x, n_samples: train.predict_proba(model, x,
                                                                                     n_samples))


def method_module(name: str) -> Any:
    """The object offering build/fit/predict_proba/report for method ``name``."""
    if name in CORE_METHODS:
        return CORE
    if name in BASELINE_METHODS:
        return importlib.import_module(f"ssvi_lite.methods.{name}")
    raise ValueError(f"method={name!r} is not known; choose one of "
                     f"{', '.join(CORE_METHODS + BASELINE_METHODS)}")


def evaluate_model(model: nn.Module, data: DataSplits, predict: Any, n_samples: int,
                   with_ood: bool = True, seed: int = 0) -> dict[str, float]:
    """Test-set metrics of method.md §9, OOD AUROC/AUPR per offline OOD set included."""
    torch.manual_seed(seed)
    probs = predict(model, data.x_test, n_samples)  # (K, N, C)
    result = metrics.summarize(probs, data.y_test.cpu())
    if train.is_bayesian(model) and predict is CORE.predict_proba:
        mean_probs = train.predict_proba(model, data.x_test, 1, "mean")[0]
        result["mean_net_accuracy"] = metrics.accuracy(mean_probs, data.y_test.cpu())
    if with_ood:
        for name, x_out in ood_sets(data, seed=seed).items():
            out = predict(model, x_out, n_samples)
            scores = metrics.ood_auroc(probs.mean(0), out.mean(0), score="entropy")
            result[f"ood_auroc_{name}"] = scores["auroc"]
            result[f"ood_aupr_{name}"] = scores["aupr"]
    return result


@dataclass
class RunResult:
    """What :func:`run` produced: the results row, the trained model and its history."""

    row: dict[str, Any]
    model: nn.Module
    history: pd.DataFrame


def run(cfg: TrainConfig, *, data: DataSplits | None = None, checkpoint: str | Path | None = None,
        resume: bool = False, with_ood: bool = True) -> RunResult:
    """Train and evaluate one configuration (the results row's keys: see architecture.md)."""
    generator = seed_everything(cfg.seed)
    data = data if data is not None else load_data(cfg)
    verbs = method_module(cfg.method)
    model = verbs.build(cfg, data, generator)
    start = time.perf_counter()
    if verbs is CORE:
        history = verbs.fit(model, data, cfg, checkpoint=checkpoint, resume=resume)
    else:
        history = verbs.fit(model, data, cfg)
    wall = float(history["wall_time_s"].iloc[-1]) if "wall_time_s" in history else (
        time.perf_counter() - start)
    result = evaluate_model(model, data, verbs.predict_proba, cfg.n_eval_samples, with_ood,
                            cfg.seed)
    costs = layer_costs(model, data.input_shape)
    dense_vi_flops = 3 * cfg.epochs * data.n_train * forward_flops(costs, 1, dense=True)
    train_flops = (float(history["train_flops"].iloc[-1]) if "train_flops" in history
                   else float("nan"))
    row = {
        "method": cfg.method, "dataset": cfg.dataset, "model": cfg.model,
        "density": model_density(model), "target_density": cfg.density,
        "removal": cfg.removal, "addition": cfg.addition,
        **{k: result[k] for k in ("accuracy", "nll", "ece", "brier")},
        "n_samples": int(result.get("n_samples", cfg.n_eval_samples)),
        "epochs": cfg.epochs, "train_flops": train_flops,
        "train_flops_ratio": train_flops / dense_vi_flops,
        "inference_flops_per_example": inference_flops(costs, cfg.n_eval_samples),
        "model_size_bytes": model_size_bytes(model)["total"],
        "wall_time_s": wall, "seed": cfg.seed, "n_train": data.n_train,
        **{k: v for k, v in result.items() if k not in ("accuracy", "nll", "ece", "brier",
                                                        "n_samples")},
        **verbs.report(model),
    }
    return RunResult(row, model, history)
