"""Removal and addition criteria of SSVI, all behind one shared top-k routine
(docs/method.md §5–§6).

SSVI (Li et al., ICLR 2024, §4.2) keeps a fixed number of active weights per layer. Every ΔT steps
it *removes* the active weights with the lowest removal score and *adds* the inactive weights with
the highest addition score. A criterion is therefore just a score: a tensor of the weight's shape,
higher = keep (removal) or higher = add (addition). Both choices go through :func:`top_k_mask`.

Scores are looked up by string key in :data:`REMOVAL_SCORES` / :data:`ADDITION_SCORES`; the same
keys are used by ``TrainConfig.removal`` / ``.addition``, the CLI and the notebook widgets.
Notebook 03_snr_removal introduces the removal scores and compares the sets they remove
(:func:`removal_agreement`, :func:`score_rank_correlation`).

Numerics: the closed forms are evaluated in float64, written in terms of z = abs(μ)/σ and λσ so that
no large terms cancel, and returned in the input dtype. Scores are detached (not
differentiable). σ is floored at ``SIGMA_FLOOR``, so σ = 0 gives a huge (in float32: inf) score,
not NaN; top_k_mask ranks any NaN score lowest.

This module imports only torch and the standard library: ``ssvi_lite.config`` imports it to
validate keys, so it must not import any other ssvi_lite module.
"""
from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
from torch import Tensor

EXP_ABS_LAMBDA = 1.0  # λ of mean_exp_abs / snr_exp_abs (docs/method.md §6)
SIGMA_FLOOR = 1e-300  # σ is clamped to at least this (float64) before dividing by it
SERIES_BELOW = 1e-3  # snr_exp_abs uses its cumulant series where λσ is below this
_SQRT2 = math.sqrt(2.0)
_VAR_TINY = 1e-300


# ----------------------------------------------------------------------------- input checks
def _as_f64(mu: Tensor, sigma: Tensor) -> tuple[Tensor, Tensor]:
    """Validate a (μ, σ) pair and return detached float64 copies (σ floored at SIGMA_FLOOR)."""
    if not isinstance(mu, Tensor) or not isinstance(sigma, Tensor):
        raise ValueError(f"mu and sigma must be torch tensors, got {type(mu).__name__} and "  # noqa: TRY004
                         f"{type(sigma).__name__}")
    if mu.shape != sigma.shape:
        raise ValueError(f"mu and sigma must have the same shape, got {tuple(mu.shape)} and "
                         f"{tuple(sigma.shape)}")
    if not (mu.is_floating_point() and sigma.is_floating_point()):
        raise ValueError(f"mu and sigma must be floating point, got {mu.dtype} and {sigma.dtype}")
    mu64 = mu.detach().to(torch.float64)
    sigma64 = sigma.detach().to(torch.float64).clamp_min(SIGMA_FLOOR)
    return mu64, sigma64


def _out(x: Tensor, mu: Tensor, sigma: Tensor) -> Tensor:
    """Cast a float64 result back to the inputs' (promoted) dtype."""
    return x.to(torch.promote_types(mu.dtype, sigma.dtype))


def _folded_parts(z: Tensor) -> tuple[Tensor, Tensor]:
    """For X = abs(Z + z), Z ~ N(0, 1), z ≥ 0: return d = 𝔼X − z and Var X, without cancellation.

    d = 2(φ(z) − z·(1 − Φ(z))), and Var X = 1 + z² − (z + d)² = 1 − 2zd − d².
    """
    phi = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    d = (2.0 * (phi - z * torch.special.ndtr(-z))).clamp_min(0.0)
    var = (1.0 - 2.0 * z * d - d * d).clamp_min(_VAR_TINY)
    return d, var


