"""Widgets driven without a browser: set a control, check what its callback computed.

Oracles: the pruned masks against an independent per-layer ``torch.topk`` of the removal score,
the criterion explorer's grid against the closed forms evaluated directly (|μ|, and snr_abs's
limit √(2/(π−2)) at μ = 0), the achieved density against the slider.
"""
from __future__ import annotations

import math

import pytest
import torch

import ssvi_lite as sl
from ssvi_lite import widgets
from ssvi_lite.criteria import REMOVAL_SCORES

N_TRAIN = 300


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models train fastest on one thread (and do not fight a parallel test worker)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def data() -> sl.DataSplits:
    return sl.load_dataset("mnist5k", seed=0, n_train=N_TRAIN)


@pytest.fixture(scope="module")
def base_cfg() -> sl.TrainConfig:
    return sl.make_config("kit", method="vi", density=1.0, hidden=(32,), epochs=2, lr=1e-2,
                          n_train=N_TRAIN, n_eval_samples=2, progress=False)


@pytest.fixture(scope="module")
def dense_model(data: sl.DataSplits, base_cfg: sl.TrainConfig) -> torch.nn.Module:
    model = sl.prepare_model(base_cfg, data, sl.seed_everything(0))
    sl.fit(model, data, base_cfg)
    return model


def _layer_state(model: torch.nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.mu.detach().clone(), layer.mask.clone())
            for _, layer in sl.mean_field_layers(model)]


# ----------------------------------------------------------------------------- pruning explorer
def test_pruning_explorer_follows_the_slider_and_pruning_costs_accuracy(dense_model, data) -> None:
    before = _layer_state(dense_model)
    w = widgets.pruning_explorer(dense_model, data, n_samples=2)
    assert w.state["n_updates"] == 1 and w.state["criterion"] == "snr_abs"
    w.density_slider.value = 1.0
    full, fig_full = w.state["accuracy"], w.state["figure"]
    assert w.state["density"] == pytest.approx(1.0)
    assert w.state["n_updates"] == 2
    w.density_slider.value = 0.05
    assert w.state["target_density"] == 0.05
    assert w.state["density"] == pytest.approx(0.05, abs=1e-3)
    assert w.state["accuracy"] < full - 0.05  # 95 % of the weights gone, no retraining
    assert 0.0 <= w.state["ece"] <= 1.0 and w.state["figure"] is not fig_full
    after = _layer_state(dense_model)  # the explorer prunes copies only
    assert all(torch.equal(a[0], b[0]) and bool(b[1].all()) for a, b in zip(after, before))


@pytest.mark.parametrize("key", ["magnitude", "snr", "snr_exp_abs"])
def test_pruned_masks_are_the_per_layer_top_k_of_the_score(dense_model, data, key) -> None:
    w = widgets.pruning_explorer(dense_model, data, n_samples=1, density=0.3)
    w.criterion_dropdown.value = key
    assert w.state["criterion"] == key
    for (_, src), (_, pruned) in zip(sl.mean_field_layers(dense_model),
                                     sl.mean_field_layers(w.state["model"])):
        scores, kept = REMOVAL_SCORES[key](src.mu, src.sigma), pruned.mask
        assert int(kept.sum()) == src.n_weights - round(0.7 * src.n_weights)
        assert float(scores[kept].min()) >= float(scores[~kept].max())  # a top-k set (ties allowed)
        assert bool((pruned.mu[~pruned.mask] == 0).all())


def test_criteria_change_what_is_pruned(dense_model, data) -> None:
    w = widgets.pruning_explorer(dense_model, data, criteria=["magnitude", "random"],
                                 n_samples=1, density=0.2)
    assert w.state["criterion"] == "magnitude"
    kept_magnitude = [layer.mask.clone() for _, layer in sl.mean_field_layers(w.state["model"])]
    w.criterion_dropdown.value = "random"
    kept_random = [layer.mask for _, layer in sl.mean_field_layers(w.state["model"])]
    iou = sl.criteria.removal_agreement(~kept_magnitude[0], ~kept_random[0])
    assert iou < 0.9  # random keeps a different 20 % (expected IoU of random sets ≈ 0.67)


def test_pruning_explorer_rejects_bad_input(dense_model, data) -> None:
    with pytest.raises(ValueError, match="nope"):
        widgets.pruning_explorer(dense_model, data, criteria=["nope"])
    with pytest.raises(ValueError, match="density"):
        widgets.pruning_explorer(dense_model, data, density=1.5)
    with pytest.raises(ValueError, match="split"):
        widgets.pruning_explorer(dense_model, data, split="train")


