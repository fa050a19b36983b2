"""FLOPs and size accounting (docs/method.md §8) against hand counts and the paper's ResNet-18
ratios."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ssvi_lite.config import make_config
from ssvi_lite.costs import (
    forward_flops,
    inference_flops,
    layer_costs,
    model_size_bytes,
    step_flops,
    training_flops,
    training_flops_ratio,
)
from ssvi_lite.layers import mean_field_layers
from ssvi_lite.models import build_model
from ssvi_lite.subspace import SwapSchedule, init_masks


def _mlp(density: float, generator) -> nn.Module:
    cfg = make_config("kit", model="mlp", hidden=(20, 10), density=density, method="ssvi")
    model = build_model(cfg, (1, 4, 4), 3, generator)
    init_masks(model, density, generator=generator)
    return model


def test_mlp_flops_match_a_hand_count(generator) -> None:
    model = _mlp(0.5, generator)
    costs = layer_costs(model, (1, 4, 4))
    n = [16 * 20, 20 * 10, 10 * 3]  # weights per layer
    active = [k - round(0.5 * k) for k in n]
    assert [c.n_weights for c in costs] == n and [c.n_active for c in costs] == active
    batch = 8
    f_dense = 2 * 2 * batch * sum(n)  # 2 LRT paths × 2 FLOPs per MAC × B × MACs
    f_sparse = 2 * 2 * batch * sum(active)
    assert forward_flops(costs, batch, dense=True) == f_dense
    assert forward_flops(costs, batch) == f_sparse
    assert forward_flops(costs, batch, bayesian=False) == f_sparse / 2
    assert step_flops(costs, batch, update=False) == 3 * f_sparse
    assert step_flops(costs, batch, update=True) == 2 * f_sparse + f_dense
    schedule = SwapSchedule(total_steps=100, interval=10)  # updates at 10..70: 7 of them
    assert training_flops(costs, 100, batch, schedule) == 93 * 3 * f_sparse + 7 * (2 * f_sparse
                                                                                   + f_dense)
    assert inference_flops(costs, n_samples=4) == 4 * 2 * sum(active)


def test_conv_macs_count_output_positions(generator) -> None:
    cfg = make_config("kit", model="lenet", method="vi", density=1.0)
    model = build_model(cfg, (1, 28, 28), 10, generator)
    costs = {c.name: c for c in layer_costs(model, (1, 28, 28))}
    conv1 = costs["features.0"]
    assert conv1.n_weights == 6 * 1 * 5 * 5 and conv1.positions == 24 * 24
    assert costs["features.3"].positions == 8 * 8
    assert costs["classifier.1"].positions == 1


@pytest.mark.parametrize("density, expected", [(0.1, 0.105), (0.05, 0.055)])
def test_resnet18_cifar_training_flops_ratio_matches_the_paper(density, expected) -> None:
    cfg = make_config("paper", method="ssvi", density=density)
    model = build_model(cfg, (3, 32, 32), 10)
    init_masks(model, density, first_layer_dense=True)
    costs = layer_costs(model, (3, 32, 32))
    steps = 200 * 391  # 200 epochs of 50,000 images at batch 128
    schedule = SwapSchedule(steps, cfg.update_interval, cfg.alpha, cfg.t_end_fraction)
    ratio = training_flops_ratio(costs, steps, 128, schedule)
    assert ratio == pytest.approx(expected, abs=0.003)


def test_model_size_counts_mu_sigma_indices_and_dense_params(generator) -> None:
    model = _mlp(0.1, generator)
    layers = [layer for _, layer in mean_field_layers(model)]
    size = model_size_bytes(model)
    assert size["variational"] == sum(8 * layer.n_active for layer in layers)
    assert size["dense"] == 4 * (20 + 10 + 3)  # biases
    assert size["index"] == sum(min(4 * layer.n_active, -(-layer.n_weights // 8))
                                for layer in layers)
    assert size["total"] == size["variational"] + size["index"] + size["dense"]


def test_dense_model_has_no_index_storage(generator) -> None:
    model = _mlp(1.0, generator)
    assert model_size_bytes(model)["index"] == 0
    assert model_size_bytes(model)["variational"] == 8 * (16 * 20 + 20 * 10 + 10 * 3)


def test_deterministic_layers_are_counted_too() -> None:
    costs = layer_costs(nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)), (3,))
    assert [(c.n_weights, c.n_active) for c in costs] == [(12, 12), (8, 8)]
    assert forward_flops(costs, 1, bayesian=False) == 2 * 20
    torch.testing.assert_close(torch.tensor(training_flops(costs, 1, 1, bayesian=False)),
                               torch.tensor(3 * 40.0))
