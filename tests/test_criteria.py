"""Tests of ssvi_lite.criteria: closed forms vs Monte Carlo and vs 60-digit mpmath, limits,
symmetry, the shared top-k routine (hypothesis), registries and the agreement measures (scipy)."""
from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import spearmanr

from ssvi_lite import criteria as C
from ssvi_lite.config import seed_everything

CLOSED = ("magnitude", "snr", "mean_abs", "snr_abs", "mean_exp_abs", "snr_exp_abs")
SNR_ABS_AT_ZERO = math.sqrt(2.0 / (math.pi - 2.0))


def t64(*xs: float) -> torch.Tensor:
    return torch.tensor(xs, dtype=torch.float64)


# ----------------------------------------------------------------------------- Monte Carlo
def _mc(values: torch.Tensor, n_batches: int = 40) -> tuple[float, float, float, float]:
    """(mean, its SE, SNR = mean/std, its SE) with SEs from batch means of ``values`` (n,)."""
    batches = values.reshape(n_batches, -1)  # (B, n/B)
    means, snrs = batches.mean(1), batches.mean(1) / batches.std(1)

    def se(x: torch.Tensor) -> float:
        return float(x.std() / math.sqrt(n_batches))

    return float(values.mean()), se(means), float(values.mean() / values.std()), se(snrs)


MC_GRID = [(0.0, 1.0), (0.5, 1.0), (-0.5, 1.0), (2.0, 0.5), (-1.0, 2.0), (0.01, 0.02),
           (0.0, 1e-3), (-3.0, 0.3), (0.2, 0.4)]


@pytest.mark.parametrize("mu,sigma", MC_GRID)
def test_closed_forms_match_monte_carlo(mu: float, sigma: float) -> None:
    gen = torch.Generator().manual_seed(1234)
    theta = mu + sigma * torch.randn(400_000, generator=gen, dtype=torch.float64)  # (n,)
    m, s = t64(mu), t64(sigma)
    checks = {"abs": (theta.abs(), C.mean_abs(m, s), C.snr_abs(m, s))}
    if sigma <= 0.5:  # exp(abs θ) has heavy tails for large σ: its MC variance is unreliable
        checks["exp"] = (torch.exp(theta.abs()), C.mean_exp_abs(m, s), C.snr_exp_abs(m, s))
    for name, (values, mean_cf, snr_cf) in checks.items():
        mean_mc, mean_se, snr_mc, snr_se = _mc(values)
        assert abs(float(mean_cf) - mean_mc) <= 5 * mean_se + 1e-12, (name, mean_cf, mean_mc)
        assert abs(float(snr_cf) - snr_mc) <= 5 * snr_se + 1e-9 * abs(snr_mc), \
            (name, snr_cf, snr_mc)
    # magnitude = abs(E θ) and snr = abs(E θ)/sd θ, checked the same way
    assert abs(float(C.magnitude(m, s)) - abs(float(theta.mean()))) <= 5 * sigma / math.sqrt(4e5)
    assert (abs(float(C.snr(m, s)) - abs(mu) / float(theta.std()))
            <= 5 / math.sqrt(4e5) + 1e-3 * abs(mu) / sigma)


# ----------------------------------------------------------------------------- high precision
def _mp_oracle(mu: float, sigma: float, lam: float = 1.0) -> dict[str, float]:
    """mean_abs, snr_abs, mean_exp_abs, snr_exp_abs with mpmath at 60 digits (no cancellation)."""
    with mpmath.workdps(60):
        m, s, lam = mpmath.mpf(mu), mpmath.mpf(sigma), mpmath.mpf(lam)
        m1 = m * mpmath.erf(m / (s * mpmath.sqrt(2))) + s * mpmath.sqrt(2 / mpmath.pi) * \
            mpmath.exp(-m ** 2 / (2 * s ** 2))

        def g(t):
            return (mpmath.exp(t ** 2 * s ** 2 / 2 + t * m) * mpmath.ncdf(m / s + t * s)
                    + mpmath.exp(t ** 2 * s ** 2 / 2 - t * m) * mpmath.ncdf(-m / s + t * s))

        return {"mean_abs": float(m1),
                "snr_abs": float(m1 / mpmath.sqrt(s ** 2 + m ** 2 - m1 ** 2)),
                "mean_exp_abs": float(g(lam)),
                "snr_exp_abs": float(g(lam) / mpmath.sqrt(g(2 * lam) - g(lam) ** 2))}


