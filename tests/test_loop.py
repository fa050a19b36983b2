"""The one epoch loop: the only place that trains, the numbers of the pre-refactor loop, and exact
resume for every method of the registry (checkpoints restore everything, stages included)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pandas as pd
import pytest
import torch

from ssvi_lite.config import make_config, seed_everything
from ssvi_lite.data import load_dataset
from ssvi_lite.experiment import run
from ssvi_lite.methods import NAMES, get_method
from ssvi_lite.train import fit

ROOT = Path(__file__).resolve().parents[1]
PINNED = json.loads((ROOT / "tests" / "data" / "pinned_history.json").read_text())


def test_only_the_loop_module_walks_shuffled_training_batches() -> None:
    """Every shuffled pass over the training data (a training epoch) is in ssvi_lite/loop.py."""
    found = []
    for path in sorted((ROOT / "ssvi_lite").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "iterate_batches"
                    and any(k.arg == "shuffle" and getattr(k.value, "value", False)
                            for k in node.keywords)):
                found.append(path.relative_to(ROOT).as_posix())
    assert found == ["ssvi_lite/loop.py"], found


# the settings of the pinned runs, spelled out so that later preset changes do not move them
PINNED_SETTINGS = dict(model="mlp", hidden=(32, 16), epochs=3, n_train=600, batch_size=128,
                       optimizer="adam", lr=1e-3, rho_lr=None, cosine_lr=False, weight_decay=0.0,
                       first_layer_dense=False, prior_sigma=0.1, kl_scale=1.0,
                       kl_warmup=False, sigma_init=1e-3, sigma_init_std=0.0, mu_init="kaiming",
                       update_interval=4, alpha=0.3, t_end_fraction=0.75, n_eval_samples=3,
                       select="best_val_acc", progress=False)


@pytest.mark.parametrize("method", ["map", "vi", "ssvi", "static"])
def test_the_loop_reproduces_the_pinned_history(method: str) -> None:
    cfg = make_config("kit", method=method, density=0.2 if method in ("ssvi", "static") else 1.0,
                      **PINNED_SETTINGS)
    data = load_dataset("mnist5k", seed=0, n_train=600, test_fraction=0.1)  # the split then
    history = run(cfg, data=data, with_ood=False).history
    pinned = pd.DataFrame(PINNED["histories"][method])
    pd.testing.assert_frame_equal(history[pinned.columns], pinned, check_dtype=False, rtol=1e-5)


# ----------------------------------------------------------------------------- exact resume
TINY = dict(hidden=(16,), epochs=3, n_train=192, batch_size=64, n_eval_samples=2,
            update_interval=2, progress=False)
OPTIONS = {"weight_sharing": {"pretrain_epochs": 2, "noise_epochs": 2, "n_clusters": 6,
                              "kmeans_iters": 3, "min_cluster_size": 2},
           "posthoc": {"dense_epochs": 2, "fine_tune_epochs": 2},
           "turbo_vbi": {"mask_from_epoch": 2}}
# where to interrupt (after this many epochs): inside stages and at their boundaries
STOPS = {"weight_sharing": [2, 3, 4, 5], "posthoc": [2, 3]}


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist5k", seed=0, n_train=TINY["n_train"])


def _config(method: str):
    density = 0.2 if get_method(method).density == "target" else 1.0
    return make_config("kit", method=method, density=density,
                       method_options=OPTIONS.get(method, {}), **TINY)


def _train(cfg, data, seed: int = 0, **kwargs):
    model = get_method(cfg.method).build(cfg, data, seed_everything(seed))
    history = fit(model, data, cfg, **kwargs)
    return model, history


def _same(a, b) -> None:
    (model_a, hist_a), (model_b, hist_b) = a, b
    drop = ["wall_time_s"]
    pd.testing.assert_frame_equal(hist_a.drop(columns=drop), hist_b.drop(columns=drop),
                                  check_exact=True)
    assert hist_a.attrs["notes"] == hist_b.attrs["notes"]
    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        if isinstance(state_a[key], torch.Tensor):
            assert torch.equal(state_a[key], state_b[key]), key
    method = get_method(hist_a.attrs.get("method", "map"))
    torch.manual_seed(7)
    probs_a = method.predict_proba(model_a, torch.rand(5, 1, 28, 28), 2)
    torch.manual_seed(7)
    assert torch.equal(probs_a, method.predict_proba(model_b, torch.rand(5, 1, 28, 28), 2))


@pytest.mark.parametrize("method", NAMES)
def test_an_interrupted_run_resumes_bit_identically(method: str, data, tmp_path) -> None:
    cfg = _config(method)
    straight = _train(cfg, data)
    straight[1].attrs["method"] = method
    for stop in STOPS.get(method, [1, 2]):
        ckpt = tmp_path / f"{method}-{stop}.pt"

        def interrupt(row, model, stop=stop):
            if row["epoch"] == stop + 1:  # the checkpoint holds epoch `stop`
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            _train(cfg, data, checkpoint=ckpt, on_epoch=interrupt)
        seed_everything(123)  # resuming must not depend on the global RNG at start ...
        resumed = _train(cfg, data, seed=5, checkpoint=ckpt, resume=True)  # ... or the init
        resumed[1].attrs["method"] = method
        _same(straight, resumed)