# ----------------------------------------------------------------------------- closed forms
def folded_normal_mean(mu: Tensor, sigma: Tensor) -> Tensor:
    """𝔼 abs(θ) for θ ~ N(μ, σ²), the mean of the folded normal (docs/method.md §6, ``mean_abs``).

    𝔼 abs(θ) = μ·erf(μ/(σ√2)) + σ·√(2/π)·exp(−μ²/(2σ²)),
    evaluated as σ·(z + d(z)) with z = abs(μ)/σ (see ``_folded_parts``). 𝔼 abs(θ) → abs(μ) when
    abs(μ) ≫ σ and 𝔼 abs(θ) → σ√(2/π) at μ = 0. Notebook 03_snr_removal.
    """
    mu64, sigma64 = _as_f64(mu, sigma)
    z = mu64.abs() / sigma64
    d, _ = _folded_parts(z)
    return _out(sigma64 * (z + d), mu, sigma)


def _log_fold(z: Tensor, s: Tensor) -> Tensor:
    """L(z, λσ) = log[Φ(z + λσ) + e^{−2λσz}·Φ(λσ − z)] (the argument ``s`` is λσ),
    so that log g(λ) = (λσ)²/2 + λ·abs(μ) + L(z, λσ)."""
    return torch.logaddexp(torch.special.log_ndtr(z + s),
                           -2.0 * s * z + torch.special.log_ndtr(s - z))


def _log_exp_abs_moment(a: Tensor, sigma: Tensor, lam: float) -> Tensor:
    """log g(λ) = λ²σ²/2 + λa + L(a/σ, λσ), a = abs(μ)."""
    s = lam * sigma
    return 0.5 * s * s + lam * a + _log_fold(a / sigma, s)


def exp_abs_moment(mu: Tensor, sigma: Tensor, lam: float = EXP_ABS_LAMBDA) -> Tensor:
    """𝔼 exp(λ·abs(θ)) for θ ~ N(μ, σ²), the moment generating function of abs(θ)
    (docs/method.md §6).

    g(λ) = e^{λ²σ²/2 + λμ}·Φ(μ/σ + λσ) + e^{λ²σ²/2 − λμ}·Φ(−μ/σ + λσ),
    computed in log space with ``log_ndtr`` (finite up to e^{709} in float64; a float32 result
    overflows to inf once λ²σ²/2 + λ·abs(μ) exceeds ≈ 88). Notebook 03_snr_removal.
    """
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam > 0:
        raise ValueError(f"lam must be a positive number, got {lam!r}")
    mu64, sigma64 = _as_f64(mu, sigma)
    return _out(torch.exp(_log_exp_abs_moment(mu64.abs(), sigma64, float(lam))), mu, sigma)


def _exp_abs_series(z: Tensor, s: Tensor) -> Tensor:
    """R_λ = log(g(2λ)/g(λ)²) = Σ_n c_n (λσ)^n (2^n − 2)/n!
    ≈ c₂ (λσ)² + c₃ (λσ)³ + (7/12) c₄ (λσ)⁴ for small λσ (the argument ``s`` is λσ).

    c_n are the cumulants of abs(Z + z), from the folded-normal raw moments
    𝔼X = zP + 2φ, 𝔼X² = z² + 1, 𝔼X³ = (z³ + 3z)P + 2(z² + 2)φ, 𝔼X⁴ = z⁴ + 6z² + 3,
    P = erf(z/√2). Beyond z = 12 the fold is below float64 precision: c₃ = c₄ = 0.
    """
    _, k2 = _folded_parts(z)
    zc = z.clamp_max(12.0)
    phi = torch.exp(-0.5 * zc * zc) / math.sqrt(2.0 * math.pi)
    p = torch.erf(zc / _SQRT2)
    m1, m2 = zc * p + 2.0 * phi, zc * zc + 1.0
    m3 = (zc ** 3 + 3.0 * zc) * p + 2.0 * (zc * zc + 2.0) * phi
    m4 = zc ** 4 + 6.0 * zc * zc + 3.0
    c2 = m2 - m1 * m1
    k3 = m3 - 3.0 * m1 * m2 + 2.0 * m1 ** 3
    k4 = m4 - 4.0 * m1 * m3 + 6.0 * m1 * m1 * m2 - 3.0 * m1 ** 4 - 3.0 * c2 * c2
    far = z > 12.0
    k3, k4 = torch.where(far, 0.0, k3), torch.where(far, 0.0, k4)
    return k2 * s * s + k3 * s ** 3 + (7.0 / 12.0) * k4 * s ** 4


