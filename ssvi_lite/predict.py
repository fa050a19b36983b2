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
from .layers import forward_mode, mean_field_layers


def is_bayesian(model: nn.Module) -> bool:
    """Whether ``model`` has mean-field layers."""
    return bool(mean_field_layers(model))


@torch.no_grad()
def predict_proba(model: nn.Module, x: Tensor, n_samples: int = 10, mode: str = "sample",
                  batch_size: int = 1000, seed: int = 0) -> Tensor:
    """Softmax outputs of ``n_samples`` posterior draws, (K, N, C); K = 1 for ``mean`` or MAP."""
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


def evaluate(model: nn.Module, x: Tensor, y: Tensor, n_samples: int = 10,
             seed: int = 0) -> dict[str, float]:
    """Metrics of the K-sample predictive plus the mean network's accuracy and NLL (labelled)."""
    probs = predict_proba(model, x, n_samples, "sample", seed=seed)
    result = metrics.summarize(probs, y.cpu())
    if is_bayesian(model):
        mean_probs = predict_proba(model, x, 1, "mean")[0]
        result["mean_net_accuracy"] = metrics.accuracy(mean_probs, y.cpu())
        result["mean_net_nll"] = metrics.nll(mean_probs, y.cpu())
    return result
