"""Post-hoc pruning: per-layer top-k by each removal score (checked against an independent sort),
nested pruning, bad input, FLOPs of dense training plus fine-tune, the runner end to end."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from ssvi_lite.config import make_config, seed_everything
from ssvi_lite.costs import forward_flops, layer_costs
from ssvi_lite.criteria import REMOVAL_SCORES
from ssvi_lite.data import DataSplits
from ssvi_lite.experiment import run
from ssvi_lite.layers import mean_field_layers
from ssvi_lite.methods import posthoc
from ssvi_lite.models import build_model
from ssvi_lite.subspace import model_density
from ssvi_lite.train import fit


def _model(generator, hidden=(12, 8)) -> torch.nn.Module:
    cfg = make_config("kit", method="vi", density=1.0, hidden=hidden)
    model = build_model(cfg, (10,), 3, generator)
    with torch.no_grad():  # spread σ so that SNR-type scores differ from magnitude
        for _, layer in mean_field_layers(model):
            layer.rho.copy_(torch.randn(layer.rho.shape, generator=generator) - 3.0)
    return model


def _data(n: int = 96, d: int = 10, seed: int = 0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * n, d, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    return DataSplits("tiny", x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:], 2, (d,),
                      ["0", "1"])


ORACLE_SCORES = {"magnitude": lambda mu, s: mu.abs(), "snr": lambda mu, s: mu.abs() / s}


@pytest.mark.parametrize("removal", sorted(REMOVAL_SCORES))
@pytest.mark.parametrize("density", [0.5, 0.13])
def test_prune_keeps_the_per_layer_top_k(removal: str, density: float, generator) -> None:
    model = _model(generator)
    before = [(layer.mu.detach().clone(), layer.sigma.detach().clone())
              for _, layer in mean_field_layers(model)]
    torch.manual_seed(0)  # the random score draws from the global RNG
    posthoc.prune_to_density(model, density, removal)
    for (_, layer), (mu, sigma) in zip(mean_field_layers(model), before):
        n = layer.n_weights
        assert layer.n_active == n - round((1 - density) * n)
        assert bool((layer.mu[~layer.mask] == 0).all())
        torch.testing.assert_close(layer.mu[layer.mask].detach(), mu[layer.mask])
        if removal in ORACLE_SCORES:  # independent oracle: every kept score ≥ every pruned one
            score = ORACLE_SCORES[removal](mu, sigma)
            assert score[layer.mask].min() >= score[~layer.mask].max()
    assert model_density(model) == pytest.approx(density, abs=0.05)


def test_pruning_again_is_nested_and_cannot_raise_density(generator) -> None:
    model = _model(generator)
    dense = copy.deepcopy(model)
    posthoc.prune_to_density(model, 0.5, "snr_abs")
    first = [layer.mask.clone() for _, layer in mean_field_layers(model)]
    posthoc.prune_to_density(model, 0.2, "snr_abs")
    for old, (_, layer) in zip(first, mean_field_layers(model)):
        assert bool((layer.mask <= old).all())  # a subset of the earlier support
    with pytest.raises(ValueError, match="copy of the dense posterior"):
        posthoc.prune_to_density(model, 0.6, "snr_abs")
    posthoc.prune_to_density(dense, 0.6, "snr_abs")  # a fresh copy can go anywhere
    assert model_density(dense) == pytest.approx(0.6, abs=0.02)


def test_bad_input_is_rejected(generator) -> None:
    model = _model(generator)
    with pytest.raises(ValueError, match="density"):
        posthoc.prune_to_density(model, 0.0, "snr_abs")
    with pytest.raises(ValueError, match="snr_abs"):
        posthoc.prune_to_density(model, 0.5, "size")
    with pytest.raises(ValueError, match="mean-field"):
        posthoc.prune_to_density(torch.nn.Linear(3, 2), 0.5, "snr_abs")
    with pytest.raises(ValueError, match="fine_tune_epochs"):
        posthoc.METHOD.parse_options({"finetune_epochs": 2})
    with pytest.raises(ValueError, match="fine_tune_epochs"):
        posthoc.METHOD.parse_options({"fine_tune_epochs": -1})


def test_first_layer_dense_and_erk_pass_through(generator) -> None:
    model = _model(generator)
    posthoc.prune_to_density(model, 0.3, "magnitude", mask_init="erk", first_layer_dense=True)
    layers = [layer for _, layer in mean_field_layers(model)]
    assert layers[0].n_active == layers[0].n_weights
    rest = (sum(layer.n_active for layer in layers[1:])
            / sum(layer.n_weights for layer in layers[1:]))
    assert rest == pytest.approx(0.3, abs=0.05)


def test_fit_counts_dense_training_plus_fine_tune_and_recovers() -> None:
    data = _data(n=256)
    cfg = make_config("kit", method="posthoc", density=0.25, hidden=(16,), epochs=5, lr=1e-2,
                      kl_scale=0.01, batch_size=32, n_eval_samples=2, progress=False,
                      sigma_init=1e-3, rho_lr=None, cosine_lr=False, prior_sigma=0.1,
                      method_options={"fine_tune_epochs": 2})
    model = posthoc.build(cfg, data, seed_everything(0))
    dense_f = forward_flops(layer_costs(model, data.input_shape), 1, dense=True)
    history = fit(model, data, cfg)
    assert list(history["stage"]) == ["dense"] * 5 + ["fine_tune"] * 2
    assert list(history["epoch"]) == list(range(1, 8))
    sparse_f = forward_flops(layer_costs(model, data.input_shape), 1)
    expected = 3 * data.n_train * (5 * dense_f + 2 * sparse_f)
    assert history["train_flops"].iloc[-1] == pytest.approx(expected)
    assert history["wall_time_s"].is_monotonic_increasing
    assert history["density"].iloc[-1] == pytest.approx(0.25, abs=0.02)
    rep = posthoc.report(model, history.attrs["notes"])
    assert rep["density"] == pytest.approx(model_density(model))
    assert rep["removal"] == cfg.removal and rep["fine_tune_epochs"] == 2
    tuned = history.loc[history["stage"] == "fine_tune", "val_acc"].max()
    assert tuned > 0.8 and tuned >= rep["val_acc_before_fine_tune"]  # fine-tuning recovers
    probs = posthoc.predict_proba(model, data.x_test, 3)
    assert probs.shape == (3, len(data.y_test), 2)


def test_zero_fine_tune_epochs_is_one_shot_pruning() -> None:
    data = _data()
    cfg = make_config("kit", method="posthoc", density=0.5, hidden=(16,), epochs=2,
                      batch_size=32, n_eval_samples=2, progress=False,
                      method_options={"fine_tune_epochs": 0})
    model = posthoc.build(cfg, data, seed_everything(0))
    history = fit(model, data, cfg)
    assert list(history["stage"]) == ["dense", "dense"]
    assert model_density(model) == pytest.approx(0.5, abs=0.02)


def test_experiment_run_end_to_end() -> None:
    cfg = make_config("kit", method="posthoc", density=0.1, epochs=2, n_train=400, progress=False)
    row = run(cfg, with_ood=False).row  # 8 dense steps are too few to learn much: plumbing only
    assert row["method"] == "posthoc" and row["density"] == pytest.approx(0.1, abs=0.01)
    assert 0.0 <= row["accuracy"] <= 1.0 and math.isfinite(row["nll"])
    assert row["fine_tune_epochs"] == 3 and 0.0 <= row["val_acc_before_fine_tune"] <= 1.0
    dense_part, tune_part = 3 * 2, 3 * 3 * 0.1  # epochs × 3 forwards, sparse forwards ≈ 0.1
    assert row["train_flops_ratio"] == pytest.approx((dense_part + tune_part) / 6, rel=0.01)