# ----------------------------------------------------------------------------- removal scores
def magnitude(mu: Tensor, sigma: Tensor) -> Tensor:
    """abs(μ): keep the weights with the largest posterior mean (RigL-style magnitude pruning)."""
    _as_f64(mu, sigma)
    return _out(mu.detach().abs(), mu, sigma)


def snr(mu: Tensor, sigma: Tensor) -> Tensor:
    """abs(μ)/σ: the signal-to-noise ratio of θ (Graves 2011's pruning rule)."""
    mu64, sigma64 = _as_f64(mu, sigma)
    return _out(mu64.abs() / sigma64, mu, sigma)


def mean_abs(mu: Tensor, sigma: Tensor) -> Tensor:
    """𝔼 abs(θ) = folded_normal_mean(μ, σ): weights likely to be far from zero are kept."""
    return folded_normal_mean(mu, sigma)


def snr_abs(mu: Tensor, sigma: Tensor) -> Tensor:
    """SNR of abs(θ), the paper's default: 𝔼 abs(θ) / sqrt(Var abs(θ)) (docs/method.md §6).

    snr_abs = 𝔼 abs(θ) / sqrt(σ² + μ² − (𝔼 abs(θ))²), 𝔼 abs(θ) = folded_normal_mean(μ, σ);
    evaluated as (z + d)/sqrt(1 − 2zd − d²), z = abs(μ)/σ, so it depends on z only and increases
    with it.
    Note: as μ → 0 it tends to √(2/(π − 2)) ≈ 1.32, not 0 (abs(θ) of a centred weight is still
    positive); for abs(μ) ≫ σ it approaches abs(μ)/σ = ``snr``. Notebook 03_snr_removal.
    """
    mu64, sigma64 = _as_f64(mu, sigma)
    z = mu64.abs() / sigma64
    d, var = _folded_parts(z)
    return _out((z + d) / var.sqrt(), mu, sigma)


def mean_exp_abs(mu: Tensor, sigma: Tensor, lam: float = EXP_ABS_LAMBDA) -> Tensor:
    """𝔼 exp(λ·abs(θ)) = g(λ) (see :func:`exp_abs_moment`), λ = 1 by default."""
    return exp_abs_moment(mu, sigma, lam)


def snr_exp_abs(mu: Tensor, sigma: Tensor, lam: float = EXP_ABS_LAMBDA) -> Tensor:
    """SNR of exp(λ·abs(θ)): g(λ) / sqrt(g(2λ) − g(λ)²) (docs/method.md §6), λ = 1 by default.

    Evaluated as 1/sqrt(expm1(R_λ)) with R_λ = log g(2λ) − 2 log g(λ) = (λσ)² + L(z, 2λσ)
    − 2L(z, λσ) (the λ·abs(μ) terms cancel exactly); for λσ < SERIES_BELOW, R_λ comes from its
    cumulant series (``_exp_abs_series``) because L is then O(1) − O(1). For abs(μ) ≫ σ
    exp(λ·abs(θ)) is lognormal and the score is 1/sqrt(expm1(λ²σ²)) ≈ 1/(λσ), whatever μ is: with
    weights near 0.01 and λ = 1 it mostly ranks by 1/σ. At fixed σ it even *decreases* with
    abs(μ) (folding at 0 makes exp(λ·abs(θ)) of a centred weight less spread). Notebook
    03_snr_removal.
    """
    if not isinstance(lam, (int, float)) or isinstance(lam, bool) or not lam > 0:
        raise ValueError(f"lam must be a positive number, got {lam!r}")
    mu64, sigma64 = _as_f64(mu, sigma)
    z, s = mu64.abs() / sigma64, float(lam) * sigma64
    exact = s * s + _log_fold(z, 2.0 * s) - 2.0 * _log_fold(z, s)
    series = _exp_abs_series(z, s)
    d = torch.where(s < SERIES_BELOW, series, exact).clamp_min(_VAR_TINY)
    return _out(torch.expm1(d).rsqrt(), mu, sigma)


