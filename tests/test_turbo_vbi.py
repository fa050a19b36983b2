"""Turbo-VBI (methods/turbo_vbi.py): closed-form γ/s-steps against numerics from their definitions,
message passing against brute force on chains and on a planted block, pruning, structure report."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, ndimage, stats

from ssvi_lite.config import make_config, seed_everything
from ssvi_lite.data import DataSplits
from ssvi_lite.methods import turbo_vbi
from ssvi_lite.train import fit

OPTS = turbo_vbi.TurboVBIOptions(a=1.5, b=0.3, a_bar=4.0, b_bar=0.02)


def _toy_data(n_train: int = 128, d: int = 10, n_classes: int = 3, seed: int = 0) -> DataSplits:
    """Gaussian blobs in the first 4 features; the other 6 are always 0 (no evidence for them)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, 4, generator=g) * 2

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, n_classes, (n,), generator=g)
        x = torch.zeros(n, d)
        x[:, :4] = centres[y] + torch.randn(n, 4, generator=g)
        return x, y.long()

    (xt, yt), (xv, yv), (xs, ys) = part(n_train), part(48), part(48)
    return DataSplits("toy", xt, yt, xv, yv, xs, ys, n_classes, (d,), ["a", "b", "c"])


def test_options_reject_unknown_and_bad_values() -> None:
    with pytest.raises(ValueError, match="valid ones: a, b"):
        make_config("kit", method="turbo_vbi", method_options={"p_11": 0.9})
    with pytest.raises(ValueError, match="p01"):
        turbo_vbi.METHOD.parse_options({"p01": 1.0})
    with pytest.raises(ValueError, match="bp_iters=2.5 must be of type int"):
        turbo_vbi.METHOD.parse_options({"bp_iters": 2.5})


def test_kl_to_precision_matches_torch_distributions() -> None:
    mu, sigma = torch.tensor([0.3, -1.0, 0.0]), torch.tensor([0.1, 0.5, 2.0])
    lam = torch.tensor([4.0, 0.5, 100.0])
    expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                                 torch.distributions.Normal(0.0, lam.rsqrt()))
    torch.testing.assert_close(turbo_vbi.kl_to_precision(mu, sigma, lam), expected)


@pytest.mark.parametrize("pi_tilde, mu, sigma",
                         [(0.8, 0.4, 0.1), (0.1, 0.02, 0.01), (0.5, 1.3, 0.7)])
def test_rho_step_is_the_optimal_gamma_of_its_definition(pi_tilde, mu, sigma) -> None:
    """ln q*(γ) = π̃ ln Gamma(γ; a, b) + (1−π̃) ln Gamma(γ; ā, b̄) + 𝔼_q(θ) ln N(θ; 0, 1/γ) + const:
    its difference to ln Gamma(γ; ã, b̃) must be constant in γ (𝔼 over θ by Gauss–Hermite)."""
    a_t, b_t = turbo_vbi.precision_posterior(torch.tensor(pi_tilde, dtype=torch.float64),
                                             torch.tensor(mu**2 + sigma**2, dtype=torch.float64),
                                             OPTS)
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)
    w = mu + sigma * nodes
    rhos = np.linspace(0.05, 20.0, 25)
    log_q = [pi_tilde * stats.gamma.logpdf(r, OPTS.a, scale=1 / OPTS.b)
             + (1 - pi_tilde) * stats.gamma.logpdf(r, OPTS.a_bar, scale=1 / OPTS.b_bar)
             + np.sum(weights * stats.norm.logpdf(w, 0, 1 / math.sqrt(r))) / math.sqrt(2 * math.pi)
             for r in rhos]
    diff = np.array(log_q) - stats.gamma.logpdf(rhos, float(a_t), scale=1 / float(b_t))
    assert np.ptp(diff) < 1e-8


@pytest.mark.parametrize("pi, a_t, b_t", [(0.5, 2.0, 0.5), (0.9, 1.6, 3.0), (0.2, 4.5, 0.05)])
def test_s_step_matches_expected_log_priors_by_quadrature(pi, a_t, b_t) -> None:
    """π̃ = π e^{𝔼 ln p(γ|1)} / (π e^{𝔼 ln p(γ|1)} + (1−π) e^{𝔼 ln p(γ|0)}), 𝔼 under q(γ) =
    Gamma(ã, b̃)."""
    q = stats.gamma(a_t, scale=1 / b_t)

    def expected_log(shape: float, rate: float) -> float:
        def f(r: float) -> float:
            return q.pdf(r) * stats.gamma.logpdf(r, shape, scale=1 / rate)

        return integrate.quad(f, 0, np.inf, limit=200)[0]

    e1, e0 = expected_log(OPTS.a, OPTS.b), expected_log(OPTS.a_bar, OPTS.b_bar)
    expected = pi * math.exp(e1) / (pi * math.exp(e1) + (1 - pi) * math.exp(e0))
    got = turbo_vbi.support_posterior(torch.tensor(pi, dtype=torch.float64),
                                      torch.tensor(a_t, dtype=torch.float64),
                                      torch.tensor(b_t, dtype=torch.float64), OPTS)
    assert float(got) == pytest.approx(expected, rel=1e-6)


