"""Mean-field layers against trusted oracles: F.linear/F.conv2d, torch.distributions KL,
MC moments."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal, kl_divergence

from ssvi_lite.layers import (
    MeanFieldConv2d,
    MeanFieldLinear,
    bayesianize,
    forward_mode,
    kl_sum,
    mean_field_layers,
    set_mode,
    softplus_inverse,
)
from ssvi_lite.subspace import capture_dense_grads

TINY_SIGMA = 1e-12


def _linear(sigma_init: float = 1e-3) -> MeanFieldLinear:
    return MeanFieldLinear(7, 5, sigma_init=sigma_init, prior_sigma=0.3)


def _conv(sigma_init: float = 1e-3) -> MeanFieldConv2d:
    return MeanFieldConv2d(3, 4, 3, stride=2, padding=1, sigma_init=sigma_init, prior_sigma=0.3)


@pytest.mark.parametrize("mode", ["lrt", "sample", "mean"])
def test_linear_with_full_mask_and_tiny_sigma_equals_f_linear(mode: str, generator) -> None:
    layer = _linear(TINY_SIGMA)
    layer.mode = mode
    x = torch.randn(11, 7, generator=generator)
    expected = F.linear(x, layer.mu, layer.bias)
    torch.testing.assert_close(layer(x), expected, atol=1e-3, rtol=0)  # LRT adds sqrt(1e-8)·ε


@pytest.mark.parametrize("mode", ["lrt", "sample", "mean"])
def test_conv_with_full_mask_and_tiny_sigma_equals_f_conv2d(mode: str, generator) -> None:
    layer = _conv(TINY_SIGMA)
    layer.mode = mode
    x = torch.randn(2, 3, 9, 9, generator=generator)
    expected = F.conv2d(x, layer.mu, layer.bias, stride=2, padding=1)
    torch.testing.assert_close(layer(x), expected, atol=1e-3, rtol=0)


def test_mean_mode_applies_the_mask(generator) -> None:
    layer = _linear()
    layer.mask.copy_(torch.rand(layer.mask.shape, generator=generator) < 0.5)
    layer.mode = "mean"
    x = torch.randn(4, 7, generator=generator)
    torch.testing.assert_close(layer(x), F.linear(x, layer.mu * layer.mask, layer.bias))


@pytest.mark.parametrize("make", [_linear, _conv])
def test_kl_sum_equals_torch_distributions_over_active_weights(make, generator) -> None:
    layer = make(0.05)
    with torch.no_grad():
        layer.mu.normal_(0, 0.2, generator=generator)
        layer.rho.normal_(-2, 0.5, generator=generator)
    layer.mask.copy_(torch.rand(layer.mask.shape, generator=generator) < 0.6)
    q = Normal(layer.mu, layer.sigma)
    p = Normal(torch.zeros_like(layer.mu), torch.full_like(layer.mu, 0.3))
    expected = kl_divergence(q, p)[layer.mask].sum()
    torch.testing.assert_close(layer.kl_sum(), expected)


def test_lrt_output_moments_match_weight_sampling(generator) -> None:
    """LRT's per-unit mean and variance equal those of sampling θ ~ q and computing x θᵀ."""
    layer = MeanFieldLinear(6, 3, sigma_init=0.3)
    layer.mask[0, :3] = False
    x = torch.randn(1, 6, generator=generator).expand(20000, 6)
    torch.manual_seed(0)
    with torch.no_grad():
        lrt = layer(x)
        layer.mode = "sample"
        samples = torch.stack([layer(x[:1])[0] for _ in range(20000)])
    for a, b in ((lrt.mean(0), samples.mean(0)), (lrt.var(0), samples.var(0))):
        torch.testing.assert_close(a, b, rtol=0.06, atol=0.03)


def test_sample_mode_shares_one_draw_across_the_batch(generator) -> None:
    layer = _linear(0.5)
    layer.mode = "sample"
    x = torch.randn(1, 7, generator=generator).repeat(4, 1)
    out = layer(x)
    assert torch.allclose(out, out[:1].expand_as(out))
    assert not torch.allclose(layer(x[:1]), out[:1])  # a new call draws again


def test_inactive_weights_get_no_gradient(generator) -> None:
    layer = _linear(0.1)
    layer.mask.copy_(torch.rand(layer.mask.shape, generator=generator) < 0.5)
    loss = layer(torch.randn(8, 7, generator=generator)).pow(2).sum() + layer.kl_sum()
    loss.backward()
    assert (layer.mu.grad[~layer.mask] == 0).all()
    assert (layer.rho.grad[~layer.mask] == 0).all()
    assert (layer.mu.grad[layer.mask] != 0).any()


def test_dense_gradient_capture_sees_inactive_entries(generator) -> None:
    layer = _linear(1e-6)
    layer.mask.zero_()
    layer.mask[0, 0] = True
    layer.mode = "mean"
    capture_dense_grads([layer], True)
    x = torch.randn(8, 7, generator=generator)
    layer(x).sum().backward()
    expected = torch.ones(8, 5).T @ x  # ∂Σ(x Wᵀ)/∂W for every entry, active or not
    torch.testing.assert_close(layer.dense_grad, expected)


def test_bayesianize_copies_weights_and_preserves_function(generator) -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    x = torch.randn(5, 1, 6, 6, generator=generator)
    expected = net(x)
    bayesianize(net, sigma_init=TINY_SIGMA)
    assert [type(m) for _, m in mean_field_layers(net)] == [MeanFieldConv2d, MeanFieldLinear]
    with forward_mode(net, "mean"):
        torch.testing.assert_close(net(x), expected)


def test_bayesianize_sigma_init_spread(generator) -> None:
    layer = bayesianize(nn.Linear(200, 100), sigma_init=6e-4, sigma_init_std=5e-4,
                        generator=generator)
    sigma = layer.sigma.detach()
    assert (sigma > 0).all()
    assert abs(sigma.mean().item() - 7.4e-4) < 1e-4  # E|N(6e-4, (5e-4)²)| ≈ 7.4e-4


def test_forward_mode_restores_previous_modes() -> None:
    net = nn.Sequential(_linear(), nn.ReLU(), MeanFieldLinear(5, 2))
    net[2].mode = "sample"
    with forward_mode(net, "mean"):
        assert {m.mode for _, m in mean_field_layers(net)} == {"mean"}
    assert [m.mode for _, m in mean_field_layers(net)] == ["lrt", "sample"]


def test_softplus_inverse_round_trip() -> None:
    sigma = torch.tensor([1e-6, 1e-3, 0.5, 3.0, 30.0], dtype=torch.float64)
    torch.testing.assert_close(F.softplus(softplus_inverse(sigma)), sigma)


def test_model_kl_sum_adds_layers() -> None:
    net = nn.Sequential(_linear(), nn.ReLU(), MeanFieldLinear(5, 2, prior_sigma=0.3))
    torch.testing.assert_close(kl_sum(net), net[0].kl_sum() + net[2].kl_sum())
    assert kl_sum(nn.Linear(2, 2)).item() == 0.0


@pytest.mark.parametrize("bad", [
    lambda: set_mode(nn.Sequential(_linear()), "mc"),
    lambda: MeanFieldLinear(3, 2, prior_sigma=0.0),
    lambda: MeanFieldLinear(3, 2, sigma_init=-1.0),
    lambda: MeanFieldLinear(3, 2, sigma_init=math.nan),
])
def test_bad_layer_arguments_raise_value_error(bad) -> None:
    with pytest.raises(ValueError):
        bad()
