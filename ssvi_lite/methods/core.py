"""The kit's four core methods: MAP, dense mean-field VI, SSVI and the static mask
(docs/method.md §1–5; notebooks 01–05).

All four train one :class:`~ssvi_lite.loop.Stage` of the one epoch loop with
    loss = CE_mean(logits, y) + β(e)·κ·R / N_train,
R = KL(q ‖ p) summed over the active weights for the Bayesian three, and the Gaussian prior as a
penalty R = ‖θ‖²/(2σ_p²) for MAP. SSVI's stepper replaces the optimiser step by a subspace update
every ΔT steps while t < T_end (:class:`SubspaceStepper`); the others only re-apply the masks after
each optimiser step, so inactive weights never move.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..data import DataSplits
from ..kernels import use_kernels
from ..layers import kl_sum
from ..loop import Stage, Stepper, make_optimizer
from ..models import build_model
from ..predict import predict_proba as _predict_proba
from ..subspace import (
    LayerSwap,
    SwapSchedule,
    capture_dense_grads,
    enforce_masks,
    init_masks,
    rescale_to_active_fan_in,
    swappable_layers,
    update_subspace,
)
from . import Method, settings_grid

UpdateCallback = Callable[[int, list[LayerSwap]], None]


def build(cfg: TrainConfig, data: DataSplits, generator: torch.Generator | None = None
          ) -> nn.Module:
    """The network of ``cfg`` for ``data`` (Bayesian unless MAP); masks drawn for ssvi/static,
    whose sparse layers then take the storage of ``cfg.kernels`` (``fit`` checks it again)."""
    model = build_model(cfg, data.input_shape, data.n_classes, generator)
    if cfg.method in ("ssvi", "static"):
        init_masks(model, cfg.density, cfg.mask_init, cfg.first_layer_dense, generator)
        if cfg.mu_init == "kaiming":
            rescale_to_active_fan_in(model)
        use_kernels(model, cfg.kernels, cfg.method)
    return model


def prior_penalty(model: nn.Module, prior_sigma: float) -> Tensor:
    """‖θ‖² / (2 σ_p²) over the weights of Linear/Conv2d layers (MAP's Gaussian prior)."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return sum((w**2).sum() for w in weights) / (2 * prior_sigma**2)


class MaskStepper(Stepper):
    """After each optimiser step, θ = 0 again wherever the mask is off (weight decay, momentum)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def end(self, t: int, optimizer: torch.optim.Optimizer) -> None:
        enforce_masks(self.model)


class SubspaceStepper(MaskStepper):
    """SSVI's schedule (docs/method.md §5): on update steps the dense gradients of the swappable
    layers are captured during the backward pass and the subspace update replaces the optimiser
    step; ``on_update(step, swaps)`` sees what each update did."""

    def __init__(self, model: nn.Module, schedule: SwapSchedule, removal: str, addition: str,
                 on_update: UpdateCallback | None = None) -> None:
        super().__init__(model)
        self.schedule, self.removal, self.addition = schedule, removal, addition
        self.layers = [layer for _, layer in swappable_layers(model)]
        self.on_update = on_update

    def begin(self, t: int, optimizer: torch.optim.Optimizer) -> bool:
        """Capture the dense gradients on update steps, if the addition score needs them (only
        ``grad`` does: random addition costs no dense pass, docs/method.md §8)."""
        dense = self.schedule.is_update_step(t) and self.addition == "grad"
        capture_dense_grads(self.layers, dense)
        return dense

    def replace(self, t: int, optimizer: torch.optim.Optimizer) -> bool:
        if not self.schedule.is_update_step(t):
            return False
        swaps = update_subspace(self.model, self.schedule.zeta(t), self.removal, self.addition,
                                optimizer)
        if self.on_update is not None:  # it may read the layers' dense_grad
            self.on_update(t, swaps)
        capture_dense_grads(self.layers, False)
        return True


def core_stage(model: nn.Module, data: DataSplits, cfg: TrainConfig, name: str = "train",
               on_update: UpdateCallback | None = None) -> Stage:
    """The single stage of map/vi/ssvi/static with ``cfg`` (also the dense-VI and fine-tune stages
    of post-hoc pruning and the first stages of weight sharing)."""
    if cfg.method == "ssvi":
        steps = cfg.epochs * -(-data.n_train // cfg.batch_size)
        schedule = SwapSchedule(steps, cfg.update_interval, cfg.alpha, cfg.t_end_fraction)
        stepper: Stepper = SubspaceStepper(model, schedule, cfg.removal, cfg.addition, on_update)
    else:
        stepper = MaskStepper(model)
    regulariser = ((lambda m: prior_penalty(m, cfg.prior_sigma)) if cfg.method == "map"
                   else kl_sum)
    return Stage(name, cfg, optimizer=lambda m: make_optimizer(m, cfg), regulariser=regulariser,
                 stepper=stepper, select=cfg.select)


def stages(model: nn.Module, data: DataSplits, cfg: TrainConfig,
           on_update: UpdateCallback | None = None) -> list[Stage]:
    return [core_stage(model, data, cfg, on_update=on_update)]


def predict_proba(model: nn.Module, x: Tensor, n_samples: int) -> Tensor:
    """K posterior draws (``sample`` mode), (K, N, C); K = 1 for MAP."""
    return _predict_proba(model, x, n_samples, "sample")


def report(model: nn.Module, notes: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    return {}


def _record(name: str, title: str, density: str, **traits: Any) -> Method:
    return Method(name, title, build, stages, predict_proba, report, density=density, **traits)


# Tuning budgets (compare --tune). The mean-field Gaussian family (vi, ssvi, static, and posthoc,
# which shares their loss): the KL weight κ and the prior σ_p, the two knobs that moved validation
# NLL most in the preset search (results/preset_search/summary.txt); the grid holds the kit preset
# (κ 1, σ_p 0.5) and the search's first tempered choice (κ 0.1, σ_p 0.1; kit_tempered has since
# moved to κ 0.03, σ_p 1 so that its first layer learns per-weight σ). MAP: σ_p, its only
# regulariser (κ·‖θ‖²/(2σ_p²N) depends on κ/σ_p² alone).
MEAN_FIELD_GRID = settings_grid(kl_scale=(1.0, 0.1), prior_sigma=(0.5, 0.1))
METHODS = (
    _record("map", "MAP", "dense", tuning=settings_grid(prior_sigma=(0.5, 1.0, 0.2, 0.1))),
    _record("vi", "dense VI", "dense", tuning=MEAN_FIELD_GRID),
    _record("ssvi", "SSVI", "target", uses_removal=True, uses_addition=True,
            sparse_kernels=True, tuning=MEAN_FIELD_GRID),
    _record("static", "static random mask", "target", sparse_kernels=True,
            tuning=MEAN_FIELD_GRID),
)