@settings(max_examples=60, deadline=None)
@given(st.floats(1e-4, 1 - 1e-4), st.floats(1e-4, 1 - 1e-4))
def test_extrinsic_message_is_posterior_over_prior(pi_tilde: float, pi: float) -> None:
    nu = float(turbo_vbi.extrinsic_message(torch.tensor(pi_tilde, dtype=torch.float64),
                                           torch.tensor(pi, dtype=torch.float64)))
    odds = (pi_tilde / (1 - pi_tilde)) / (pi / (1 - pi))
    assert 0 < nu < 1 and nu == pytest.approx(odds / (1 + odds), rel=1e-9)


def _brute_force_prior(evidence: np.ndarray, p11: float, p01: float) -> np.ndarray:
    """π_i ∝ Σ over the other sites of Π_edges Ψ(s_up/left, s_down/right) Π_{j≠i} ν_j(s_j)."""
    h, w = evidence.shape
    psi = {(1, 1): p11, (1, 0): 1 - p11, (0, 1): p01, (0, 0): 1 - p01}
    nu1 = 1 / (1 + np.exp(-evidence))
    out = np.zeros((h, w))
    for i, j in itertools.product(range(h), range(w)):
        mass = [0.0, 0.0]
        for config in itertools.product((0, 1), repeat=h * w):
            s = np.array(config).reshape(h, w)
            p = np.prod([psi[s[r, c], s[r + 1, c]] for r in range(h - 1) for c in range(w)])
            p *= np.prod([psi[s[r, c], s[r, c + 1]] for r in range(h) for c in range(w - 1)])
            p *= np.prod([nu1[r, c] if s[r, c] else 1 - nu1[r, c] for r in range(h)
                          for c in range(w) if (r, c) != (i, j)])
            mass[s[i, j]] += p
        out[i, j] = mass[1] / sum(mass)
    return out


@pytest.mark.parametrize("shape", [(1, 5), (4, 1)])
def test_message_passing_is_exact_on_chains(shape) -> None:
    """On a tree (a row or a column of the grid) sum-product gives the exact marginals."""
    evidence = np.random.default_rng(1).normal(0, 1.5, shape)
    got = turbo_vbi.mrf_prior(torch.tensor(evidence), 0.8, 0.35, n_iters=30, damping=0.3)
    np.testing.assert_allclose(got.numpy(), _brute_force_prior(evidence, 0.8, 0.35), atol=1e-6)


def test_message_passing_on_a_small_loopy_grid_is_close_to_brute_force() -> None:
    evidence = np.random.default_rng(2).normal(0, 1.0, (3, 3))
    got = turbo_vbi.mrf_prior(torch.tensor(evidence), 0.65, 0.35, n_iters=50)
    np.testing.assert_allclose(got.numpy(), _brute_force_prior(evidence, 0.65, 0.35), atol=0.03)


def _same_label_pairs(s: np.ndarray) -> int:
    return int((s[1:] == s[:-1]).sum() + (s[:, 1:] == s[:, :-1]).sum())


def test_attractive_mrf_makes_a_planted_block_support_more_clustered() -> None:
    truth = np.zeros((40, 40), dtype=bool)
    truth[10:25, 5:30] = True
    rng = np.random.default_rng(0)
    evidence = np.where(truth, 1.0, -1.0) + rng.normal(0, 1.5, truth.shape)
    ev = torch.tensor(evidence)
    flat = evidence > 0  # π fixed at ½: π̃ = sigmoid(evidence)
    pi = turbo_vbi.mrf_prior(ev, p11=0.7, p01=0.3, n_iters=30)
    mrf = (torch.logit(pi) + ev > 0).numpy()
    assert ndimage.label(mrf)[1] < ndimage.label(flat)[1]
    assert ndimage.label(~mrf)[1] < ndimage.label(~flat)[1]
    assert _same_label_pairs(mrf) > _same_label_pairs(flat)
    assert (mrf == truth).mean() > (flat == truth).mean()  # and closer to the planted block


def test_uninformative_evidence_with_symmetric_potentials_gives_one_half() -> None:
    pi = turbo_vbi.mrf_prior(torch.zeros(5, 7), 0.7, 0.3)
    torch.testing.assert_close(pi, torch.full((5, 7), 0.5))


