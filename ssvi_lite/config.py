"""Run configuration: one dataclass, two named presets, and the seeding helper.

Every knob of a run lives in :class:`TrainConfig`; ``make_config("kit", density=0.1)`` starts from a
preset and overrides fields. Validation happens here, at the boundary, so that a bad value fails
with a message naming it instead of deep inside torch (notebook 01 introduces the presets).

Presets (method.md §3):
- ``paper``: the reference ResNet-18/CIFAR recipe — SGD momentum 0.9, lr 0.01 for μ/BN/biases with
  weight decay 5e-4, ρ lr 0.01 without decay, cosine LR, batch 128, 200 epochs, μ ~ N(0, 0.01²),
  σ ~ |N(6e-4, (5e-4)²)|, prior σ 0.005, κ = 0.01 with warm-up β(e) = min(2e/E, 1), ΔT = 100,
  first layer dense.
- ``kit``: small CPU runs of an MLP/LeNet without BatchNorm — Adam lr 1e-3, Kaiming-normal μ
  (scaled to the active fan-in in sparse layers: subspace.rescale_to_active_fan_in), σ init 1e-3,
  prior σ 0.1, κ = 1 (plain ELBO), no warm-up, ΔT = 20, every layer sparse, 30 epochs.
  Measured with it (MLP 784-400-400-10, embedded MNIST, seed 0; see README): SSVI at density 0.1
  stays within 3 points of dense VI and above the static mask.
"""
from __future__ import annotations

import dataclasses
import math
import os
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

CORE_METHODS = ("map", "vi", "ssvi", "static")
BASELINE_METHODS = ("em_mcmc", "weight_sharing", "turbo_vbi", "posthoc", "svd")
METHODS = CORE_METHODS + BASELINE_METHODS
MODELS = ("mlp", "lenet", "resnet18")
FORWARD_MODES = ("lrt", "sample", "mean")
MASK_INITS = ("uniform", "erk")
OPTIMIZERS = ("adam", "sgd")
MU_INITS = ("kaiming", "normal")


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (CPU and CUDA) and return a torch Generator seeded the same.

    Every notebook calls this once; library code that needs its own randomness takes a Generator.
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))
    return torch.Generator().manual_seed(seed)


@dataclass
class TrainConfig:
    """All settings of one training run. Field names follow method.md's symbols."""

    # what to train
    method: str = "ssvi"
    model: str = "mlp"
    hidden: tuple[int, ...] = (400, 400)
    dataset: str = "mnist5k"
    data_root: str | None = None
    n_train: int | None = None  # cap on training examples (None: all)
    # the sparse subspace (density = active fraction = 1 - sparsity)
    density: float = 0.1
    mask_init: str = "uniform"
    first_layer_dense: bool = False
    removal: str = "snr_abs"
    addition: str = "grad"
    update_interval: int = 20  # ΔT, optimiser steps between subspace updates
    alpha: float = 0.3  # initial swap fraction ζ(0)
    t_end_fraction: float = 0.75  # updates stop at T_end = t_end_fraction · T_total
    # the variational family and prior
    prior_sigma: float = 0.1
    kl_scale: float = 1.0  # κ
    kl_warmup: bool = False  # β(e) = min(2e/E, 1)
    sigma_init: float = 1e-3
    sigma_init_std: float = 0.0  # σ_init = |N(sigma_init, sigma_init_std²)|
    mu_init: str = "kaiming"
    mu_init_std: float = 0.01  # for mu_init="normal"
    # optimisation
    epochs: int = 30
    batch_size: int = 128
    optimizer: str = "adam"
    lr: float = 1e-3
    rho_lr: float | None = None  # None: same as lr
    momentum: float = 0.9
    weight_decay: float = 0.0  # on μ, BN and biases; never on ρ
    cosine_lr: bool = False
    # evaluation
    n_eval_samples: int = 10  # K posterior samples
    val_fraction: float = 0.1
    # bookkeeping
    seed: int = 0
    device: str = "auto"
    amp: bool = False  # bfloat16 autocast of the forward pass (GPU runs)
    channels_last: bool = False  # NHWC memory layout for conv nets (GPU runs)
    progress: bool = True
    method_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.hidden = tuple(int(h) for h in self.hidden)
        validate(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not known; choose one of {', '.join(allowed)}")


def _positive(name: str, value: Any, *, integer: bool = False, zero_ok: bool = False) -> None:
    kind = int if integer else (int, float)
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value >= 0 if zero_ok else value > 0)
    if not ok:
        what = "a non-negative" if zero_ok else "a positive"
        raise ValueError(f"{name} must be {what} {'integer' if integer else 'number'}, "
                         f"got {value!r}")


