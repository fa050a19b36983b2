"""The sparse subspace: initial masks and the alternating removal/addition schedule
(docs/method.md §4–5).

Notebooks 02_mask_initialization (masks) and 04_gradient_addition (updates) introduce these.

Schedule. Count optimiser steps t. Every ΔT steps while t < T_end = t_end_fraction · T_total the
trainer does a subspace update instead of the optimiser step. Per sparse layer it swaps
n_swap = floor(ζ(t) · n_active) weights with ζ(t) = (α/2)(1 + cos(π t / T_end)):
1. removal: keep the top n_active − n_swap active weights by the removal score (higher = keep);
2. addition: among the entries not kept (just-removed ones included) activate the n_swap with the
   highest addition score (|∂CE/∂μ| of the batch, computed as if every entry were active).
New weights start at μ = 0, ρ = mean ρ of the layer's surviving weights; a weight removed and
re-added keeps its μ, ρ. Optimiser state of every entry whose mask changed is zeroed.
A sparse layer (ssvi_lite.sparse, ``kernels="sparse"``) takes the same decisions on its stored
entries and keeps its slots fixed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .config import MASK_INITS, validate_density
from .criteria import addition_score, removal_score, top_k_mask
from .layers import MeanFieldLayer, mean_field_layers
from .sparse import SparseMeanFieldLinear, decide_swap


# ----------------------------------------------------------------------------- initial masks
def layer_densities(layers: list[MeanFieldLayer], density: float, method: str = "uniform",
                    first_layer_dense: bool = False) -> list[float]:
    """Target density of each layer so that the sparse layers hold ``density`` of their weights.

    ``uniform``: every sparse layer gets ``density``. ``erk`` (Erdős–Rényi-kernel, Evci et al.
    2020): density_l ∝ (Σ of the layer's dimensions) / (product of them), scaled so the sparse
    layers hold ``density`` of their weights overall; layers that would exceed 1 are made dense
    and the rest rescaled. With ``first_layer_dense`` the first layer stays dense (and is never
    swapped).
    """
    density = validate_density(density)
    if method not in MASK_INITS:
        raise ValueError(f"mask_init={method!r} is not known; "
                         f"choose one of {', '.join(MASK_INITS)}")
    dense_ids = {0} if first_layer_dense and len(layers) > 1 else set()
    out = [1.0 if i in dense_ids else density for i in range(len(layers))]
    if method == "uniform" or density == 1.0:
        return out
    sizes = [layer.mask.numel() for layer in layers]
    raw = [sum(layer.mask.shape) / layer.mask.numel() for layer in layers]
    budget = density * sum(sizes[i] for i in range(len(layers)) if i not in dense_ids)
    free = [i for i in range(len(layers)) if i not in dense_ids]
    while free:  # water-filling: cap layers at density 1 and spread the rest of the budget
        scale = budget / sum(raw[i] * sizes[i] for i in free)
        over = [i for i in free if raw[i] * scale > 1.0]
        if not over:
            for i in free:
                out[i] = raw[i] * scale
            break
        for i in over:
            out[i] = 1.0
            budget -= sizes[i]
            free.remove(i)
    return out


def init_masks(model: nn.Module, density: float, method: str = "uniform",
               first_layer_dense: bool = False, generator: torch.Generator | None = None
               ) -> list[float]:
    """Draw a random support for every mean-field layer of ``model`` in place (docs/method.md §4).

    Layer l gets exactly n_l − round((1 − d_l)·n_l) active entries, chosen uniformly at random;
    μ is zeroed where the mask is off. Returns the per-layer densities. (The SSVI schedule swaps
    the layers left below density 1: :func:`swappable_layers`.)
    """
    layers = [layer for _, layer in mean_field_layers(model)]
    if not layers:
        raise ValueError("init_masks needs a model with mean-field layers (see bayesianize)")
    targets = layer_densities(layers, density, method, first_layer_dense)
    for layer, d in zip(layers, targets):
        n = layer.mask.numel()
        n_active = n - round((1.0 - d) * n)
        if n_active < 1:
            raise ValueError(f"density={density} leaves no active weight in a layer of {n} weights")
        order = torch.randperm(n, generator=generator)[:n_active]
        mask = torch.zeros(n, dtype=torch.bool)
        mask[order] = True
        with torch.no_grad():
            layer.mask.copy_(mask.view_as(layer.mask))
            layer.mu.masked_fill_(~layer.mask, 0.0)
    return [layer.n_active / layer.n_weights for layer in layers]


def rescale_to_active_fan_in(model: nn.Module) -> None:
    """μ ← μ / √d_l in every layer of density d_l < 1 ("sparse Kaiming").

    Kaiming init gives Var μ = 2 / fan_in for a dense layer; with only a fraction d_l of the inputs
    active, pre-activations shrink by √d_l per layer. Rescaling restores Var = 2 / (d_l · fan_in),
    the Kaiming variance of the active fan-in, so a sparse MLP starts at the dense net's scale.
    The kit preset applies it to ssvi/static (measured: +1 point for SSVI at D = 0.1).
    """
    with torch.no_grad():
        for _, layer in mean_field_layers(model):
            density = layer.n_active / layer.n_weights
            if density < 1.0:
                layer.mu.mul_(density ** -0.5)


def model_density(model: nn.Module) -> float:
    """Active weights / all Bayesian weights (first layer included), docs/method.md §4."""
    layers = [layer for _, layer in mean_field_layers(model)]
    if not layers:
        return 1.0
    return sum(layer.n_active for layer in layers) / sum(layer.n_weights for layer in layers)


def enforce_masks(model: nn.Module) -> None:
    """θ = 0 exactly where the mask is off: zero μ there (after an optimiser step, as a guard).
    A sparse layer stores no inactive entries: nothing to do."""
    with torch.no_grad():
        for _, layer in mean_field_layers(model):
            if not isinstance(layer, SparseMeanFieldLinear):
                layer.mu.masked_fill_(~layer.mask, 0.0)


# ----------------------------------------------------------------------------- the schedule
@dataclass(frozen=True)
class SwapSchedule:
    """When to update the subspace and how much to swap (docs/method.md §5)."""

    total_steps: int
    interval: int = 100  # ΔT
    alpha: float = 0.3
    t_end_fraction: float = 0.75

    def __post_init__(self) -> None:
        for name, low in (("total_steps", 0), ("interval", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
        if not (isinstance(self.alpha, (int, float)) and 0.0 <= self.alpha <= 1.0):
            raise ValueError(f"alpha={self.alpha!r} (initial swap fraction) must lie in [0, 1]")
        if not (isinstance(self.t_end_fraction, (int, float))
                and 0.0 < self.t_end_fraction <= 1.0):
            raise ValueError(f"t_end_fraction={self.t_end_fraction!r} must lie in (0, 1]")

    @property
    def t_end(self) -> int:
        return int(self.t_end_fraction * self.total_steps)

    def is_update_step(self, t: int) -> bool:
        """Whether optimiser step ``t`` (0-based) is replaced by a subspace update."""
        return 0 < t < self.t_end and t % self.interval == 0

    def zeta(self, t: int) -> float:
        """Swap fraction ζ(t) = (α/2)(1 + cos(π t / T_end)); 0 from T_end on."""
        if t >= self.t_end:
            return 0.0
        return 0.5 * self.alpha * (1.0 + math.cos(math.pi * t / self.t_end))

    def update_steps(self) -> list[int]:
        return [t for t in range(self.interval, self.t_end, self.interval)]


# ----------------------------------------------------------------------------- one update
@dataclass
class LayerSwap:
    """What one update did to one layer (boolean tensors have the weight's shape)."""

    name: str
    n_swap: int
    removed: Tensor  # active before, not kept
    added: Tensor  # chosen by the addition score (may include just-removed entries)

    @property
    def n_regrown(self) -> int:
        return int((self.removed & self.added).sum())

    @property
    def n_grown(self) -> int:
        """Entries that were inactive before the update and are active after it."""
        return int((self.added & ~self.removed).sum())


def swap_layer(layer: MeanFieldLayer, n_swap: int, removal: str, addition: str
               ) -> tuple[Tensor, Tensor]:
    """Decide the swap of one layer: returns (kept, added) boolean masks; changes nothing."""
    if isinstance(layer, SparseMeanFieldLinear):  # the same decision, on its stored entries
        return decide_swap(layer, n_swap, removal, addition)
    active = layer.mask
    if layer.dense_grad is None and addition == "grad":
        raise RuntimeError("the 'grad' addition score needs the dense gradient of this batch; "
                           "call capture_dense_grads(layers, True) and run backward first")
    with torch.no_grad():
        scores = torch.full_like(layer.mu, -math.inf)  # only active weights are scored
        scores[active] = removal_score(removal, layer.mu[active], layer.sigma[active])
        keep = top_k_mask(scores, layer.n_active - n_swap, allowed=active)
        grad = layer.dense_grad if layer.dense_grad is not None else torch.zeros_like(layer.mu)
        added = top_k_mask(addition_score(addition, grad), n_swap, allowed=~keep)
    return keep, added


def apply_swap(layer: MeanFieldLayer, keep: Tensor, added: Tensor,
               optimizer: torch.optim.Optimizer | None) -> Tensor:
    """Install the new support ``keep | added`` and return the mask of entries that changed."""
    if isinstance(layer, SparseMeanFieldLinear):  # slots stay; freed ones take grown entries
        old = layer.mask
        layer.swap(keep, added, optimizer)
        return old ^ (keep | added)
    old = layer.mask.clone()
    new = keep | added
    grown = added & ~old
    with torch.no_grad():
        rho_new = layer.rho[keep].mean() if keep.any() else layer.rho[old].mean()
        layer.mu[grown] = 0.0
        layer.rho[grown] = rho_new
        layer.mask.copy_(new)
        layer.mu.masked_fill_(~new, 0.0)
    changed = old ^ new
    if optimizer is not None:
        for param in (layer.mu, layer.rho):
            reset_optimizer_state(optimizer, param, changed)
    return changed


def reset_optimizer_state(optimizer: torch.optim.Optimizer, param: Tensor, entries: Tensor) -> None:
    """Zero every per-entry state tensor (momentum, Adam moments) of ``param`` at ``entries``."""
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, Tensor) and value.shape == param.shape:
            value[entries] = 0


def swappable_layers(model: nn.Module) -> list[tuple[str, MeanFieldLayer]]:
    """The layers an SSVI update swaps: every mean-field layer below density 1 (a dense layer,
    e.g. the first one with ``first_layer_dense``, keeps its support)."""
    return [(n, layer) for n, layer in mean_field_layers(model) if layer.n_active < layer.n_weights]


def capture_dense_grads(layers: list[MeanFieldLayer], on: bool) -> None:
    """Switch the capture of ∂CE/∂(μ⊙m) (dense, inactive entries included) on or off for the next
    backward pass of ``layers``, and drop any gradient kept from before (the only writer of the
    layers' capture state)."""
    for layer in layers:
        layer.capture_dense_grad, layer.dense_grad = on, None


def update_subspace(model: nn.Module, zeta: float, removal: str, addition: str,
                    optimizer: torch.optim.Optimizer | None = None) -> list[LayerSwap]:
    """One subspace update of every swappable layer (docs/method.md §5); returns what each layer
    did.

    Under torch.distributed the dense gradients are averaged over ranks and rank 0's decisions are
    broadcast, so every rank installs the identical support.
    """
    record = []
    for name, layer in swappable_layers(model):
        n_swap = math.floor(zeta * layer.n_active)
        if _distributed() and layer.dense_grad is not None:
            dist.all_reduce(layer.dense_grad)
            layer.dense_grad /= dist.get_world_size()
        keep, added = swap_layer(layer, n_swap, removal, addition)
        if _distributed():
            for decision in (keep, added):
                dist.broadcast(decision, src=0)
        removed = layer.mask & ~keep
        apply_swap(layer, keep, added, optimizer)
        record.append(LayerSwap(name, n_swap, removed, added))
    return record


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