# the optimiser settings these mechanics tests were written with (the kit preset of 2026-11)
OLD_KIT = dict(sigma_init=1e-3, rho_lr=None, cosine_lr=False, prior_sigma=0.1)


def _cfg(**opts):
    base = {"mask_from_epoch": 1}
    return make_config("kit", method="turbo_vbi", hidden=(12,), epochs=8, batch_size=16, lr=3e-2,
                       progress=False, n_eval_samples=3, method_options={**base, **opts},
                       **OLD_KIT)


def test_fit_trains_and_pruned_weights_are_exactly_zero() -> None:
    data = _toy_data()
    cfg = _cfg()
    model = turbo_vbi.build(cfg, data, seed_everything(0))
    history = fit(model, data, cfg)
    assert {"epoch", "nll", "train_acc", "val_acc", "val_nll", "val_ece", "density",
            "train_flops", "wall_time_s"} <= set(history.columns)
    assert history["nll"].iloc[-1] < history["nll"].iloc[0]
    assert history["val_acc"].iloc[-1] > 0.6
    first = model.layers()[0][1]
    # ARD empties the columns of the 6 dead inputs; the 4 informative ones stay mostly alive
    assert first.mask[:, 4:].float().mean() < 0.2 < 0.5 < first.mask[:, :4].float().mean()
    assert history["density"].iloc[-1] < history["density"].iloc[0]
    for _, layer in model.layers():
        assert torch.equal(layer.mu[~layer.mask], torch.zeros_like(layer.mu[~layer.mask]))
    probs = turbo_vbi.predict_proba(model, data.x_test, 4)
    assert probs.shape == (4, len(data.y_test), 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, len(data.y_test)))
    with torch.no_grad():  # pruned weights play no part: changing their μ changes nothing
        first.mu[~first.mask] = 5.0
    torch.testing.assert_close(turbo_vbi.predict_proba(model, data.x_test, 4), probs)


def test_ablation_keeps_the_prior_at_one_half() -> None:
    data = _toy_data()
    cfg = _cfg(message_passing=False)
    model = turbo_vbi.build(cfg, data, seed_everything(0))
    fit(model, data, cfg.replace(epochs=1))
    for k in range(len(model.layers())):
        assert model.state_of(k)["pi"].eq(0.5).all()


def test_report_measures_structure_of_a_hand_made_support() -> None:
    data = _toy_data(d=6)
    cfg = make_config("kit", method="turbo_vbi", hidden=(4,), progress=False)
    model = turbo_vbi.build(cfg, data, seed_everything(0))
    (n1, first), (n2, second) = model.layers()
    first.mask.zero_()
    first.mask[0, :2] = True  # one block in row 0
    first.mask[2, 4] = True  # a lone weight in row 2; rows 1, 3 and columns 2, 3, 5 are empty
    second.mask.fill_(True)
    second.mask[:, 3] = False  # hidden unit 3 is also unused downstream
    rep = turbo_vbi.report(model)
    assert rep[f"zero_rows_{n1}"] == 2 and rep[f"zero_cols_{n1}"] == 3
    assert rep[f"blocks_{n1}"] == 2 and rep[f"blocks_{n2}"] == 1
    n_w = 4 * 6 + 3 * 4
    assert rep["compression_rate"] == pytest.approx(n_w / (3 + 9))
    assert rep["density"] == pytest.approx((3 + 9) / n_w)
    # hidden units alive: rows {0, 2} of layer 1 ∩ columns {0, 1, 2} of layer 2 = {0, 2}
    assert rep[f"units_out_alive_{n1}"] == 2 and rep[f"units_in_alive_{n2}"] == 2
    assert rep[f"units_in_alive_{n1}"] == 3  # inputs 0, 1, 4
    assert rep["dense_equiv_flops_ratio"] == pytest.approx((2 * 3 + 3 * 2) / n_w)


def test_run_end_to_end_on_mnist_subset() -> None:
    pytest.importorskip("ssvi_lite.metrics")
    from ssvi_lite.experiment import run

    cfg = make_config("kit", method="turbo_vbi", hidden=(64,), epochs=2, n_train=400, lr=1e-2,
                      progress=False, method_options={"mask_from_epoch": 1}, **OLD_KIT)
    row = run(cfg, with_ood=False).row
    assert row["method"] == "turbo_vbi" and 0 < row["density"] <= 1
    assert row["compression_rate"] == pytest.approx(1 / row["density"])
    assert row["accuracy"] > 0.4 and math.isfinite(row["nll"])  # 8 Adam steps: 0.71 here
