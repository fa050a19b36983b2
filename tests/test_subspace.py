"""Masks and the removal/addition update: exact counts and the invariants of docs/method.md §4–5."""
from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ssvi_lite.config import make_config, seed_everything
from ssvi_lite.criteria import removal_score
from ssvi_lite.layers import (
    MeanFieldConv2d,
    MeanFieldLinear,
    bayesianize,
    forward_mode,
    mean_field_layers,
)
from ssvi_lite.loop import make_optimizer
from ssvi_lite.subspace import (
    SwapSchedule,
    capture_dense_grads,
    enforce_masks,
    init_masks,
    layer_densities,
    model_density,
    rescale_to_active_fan_in,
    swappable_layers,
    update_subspace,
)


def _net(widths: tuple[int, ...], conv: bool = False) -> nn.Module:
    layers: list[nn.Module] = []
    if conv:
        layers += [MeanFieldConv2d(2, 3, 3, padding=1, sigma_init=0.05), nn.Flatten()]
        widths = (3 * 16, *widths[1:])
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [MeanFieldLinear(a, b, sigma_init=0.05), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _input(net: nn.Module, n: int, generator: torch.Generator) -> torch.Tensor:
    first = mean_field_layers(net)[0][1]
    if isinstance(first, MeanFieldConv2d):
        return torch.randn(n, 2, 4, 4, generator=generator)
    return torch.randn(n, first.in_features, generator=generator)


@pytest.mark.parametrize("density", [0.05, 0.1, 0.37, 0.5, 1.0])
def test_uniform_masks_have_exact_counts(density: float, generator) -> None:
    net = _net((13, 17, 9, 4))
    init_masks(net, density, generator=generator)
    for _, layer in mean_field_layers(net):
        n = layer.n_weights
        assert layer.n_active == n - round((1 - density) * n)
        assert (layer.mu[~layer.mask] == 0).all()


def test_first_layer_dense_keeps_it_whole(generator) -> None:
    net = _net((100, 30, 10))
    densities = init_masks(net, 0.1, first_layer_dense=True, generator=generator)
    first, second = (layer for _, layer in mean_field_layers(net))
    assert densities[0] == 1.0
    assert [n for n, _ in swappable_layers(net)] == [n for n, _ in mean_field_layers(net)][1:]
    assert model_density(net) == pytest.approx((3000 + 30) / 3300, abs=1e-3)


def test_erk_hits_the_overall_density_and_favours_small_layers(generator) -> None:
    net = _net((300, 100, 10))
    densities = init_masks(net, 0.1, "erk", generator=generator)
    sizes = [layer.n_weights for _, layer in mean_field_layers(net)]
    overall = sum(d * s for d, s in zip(densities, sizes)) / sum(sizes)
    assert overall == pytest.approx(0.1, abs=2e-3)
    assert densities[0] < densities[1] <= 1.0  # the small classifier layer keeps more


def test_erk_caps_layers_at_one() -> None:
    net = _net((1000, 200, 2))
    layers = [layer for _, layer in mean_field_layers(net)]
    out = layer_densities(layers, 0.5, "erk")
    assert max(out) <= 1.0 and out[-1] == 1.0


@pytest.mark.parametrize("density", [0.0, -0.1, 1.5, math.nan, math.inf, "0.1", True])
def test_bad_density_is_refused_with_its_value(density) -> None:
    with pytest.raises(ValueError, match="density"):
        init_masks(_net((4, 3)), density)


def test_unknown_mask_init_lists_choices() -> None:
    with pytest.raises(ValueError, match="uniform, erk"):
        init_masks(_net((4, 3)), 0.5, "grid")


def test_schedule_follows_the_cosine_and_stops_at_t_end() -> None:
    s = SwapSchedule(total_steps=1000, interval=100, alpha=0.3, t_end_fraction=0.75)
    assert s.t_end == 750 and s.update_steps() == [100, 200, 300, 400, 500, 600, 700]
    assert not s.is_update_step(0) and s.is_update_step(700) and not s.is_update_step(800)
    assert s.zeta(0) == pytest.approx(0.3)
    assert s.zeta(375) == pytest.approx(0.15)
    assert s.zeta(750) == 0.0
    assert s.zeta(100) == pytest.approx(0.15 * (1 + math.cos(math.pi * 100 / 750)))


def _one_update(net, generator, zeta, removal="snr_abs", addition="grad"):
    """Backward on a batch with dense-gradient capture, then one subspace update with SGD state."""
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = _input(net, 16, generator)
    net(x).square().mean().backward()  # fill momentum buffers for every parameter
    optimizer.step()
    optimizer.zero_grad()
    capture_dense_grads([layer for _, layer in mean_field_layers(net)], True)
    net(x).square().mean().backward()
    before = {n: (layer.mask.clone(), layer.mu.detach().clone(), layer.rho.detach().clone(),
                  removal_score(removal, layer.mu, layer.sigma).detach(), layer.dense_grad.abs())
              for n, layer in mean_field_layers(net)}
    swaps = update_subspace(net, zeta, removal, addition, optimizer)
    return optimizer, before, swaps


@settings(max_examples=25, deadline=None)
@given(widths=st.lists(st.integers(6, 24), min_size=2, max_size=4), conv=st.booleans(),
       density=st.floats(0.05, 0.95), zeta=st.floats(0.0, 0.6), seed=st.integers(0, 10_000),
       removal=st.sampled_from(["snr_abs", "magnitude", "snr", "mean_exp_abs", "random"]))
def test_update_invariants(widths, conv, density, zeta, seed, removal) -> None:
    generator = seed_everything(seed)
    net = _net(tuple(widths), conv)
    init_masks(net, density, generator=generator)
    optimizer, before, swaps = _one_update(net, generator, zeta, removal)
    by_name = {s.name: s for s in swaps}
    for name, layer in mean_field_layers(net):
        old_mask, old_mu, old_rho, keep_score, grad = before[name]
        if old_mask.all():  # a dense layer is never swapped
            assert name not in by_name and torch.equal(layer.mask, old_mask)
            continue
        swap = by_name[name]
        # per-layer active count never changes
        assert layer.n_active == int(old_mask.sum())
        assert swap.n_swap == math.floor(zeta * int(old_mask.sum()))
        kept = old_mask & ~swap.removed
        # removed entries had the lowest removal scores among the active ("random" redraws its
        # scores, so only its counts can be checked)
        if removal != "random" and swap.removed.any() and kept.any():
            assert keep_score[swap.removed].max() <= keep_score[kept].min()
        # added entries were not kept and had the highest addition scores among the non-kept
        assert not (swap.added & kept).any() and int(swap.added.sum()) == swap.n_swap
        rest = ~kept & ~swap.added
        if swap.added.any() and rest.any():
            assert grad[swap.added].min() >= grad[rest].max()
        # inactive entries are exactly zero; new weights start at μ = 0 and the survivors' mean ρ
        assert (layer.mu[~layer.mask] == 0).all()
        grown = swap.added & ~old_mask
        assert (layer.mu[grown] == 0).all()
        if grown.any() and kept.any():
            assert torch.allclose(layer.rho[grown], old_rho[kept].mean().expand(int(grown.sum())))
        regrown = swap.added & swap.removed
        assert torch.equal(layer.mu[regrown], old_mu[regrown])
        # optimiser state of every changed entry is zero
        changed = old_mask ^ layer.mask
        for param in (layer.mu, layer.rho):
            buf = optimizer.state[param]["momentum_buffer"]
            assert (buf[changed] == 0).all()


@pytest.mark.parametrize("optimizer_name", ["adam", "sgd"])
def test_inactive_entries_never_move_during_training(optimizer_name, generator) -> None:
    """The kit's optimiser with weight decay, many steps: inactive μ stay 0, inactive ρ unchanged,
    and their optimiser state stays zero."""
    net = _net((10, 8, 3))
    init_masks(net, 0.3, generator=generator)
    rho0 = {n: layer.rho.detach().clone() for n, layer in mean_field_layers(net)}
    cfg = make_config("kit", optimizer=optimizer_name, lr=0.05, weight_decay=0.1)
    optimizer = make_optimizer(net, cfg)
    for _ in range(20):
        loss = net(torch.randn(8, 10, generator=generator)).square().mean()
        loss = loss + sum(layer.kl_sum() for _, layer in mean_field_layers(net)) / 100
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        enforce_masks(net)
    for name, layer in mean_field_layers(net):
        off = ~layer.mask
        assert (layer.mu[off] == 0).all()
        assert torch.equal(layer.rho[off], rho0[name][off])
        for param in (layer.mu, layer.rho):
            for state in optimizer.state[param].values():
                if state.shape == param.shape:  # momentum_buffer / exp_avg / exp_avg_sq
                    assert (state[off] == 0).all()


def test_update_needs_the_dense_gradient_for_grad_addition(generator) -> None:
    net = _net((6, 4))
    init_masks(net, 0.5, generator=generator)
    with pytest.raises(RuntimeError, match="dense gradient"):
        update_subspace(net, 0.3, "snr_abs", "grad")


def test_bayesianized_model_density_counts_all_layers(generator) -> None:
    net = bayesianize(nn.Sequential(nn.Linear(10, 10), nn.ReLU(), nn.Linear(10, 2)))
    assert model_density(net) == 1.0
    init_masks(net, 0.5, generator=generator)
    assert model_density(net) == pytest.approx(0.5, abs=0.01)


def test_rescale_to_active_fan_in_restores_the_dense_activation_scale(generator) -> None:
    dense = _net((400, 300))
    sparse = _net((400, 300))
    sparse.load_state_dict(dense.state_dict())
    with torch.no_grad():
        for net in (dense, sparse):
            torch.nn.init.kaiming_normal_(net[0].mu, generator=generator)
    init_masks(sparse, 0.1, generator=generator)
    rescale_to_active_fan_in(sparse)
    x = torch.randn(512, 400, generator=generator)
    with torch.no_grad(), forward_mode(dense, "mean"), forward_mode(sparse, "mean"):
        ratio = sparse(x).var() / dense(x).var()
    assert 0.8 < ratio < 1.25  # without the rescale it is ≈ 0.1
