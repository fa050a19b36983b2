"""fit: every method trains; history columns; resume = uninterrupted; NaN stops with a clear
error."""
from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from ssvi_lite.checkpoint import load as load_checkpoint
from ssvi_lite.config import make_config, seed_everything
from ssvi_lite.data import load_dataset
from ssvi_lite.experiment import prepare_model, run
from ssvi_lite.layers import mean_field_layers
from ssvi_lite.loop import kl_weight
from ssvi_lite.predict import evaluate, predict_proba
from ssvi_lite.train import fit

HISTORY_COLUMNS = {"epoch", "step", "loss", "nll", "kl", "kl_weight", "train_acc", "val_acc",
                   "val_nll", "val_ece", "density", "train_flops", "wall_time_s", "lr"}


def _cfg(**kw):
    base = dict(hidden=(32,), epochs=2, batch_size=64, n_train=256, progress=False,
                update_interval=2, n_eval_samples=3, lr=3e-3)
    return make_config("kit", **{**base, **kw})


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist5k", seed=0, n_train=256)


@pytest.mark.parametrize("method, density", [("map", 1.0), ("vi", 1.0), ("ssvi", 0.2),
                                             ("static", 0.2)])
def test_each_method_trains_and_reports_history(method, density, data) -> None:
    cfg = _cfg(method=method, density=density)
    model = prepare_model(cfg, data, seed_everything(0))
    history = fit(model, data, cfg)
    assert isinstance(history, pd.DataFrame) and len(history) == 2
    assert HISTORY_COLUMNS <= set(history.columns)
    assert history["train_flops"].is_monotonic_increasing
    assert history["density"].iloc[-1] == pytest.approx(density, abs=0.01)
    assert history["nll"].iloc[-1] < history["nll"].iloc[0]  # it learns
    assert history[["val_nll", "val_ece"]].notna().all().all()
    if method == "map":
        assert not mean_field_layers(model)
    assert all(math.isfinite(v) for v in history["loss"])


def test_ssvi_swaps_and_keeps_counts_while_static_does_not(data) -> None:
    swaps = []
    cfg = _cfg(method="ssvi", density=0.2)
    model = prepare_model(cfg, data, seed_everything(0))
    counts = [layer.n_active for _, layer in mean_field_layers(model)]
    masks0 = [layer.mask.clone() for _, layer in mean_field_layers(model)]
    fit(model, data, cfg, on_update=lambda t, record: swaps.append((t, record)))
    assert [t for t, _ in swaps] == [2, 4]  # T = 8 steps, T_end = 6, ΔT = 2
    assert [layer.n_active for _, layer in mean_field_layers(model)] == counts
    assert any(not torch.equal(m, layer.mask) for m, (_, layer) in
               zip(masks0, mean_field_layers(model)))
    static_cfg = _cfg(method="static", density=0.2)
    static = prepare_model(static_cfg, data, seed_everything(0))
    before = [layer.mask.clone() for _, layer in mean_field_layers(static)]
    fit(static, data, static_cfg)
    assert all(torch.equal(m, layer.mask)
               for m, (_, layer) in zip(before, mean_field_layers(static)))


def test_kl_warmup_follows_min_2e_over_E() -> None:
    cfg = make_config("paper", epochs=10)
    assert [kl_weight(cfg, e) for e in (1, 3, 5, 9)] == pytest.approx([0.002, 0.006, 0.01, 0.01])
    assert kl_weight(make_config("kit"), 1) == 1.0


def test_resume_after_interruption_gives_the_same_numbers(tmp_path, data) -> None:
    cfg = _cfg(method="ssvi", density=0.2, epochs=3)  # 4 steps/epoch, updates at t = 2, 4, 6, 8
    full = fit(prepare_model(cfg, data, seed_everything(0)), data, cfg)
    ckpt = tmp_path / "run.pt"

    def interrupt(step, record):
        if step >= 8:  # the first update of epoch 3: the checkpoint holds the end of epoch 2
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(prepare_model(cfg, data, seed_everything(0)), data, cfg, checkpoint=ckpt,
            on_update=interrupt)
    assert load_checkpoint(ckpt, cfg)["progress"]["epoch"] == 2
    seed_everything(123)  # resuming must not depend on the global RNG at start
    resumed = fit(prepare_model(cfg, data, seed_everything(5)), data, cfg, checkpoint=ckpt,
                  resume=True)
    cols = ["loss", "nll", "kl", "val_acc", "val_nll", "train_flops"]
    pd.testing.assert_frame_equal(full[cols], resumed[cols])


def test_nan_loss_stops_with_epoch_and_step(data) -> None:
    cfg = _cfg(method="vi", density=1.0, lr=1e30)
    model = prepare_model(cfg, data, seed_everything(0))
    with pytest.raises(FloatingPointError, match=r"epoch \d+, step \d+"):
        fit(model, data, cfg.replace(epochs=50))


