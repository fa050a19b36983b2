"""Evaluation metrics of docs/method.md §9: accuracy, NLL, Brier, ECE, entropy, MI, AUROC/AUPR.

Conventions. ``probs`` are class probabilities of shape (N, C) — for a BNN the *predictive*
p(y|x) ≈ (1/K) Σ_k softmax(f(x; θ_k)), the mean of K posterior-sample softmax outputs — or, where
a function says so, the K per-sample outputs themselves, shape (K, N, C). ``labels`` are integer
class indices of shape (N,). Scalar metrics come back as Python floats; every sum is taken in
float64 so the results do not depend on the input precision.

Every input is validated at this boundary (shapes, label range, finite non-negative rows summing
to 1, bin count) so that bad input raises a ValueError that names the problem instead of a
traceback from deep inside torch. Notebook 05_calibration introduces these functions.

This module imports only torch and numpy (no scikit-learn at run time); the tests compare it with
torchmetrics and scikit-learn.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

ROW_SUM_TOL = 1e-3  # |Σ_c p_c − 1| allowed per row (float32 softmax sums are ~1e-6 off)
OOD_SCORES = ("entropy", "max_prob", "mutual_information")


# ----------------------------------------------------------------------------- input checks
def _as_tensor(x: Any, name: str) -> Tensor:
    if isinstance(x, Tensor):
        return x.detach()
    try:
        return torch.as_tensor(np.asarray(x))
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{name} must be a tensor or array, got {type(x).__name__}") from err


def _check_probs(probs: Any, ndims: tuple[int, ...] = (2,), name: str = "probs") -> Tensor:
    """Validate probabilities and return them as float64 (shape unchanged)."""
    p = _as_tensor(probs, name)
    shapes = " or ".join({2: "(N, C)", 3: "(K, N, C)"}[d] for d in ndims)
    if p.ndim not in ndims:
        raise ValueError(f"{name} must have shape {shapes}, got shape {tuple(p.shape)}")
    if p.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(p.shape)}); need at least one example "
                         "and one class")
    if p.is_complex():
        raise ValueError(f"{name} must be real numbers, got dtype {p.dtype}")
    p = p.to(torch.float64)
    if not torch.isfinite(p).all():
        raise ValueError(f"{name} contains NaN or inf ({int((~torch.isfinite(p)).sum())} entries)")
    if (p < 0).any():
        raise ValueError(f"{name} must be non-negative probabilities; minimum is "
                         f"{p.min().item():.4g}")
    row_err = (p.sum(-1) - 1.0).abs()
    if (row_err > ROW_SUM_TOL).any():
        bad = int(row_err.flatten().argmax())
        raise ValueError(f"{name} rows must sum to 1 (within {ROW_SUM_TOL}); a row sums to "
                         f"{p.sum(-1).flatten()[bad].item():.6g} (row {bad}) — pass softmax "
                         "probabilities, not logits")
    return p


def _check_labels(labels: Any, n: int, n_classes: int) -> Tensor:
    """Validate integer labels of shape (n,) with values in [0, n_classes)."""
    y = _as_tensor(labels, "labels")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.shape != (n,):
        raise ValueError(f"labels must have shape (N,) = ({n},) to match probs, got shape "
                         f"{tuple(y.shape)}")
    if ((y < 0) | (y >= n_classes)).any():
        raise ValueError(f"labels must lie in [0, {n_classes}) for C = {n_classes} classes; got "
                         f"values from {y.min().item()} to {y.max().item()}")
    return y.to(torch.int64).cpu()


def _probs_labels(probs: Any, labels: Any) -> tuple[Tensor, Tensor]:
    p = _check_probs(probs).cpu()  # (N, C)
    return p, _check_labels(labels, p.shape[0], p.shape[1])


def _check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be an integer >= 1, got {n_bins!r}")
    return int(n_bins)


def _mean_over_samples(probs: Any, name: str = "probs") -> Tensor:
    """(N, C) stays; (K, N, C) → the predictive mean over K, (N, C)."""
    p = _check_probs(probs, (2, 3), name)
    return p.mean(0) if p.ndim == 3 else p


# ----------------------------------------------------------------------------- accuracy & scores
def accuracy(probs: Any, labels: Any) -> float:
    """Fraction of examples whose arg-max class is the label: (1/N) Σ_n 1[argmax_c p_nc = y_n]."""
    p, y = _probs_labels(probs, labels)
    return float((p.argmax(-1) == y).double().mean())


def nll(probs: Any, labels: Any, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the given (averaged) predictive, in nats.

    NLL = −(1/N) Σ_n log max(p_{n, y_n}, eps). For a BNN pass the mean of the K softmax outputs
    (log of the average, not the average of logs — docs/method.md §9).
    """
    if not (isinstance(eps, (int, float)) and 0 <= eps < 1):
        raise ValueError(f"eps must be a number in [0, 1), got {eps!r}")
    p, y = _probs_labels(probs, labels)
    p_true = p.gather(1, y[:, None]).squeeze(1)  # (N,)
    return float(-torch.log(p_true.clamp_min(eps)).mean())


