"""Sparse variational dropout: the KL fit against an exact series and Monte Carlo, pruning at
evaluation, the conversion of a model, training that prunes, the experiment runner end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import digamma
from scipy.stats import poisson

from ssvi_lite.config import make_config, seed_everything
from ssvi_lite.data import DataSplits
from ssvi_lite.experiment import run
from ssvi_lite.layers import MeanFieldConv2d, MeanFieldLinear, kl_sum, mean_field_layers
from ssvi_lite.methods import svd
from ssvi_lite.train import fit

K1 = 0.63576


def exact_neg_kl(alpha: float) -> float:
    """−KL(N(μ, α_VD μ²) ‖ log-uniform) = −½ Σ_j Pois(j; 1/(2α_VD)) [ψ(½ + j) − ψ(½)]: u/√α_VD
    for u = θ/μ ~ N(1, α_VD) is N(1/√α_VD, 1), so u²/α_VD is a non-central χ²₁ (non-centrality
    1/α_VD) with 𝔼 log = Σ_j Pois(j; 1/(2α_VD))(log 2 + ψ(½ + j)); the constant makes −KL → 0 as
    α_VD → ∞ (ψ the digamma)."""
    lam = 1.0 / (2.0 * alpha)
    j = np.arange(int(lam + 60 * math.sqrt(lam) + 200))
    return float(-0.5 * np.sum(poisson.pmf(j, lam) * (digamma(0.5 + j) - digamma(0.5))))


def _easy_data(n: int = 256, d: int = 20, seed: int = 0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * n, d, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()  # two informative inputs, the rest noise
    return DataSplits("easy", x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:], 2, (d,),
                      ["a", "b"])


def test_kl_fit_is_within_0_01_of_the_exact_value() -> None:
    log_alphas = np.linspace(-8, 8, 65)
    approx = svd.neg_kl_approx(torch.tensor(log_alphas, dtype=torch.float64)).numpy()
    exact = np.array([exact_neg_kl(math.exp(a)) for a in log_alphas])
    assert np.max(np.abs(approx - exact)) < 0.01


def test_exact_series_agrees_with_monte_carlo() -> None:
    """The oracle itself: ½ log α_VD − 𝔼 log|u| − (γ_E + log 2)/2 by sampling u ~ N(1, α_VD)."""
    rng = np.random.default_rng(0)
    for alpha in (0.3, 1.0, 5.0):
        eps = 1.0 + math.sqrt(alpha) * rng.standard_normal(2_000_000)
        mc = 0.5 * math.log(alpha) - np.log(np.abs(eps)).mean() - (np.euler_gamma + math.log(2)) / 2
        assert mc == pytest.approx(exact_neg_kl(alpha), abs=4e-3)


def test_kl_fit_asymptotes() -> None:
    """α_VD → ∞: −KL → k1 − 0 − k1 = 0.  α_VD → 0: −KL ≈ ½ log α_VD − k1 (exact:
    − (γ_E + log 2)/2)."""
    big = svd.neg_kl_approx(torch.tensor(30.0, dtype=torch.float64))
    assert abs(float(big)) < 1e-12
    small = svd.neg_kl_approx(torch.tensor(-30.0, dtype=torch.float64))
    assert float(small) == pytest.approx(-15.0 - K1, abs=1e-9)
    assert K1 == pytest.approx((np.euler_gamma + math.log(2)) / 2, abs=1e-3)


def test_layer_parameterisation_and_kl_sum(generator) -> None:
    layer = svd.SparseVDLinear(6, 4, log_sigma2_init=-4.0)
    with torch.no_grad():
        layer.mu.normal_(0, 0.3, generator=generator)
    theta2 = layer.mu.detach() ** 2
    expected_log_alpha = (-4.0 - torch.log(theta2 + 1e-8)).clamp(-10, 10)
    torch.testing.assert_close(layer.log_alpha.detach(), expected_log_alpha)
    torch.testing.assert_close(layer.sigma.detach(), torch.full_like(theta2, math.exp(-2.0)))
    expected_kl = -svd.neg_kl_approx(expected_log_alpha).sum()
    torch.testing.assert_close(layer.kl_sum().detach(), expected_kl)
    layer.kl_sum().backward()
    assert layer.mu.grad.abs().sum() > 0 and layer.rho.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["sample", "mean", "lrt"])
def test_pruned_weights_are_zero_at_evaluation_only(mode: str) -> None:
    layer = svd.SparseVDLinear(3, 2, log_sigma2_init=0.0)  # σ = 1
    with torch.no_grad():
        layer.mu.fill_(10.0)  # log α_VD = −log 100 ≈ −4.6: kept
        layer.mu[:, 1] = 1e-3  # log α_VD ≈ 13.8 → clipped 10 > 3: pruned
        layer.bias.copy_(torch.tensor([0.5, -0.5]))
    assert layer.n_active == 4
    x = torch.tensor([[0.0, 1.0, 0.0]]).expand(64, 3)  # only the pruned column is fed
    layer.mode = mode
    layer.eval()
    atol = 1e-3 if mode == "lrt" else 1e-6  # LRT adds sqrt(1e-8)·ε
    torch.testing.assert_close(layer(x), layer.bias.detach().expand(64, 2), atol=atol, rtol=0)
    layer.train()  # training uses every weight: the σ = 1 noise of the pruned column comes through
    layer.mode = "lrt"
    assert layer(x).std(0).min() > 0.5


def test_to_sparse_vd_copies_means_and_biases(generator) -> None:
    net = torch.nn.Sequential(MeanFieldConv2d(1, 3, 3), torch.nn.Flatten(),
                              MeanFieldLinear(3 * 4 * 4, 5))
    before = [(layer.mu.detach().clone(), layer.bias.detach().clone())
              for _, layer in mean_field_layers(net)]
    svd.to_sparse_vd(net, log_sigma2_init=-30.0)
    layers = [layer for _, layer in mean_field_layers(net)]
    assert isinstance(layers[0], svd.SparseVDConv2d) and isinstance(layers[1], svd.SparseVDLinear)
    for layer, (mu, bias) in zip(layers, before):
        torch.testing.assert_close(layer.mu.detach(), mu)
        torch.testing.assert_close(layer.bias.detach(), bias)
    x = torch.randn(2, 1, 6, 6, generator=generator)
    net.eval()
    for layer in layers:
        layer.mode = "mean"
    conv = F.conv2d(x, before[0][0], before[0][1])
    expected = F.linear(conv.flatten(1), before[1][0], before[1][1])
    torch.testing.assert_close(net(x), expected)


def test_unknown_option_is_rejected_with_the_valid_names() -> None:
    with pytest.raises(ValueError, match="log_sigma2_init"):
        svd.METHOD.parse_options({"threshhold": 3})


def test_training_prunes_easy_data_and_keeps_the_informative_inputs() -> None:
    data = _easy_data()  # y depends on inputs 0 and 1 only
    cfg = make_config("kit", method="svd", hidden=(16,), epochs=12, batch_size=32, lr=1e-2,
                      n_eval_samples=3, progress=False)
    model = svd.build(cfg, data, seed_everything(0))
    history = fit(model, data, cfg)
    assert len(history) == 12 and history["train_flops"].is_monotonic_increasing
    assert all(math.isfinite(v) for v in history["nll"])
    assert history["density"].iloc[-1] < history["density"].iloc[0]
    rep = svd.report(model)
    assert rep["density"] < 0.5 and rep["n_active"] < rep["n_weights"]
    first = mean_field_layers(model)[0][1].keep.float()  # (16, 20)
    assert first[:, :2].mean() > 1.5 * first[:, 2:].mean()  # informative inputs survive more
    assert history["val_acc"].max() > 0.9
    probs = svd.predict_proba(model, data.x_test, 4)
    assert probs.shape == (4, len(data.y_test), 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, len(data.y_test)))
    assert kl_sum(model).item() > 0


def test_experiment_run_end_to_end() -> None:
    cfg = make_config("kit", method="svd", epochs=2, n_train=400, progress=False)
    result = run(cfg, with_ood=False)
    row = result.row
    assert row["method"] == "svd" and 0 < row["density"] < 1  # cfg.density is not a target
    assert row["density"] == pytest.approx(svd.report(result.model)["density"])
    assert row["log_alpha_threshold"] == 3.0 and row["target_density"] == 1.0
    assert 0.0 <= row["accuracy"] <= 1.0 and math.isfinite(row["nll"])
    assert row["train_flops_ratio"] == pytest.approx(1.0)  # dense training, same epochs as VI