EXTREME = [(mu, sigma) for mu in (0.0, 1e-6, 0.01, -0.3, 1.0, -10.0)
           for sigma in (1e-8, 1e-5, 9.99e-4, 1.001e-3, 0.05, 1.0, 5.0)]


def test_closed_forms_match_mpmath_on_extreme_grid() -> None:
    mu, sigma = t64(*[p[0] for p in EXTREME]), t64(*[p[1] for p in EXTREME])
    ours = {k: C.REMOVAL_SCORES[k](mu, sigma) for k in ("mean_abs", "snr_abs", "mean_exp_abs",
                                                         "snr_exp_abs")}
    for i, (m, s) in enumerate(EXTREME):
        for key, want in _mp_oracle(m, s).items():
            assert float(ours[key][i]) == pytest.approx(want, rel=1e-7), (key, m, s)


def test_lambda_is_a_parameter() -> None:
    mu, sigma = t64(0.3), t64(0.2)
    want = _mp_oracle(0.3, 0.2, lam=2.5)
    assert float(C.exp_abs_moment(mu, sigma, 2.5)) == pytest.approx(want["mean_exp_abs"], rel=1e-10)
    assert float(C.snr_exp_abs(mu, sigma, lam=2.5)) == pytest.approx(want["snr_exp_abs"], rel=1e-8)
    assert (C.REMOVAL_SCORES["mean_exp_abs"](mu, sigma)
            == C.exp_abs_moment(mu, sigma, C.EXP_ABS_LAMBDA))
    with pytest.raises(ValueError, match="lam"):
        C.exp_abs_moment(mu, sigma, -1.0)


def test_series_and_exact_branches_join_smoothly() -> None:
    z = torch.linspace(0, 15, 61, dtype=torch.float64)
    for lam in (1.0, 3.0):
        lo, hi = C.SERIES_BELOW / lam * (1 - 1e-9), C.SERIES_BELOW / lam * (1 + 1e-9)
        a = C.snr_exp_abs(z * lo, torch.full_like(z, lo), lam)
        b = C.snr_exp_abs(z * hi, torch.full_like(z, hi), lam)
        assert torch.allclose(a, b, rtol=1e-7)


# ----------------------------------------------------------------------------- numerics
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("key", list(C.REMOVAL_SCORES))
def test_scores_are_finite_and_keep_shape_and_dtype(key: str, dtype: torch.dtype) -> None:
    sigma = torch.logspace(-8, math.log10(5.0), 23, dtype=dtype)
    mu = torch.linspace(-10, 10, 41, dtype=dtype)
    mu2, sigma2 = torch.meshgrid(mu, sigma, indexing="ij")  # (41, 23)
    out = C.removal_score(key, mu2, sigma2)
    assert out.shape == mu2.shape and out.dtype == dtype
    assert torch.isfinite(out).all() and (out >= 0).all()


def test_scores_do_not_track_gradients() -> None:
    mu = torch.randn(4, requires_grad=True)
    assert not C.snr_abs(mu, torch.full((4,), 0.1)).requires_grad


def test_mismatched_or_non_float_inputs_raise() -> None:
    with pytest.raises(ValueError, match="same shape"):
        C.snr_abs(torch.zeros(3), torch.ones(4))
    with pytest.raises(ValueError, match="floating"):
        C.snr(torch.zeros(3, dtype=torch.long), torch.ones(3))
    with pytest.raises(ValueError, match="dense_grad"):
        C.addition_score("grad", np.zeros(3))