def brier(probs: Any, labels: Any) -> float:
    """Multi-class Brier score (Brier 1950): (1/N) Σ_n Σ_c (p_nc − 1[c = y_n])², in [0, 2]."""
    p, y = _probs_labels(probs, labels)
    onehot = torch.nn.functional.one_hot(y, p.shape[1]).to(p.dtype)  # (N, C)
    return float(((p - onehot) ** 2).sum(-1).mean())


# ----------------------------------------------------------------------------- calibration
def reliability_bins(probs: Any, labels: Any, n_bins: int = 15) -> dict[str, np.ndarray]:
    """Top-label confidence histogram with ``n_bins`` equal-width bins (Guo et al., ICML 2017, §2).

    Bin j holds the examples whose confidence ĉ_n = max_c p̄_nc lies in ((j−1)/n_bins, j/n_bins].
    Returns numpy arrays ``edges`` (n_bins+1,), and per bin ``confidence`` = mean ĉ (conf_j),
    ``accuracy`` = fraction correct (acc_j; both NaN for an empty bin) and ``count`` (int N_j,
    sums to N).
    """
    p, y = _probs_labels(probs, labels)
    n_bins = _check_n_bins(n_bins)
    conf, pred = p.max(-1)  # (N,), (N,)
    correct = (pred == y).double()
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, edges[1:-1], right=False)  # e_{j-1} < ĉ <= e_j → bin j
    count = torch.bincount(idx, minlength=n_bins)
    conf_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, conf)
    acc_sum = torch.zeros(n_bins, dtype=torch.float64).index_add_(0, idx, correct)
    denom = count.double().where(count > 0, torch.tensor(float("nan"), dtype=torch.float64))
    return {"edges": edges.numpy(), "confidence": (conf_sum / denom).numpy(),
            "accuracy": (acc_sum / denom).numpy(), "count": count.numpy()}


def ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error, top-label, equal-width bins, L1 (Guo et al., ICML 2017, eq. 3).

    ECE = Σ_j (N_j / N) · |acc_j − conf_j|, N_j the examples in bin j, over the ``n_bins`` bins
    of :func:`reliability_bins`; empty bins contribute 0. Default 15 bins (docs/method.md §9).
    """
    bins = reliability_bins(probs, labels, n_bins)
    full = bins["count"] > 0
    weight = bins["count"][full] / bins["count"].sum()
    return float(np.sum(weight * np.abs(bins["accuracy"][full] - bins["confidence"][full])))


# ----------------------------------------------------------------------------- uncertainty
def _entropy(p: Tensor) -> Tensor:
    """H(p) = −Σ_c p_c log p_c over the last axis, with 0 log 0 = 0 (nats)."""
    return -torch.special.xlogy(p, p).sum(-1)


def predictive_entropy(probs: Any) -> Tensor:
    """Entropy of the predictive, H[p̄(y|x)] = −Σ_c p̄_c log p̄_c in nats, shape (N,).

    Accepts (N, C) or (K, N, C); for the latter p̄ = (1/K) Σ_k p_k (entropy of the mean). Total
    uncertainty; at most log C (uniform). Returned in float64.
    """
    return _entropy(_mean_over_samples(probs))


def expected_entropy(probs_k: Any) -> Tensor:
    """Mean entropy of the K sample predictions, (1/K) Σ_k H[p_k(y|x)], shape (N,) — aleatoric part.

    ``probs_k`` has shape (K, N, C). Returned in float64.
    """
    p = _check_probs(probs_k, (3,), "probs_k")
    return _entropy(p).mean(0)


def mutual_information(probs_k: Any) -> Tensor:
    """Mutual information between y and θ (epistemic uncertainty, BALD), shape (N,), ≥ 0.

    I[y; θ | x] ≈ H[(1/K) Σ_k p_k] − (1/K) Σ_k H[p_k] (Gal 2016, §3.3; Depeweg et al., ICML 2018).
    Zero when all K samples agree; rounding below 0 is clamped to 0. ``probs_k``: (K, N, C).
    """
    return _mutual_information(_check_probs(probs_k, (3,), "probs_k"))


def _mutual_information(p: Tensor) -> Tensor:
    return (_entropy(p.mean(0)) - _entropy(p).mean(0)).clamp_min(0.0)  # (K, N, C) → (N,)


# ----------------------------------------------------------------------------- ranking metrics
def _check_scores(pos: Any, neg: Any) -> tuple[Tensor, Tensor]:
    out = []
    for name, s in (("scores_pos", pos), ("scores_neg", neg)):
        t = _as_tensor(s, name)
        if t.ndim != 1 or t.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D array of scores, got shape "
                             f"{tuple(t.shape)}")
        t = t.to(torch.float64).cpu()
        if not torch.isfinite(t).all():
            raise ValueError(f"{name} contains NaN or inf")
        out.append(t)
    return out[0], out[1]


def _grouped(pos: Tensor, neg: Tensor) -> tuple[Tensor, Tensor]:
    """Per distinct score value (ascending): number of positives and of all examples there."""
    values = torch.cat([pos, neg])
    is_pos = torch.cat([torch.ones_like(pos), torch.zeros_like(neg)])
    _, inverse, counts = torch.unique(values, sorted=True, return_inverse=True, return_counts=True)
    n_pos = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, is_pos)
    return n_pos, counts.to(torch.float64)


def auroc(scores_pos: Any, scores_neg: Any) -> float:
    """Area under the ROC curve = P(s⁺ > s⁻) + ½ P(s⁺ = s⁻) (Mann–Whitney U / (n⁺ n⁻)).

    Computed from mid-ranks: AUROC = (R⁺ − n⁺(n⁺+1)/2) / (n⁺ n⁻), R⁺ = rank sum of the positives
    with tied scores sharing their average rank (Hanley & McNeil 1982).
    """
    pos, neg = _check_scores(scores_pos, scores_neg)
    n_pos_at, n_at = _grouped(pos, neg)
    start = torch.cumsum(n_at, 0) - n_at  # examples strictly below each distinct value
    mid_rank = start + (n_at + 1) / 2
    rank_sum = (n_pos_at * mid_rank).sum()
    n_p, n_n = float(len(pos)), float(len(neg))
    return float((rank_sum - n_p * (n_p + 1) / 2) / (n_p * n_n))


def aupr(scores_pos: Any, scores_neg: Any) -> float:
    """Average precision with ``scores_pos`` as the positive class (area under precision–recall).

    AP = Σ_t (R_t − R_{t−1}) P_t over the distinct score values t in decreasing order, where P_t
    and R_t are precision and recall when predicting "positive" for every score ≥ t (tied scores
    enter together; no interpolation — the same definition as scikit-learn's average_precision).
    """
    pos, neg = _check_scores(scores_pos, scores_neg)
    n_pos_at, n_at = _grouped(pos, neg)
    tp = torch.cumsum(n_pos_at.flip(0), 0)  # thresholds from the highest score down
    predicted = torch.cumsum(n_at.flip(0), 0)
    recall = tp / len(pos)
    precision = tp / predicted
    d_recall = torch.diff(recall, prepend=recall.new_zeros(1))
    return float((d_recall * precision).sum())


def _known_score(probs: Any, score: str, name: str) -> tuple[Tensor, int]:
    """Higher = more "known" (in-distribution): −entropy, max prob or −MI; and the class count."""
    if score == "mutual_information":
        p = _check_probs(probs, (3,), name)  # (K, N, C)
        return -_mutual_information(p), p.shape[-1]
    p = _mean_over_samples(probs, name)  # (N, C)
    return (-_entropy(p) if score == "entropy" else p.max(-1).values), p.shape[-1]


def ood_auroc(probs_in: Any, probs_out: Any, score: str = "entropy") -> dict[str, float]:
    """Out-of-distribution detection: AUROC and AUPR with in-distribution as the positive class.

    Each example gets a "known-ness" score — ``entropy``: −H[p̄]; ``max_prob``: max_c p̄_c;
    ``mutual_information``: −MI (needs (K, N, C) samples for both sets) — and
    :func:`auroc` / :func:`aupr` measure how well it ranks in-distribution above OOD inputs.
    ``entropy`` and ``max_prob`` accept (N, C) or (K, N, C) (averaged over K).
    """
    if score not in OOD_SCORES:
        raise ValueError(f"score={score!r} is not known; choose one of {', '.join(OOD_SCORES)}")
    s_in, c_in = _known_score(probs_in, score, "probs_in")
    s_out, c_out = _known_score(probs_out, score, "probs_out")
    if c_in != c_out:
        raise ValueError(f"probs_in and probs_out must have the same number of classes, got "
                         f"{c_in} and {c_out}")
    return {"auroc": auroc(s_in, s_out), "aupr": aupr(s_in, s_out)}


def misclassification_auroc(probs: Any, labels: Any) -> float:
    """AUROC of the max probability for separating correct (positive) from wrong predictions.

    Accepts (N, C) or (K, N, C) (averaged over K). Returns NaN when every prediction is correct
    or every one is wrong (the AUROC is undefined then).
    """
    p = _mean_over_samples(probs)
    y = _check_labels(labels, p.shape[0], p.shape[1])
    conf, pred = p.cpu().max(-1)
    right = pred == y
    if right.all() or not right.any():
        return float("nan")
    return auroc(conf[right], conf[~right])


def summarize(probs_k: Any, labels: Any, n_bins: int = 15) -> dict[str, float]:
    """All scalar metrics of docs/method.md §9 for K posterior-sample predictions (K, N, C).

    The predictive is the mean over K. Keys: accuracy, nll, brier, ece (top-label, ``n_bins``
    equal-width bins), mean_entropy (of the predictive), mean_mutual_information,
    misclassification_auroc, n_samples (= K). An (N, C) input counts as K = 1.
    """
    p = _check_probs(probs_k, (2, 3), "probs_k")
    p = p[None] if p.ndim == 2 else p  # (K, N, C)
    mean = p.mean(0)  # (N, C)
    return {
        "accuracy": accuracy(mean, labels), "nll": nll(mean, labels), "brier": brier(mean, labels),
        "ece": ece(mean, labels, n_bins),
        "mean_entropy": float(predictive_entropy(mean).mean()),
        "mean_mutual_information": float(mutual_information(p).mean()),
        "misclassification_auroc": misclassification_auroc(mean, labels),
        "n_samples": int(p.shape[0]),
    }
