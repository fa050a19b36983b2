"""kernels="sparse" (ssvi_lite.kernels, docs/method.md §8): whole SSVI runs give the numbers of the
masked path, resume exactly, switch kernels on a checkpoint, compute the dense gradient only on
update steps of gradient addition, and say in one line which layers fall back."""
from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest
import torch

from ssvi_lite import sparse_ops
from ssvi_lite.checkpoint import check_config
from ssvi_lite.checkpoint import load as load_checkpoint
from ssvi_lite.cli import main
from ssvi_lite.config import make_config, run_id, seed_everything
from ssvi_lite.criteria import top_k_mask
from ssvi_lite.data import load_dataset
from ssvi_lite.experiment import prepare_model
from ssvi_lite.kernels import adapt_weights, layer_choice, masked_parameter_count, use_kernels
from ssvi_lite.layers import MeanFieldLinear, mean_field_layers
from ssvi_lite.predict import predict_proba
from ssvi_lite.sparse import SparseMeanFieldLinear, masked_noise_stream, top_k_dense
from ssvi_lite.train import fit

TINY = dict(hidden=(32, 16), epochs=3, n_train=384, batch_size=64, update_interval=2,
            n_eval_samples=3, lr=3e-3, progress=False)
COMPARED = ["loss", "nll", "kl", "elbo", "train_acc", "val_acc", "val_nll", "val_ece", "density",
            "train_flops"]


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist5k", seed=0, n_train=TINY["n_train"])


def _cfg(kernels: str, method: str = "ssvi", **kw):
    return make_config("kit", **{"method": method, "density": 0.2, "kernels": kernels, **TINY,
                                 **kw})


