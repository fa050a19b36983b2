"""Analytic training/inference FLOPs and model size (docs/method.md §8; notebook
02_mask_initialization).

Convention, stated wherever a number is shown: FLOPs = 2 × multiply-adds of the Linear/Conv2d
layers only (activations, BatchNorm, pooling and the optimiser are not counted).
- Forward of one mean-field layer with LRT = 2 ops (mean and variance paths), each 2·B·MACs,
  where MACs = active weights × output positions per example; a deterministic layer is 1 op.
- Backward ≈ 2 × forward, so a training step ≈ 3 × forward.
- A subspace-update step needs the dense weight gradient: 2·f_sparse + f_dense.
- SSVI total = (T_total − U)·3·f_sparse + U·(2·f_sparse + f_dense); dense VI total =
  T_total·3·f_dense (T_total steps in the run, U of them subspace updates).
Model size: 2 float32 (μ, σ) per active weight + index storage (the cheaper of an int32 index per
active weight or a 1-bit-per-weight bitmap, for layers that are not dense) + float32 dense params.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .layers import MeanFieldLayer, forward_mode, mean_field_layers
from .subspace import SwapSchedule

BYTES_PER_FLOAT = 4


@dataclass(frozen=True)
class LayerCost:
    """Size and per-example work of one weight layer."""

    name: str
    n_weights: int
    n_active: int
    positions: int  # output positions per example (1 for Linear, H_out·W_out for Conv2d)

    @property
    def density(self) -> float:
        return self.n_active / self.n_weights

    @property
    def macs_dense(self) -> int:
        return self.n_weights * self.positions

    @property
    def macs_active(self) -> int:
        return self.n_active * self.positions


def layer_costs(model: nn.Module, input_shape: tuple[int, ...]) -> list[LayerCost]:
    """Measure every Linear/Conv2d/mean-field layer's output positions with one forward pass."""
    positions: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, (MeanFieldLayer, nn.Linear, nn.Conv2d)):
            def hook(mod, inp, out, name=name):  # noqa: ANN001 (torch hook signature)
                positions[name] = out[0, 0].numel() if out.dim() > 2 else 1
            hooks.append(module.register_forward_hook(hook))
    param = next(model.parameters())
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), forward_mode(model, "mean"):
            model(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    costs = []
    for name, module in model.named_modules():
        if name not in positions:
            continue
        if isinstance(module, MeanFieldLayer):
            costs.append(LayerCost(name, module.n_weights, module.n_active, positions[name]))
        else:
            n = module.weight.numel()
            costs.append(LayerCost(name, n, n, positions[name]))
    return costs


def forward_flops(costs: list[LayerCost], batch: int = 1, *, bayesian: bool = True,
                  dense: bool = False) -> float:
    """FLOPs of one forward pass over ``batch`` examples (LRT: 2 paths if ``bayesian``)."""
    paths = 2 if bayesian else 1
    macs = sum(c.macs_dense if dense else c.macs_active for c in costs)
    return paths * 2.0 * batch * macs


def training_flops(costs: list[LayerCost], n_steps: int, batch: int,
                   schedule: SwapSchedule | None = None, *, bayesian: bool = True) -> float:
    """Total training FLOPs over ``n_steps`` steps; subspace-update steps per ``schedule``."""
    f_sparse = forward_flops(costs, batch, bayesian=bayesian)
    f_dense = forward_flops(costs, batch, bayesian=bayesian, dense=True)
    n_updates = len(schedule.update_steps()) if schedule is not None else 0
    return (n_steps - n_updates) * 3 * f_sparse + n_updates * (2 * f_sparse + f_dense)


def dense_vi_training_flops(costs: list[LayerCost], n_examples: int) -> float:
    """FLOPs of dense VI training over ``n_examples`` example-steps (epochs × N_train): every step
    3 × the dense LRT forward (the reference of every ``train_flops_ratio``)."""
    return 3.0 * n_examples * forward_flops(costs, 1, dense=True)


def training_flops_ratio(costs: list[LayerCost], n_steps: int, batch: int,
                         schedule: SwapSchedule | None = None) -> float:
    """Training FLOPs of this (sparse) run divided by dense VI over the same steps."""
    dense = dense_vi_training_flops(costs, n_steps * batch)
    return training_flops(costs, n_steps, batch, schedule) / dense


def step_flops(costs: list[LayerCost], batch: int, *, update: bool, bayesian: bool = True) -> float:
    """FLOPs of one training step: 3·f_sparse, or 2·f_sparse + f_dense on an update step."""
    f_sparse = forward_flops(costs, batch, bayesian=bayesian)
    if update:
        return 2 * f_sparse + forward_flops(costs, batch, bayesian=bayesian, dense=True)
    return 3 * f_sparse


def inference_flops(costs: list[LayerCost], n_samples: int = 1) -> float:
    """Per-example FLOPs of a K-sample predictive (``sample`` mode: 1 path per weight draw)."""
    return n_samples * forward_flops(costs, 1, bayesian=False)


def model_size_bytes(model: nn.Module) -> dict[str, int]:
    """Bytes to store the posterior: μ, σ of active weights, their indices, and dense params."""
    layers = [layer for _, layer in mean_field_layers(model)]
    variational = sum(2 * BYTES_PER_FLOAT * layer.n_active for layer in layers)
    index = sum(min(4 * layer.n_active, -(-layer.n_weights // 8))
                for layer in layers if layer.n_active < layer.n_weights)
    bayes_ids = {id(layer.mu) for layer in layers} | {id(layer.rho) for layer in layers}
    dense = sum(p.numel() for p in model.parameters() if id(p) not in bayes_ids)
    dense += sum(b.numel() for n, b in model.named_buffers()
                 if b.is_floating_point() and not n.endswith("mask"))
    total = variational + index + BYTES_PER_FLOAT * dense
    return {"variational": variational, "index": index, "dense": BYTES_PER_FLOAT * dense,
            "total": total}