def test_wrong_checkpoint_is_refused(tmp_path, data) -> None:
    cfg = _cfg(method="vi", density=1.0, epochs=1)
    ckpt = tmp_path / "vi.pt"
    fit(prepare_model(cfg, data, seed_everything(0)), data, cfg, checkpoint=ckpt)
    other = _cfg(method="ssvi", density=0.2, epochs=1)
    with pytest.raises(ValueError, match="different run.*method"):
        fit(prepare_model(other, data, seed_everything(0)), data, other, checkpoint=ckpt,
            resume=True)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable"):
        load_checkpoint(junk)
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")


def test_predictive_shapes_and_mean_network(data) -> None:
    cfg = _cfg(method="vi", density=1.0, epochs=1)
    model = prepare_model(cfg, data, seed_everything(0))
    fit(model, data, cfg)
    probs = predict_proba(model, data.x_test, n_samples=4, batch_size=100)  # (K, N, C)
    assert probs.shape == (4, len(data.y_test), 10)
    torch.testing.assert_close(probs.sum(-1), torch.ones(4, len(data.y_test)))
    # chunking does not change a draw: one weight sample per k across all chunks
    torch.testing.assert_close(probs, predict_proba(model, data.x_test, 4, batch_size=1000))
    assert not torch.allclose(probs[0], probs[1])
    result = evaluate(model, data.x_test, data.y_test, n_samples=4)
    assert {"accuracy", "nll", "ece", "brier", "mean_net_accuracy"} <= set(result)


def test_run_produces_the_documented_row(data) -> None:
    cfg = _cfg(method="ssvi", density=0.2, epochs=1)
    row = run(cfg, data=data).row
    for key in ("method", "dataset", "density", "accuracy", "nll", "ece", "brier", "n_samples",
                "epochs", "train_flops_ratio", "wall_time_s", "seed"):
        assert key in row
    assert 0.2 < row["train_flops_ratio"] < 0.35  # sparse steps + the dense-gradient update steps
    assert row["density"] == pytest.approx(0.2, abs=0.01)
    assert any(k.startswith("ood_auroc_") for k in row)


@pytest.mark.parametrize("option", ["amp", "channels_last"])
def test_amp_and_channels_last_do_not_change_results_beyond_noise(option, data) -> None:
    """A short LeNet SSVI run with bf16 autocast / NHWC layout against float32 NCHW."""
    cfg = _cfg(method="ssvi", density=0.3, model="lenet", epochs=2, n_eval_samples=5)
    base = fit(prepare_model(cfg, data, seed_everything(0)), data, cfg)
    other_cfg = cfg.replace(**{option: True})
    other = fit(prepare_model(other_cfg, data, seed_everything(0)), data, other_cfg)
    if option == "channels_last":  # the same arithmetic in another memory order
        np_tol = dict(rtol=1e-3, atol=1e-4)
        pd.testing.assert_series_equal(base["nll"], other["nll"], check_exact=False, **np_tol)
    else:  # bf16 keeps ~3 significant digits: the curves agree to within noise
        assert (base["nll"] - other["nll"]).abs().max() < 0.05 * base["nll"].max()
        assert abs(base["val_acc"].iloc[-1] - other["val_acc"].iloc[-1]) < 0.05


def test_threads_small_models_train_on_one_and_the_count_comes_back(data) -> None:
    from ssvi_lite.train import cpu_threads

    torch.set_num_threads(2)
    small = prepare_model(_cfg(method="vi", density=1.0), data, seed_everything(0))
    with cpu_threads(_cfg(method="vi", density=1.0), small):
        assert torch.get_num_threads() == 1  # < 1M weights: one thread by default
    with cpu_threads(_cfg(method="vi", density=1.0, threads=2), small):
        assert torch.get_num_threads() == 2  # the config's count wins
    assert torch.get_num_threads() == 2
    cfg = _cfg(method="vi", density=1.0, epochs=1)
    fit(prepare_model(cfg, data, seed_everything(0)), data, cfg)
    assert torch.get_num_threads() == 2  # restored after training


def test_random_addition_pays_no_dense_gradient_pass(data) -> None:
    """Only gradient addition needs ∂CE/∂μ of the inactive weights: its update steps cost
    2 f_sparse + f_dense; random addition's cost 3 f_sparse like any other step."""
    from ssvi_lite.costs import forward_flops, layer_costs

    ratios = {}
    for addition in ("grad", "random"):
        cfg = _cfg(method="ssvi", density=0.2, addition=addition)
        model = prepare_model(cfg, data, seed_everything(0))
        history = fit(model, data, cfg)
        f_sparse = forward_flops(layer_costs(model, data.input_shape), 1)
        ratios[addition] = history["train_flops"].iloc[-1] / (3 * f_sparse * data.n_train * 2)
    assert ratios["random"] == pytest.approx(1.0)
    assert ratios["grad"] > 1.05  # the update steps' dense passes


def test_a_bare_train_config_is_the_kit_preset() -> None:
    """TrainConfig's own defaults are the kit's recipe, so code that builds a config directly gets
    the converging preset, not an older setting."""
    from ssvi_lite.config import TrainConfig

    assert TrainConfig() == make_config("kit")