def random_removal(mu: Tensor, sigma: Tensor) -> Tensor:
    """Uniform noise U(0, 1) from torch's global RNG (ablation; seed with ``seed_everything``)."""
    _as_f64(mu, sigma)
    return torch.rand_like(mu, dtype=torch.promote_types(mu.dtype, sigma.dtype))


# ----------------------------------------------------------------------------- addition scores
def _check_grad(dense_grad: Tensor) -> None:
    if not isinstance(dense_grad, Tensor) or not dense_grad.is_floating_point():
        raise ValueError(f"dense_grad must be a floating-point torch tensor, got {dense_grad!r}")


def grad_magnitude(dense_grad: Tensor) -> Tensor:
    """abs(∂CE/∂μ), the dense data-term gradient of the batch (RigL's growth rule,
    docs/method.md §5)."""
    _check_grad(dense_grad)
    return dense_grad.detach().abs()


def random_addition(dense_grad: Tensor) -> Tensor:
    """Uniform noise U(0, 1) of the gradient's shape from torch's global RNG (ablation)."""
    _check_grad(dense_grad)
    return torch.rand_like(dense_grad)


# ----------------------------------------------------------------------------- registries
REMOVAL_SCORES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "magnitude": magnitude,
    "snr": snr,
    "mean_abs": mean_abs,
    "snr_abs": snr_abs,
    "mean_exp_abs": mean_exp_abs,
    "snr_exp_abs": snr_exp_abs,
    "random": random_removal,
}
ADDITION_SCORES: dict[str, Callable[[Tensor], Tensor]] = {
    "grad": grad_magnitude,
    "random": random_addition,
}
DEFAULT_REMOVAL = "snr_abs"
DEFAULT_ADDITION = "grad"


def _check_key(kind: str, key: object, registry: dict) -> str:
    if not isinstance(key, str) or key not in registry:
        raise ValueError(f"{kind} criterion {key!r} is not known; choose one of "
                         f"{', '.join(registry)}")
    return key


def check_removal_key(key: object) -> str:
    """Return ``key`` if it names a removal score; ValueError listing the valid keys otherwise."""
    return _check_key("removal", key, REMOVAL_SCORES)


def check_addition_key(key: object) -> str:
    """Return ``key`` if it names an addition score; ValueError listing the valid keys otherwise."""
    return _check_key("addition", key, ADDITION_SCORES)


def removal_score(key: str, mu: Tensor, sigma: Tensor) -> Tensor:
    """``REMOVAL_SCORES[key](mu, sigma)`` after validating the key: same shape, higher = keep."""
    return REMOVAL_SCORES[check_removal_key(key)](mu, sigma)


def addition_score(key: str, dense_grad: Tensor) -> Tensor:
    """``ADDITION_SCORES[key](dense_grad)`` after validating the key: same shape, higher = add."""
    return ADDITION_SCORES[check_addition_key(key)](dense_grad)


# ----------------------------------------------------------------------------- shared top-k
def _as_count(k: object) -> int:
    """``k`` as a Python int (ints, NumPy integers, one-element integer tensors); never a bool."""
    if not isinstance(k, bool):
        try:
            return operator.index(k)
        except TypeError:
            pass
    raise ValueError(f"k must be an integer, got {k!r}")


