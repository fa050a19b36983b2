"""ssvi_lite — a study kit for sparse Bayesian neural networks.

Sparse Subspace Variational Inference (SSVI; Li, Miao, Qiu, Zhang, ICLR 2024) trains a mean-field
Gaussian BNN that stays sparse from the first step to the last, alternating between optimising
(μ, σ) on a sparse support and swapping that support (remove by a score of each weight's
distribution, add where the data gradient is largest).

    import ssvi_lite as sl
    sl.seed_everything(0)
    cfg = sl.make_config("kit", method="ssvi", density=0.1)
    data = sl.load_dataset("mnist5k")
    model = sl.prepare_model(cfg, data)
    history = sl.fit(model, data, cfg)
"""
from __future__ import annotations

from . import criteria, exercise, metrics
from .config import PRESETS, TrainConfig, make_config, seed_everything
from .costs import layer_costs, model_size_bytes, training_flops_ratio
from .data import DataSplits, load_dataset
from .experiment import RunResult, evaluate_model, prepare_model, run
from .layers import MeanFieldConv2d, MeanFieldLinear, bayesianize, forward_mode, mean_field_layers
from .methods import REGISTRY, Method, get_method
from .models import build_model
from .predict import evaluate, predict_proba
from .subspace import SwapSchedule, init_masks, model_density, update_subspace
from .train import fit

__version__ = "0.1.0"
__all__ = [
    "DataSplits", "MeanFieldConv2d", "MeanFieldLinear", "Method", "PRESETS", "REGISTRY",
    "RunResult", "SwapSchedule", "TrainConfig", "bayesianize", "build_model", "criteria",
    "evaluate", "evaluate_model", "exercise", "fit", "forward_mode", "get_method", "init_masks",
    "layer_costs", "load_dataset", "make_config", "mean_field_layers", "metrics", "model_density",
    "model_size_bytes", "predict_proba", "prepare_model", "run", "seed_everything",
    "training_flops_ratio", "update_subspace",
]