# ----------------------------------------------------------------------------- limits, shape
def test_snr_abs_limits() -> None:
    sigma = t64(1e-8, 1e-3, 0.1, 1.0, 5.0)
    at_zero = C.snr_abs(torch.zeros_like(sigma), sigma)
    assert torch.allclose(at_zero, torch.full_like(sigma, SNR_ABS_AT_ZERO), rtol=1e-12)
    assert float(C.snr_abs(t64(1e-9), t64(1.0))) == pytest.approx(SNR_ABS_AT_ZERO, rel=1e-9)
    mu = 40.0 * sigma  # abs(μ) ≫ σ: abs(θ) ≈ θ
    assert torch.allclose(C.snr_abs(mu, sigma), mu / sigma, rtol=1e-12)
    assert torch.allclose(C.mean_abs(-mu, sigma), mu, rtol=1e-12)
    assert float(C.mean_abs(t64(0.0), t64(2.0))) == pytest.approx(2.0 * math.sqrt(2 / math.pi))


def test_snr_exp_abs_lognormal_limit_ranks_by_inverse_sigma() -> None:
    sigma = t64(1e-7, 1e-4, 1e-3, 0.02)
    mu = torch.full_like(sigma, 0.5)  # abs(μ) ≫ σ: exp(abs θ) is lognormal
    want = torch.expm1(sigma ** 2).rsqrt()
    assert torch.allclose(C.snr_exp_abs(mu, sigma), want, rtol=1e-9)
    # weights near 0.01 with σ ≪ 0.01: the score is ≈ 1/σ whatever μ is
    mu, sigma = t64(0.008, 0.012, 0.01), t64(1e-4, 2e-4, 5e-5)
    assert torch.allclose(C.snr_exp_abs(mu, sigma), 1 / sigma, rtol=1e-3)


@pytest.mark.parametrize("key", CLOSED)
def test_scores_are_symmetric_in_mu(key: str) -> None:
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(200, generator=gen, dtype=torch.float64) * 3
    sigma = torch.rand(200, generator=gen, dtype=torch.float64) * 2 + 1e-6
    assert torch.equal(C.removal_score(key, mu, sigma), C.removal_score(key, -mu, sigma))


def test_monotonicity() -> None:
    a = torch.linspace(0, 5, 101, dtype=torch.float64)
    one = torch.ones_like(a)
    for key in ("magnitude", "snr", "mean_abs", "snr_abs", "mean_exp_abs"):
        assert (C.removal_score(key, a, 0.7 * one).diff() > 0).all(), key  # increasing in abs(μ)
    # snr_exp_abs is not: at fixed σ it falls from μ = 0 to the lognormal value 1/sqrt(expm1(σ²))
    se = C.snr_exp_abs(a, 0.7 * one)
    assert (se.diff() < 1e-12).all() and float(se[-1]) == pytest.approx(math.expm1(0.49) ** -0.5)
    sig = torch.linspace(0.01, 3, 101, dtype=torch.float64)
    for key in ("snr", "snr_abs", "snr_exp_abs"):
        assert (C.removal_score(key, 0.5 * one, sig).diff() < 0).all(), key  # decreasing in σ
    assert (C.mean_abs(0.5 * one, sig + 0.1).diff() > 0).all()  # 𝔼 abs(θ) grows with σ
    assert torch.equal(C.magnitude(0.5 * one, sig), 0.5 * one)  # magnitude ignores σ
    # magnitude and snr order weights differently when σ differs
    mu, sigma = t64(1.0, 2.0), t64(0.1, 1.0)
    assert C.magnitude(mu, sigma).argmax() == 1 and C.snr(mu, sigma).argmax() == 0