def top_k_mask(scores: Tensor, k: int, allowed: Tensor | None = None) -> Tensor:
    """Bool mask with exactly ``k`` True entries: the highest ``scores`` among ``allowed``.

    The one selection routine behind every criterion (docs/method.md §5): removal keeps the top
    (n_active − n_swap) active weights, addition activates the top n_swap of the rest. Order:
    higher score first, NaN scores last, ties broken by the lower flat (row-major) index, so the
    result is deterministic. ValueError if k < 0 or k > the number of allowed entries.
    """
    if not isinstance(scores, Tensor) or scores.is_complex() or scores.dtype == torch.bool:
        raise ValueError("scores must be a real-valued torch tensor, got "
                         f"{type(scores).__name__} {getattr(scores, 'dtype', '')}")
    if allowed is None:
        allowed = torch.ones_like(scores, dtype=torch.bool)
    elif not isinstance(allowed, Tensor) or allowed.dtype != torch.bool or \
            allowed.shape != scores.shape:
        raise ValueError("allowed must be a bool tensor of the scores' shape "
                         f"{tuple(scores.shape)}, got {getattr(allowed, 'dtype', type(allowed))} "
                         f"of shape {tuple(getattr(allowed, 'shape', ()))}")
    n_allowed = int(allowed.sum())
    k = _as_count(k)
    if not 0 <= k <= n_allowed:
        raise ValueError(f"k={k} is out of range: choose 0 <= k <= {n_allowed} (allowed entries)")
    candidates = allowed.reshape(-1).nonzero().squeeze(1)  # (n_allowed,) ascending flat indices
    values = scores.detach().reshape(-1)[candidates].to(torch.float64)
    # NaN ranks below every number, -inf included
    values = torch.nan_to_num(values, nan=-math.inf, neginf=-torch.finfo(torch.float64).max)
    chosen = torch.zeros(scores.numel(), dtype=torch.bool, device=scores.device)
    if k == 0:
        return chosen.reshape(scores.shape)
    # linear-time selection: everything above the k-th largest value, then the ties at that value
    # with the lowest flat indices (``candidates`` is ascending, so the first ones)
    kth = torch.topk(values, k, sorted=False).values.min()
    above = values > kth
    ties = (values == kth).nonzero().squeeze(1)[: k - int(above.sum())]
    chosen[candidates[above]] = True
    chosen[candidates[ties]] = True
    return chosen.reshape(scores.shape)


# ----------------------------------------------------------------------------- agreement
def removal_agreement(mask_a: Tensor, mask_b: Tensor) -> float:
    """Intersection over union of two removal sets (bool tensors): |A ∩ B| / |A ∪ B|.

    1.0 when both sets are empty. docs/method.md §7 claim 3; notebook 03_snr_removal.
    """
    for name, m in (("mask_a", mask_a), ("mask_b", mask_b)):
        if not isinstance(m, Tensor) or m.dtype != torch.bool:
            raise ValueError(f"{name} must be a bool tensor, got {getattr(m, 'dtype', type(m))}")
    if mask_a.shape != mask_b.shape:
        raise ValueError(f"masks must have the same shape, got {tuple(mask_a.shape)} and "
                         f"{tuple(mask_b.shape)}")
    union = int((mask_a | mask_b).sum())
    return 1.0 if union == 0 else int((mask_a & mask_b).sum()) / union


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of a 1-D float64 tensor, tied values sharing the mean of their ranks."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)  # last rank of each distinct value
    return (ends - (counts.to(torch.float64) - 1.0) / 2.0)[inverse]


def score_rank_correlation(scores_a: Tensor, scores_b: Tensor,
                           among: Tensor | None = None) -> float:
    """Spearman rank correlation of two score tensors (over the entries where ``among`` is True).

    r_S = Pearson correlation of the average ranks (ties share their mean rank), as
    scipy.stats.spearmanr. NaN when fewer than 2 entries, any score is NaN, or a side is constant.
    docs/method.md §7 claim 3; notebook 03_snr_removal.
    """
    if not isinstance(scores_a, Tensor) or not isinstance(scores_b, Tensor) or \
            scores_a.shape != scores_b.shape:
        raise ValueError("scores_a and scores_b must be tensors of the same shape, got "
                         f"{tuple(getattr(scores_a, 'shape', ()))} and "
                         f"{tuple(getattr(scores_b, 'shape', ()))}")
    a, b = scores_a.detach().reshape(-1).double(), scores_b.detach().reshape(-1).double()
    if among is not None:
        if not isinstance(among, Tensor) or among.dtype != torch.bool or \
                among.shape != scores_a.shape:
            raise ValueError(f"among must be a bool tensor of shape {tuple(scores_a.shape)}")
        a, b = a[among.reshape(-1)], b[among.reshape(-1)]
    if a.numel() < 2 or bool(torch.isnan(a).any() or torch.isnan(b).any()):
        return math.nan
    ra, rb = _average_ranks(a), _average_ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return math.nan if denom == 0.0 else float((ra * rb).sum()) / denom