def validate_density(density: Any) -> float:
    """Return ``density`` as a float if it lies in (0, 1]; raise ValueError naming it otherwise."""
    ok = isinstance(density, (int, float)) and not isinstance(density, bool)
    if not ok or not math.isfinite(density) or not 0.0 < density <= 1.0:
        raise ValueError(
            f"density={density!r} is not allowed: density is the active fraction of weights, "
            "a number in (0, 1] (1 = dense)"
        )
    return float(density)


def validate(cfg: TrainConfig) -> None:
    """Check every field of ``cfg``; raise ValueError naming the first bad one."""
    from .criteria import check_addition_key, check_removal_key  # criteria imports nothing heavy

    _choice("method", cfg.method, METHODS)
    _choice("model", cfg.model, MODELS)
    _choice("mask_init", cfg.mask_init, MASK_INITS)
    _choice("optimizer", cfg.optimizer, OPTIMIZERS)
    _choice("mu_init", cfg.mu_init, MU_INITS)
    validate_density(cfg.density)
    check_removal_key(cfg.removal)
    check_addition_key(cfg.addition)
    for name in ("update_interval", "epochs", "batch_size", "n_eval_samples"):
        _positive(name, getattr(cfg, name), integer=True)
    for name in ("prior_sigma", "sigma_init", "lr"):
        _positive(name, getattr(cfg, name))
    for name in ("kl_scale", "alpha", "weight_decay", "sigma_init_std", "mu_init_std", "momentum"):
        _positive(name, getattr(cfg, name), zero_ok=True)
    if cfg.rho_lr is not None:
        _positive("rho_lr", cfg.rho_lr)
    if cfg.n_train is not None:
        _positive("n_train", cfg.n_train, integer=True)
    if not 0.0 < cfg.t_end_fraction <= 1.0:
        raise ValueError(f"t_end_fraction={cfg.t_end_fraction!r} must lie in (0, 1]")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise ValueError(f"alpha={cfg.alpha!r} (initial swap fraction) must lie in [0, 1]")
    if not 0.0 <= cfg.val_fraction < 0.5:
        raise ValueError(f"val_fraction={cfg.val_fraction!r} must lie in [0, 0.5)")
    if cfg.method == "vi" and cfg.density != 1.0:
        raise ValueError(f"method='vi' is dense VI and needs density=1, "
                         f"got density={cfg.density!r}")
    if cfg.device not in ("auto", "cpu") and not str(cfg.device).startswith("cuda"):
        raise ValueError(f"device={cfg.device!r} is not known; choose auto, cpu, cuda or cuda:N")
    if not all(h > 0 for h in cfg.hidden):
        raise ValueError(f"hidden={cfg.hidden!r}: every hidden width must be a positive integer")


PRESETS: dict[str, dict[str, Any]] = {
    "kit": dict(
        model="mlp", hidden=(400, 400), optimizer="adam", lr=1e-3, prior_sigma=0.1, kl_scale=1.0,
        kl_warmup=False, sigma_init=1e-3, sigma_init_std=0.0, mu_init="kaiming", batch_size=128,
        epochs=30, update_interval=20, first_layer_dense=False, cosine_lr=False, weight_decay=0.0,
        n_eval_samples=10,
    ),
    "paper": dict(
        model="resnet18", dataset="cifar10", optimizer="sgd", lr=0.01, rho_lr=0.01, momentum=0.9,
        weight_decay=5e-4, cosine_lr=True, prior_sigma=0.005, kl_scale=0.01, kl_warmup=True,
        sigma_init=6e-4, sigma_init_std=5e-4, mu_init="normal", mu_init_std=0.01, batch_size=128,
        epochs=200, update_interval=100, alpha=0.3, t_end_fraction=0.75, first_layer_dense=True,
        removal="snr_abs", addition="grad", n_eval_samples=30,
    ),
}


def make_config(preset: str = "kit", **overrides: Any) -> TrainConfig:
    """Build a :class:`TrainConfig` from a named preset plus field overrides.

    >>> make_config("kit", method="vi", density=1.0).optimizer
    'adam'
    """
    _choice("preset", preset, tuple(PRESETS))
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise ValueError(f"unknown config field(s) {sorted(unknown)}; see TrainConfig for the list")
    return TrainConfig(**{**PRESETS[preset], **overrides})