def test_random_and_grad_scores() -> None:
    mu, sigma = torch.randn(5, 6), torch.rand(5, 6)
    seed_everything(3)
    r1 = C.removal_score("random", mu, sigma)
    seed_everything(3)
    assert torch.equal(r1, C.removal_score("random", mu, sigma)) and r1.shape == (5, 6)
    assert ((r1 >= 0) & (r1 < 1)).all()
    g = torch.tensor([[-3.0, 0.5], [0.0, -0.1]])
    assert torch.equal(C.addition_score("grad", g), g.abs())
    assert C.addition_score("random", g).shape == g.shape


# ----------------------------------------------------------------------------- registries
def test_registries_have_the_documented_keys() -> None:
    assert list(C.REMOVAL_SCORES) == ["magnitude", "snr", "mean_abs", "snr_abs", "mean_exp_abs",
                                      "snr_exp_abs", "random"]
    assert list(C.ADDITION_SCORES) == ["grad", "random"]
    assert C.DEFAULT_REMOVAL == "snr_abs" and C.DEFAULT_ADDITION == "grad"
    for key in C.REMOVAL_SCORES:
        assert C.check_removal_key(key) == key
    for key in C.ADDITION_SCORES:
        assert C.check_addition_key(key) == key


@pytest.mark.parametrize("bad", ["SNR_abs", "l1", "", None, 3])
def test_unknown_keys_list_the_valid_ones(bad: object) -> None:
    with pytest.raises(ValueError) as info:
        C.check_removal_key(bad)
    assert repr(bad) in str(info.value) and all(k in str(info.value) for k in C.REMOVAL_SCORES)
    with pytest.raises(ValueError) as info:
        C.addition_score(bad, torch.zeros(2))
    assert (repr(bad) in str(info.value) and "grad" in str(info.value)
            and "random" in str(info.value))
    with pytest.raises(ValueError, match="snr_exp_abs"):
        C.removal_score(bad, torch.zeros(2), torch.ones(2))


# ----------------------------------------------------------------------------- top-k
def _oracle_top_k(scores: np.ndarray, k: int, allowed: np.ndarray) -> np.ndarray:
    flat, ok = scores.reshape(-1), allowed.reshape(-1)
    idx = sorted(np.flatnonzero(ok), key=lambda i: (math.isnan(flat[i]),
                                                   0.0 if math.isnan(flat[i]) else -flat[i], i))
    out = np.zeros(flat.shape, dtype=bool)
    out[idx[:k]] = True
    return out.reshape(scores.shape)


VALUES = st.sampled_from([-2.0, -0.5, 0.0, 0.5, 1.0, 3.0, math.nan, math.inf, -math.inf])


@settings(max_examples=150, deadline=None)
@given(data=st.data(), shape=st.lists(st.integers(1, 5), min_size=1, max_size=3))
def test_top_k_mask_properties(data: st.DataObject, shape: list[int]) -> None:
    n = int(np.prod(shape))
    scores = np.array(data.draw(st.lists(VALUES | st.floats(-5, 5), min_size=n, max_size=n)))
    allowed = np.array(data.draw(st.lists(st.booleans(), min_size=n, max_size=n))).reshape(shape)
    scores = scores.reshape(shape)
    k = data.draw(st.integers(0, int(allowed.sum())))
    use_all = data.draw(st.booleans())  # then also test float32 scores and allowed=None
    scores = scores.astype(np.float32 if use_all else np.float64)
    mask = C.top_k_mask(torch.from_numpy(scores), k, None if use_all else torch.tensor(allowed))
    ok = np.ones_like(allowed) if use_all else allowed
    m = mask.numpy()
    assert mask.dtype == torch.bool and m.shape == tuple(shape) and m.sum() == k
    assert not (m & ~ok).any()
    key = np.where(np.isnan(scores), -np.inf, scores)
    chosen, unchosen = key[m], key[ok & ~m]
    if chosen.size and unchosen.size:
        assert chosen.min() >= unchosen.max()
    assert not (np.isnan(scores[m]).any() and (~np.isnan(scores[ok & ~m])).any())  # NaN last
    expect = _oracle_top_k(scores, k, ok)
    assert (m == expect).all()  # ties by lower flat index: deterministic