# ----------------------------------------------------------------------------- SSVI trainer
def test_ssvi_trainer_trains_at_the_slider_density(data, base_cfg) -> None:
    cfg = base_cfg.replace(method="ssvi", density=0.5, epochs=1, update_interval=2)
    w = widgets.ssvi_trainer(data, cfg)
    assert w.state["n_runs"] == 0
    w.density_slider.value = 0.2
    w.train_button.click()
    first = dict(w.state)
    assert first["n_runs"] == 1 and first["target_density"] == 0.2
    assert first["density"] == pytest.approx(0.2, abs=1e-3)
    assert sl.model_density(first["model"]) == pytest.approx(0.2, abs=1e-3)
    assert len(first["history"]) == 1 and 0.0 <= first["accuracy"] <= 1.0
    w.density_slider.value = 0.6
    w.criterion_dropdown.value = "magnitude"
    w.train_button.click()
    assert w.state["n_runs"] == 2 and w.state["removal"] == "magnitude"
    assert w.state["density"] == pytest.approx(0.6, abs=1e-3)
    assert w.state["figure"] is not first["figure"]
    assert [r["target_density"] for r in w.state["runs"]] == [0.2, 0.6]
    assert not w.train_button.disabled


def test_ssvi_trainer_reports_validation_numbers_and_starts_sparse(data, base_cfg) -> None:
    w = widgets.ssvi_trainer(data, base_cfg.replace(epochs=1))  # handed a dense-VI config
    assert w.density_slider.value == 0.1  # not the dense config's density 1
    w.train_button.click()
    mean = sl.predict_proba(w.state["model"], data.x_val, base_cfg.n_eval_samples).mean(0)
    assert w.state["accuracy"] == pytest.approx(sl.metrics.accuracy(mean, data.y_val))
    assert "val (N=500)" in w.summary.value and w.state["converged"] is False
    assert len(w.state["figure"].axes) == 3  # val accuracy, val NLL, reliability
    test = widgets.ssvi_trainer(data, base_cfg.replace(epochs=1), split="test")
    test.train_button.click()
    assert "test (N=1000)" in test.summary.value


def test_ssvi_trainer_rejects_a_non_config(data) -> None:
    with pytest.raises(ValueError, match="TrainConfig"):
        widgets.ssvi_trainer(data, {"density": 0.1})
    with pytest.raises(ValueError, match="split"):
        widgets.ssvi_trainer(data, sl.make_config("kit"), split="train")


# ----------------------------------------------------------------------------- criterion explorer
def test_criterion_explorer_keeps_the_chosen_fraction_above_the_boundary() -> None:
    w = widgets.criterion_explorer(n=41)
    assert w.state["criterion"] == "snr_abs" and w.lambda_slider.disabled
    w.keep_slider.value = 0.2
    scores, kept, threshold = w.state["scores"], w.state["kept"], w.state["threshold"]
    assert scores.shape == (41, 41)
    assert int(kept.sum()) == round(0.2 * 41 * 41)
    assert bool((scores[kept] >= threshold).all()) and bool((scores[~kept] <= threshold).all())
    # snr_abs → √(2/(π−2)) ≈ 1.32 on the μ = 0 column, whatever σ (docs/method.md §6)
    middle = w.state["mu"][0].abs().argmin()
    assert torch.allclose(scores[:, middle], torch.full((41,), math.sqrt(2 / (math.pi - 2)),
                                                     dtype=torch.float64),
                          rtol=1e-6)


def test_criterion_explorer_switches_score_and_lambda() -> None:
    w = widgets.criterion_explorer(mu_range=(-0.05, 0.05), sigma_range=(1e-3, 0.05), n=21)
    fig = w.state["figure"]
    colour = fig.axes[0].collections[0].get_array()  # coloured by percentile on the grid
    assert float(colour.min()) >= 0.0 and float(colour.max()) == pytest.approx(100.0)
    assert "percentile" in fig.axes[1].get_ylabel()
    w.criterion_dropdown.value = "magnitude"
    assert torch.allclose(w.state["scores"], w.state["mu"].abs())
    assert w.state["figure"] is not fig
    w.criterion_dropdown.value = "snr_exp_abs"
    assert not w.lambda_slider.disabled
    at_one = w.state["scores"].clone()
    w.lambda_slider.value = 10.0
    assert w.state["lam"] == pytest.approx(10.0)
    expected = REMOVAL_SCORES["snr_exp_abs"](w.state["mu"], w.state["sigma"], lam=10.0)
    assert torch.allclose(w.state["scores"], expected)
    assert not torch.allclose(w.state["scores"], at_one)


def test_score_grid_and_keep_boundary_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="sigma"):
        widgets.score_grid("snr", (-0.1, 0.1), (0.0, 0.1))
    with pytest.raises(ValueError, match="keep_fraction"):
        widgets.keep_boundary(torch.rand(10), 0.0)
    with pytest.raises(ValueError, match="not known"):
        widgets.score_function("nope")


def test_keep_boundary_matches_a_quantile() -> None:
    scores = torch.arange(100, dtype=torch.float64).flip(0).reshape(10, 10)  # 99 … 0
    threshold, kept = widgets.keep_boundary(scores, 0.3)
    assert threshold == 70.0 and int(kept.sum()) == 30 and bool((scores[kept] >= 70).all())
