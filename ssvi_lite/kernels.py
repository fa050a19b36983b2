"""Which products each mean-field layer runs: the masked path or the sparse kernels
(``TrainConfig.kernels``, ``--kernels``; docs/method.md §8).

- ``masked`` (the default): every layer multiplies dense μ⊙m, σ²⊙m (:mod:`ssvi_lite.layers`).
- ``sparse``: every mean-field **Linear** layer below density 1 of an ``ssvi`` or ``static`` run
  on the **CPU** becomes a :class:`~ssvi_lite.sparse.SparseMeanFieldLinear`: it stores μ, ρ and
  the optimiser state of its active weights only and multiplies with sparse kernels. Dense
  layers, Conv2d layers, other methods and GPU runs keep the masked path; :func:`use_kernels`
  returns a one-line note naming what fell back and why.
- ``auto``: like ``sparse``, but only for layers at a density where the sparse path was measured
  to win by a margin (:data:`AUTO_MAX_DENSITY`); denser layers stay masked, without a note.

The two paths compute the same numbers up to float rounding (tests/test_kernels.py), so a
checkpoint may be resumed with other kernels: :func:`adapt_checkpoint` and
:func:`adapt_optimizer_state` move its weights, best-epoch weights and optimiser moments between
the two storages (masked → sparse: the active entries in row-major slots; sparse → masked: scatter,
zero moments and μ off the support, ρ there = the mean active ρ, never read by a masked layer).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .config import KERNELS
from .layers import MeanFieldLinear, mean_field_layers
from .sparse import SparseMeanFieldLinear

# auto: sparse at layer densities ≤ 0.3, where benchmarks/sparse_speed.py measured (one thread,
# CPU time; benchmarks/results/sparse_speed_cpu_1thread.txt) SSVI epochs of MLPs 784-400-400-10
# and 784-1200-1200-10 at sparse / masked ≤ 0.68 (they break even near density 0.5 and cost
# 1.4-1.5× at 0.8), and one layer's training step at ≤ 0.75 from 78,400 weights up; layers of
# 1,000-10,000 weights measured level either way
AUTO_MAX_DENSITY = 0.3


def layer_choice(layer: nn.Module, kernels: str, method_ok: bool = True) -> tuple[bool, str]:
    """(runs sparse?, why not) for one mean-field layer under ``kernels``."""
    if kernels not in KERNELS:
        raise ValueError(f"kernels={kernels!r} is not known; choose one of {', '.join(KERNELS)}")
    if kernels == "masked":
        return False, ""
    if not method_ok:
        return False, "method"
    if not isinstance(layer, (MeanFieldLinear, SparseMeanFieldLinear)):
        return False, "conv"
    if layer.mu.device.type != "cpu":
        return False, layer.mu.device.type
    if layer.n_active == layer.n_weights:
        return False, "dense"
    if kernels == "auto" and layer.n_active > AUTO_MAX_DENSITY * layer.n_weights:
        return False, "auto"
    return True, ""


def use_kernels(model: nn.Module, kernels: str, method: str | None = None,
                method_ok: bool = True) -> str | None:
    """Give every mean-field layer of ``model`` the storage ``kernels`` asks for, in place
    (the model object stays; converted layers are new modules, so re-read them afterwards).

    ``method_ok``: whether the method runs sparse kernels at all (``Method.sparse_kernels``).
    Returns the one-line note on layers that fall back to the masked path (None if none do).
    """
    fallback: dict[str, list[str]] = {}
    for name, layer in mean_field_layers(model):
        sparse, why = layer_choice(layer, kernels, method_ok)
        if sparse and isinstance(layer, MeanFieldLinear):
            _replace(model, name, SparseMeanFieldLinear.from_masked(layer))
        elif not sparse and isinstance(layer, SparseMeanFieldLinear):
            _replace(model, name, layer.to_masked())
        if why and why != "auto":
            fallback.setdefault(why, []).append(name or "the model")
    return _note(kernels, method, fallback)


REASONS = {"dense": "density 1", "conv": "Conv2d: no sparse convolution kernel",
           "method": "sparse kernels serve ssvi and static"}


def _note(kernels: str, method: str | None, fallback: dict[str, list[str]]) -> str | None:
    if not fallback:
        return None
    parts = []
    for why, names in fallback.items():
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        reason = REASONS.get(why, f"on {why}: the sparse kernels run on the CPU only")
        if why == "method" and method:
            reason = f"{method}: " + reason
        parts.append(f"{shown} ({reason})")
    return f"kernels={kernels}: masked path for " + "; ".join(parts)


def masked_parameter_count(model: nn.Module) -> int:
    """The number of parameters ``model`` has on the masked path (a sparse layer counts its μ, ρ
    as the dense tensors of its masked twin), so that choices made from the model's size (the
    default thread count) do not depend on the kernels."""
    stored = sum(p.numel() for p in model.parameters())
    return stored + sum(2 * (layer.n_weights - layer.n_active) for _, layer in
                        mean_field_layers(model) if isinstance(layer, SparseMeanFieldLinear))


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    if not name:
        raise ValueError("use_kernels converts the layers inside a model, not a bare layer")
    setattr(model.get_submodule(parent) if parent else model, child, new)


# ----------------------------------------------------------------------------- checkpoints
def adapt_checkpoint(state: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """``state`` (a loaded checkpoint) with its weights and best-epoch weights in the storage of
    ``model``'s layers; unchanged where they already fit. ValueError if they cannot be read."""
    if not isinstance(state.get("model"), dict):
        return state
    out = {**state, "model": adapt_weights(state["model"], model)}
    progress = state.get("progress")
    best = progress.get("best") if isinstance(progress, dict) else None
    if isinstance(best, (tuple, list)) and len(best) == 2 and isinstance(best[1], dict):
        out["progress"] = {**progress, "best": (best[0], adapt_weights(best[1], model))}
    return out