def _train(cfg, data, seed: int = 0, **kw):
    """(model, history, swaps) of one run; sample-mode noise on the masked stream."""
    model = prepare_model(cfg, data, seed_everything(seed))
    swaps: list = []
    with masked_noise_stream(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a 3-epoch run ends unconverged
        history = fit(model, data, cfg, on_update=lambda t, rec: swaps.append(
            [(r.name, r.n_swap, r.removed.clone(), r.added.clone()) for r in rec]), **kw)
    return model, history, swaps


def _masked_view(model) -> dict[str, tuple[torch.Tensor, ...]]:
    """(mask, μ, ρ on the support, bias) of every layer, whatever its storage."""
    out = {}
    for name, layer in mean_field_layers(model):
        dense = layer.to_masked() if isinstance(layer, SparseMeanFieldLinear) else layer
        out[name] = (dense.mask, dense.mu, dense.rho[dense.mask], dense.bias)
    return out


def _same_numbers(a, b, exact_masks: bool = True) -> None:
    (model_a, hist_a, swaps_a), (model_b, hist_b, swaps_b) = a, b
    sigma = [c for c in hist_a.columns if c.startswith("sigma_q")]
    pd.testing.assert_frame_equal(hist_a[COMPARED + sigma], hist_b[COMPARED + sigma], rtol=1e-4)
    for sa, sb in zip(swaps_a, swaps_b, strict=True):
        for (name, n, removed, added), (name_b, n_b, removed_b, added_b) in zip(sa, sb,
                                                                                strict=True):
            assert (name, n) == (name_b, n_b)
            assert torch.equal(removed, removed_b) and torch.equal(added, added_b)
    view_a, view_b = _masked_view(model_a), _masked_view(model_b)
    for name in view_a:
        assert torch.equal(view_a[name][0], view_b[name][0]), name  # the same support
        for ta, tb in zip(view_a[name][1:], view_b[name][1:]):
            torch.testing.assert_close(ta, tb, rtol=1e-4, atol=1e-5)
    x = torch.rand(20, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with masked_noise_stream():
        torch.testing.assert_close(predict_proba(model_a, x, 3), predict_proba(model_b, x, 3),
                                   rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method, addition", [("ssvi", "grad"), ("ssvi", "random"),
                                              ("static", "grad")])
def test_a_sparse_run_gives_the_numbers_of_the_masked_run(method, addition, data) -> None:
    masked = _train(_cfg("masked", method, addition=addition), data)
    sparse = _train(_cfg("sparse", method, addition=addition), data)
    assert all(isinstance(layer, SparseMeanFieldLinear)
               for _, layer in mean_field_layers(sparse[0]))
    assert all(isinstance(layer, MeanFieldLinear) for _, layer in mean_field_layers(masked[0]))
    assert len(masked[2]) == (6 if method == "ssvi" else 0)  # T = 18 steps: updates 2, ..., 12
    _same_numbers(masked, sparse)


@pytest.mark.parametrize("addition", ["grad", "random"])
def test_the_dense_gradient_is_computed_only_on_update_steps_of_grad_addition(
        addition, data, monkeypatch) -> None:
    captured = []
    capture = sparse_ops._capture

    def counting(sink, g_t, x_t):
        if sink is not None:
            captured.append(g_t.shape[0])
        capture(sink, g_t, x_t)

    monkeypatch.setattr(sparse_ops, "_capture", counting)
    _, _, swaps = _train(_cfg("sparse", addition=addition), data)
    assert len(swaps) == 6  # 3 epochs × 6 steps, ΔT = 2, T_end = 13: steps 2, 4, ..., 12
    assert len(captured) == (3 * len(swaps) if addition == "grad" else 0)


def _interrupted(cfg, data, path, stop: int = 1):
    def interrupt(row, model):
        if row["epoch"] == stop + 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(cfg, data, checkpoint=path, on_epoch=interrupt)


@pytest.mark.parametrize("method", ["ssvi", "static"])
def test_a_sparse_run_resumes_bit_identically(method, data, tmp_path) -> None:
    cfg = _cfg("sparse", method)
    model, history, _ = _train(cfg, data)
    path = tmp_path / "run.pt"
    _interrupted(cfg, data, path)
    assert "net.1.rows" in load_checkpoint(path)["model"]  # the sparse storage is saved
    seed_everything(123)
    model_b, history_b, _ = _train(cfg, data, seed=5, checkpoint=path, resume=True)
    pd.testing.assert_frame_equal(history.drop(columns="wall_time_s"),
                                  history_b.drop(columns="wall_time_s"), check_exact=True)
    state, state_b = model.state_dict(), model_b.state_dict()
    assert state.keys() == state_b.keys()
    assert all(torch.equal(state[k], state_b[k]) for k in state)
    x = torch.rand(5, 1, 28, 28)
    assert torch.equal(predict_proba(model, x, 2), predict_proba(model_b, x, 2))


@pytest.mark.parametrize("first, then", [("masked", "sparse"), ("sparse", "masked")])
def test_a_checkpoint_resumes_with_the_other_kernels(first, then, data, tmp_path) -> None:
    """Weights, best weights and Adam's moments move between storages: the resumed run gives the
    numbers of the uninterrupted one up to float rounding."""
    straight = _train(_cfg(first, select="best_val_acc"), data)
    path = tmp_path / "run.pt"
    _interrupted(_cfg(first, select="best_val_acc"), data, path)
    resumed = _train(_cfg(then, select="best_val_acc"), data, seed=5, checkpoint=path,
                     resume=True)
    kind = SparseMeanFieldLinear if then == "sparse" else MeanFieldLinear
    assert all(isinstance(layer, kind) for _, layer in mean_field_layers(resumed[0]))
    _same_numbers(straight, (*resumed[:2], straight[2]))  # swaps before the stop: not re-run
    assert len(resumed[2]) == 4  # those after it


def test_weights_move_between_storages_and_damaged_ones_fail_clearly(data) -> None:
    masked = prepare_model(_cfg("masked"), data, seed_everything(0))
    sparse = prepare_model(_cfg("sparse"), data, seed_everything(0))
    as_sparse = adapt_weights(masked.state_dict(), sparse)
    assert set(as_sparse) == set(sparse.state_dict())
    assert all(torch.equal(as_sparse[k], v) for k, v in sparse.state_dict().items())
    back = adapt_weights(as_sparse, masked)
    for k, v in masked.state_dict().items():
        if not k.endswith("rho"):  # ρ off the support is never read
            assert torch.equal(back[k], v), k
    # the size-based default thread count sees the same model either way
    assert masked_parameter_count(sparse) == sum(p.numel() for p in masked.parameters())
    bad = {**masked.state_dict(), "net.1.mask": torch.ones(3)}
    with pytest.raises(ValueError, match="net.1 cannot be moved to the sparse storage"):
        adapt_weights(bad, sparse)


def test_the_flag_the_config_and_the_run_id(tmp_path, capsys) -> None:
    with pytest.raises(ValueError, match="kernels='csr' is not known"):
        make_config("kit", kernels="csr")
    masked, sparse = make_config("kit", kernels="masked"), make_config("kit", kernels="sparse")
    assert run_id(masked) == run_id(sparse)  # the same numbers: the same run
    check_config(tmp_path / "x.pt", masked.to_dict(), sparse)  # resume may switch kernels
    out = tmp_path / "run.json"
    argv = ["train", "--method", "ssvi", "--density", "0.2", "--kernels", "sparse", "--epochs",
            "1", "--n-train", "256", "--hidden", "16", "--no-progress", "--json", str(out)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(argv) == 0
    row = json.loads(out.read_text())
    row = row[0] if isinstance(row, list) else row
    assert row["kernels"] == "sparse" and row["density"] == pytest.approx(0.2, abs=0.01)
    assert main(["train", "--kernels", "csr"]) != 0
    assert "--kernels: invalid choice: 'csr'" in capsys.readouterr().err


def test_layers_that_keep_the_masked_path_are_named_in_one_line(data) -> None:
    cfg = _cfg("sparse", method="vi", density=1.0, epochs=1)
    model = prepare_model(cfg, data, seed_everything(0))
    with pytest.warns(UserWarning, match=r"kernels=sparse: masked path for net\.1, net\.3, "
                                         r"net\.5 \(vi: sparse kernels serve ssvi and static\)"):
        fit(model, data, cfg)
    dense_first = prepare_model(_cfg("sparse", first_layer_dense=True), data, seed_everything(0))
    note = use_kernels(dense_first, "sparse", "ssvi")
    assert note == "kernels=sparse: masked path for net.1 (density 1)"
    assert [type(m).__name__ for _, m in mean_field_layers(dense_first)] == [
        "MeanFieldLinear", "SparseMeanFieldLinear", "SparseMeanFieldLinear"]
    lenet = make_config("kit", model="lenet", density=0.2, kernels="sparse", progress=False)
    note = use_kernels(prepare_model(lenet, data, seed_everything(0)), "sparse", "ssvi")
    assert note.startswith("kernels=sparse: masked path for features.0, features.3 (Conv2d")
    assert layer_choice(MeanFieldLinear(4, 3).to("meta"), "sparse") == (False, "meta")
    assert use_kernels(dense_first, "masked") is None
    assert all(isinstance(m, MeanFieldLinear) for _, m in mean_field_layers(dense_first))


def test_auto_runs_sparse_only_where_measured_to_win(data) -> None:
    """An ERK split at density 0.1 gives 784-100-100-10 layer densities ≈ 0.08, 0.15, 0.82."""
    cfg = make_config("kit", method="ssvi", density=0.1, mask_init="erk", kernels="auto",
                      progress=False)
    model = prepare_model(cfg, data, seed_everything(0))
    assert use_kernels(model, "auto", "ssvi") is None  # auto's choices are not fallbacks
    kinds = [type(m).__name__ for _, m in mean_field_layers(model)]
    assert kinds == ["SparseMeanFieldLinear", "SparseMeanFieldLinear", "MeanFieldLinear"]


def test_a_sparse_layer_runs_under_cpu_autocast() -> None:
    masked = MeanFieldLinear(6, 5)
    sparse = SparseMeanFieldLinear(5, 4, torch.rand(4, 5) < 0.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = masked(torch.randn(3, 6))
        assert h.dtype == torch.bfloat16
        out = sparse(h)
    assert out.dtype == torch.float32 and out.shape == (3, 4)


@pytest.mark.parametrize("k", [0, 1, 7, 30, 59])
def test_the_fast_addition_selection_chooses_as_top_k_mask(k, generator) -> None:
    """Ties at the k-th value go to the lower flat index; NaN falls back to top_k_mask."""
    scores = torch.randint(0, 4, (6, 10), generator=generator).float()  # ties everywhere
    allowed = torch.rand(6, 10, generator=generator) < 0.9
    k = min(k, int(allowed.sum()))
    assert torch.equal(top_k_dense(scores, k, allowed), top_k_mask(scores, k, allowed))
    scores[0, 0] = float("nan")
    assert torch.equal(top_k_dense(scores, k, allowed), top_k_mask(scores, k, allowed))
