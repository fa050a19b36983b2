"""Run configuration: one dataclass, the named presets and the seeding helper (notebook 01_dense_vi
introduces the presets; ``ssvi_lite.flags`` makes the command-line flags from the dataclass).

Every knob of a run lives in :class:`TrainConfig`; ``make_config("kit", density=0.1)`` starts from a
preset, applies the method's own defaults (``ssvi_lite.methods``, e.g. dense VI trains at density
1) wherever the caller did not set the field, and validates everything at the boundary, so that a
bad value fails with a message naming it instead of deep inside torch. ``cfg.replace(method=...)``
applies the new method's defaults likewise.

Presets (docs/method.md §3; chosen by measurement, ``scripts/preset_search.py`` and its output
``results/preset_search/summary.txt``):
- ``kit``: small CPU runs without BatchNorm, the plain ELBO (κ = 1) — MLP 784-100-100-10, Adam
  with lr 3e-2 for μ and ρ and a cosine decay over 60 epochs, Kaiming-normal μ (scaled to the
  active fan-in in sparse layers: subspace.rescale_to_active_fan_in), σ init 1e-2, prior σ 0.5
  (chosen on the validation split), ΔT = 20, every layer sparse, the last epoch kept. Dense VI
  converges (objective moving < 1 %/epoch over the last 15 epochs) but underfits MAP: the plain
  ELBO on 3,500 images keeps most first-layer weights at the prior (μ ≈ 0, σ ≈ prior σ).
- ``kit_tempered``: a tempered posterior, named as such — the same with κ = 0.03, prior σ 1.0 and
  μ lr 1e-2 (ρ keeps 3e-2): the setting with the lowest validation NLL among those whose dense VI
  converges and whose first layer learns per-weight σ (σ q90/q10 ≥ 3 on every seed; the plain
  ELBO's is ≈ 1.02), the search's stage ``spread``.
- ``paper``: the reference ResNet-18/CIFAR recipe — SGD momentum 0.9, lr 0.01 for μ/BN/biases with
  weight decay 5e-4, ρ lr 0.01 without decay, cosine LR, batch 128, 200 epochs, μ ~ N(0, 0.01²),
  σ ~ |N(6e-4, (5e-4)²)|, prior σ 0.005, κ = 0.01 with warm-up β(e) = min(2e/E, 1), ΔT = 100,
  first layer dense, random crops and flips.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import random
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import numpy as np
import torch

MODELS = ("mlp", "lenet", "resnet18")
FORWARD_MODES = ("lrt", "sample", "mean")
MASK_INITS = ("uniform", "erk")
OPTIMIZERS = ("adam", "sgd")
MU_INITS = ("kaiming", "normal")
AUGMENTATIONS = ("none", "crop_flip")
SELECTIONS = ("last", "best_val_nll", "best_val_acc")  # which epoch a run keeps
KERNELS = ("masked", "sparse", "auto")  # how sparse mean-field layers compute (ssvi_lite.kernels)
DATASETS = ("mnist5k", "digits", "moons", "mnist", "fashion_mnist", "cifar10", "cifar100",
            "svhn")  # ssvi_lite.data reads them
# Fields that do not change what a run computes: left out of its run id (and config id).
# (kernels: the same numbers up to float rounding, tests/test_kernels.py.)
NOT_IN_RUN_ID = ("device", "progress", "data_root", "kernels")


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


def knob(default: Any, help: str, **meta: Any) -> Any:
    """A config field with the help text (and optional ``choices``) of its command-line flag."""
    return field(default=default, metadata={"help": help, **meta})


@dataclass
class TrainConfig:
    """All settings of one training run. Field names follow docs/notation.md; a field's default is
    the ``kit`` preset's value (``TrainConfig() == make_config("kit")``, a test holds this)."""

    # what to train
    method: str = knob("ssvi", "training method (ssvi_lite.methods.REGISTRY)")
    model: str = knob("mlp", "network", choices=MODELS)
    hidden: tuple[int, ...] = knob((100, 100), "MLP hidden widths")
    dataset: str = knob("mnist5k", "dataset name (ssvi_lite.data)", choices=DATASETS)
    data_root: str | None = knob(None, "folder with real dataset files (see data/README.md)")
    n_train: int | None = knob(None, "use only this many training examples (default: all)")
    augment: str = knob("none", "batch augmentation", choices=AUGMENTATIONS)
    # the sparse subspace (density = active fraction = 1 - sparsity)
    density: float = knob(0.1, "active fraction of weights, in (0, 1]")
    mask_init: str = knob("uniform", "initial per-layer densities", choices=MASK_INITS)
    first_layer_dense: bool = knob(False, "keep the first layer dense")
    removal: str = knob("snr_abs", "removal score key (ssvi_lite.criteria.REMOVAL_SCORES)")
    addition: str = knob("grad", "addition score key (ssvi_lite.criteria.ADDITION_SCORES)")
    update_interval: int = knob(20, "ΔT, optimiser steps between subspace updates")
    alpha: float = knob(0.3, "ζ(0), the initial swap fraction")
    t_end_fraction: float = knob(0.75, "updates stop at T_end = this × all steps")
    # the variational family and prior
    prior_sigma: float = knob(0.5, "s, the prior's standard deviation")
    kl_scale: float = knob(1.0, "κ, the KL weight (1 = plain ELBO)")
    kl_warmup: bool = knob(False, "warm-up β(e) = min(2e/E, 1) of the KL weight")
    sigma_init: float = knob(1e-2, "σ₀, initial posterior standard deviation")
    sigma_init_std: float = knob(0.0, "σ₀ is drawn as |N(sigma_init, sigma_init_std²)|")
    mu_init: str = knob("kaiming", "initial μ", choices=MU_INITS)
    mu_init_std: float = knob(0.01, "std of μ for mu_init=normal")
    # optimisation
    epochs: int = knob(60, "training epochs")
    batch_size: int = knob(128, "minibatch size")
    optimizer: str = knob("adam", "optimiser", choices=OPTIMIZERS)
    lr: float = knob(3e-2, "learning rate (μ, biases, BN; and ρ unless rho_lr is set)")
    rho_lr: float | None = knob(3e-2, "learning rate of ρ (None: lr)")
    momentum: float = knob(0.9, "SGD momentum")
    weight_decay: float = knob(0.0, "weight decay of μ, biases and BN (never ρ)")
    cosine_lr: bool = knob(True, "cosine learning-rate schedule over the epochs")
    # evaluation and model selection (on the validation split, never the test set)
    n_eval_samples: int = knob(10, "K, posterior samples of the predictive")
    select: str = knob("last", "the epoch a run keeps: the last one, or the best by validation "
                       "NLL or accuracy", choices=SELECTIONS)
    val_fraction: float = knob(0.1, "fraction of the data held out for validation")
    # bookkeeping
    seed: int = knob(0, "random seed (data split, init, batches, noise)")
    device: str = knob("auto", "auto, cpu, cuda or cuda:N")
    threads: int | None = knob(None, "torch CPU threads while training and evaluating (default: "
                               "1 for a model under a million weights, else torch's own)")
    amp: bool = knob(False, "bfloat16 autocast of the forward pass (GPU runs)")
    kernels: str = knob("masked", "products of the sparse mean-field Linear layers of ssvi/static: "
                        "masked dense ones, sparse kernels on the stored active weights (CPU), or "
                        "auto (sparse where measured to win; docs/method.md §8)", choices=KERNELS)
    channels_last: bool = knob(False, "NHWC memory layout for conv nets (GPU runs)")
    progress: bool = knob(True, "show progress bars")
    preset: str = knob("kit", "the preset this config started from")
    method_options: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "a method's own options (repeat --option KEY=VALUE)"})

    def __post_init__(self) -> None:
        self.hidden = _int_tuple("hidden", self.hidden)
        validate(self)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated again).

        Switching the method applies the new method's defaults (and puts back the preset's value
        of fields only the old method set) unless this call gives those fields, and drops the old
        method's options: ``vi_cfg.replace(method="em_mcmc")`` runs EM-MCMC at its own step size.
        """
        new_method = changes.get("method", self.method)
        if new_method != self.method:
            changes.setdefault("method_options", {})
            old, new = method_defaults(self.preset, self.method), method_defaults(self.preset,
                                                                                  new_method)
            for key in set(old) | set(new):
                changes.setdefault(key, _default(self.preset, key, new))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["hidden"] = list(self.hidden)
        return out


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    ok = isinstance(value, (tuple, list)) and all(
        isinstance(v, Integral) and not isinstance(v, bool) for v in value)
    if not ok:
        raise ValueError(f"{name}={value!r} must be a list of whole numbers (e.g. 400 400)")
    return tuple(int(v) for v in value)


# ----------------------------------------------------------------------------- validation
def _choice(name: str, value: Any, allowed: Sequence[str]) -> None:
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
    from .criteria import check_addition_key, check_removal_key
    from .methods import get_method

    method = get_method(cfg.method)
    for name, allowed in (("model", MODELS), ("mask_init", MASK_INITS), ("preset", PRESETS),
                          ("optimizer", OPTIMIZERS), ("mu_init", MU_INITS),
                          ("augment", AUGMENTATIONS), ("select", SELECTIONS),
                          ("dataset", DATASETS), ("kernels", KERNELS)):
        _choice(name, getattr(cfg, name), tuple(allowed))
    validate_density(cfg.density)
    if method.density != "target" and cfg.density != 1.0:
        what = "trains dense" if method.density == "dense" else "reaches a density of its own"
        raise ValueError(f"method {cfg.method!r} {what} and needs density=1, "
                         f"got density={cfg.density!r}")
    check_removal_key(cfg.removal)
    check_addition_key(cfg.addition)
    for name in ("update_interval", "epochs", "batch_size", "n_eval_samples", "seed"):
        _positive(name, getattr(cfg, name), integer=True, zero_ok=name == "seed")
    for name in ("prior_sigma", "sigma_init", "lr"):
        _positive(name, getattr(cfg, name))
    for name in ("kl_scale", "alpha", "weight_decay", "sigma_init_std", "mu_init_std", "momentum"):
        _positive(name, getattr(cfg, name), zero_ok=True)
    for name, integer in (("rho_lr", False), ("n_train", True), ("threads", True)):
        if getattr(cfg, name) is not None:
            _positive(name, getattr(cfg, name), integer=integer)
    _check_types(cfg)
    _check_ranges(cfg)
    method.parse_options(cfg.method_options)


def _check_types(cfg: TrainConfig) -> None:
    """Switches must be true/false (a string "no" would count as true) and data_root a path."""
    hints = typing.get_type_hints(TrainConfig)
    for name in FIELDS:
        value = getattr(cfg, name)
        if hints[name] is bool and not isinstance(value, bool):
            raise ValueError(f"{name}={value!r} must be true or false")
    if cfg.data_root is not None and not isinstance(cfg.data_root, (str, os.PathLike)):
        raise ValueError(f"data_root={cfg.data_root!r} must be a folder path or None")


def _check_ranges(cfg: TrainConfig) -> None:
    if not 0.0 < cfg.t_end_fraction <= 1.0:
        raise ValueError(f"t_end_fraction={cfg.t_end_fraction!r} must lie in (0, 1]")
    if not 0.0 <= cfg.alpha <= 1.0:
        raise ValueError(f"alpha={cfg.alpha!r} (initial swap fraction) must lie in [0, 1]")
    if not 0.0 < cfg.val_fraction < 0.5:
        raise ValueError(f"val_fraction={cfg.val_fraction!r} must lie in (0, 0.5): a run "
                         "validates after every epoch")
    if cfg.device not in ("auto", "cpu") and not str(cfg.device).startswith("cuda"):
        raise ValueError(f"device={cfg.device!r} is not known; choose auto, cpu, cuda or cuda:N")
    if not cfg.hidden or not all(h > 0 for h in cfg.hidden):
        raise ValueError(f"hidden={cfg.hidden!r}: give at least one hidden width, each a "
                         "positive integer")


# ----------------------------------------------------------------------------- identities
def _digest(fields: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:12]


def run_id(cfg: TrainConfig) -> str:
    """Stable id of one run: ``<method>-d<density>-s<seed>-<12 hex of SHA-1>``.

    The hash covers every field except ``NOT_IN_RUN_ID`` (device, progress bars and where the data
    files live; JSON with sorted keys), so it is the same in every process and on every machine.
    """
    fields = {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_RUN_ID}
    return f"{cfg.method}-d{cfg.density:g}-s{cfg.seed}-{_digest(fields)}"


def config_id(cfg: TrainConfig) -> str:
    """Stable id of a configuration with the seed left out: ``<method>-d<density>-<12 hex>``.

    Runs that differ only in their seed (and in ``NOT_IN_RUN_ID``) share it, and so do runs that
    differ only in scores their method ignores (the removal/addition keys of a method that uses
    none); ``report`` averages over exactly the runs that share it.
    """
    from .methods import get_method

    method = get_method(cfg.method)
    skip = {*NOT_IN_RUN_ID, "seed", *(() if method.uses_removal else ("removal",)),
            *(() if method.uses_addition else ("addition",))}
    fields = {k: v for k, v in cfg.to_dict().items() if k not in skip}
    return f"{cfg.method}-d{cfg.density:g}-{_digest(fields)}"


# ----------------------------------------------------------------------------- presets
_KIT: dict[str, Any] = dict(
    model="mlp", hidden=(100, 100), optimizer="adam", lr=3e-2, rho_lr=3e-2, cosine_lr=True,
    prior_sigma=0.5, kl_scale=1.0, kl_warmup=False, sigma_init=1e-2, sigma_init_std=0.0,
    mu_init="kaiming", batch_size=128, epochs=60, update_interval=20, first_layer_dense=False,
    weight_decay=0.0, n_eval_samples=10, select="last",
)
PRESETS: dict[str, dict[str, Any]] = {
    "kit": _KIT,
    "kit_tempered": {**_KIT, "kl_scale": 0.03, "prior_sigma": 1.0, "lr": 1e-2},
    "paper": dict(
        model="resnet18", dataset="cifar10", optimizer="sgd", lr=0.01, rho_lr=0.01, momentum=0.9,
        weight_decay=5e-4, cosine_lr=True, prior_sigma=0.005, kl_scale=0.01, kl_warmup=True,
        sigma_init=6e-4, sigma_init_std=5e-4, mu_init="normal", mu_init_std=0.01, batch_size=128,
        epochs=200, update_interval=100, alpha=0.3, t_end_fraction=0.75, first_layer_dense=True,
        removal="snr_abs", addition="grad", n_eval_samples=30, augment="crop_flip", select="last",
    ),
}


def method_defaults(preset: str, method: str) -> dict[str, Any]:
    """The config fields that ``method`` sets by default: density 1 unless it targets a density,
    and its registry record's ``defaults``."""
    from .methods import get_method

    _choice("preset", preset, tuple(PRESETS))
    record = get_method(method)
    return {**({"density": 1.0} if record.density != "target" else {}), **record.defaults}


def _default(preset: str, key: str, method_default: dict[str, Any]) -> Any:
    """What ``key`` is when nobody sets it: the method's default, else the preset's, else the
    dataclass field's."""
    if key in method_default:
        return method_default[key]
    if key in PRESETS[preset]:
        return PRESETS[preset][key]
    spec = FIELDS[key]
    return spec.default_factory() if spec.default is dataclasses.MISSING else spec.default


def make_config(preset: str = "kit", **overrides: Any) -> TrainConfig:
    """Build a :class:`TrainConfig` from a named preset, the method's defaults and overrides.

    >>> make_config("kit", method="vi").density
    1.0
    """
    _choice("preset", preset, tuple(PRESETS))
    unknown = set(overrides) - set(FIELDS)
    if unknown:
        raise ValueError(f"unknown config field(s) {sorted(unknown)}; see TrainConfig for the list")
    method = overrides.get("method", PRESETS[preset].get("method", FIELDS["method"].default))
    fields = {**PRESETS[preset], **method_defaults(preset, method), **overrides, "preset": preset}
    return TrainConfig(**fields)