def adapt_weights(saved: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """A model state dict in the storage (masked or sparse) of ``model``'s Linear layers."""
    out = dict(saved)
    for prefix, layer, to_sparse in _switched(saved, model):
        try:
            out.update(_layer_to_sparse(saved, prefix) if to_sparse
                       else _layer_to_masked(saved, prefix, tuple(layer.mu.shape)))
        except (IndexError, RuntimeError, TypeError, ValueError, AttributeError) as err:
            raise ValueError(f"its weights of layer {prefix.rstrip('.')} cannot be moved to the "
                             f"{'sparse' if to_sparse else 'masked'} storage ({err})") from err
        for key in (("mask",) if to_sparse else ("rows", "cols")):
            out.pop(prefix + key, None)
    return out


def _switched(saved: dict[str, Any], model: nn.Module) -> list[tuple[str, nn.Module, bool]]:
    """(key prefix, layer, to sparse?) of the Linear layers whose storage differs from ``saved``."""
    found = []
    for name, layer in mean_field_layers(model):
        prefix = f"{name}." if name else ""
        if isinstance(layer, SparseMeanFieldLinear) and isinstance(saved.get(prefix + "mask"),
                                                                   Tensor):
            found.append((prefix, layer, True))
        elif isinstance(layer, MeanFieldLinear) and isinstance(saved.get(prefix + "rows"),
                                                               Tensor):
            found.append((prefix, layer, False))
    return found


def _layer_to_sparse(saved: dict[str, Any], prefix: str) -> dict[str, Tensor]:
    mask = saved[prefix + "mask"]
    if mask.dtype != torch.bool or mask.dim() != 2:
        raise ValueError(f"its mask is {mask.dtype} {tuple(mask.shape)}, not a 2-D bool tensor")
    rows, cols = mask.nonzero(as_tuple=True)
    return {prefix + "rows": rows, prefix + "cols": cols, prefix + "mu": saved[prefix + "mu"][mask],
            prefix + "rho": saved[prefix + "rho"][mask]}


def _layer_to_masked(saved: dict[str, Any], prefix: str, shape: tuple[int, ...]
                     ) -> dict[str, Tensor]:
    rows, cols = saved[prefix + "rows"].long(), saved[prefix + "cols"].long()
    mu, rho = saved[prefix + "mu"], saved[prefix + "rho"]
    mask = torch.zeros(shape, dtype=torch.bool)
    mask[rows, cols] = True
    if int(mask.sum()) != rows.numel() or mu.shape != rows.shape or rho.shape != rows.shape:
        raise ValueError("its rows, cols, mu and rho do not describe one support")
    dense_mu = mu.new_zeros(shape)
    dense_mu[rows, cols] = mu
    dense_rho = rho.new_full(shape, float(rho.mean()) if rho.numel() else 0.0)
    dense_rho[rows, cols] = rho
    return {prefix + "mask": mask, prefix + "mu": dense_mu, prefix + "rho": dense_rho}


def adapt_optimizer_state(saved: Any, optimizer: torch.optim.Optimizer,
                          saved_weights: dict[str, Any], model: nn.Module) -> Any:
    """The optimiser state ``saved`` (written with the weights ``saved_weights``, as saved) with
    the per-entry moments of μ and ρ of every switched layer in its new storage."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        return saved
    params = [p for group in optimizer.param_groups for p in group["params"]]
    index = {id(p): i for i, p in enumerate(params)}
    state = dict(saved["state"])
    for prefix, layer, to_sparse in _switched(saved_weights, model):
        for attr in ("mu", "rho"):
            i = index.get(id(getattr(layer, attr)))
            entry = state.get(i)
            if i is None or not isinstance(entry, dict):
                continue
            old = saved_weights[prefix + attr].shape
            state[i] = {k: _move(v, saved_weights, prefix, to_sparse, layer)
                        if isinstance(v, Tensor) and v.shape == old else v
                        for k, v in entry.items()}
    return {**saved, "state": state}


def _move(value: Tensor, saved: dict[str, Any], prefix: str, to_sparse: bool,
          layer: nn.Module) -> Tensor:
    """One per-entry moment: the active entries (row-major slots), or scattered into zeros."""
    if to_sparse:
        return value[saved[prefix + "mask"]]
    dense = value.new_zeros(layer.mu.shape)
    dense[saved[prefix + "rows"].long(), saved[prefix + "cols"].long()] = value
    return dense
