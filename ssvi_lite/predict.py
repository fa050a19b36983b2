"""The posterior predictive: K weight draws, their softmax outputs, and the metrics of their mean
(docs/method.md §9; notebook 01_dense_vi introduces :func:`evaluate`).

``predict_proba`` returns (K, N, C): one softmax output per posterior draw. In ``sample`` mode draw
k uses one weight sample for every example (the RNG is re-seeded with ``seed + k`` before each
chunk, so chunking does not change the draw and no global random state is consumed); ``mean`` mode
is the deterministic mean network (θ = μ), K = 1. A model without mean-field layers (MAP) gives
K = 1.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from . import metrics
from .config import FORWARD_MODES
from .layers import forward_mode, mean_field_layers


def is_bayesian(model: nn.Module) -> bool:
    """Whether ``model`` has mean-field layers."""
    return bool(mean_field_layers(model))


@torch.no_grad()
def predict_proba(model: nn.Module, x: Tensor, n_samples: int = 10, mode: str = "sample",
                  batch_size: int = 1000, seed: int = 0) -> Tensor:
    """Softmax outputs of ``n_samples`` posterior draws, (K, N, C); K = 1 for ``mean`` or MAP.
    Arguments are checked first (ValueError naming the value)."""
    _check_inputs(model, x, n_samples, mode, batch_size, seed)
    if not is_bayesian(model) or mode == "mean":
        n_samples = 1
    model.eval()
    device = next(model.parameters()).device
    out = []
    with forward_mode(model, mode if is_bayesian(model) else "mean"):
        for k in range(n_samples):
            chunks = []
            for start in range(0, len(x), batch_size):
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(seed + k)
                    logits = model(x[start:start + batch_size].to(device))
                chunks.append(torch.softmax(logits.float(), dim=-1).cpu())
            out.append(torch.cat(chunks))
    return torch.stack(out)  # (K, N, C)


def _check_inputs(model: nn.Module, x: Tensor, n_samples: int, mode: str, batch_size: int,
                  seed: int) -> None:
    if not isinstance(model, nn.Module) or next(model.parameters(), None) is None:
        raise ValueError(f"model must be a torch.nn.Module with parameters, got "
                         f"{type(model).__name__}")
    if not isinstance(x, Tensor) or x.dim() < 1 or len(x) == 0:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a non-empty batch tensor (N ≥ 1 examples), got {shape}")
    for name, value, low in (("n_samples", n_samples, 1), ("batch_size", batch_size, 1),
                             ("seed", seed, 0)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if mode not in FORWARD_MODES:
        raise ValueError(f"mode={mode!r} is not known; choose one of {', '.join(FORWARD_MODES)}")


def evaluate(model: nn.Module, x: Tensor, y: Tensor, n_samples: int = 10,
             seed: int = 0) -> dict[str, float]:
    """Metrics of the K-sample predictive plus the mean network's accuracy and NLL (labelled)."""
    if not isinstance(y, Tensor) or not isinstance(x, Tensor) or y.shape != (len(x),):
        raise ValueError(f"y must be a tensor of shape (N,) = ({len(x)},) matching x, got "
                         f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    probs = predict_proba(model, x, n_samples, "sample", seed=seed)
    result = metrics.summarize(probs, y.cpu())
    if is_bayesian(model):
        mean_probs = predict_proba(model, x, 1, "mean")[0]
        result["mean_net_accuracy"] = metrics.accuracy(mean_probs, y.cpu())
        result["mean_net_nll"] = metrics.nll(mean_probs, y.cpu())
    return result