def test_top_k_mask_ties_and_nan_by_hand() -> None:
    s = torch.tensor([[1.0, 2.0, 2.0], [float("nan"), 2.0, -float("inf")]])
    assert C.top_k_mask(s, 2).tolist() == [[False, True, True], [False, False, False]]
    assert C.top_k_mask(s, 5).tolist() == [[True, True, True], [False, True, True]]
    allowed = torch.tensor([[True, False, True], [True, True, False]])
    assert C.top_k_mask(s, 3, allowed).tolist() == [[True, False, True], [False, True, False]]
    assert not C.top_k_mask(s, 0, allowed).any()


def test_top_k_mask_rejects_bad_input() -> None:
    s, allowed = torch.arange(6.0), torch.tensor([True, False] * 3)
    for k in (-1, 4, 2.0, True):
        with pytest.raises(ValueError, match="k"):
            C.top_k_mask(s, k, allowed)
    with pytest.raises(ValueError, match="allowed"):
        C.top_k_mask(s, 1, torch.ones(5, dtype=torch.bool))
    with pytest.raises(ValueError, match="allowed"):
        C.top_k_mask(s, 1, torch.ones(6))
    with pytest.raises(ValueError, match="scores"):
        C.top_k_mask(np.arange(6.0), 1)


# ----------------------------------------------------------------------------- agreement
def test_removal_agreement_by_hand() -> None:
    def b(*xs: int) -> torch.Tensor:
        return torch.tensor(xs, dtype=torch.bool)

    assert C.removal_agreement(b(1, 1, 0, 0), b(0, 1, 1, 0)) == pytest.approx(1 / 3)
    assert C.removal_agreement(b(0, 0), b(0, 0)) == 1.0
    assert C.removal_agreement(b(1, 0), b(0, 0)) == 0.0
    assert C.removal_agreement(b(1, 0, 1), b(1, 0, 1)) == 1.0
    with pytest.raises(ValueError, match="same shape"):
        C.removal_agreement(b(1, 0), b(1, 0, 0))
    with pytest.raises(ValueError, match="bool"):
        C.removal_agreement(torch.ones(2), b(1, 0))


def test_score_rank_correlation_by_hand() -> None:
    a = t64(1, 2, 3, 4)
    assert C.score_rank_correlation(a, a ** 3) == pytest.approx(1.0)
    assert C.score_rank_correlation(a, -a) == pytest.approx(-1.0)
    assert C.score_rank_correlation(a, t64(2, 1, 4, 3)) == pytest.approx(0.6)  # 1 − 6·4/(4·15)
    assert math.isnan(C.score_rank_correlation(a, torch.ones(4, dtype=torch.float64)))
    assert math.isnan(C.score_rank_correlation(t64(1), t64(2)))
    assert math.isnan(C.score_rank_correlation(t64(1, math.nan), t64(2, 3)))
    with pytest.raises(ValueError, match="same shape"):
        C.score_rank_correlation(a, t64(1, 2))


@pytest.mark.parametrize("seed", range(5))
def test_score_rank_correlation_matches_scipy(seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 6, (7, 9), generator=gen).double()  # many ties
    b = a + torch.randint(0, 4, (7, 9), generator=gen).double()
    among = torch.rand(7, 9, generator=gen) < 0.6
    want = spearmanr(a[among].numpy(), b[among].numpy()).statistic
    assert C.score_rank_correlation(a, b, among) == pytest.approx(want, abs=1e-12)
    want_all = spearmanr(a.reshape(-1).numpy(), b.reshape(-1).numpy()).statistic
    assert C.score_rank_correlation(a, b) == pytest.approx(want_all, abs=1e-12)
