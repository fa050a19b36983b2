"""Hostile input: a careless or hostile user against the CLI, the files and the library.

Each case checks a promise of README "What the kit promises": bad input stops before any work
with a message naming the value (on the command line: one line, ``error: ...``, exit status 2,
no traceback) and nothing is written or changed. Files (data caches, IDX/CIFAR/SVHN readers,
checkpoints, results JSON) are in test_hostile_files.py. Both run in well under a minute on one
core: almost every case fails before training, the few that train use a 1-epoch, 64-image,
8-unit run.
"""
from __future__ import annotations

import json
import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ssvi_lite as sl
from ssvi_lite import checkpoint, fileio, guards, metrics
from ssvi_lite.cli import main
from ssvi_lite.compare import compare_configs
from ssvi_lite.config import make_config, validate_density
from ssvi_lite.criteria import removal_score, top_k_mask
from ssvi_lite.methods.posthoc import prune_to_density
from ssvi_lite.subspace import SwapSchedule
from ssvi_lite.sweep import expand_grid, run_sweep

TINY = ["--epochs", "1", "--n-train", "64", "--hidden", "8"]
PREFIX = {"train": [*TINY, "--no-progress"],
          "demo": ["--epochs", "1", "--n-train", "64", "--seeds", "0", "--workers", "1", "--quiet",
                   "--out", "{t}/demo"],
          "sweep": [*TINY, "--cluster", "debug", "--out", "{t}/sw"],
          "compare": [*TINY, "--cluster", "debug", "--no-figures", "--out", "{t}/cmp"],
          "fetch": [], "report": []}


# ----------------------------------------------------------------------------- the command line
def _cases(command: str, table: list) -> list:
    return [pytest.param([command, *PREFIX[command], *argv], words,
                         id=f"{command} {' '.join(argv)}"[:70]) for argv, words in table]


CLI = _cases("train", [
    (["--json", "{t}/folder"], ["is a folder"]), (["--json", "{t}/file/x.json"], ["not a folder"]),
    (["--checkpoint", "{t}/folder"], ["is a folder"]),
    (["--checkpoint", "{t}/file"], ["--resume", "--overwrite"]),
    (["--checkpoint", "{t}/a.pt", "--json", "{t}/a.pt"], ["same file"]),
    (["--checkpoint", "{t}/file", "--resume", "--overwrite"], ["contradict"]),
    (["--checkpoint", "{t}/none.pt", "--resume"], ["none.pt", "does not exist"]),
    (["--resume"], ["--resume", "--checkpoint"]), (["--json", "{t}/file"], ["not a kit results"]),
    (["--json", "{t}/results.json"], ["other-run", "--overwrite"]), (["--json", ""], ["empty"]),
    (["--json", "{t}/" + "x" * 300 + ".json"], ["too long"]),
    (["--json", "{t}/a\0b.json"], ["not a valid path"]),
    (["--checkpoint", "{t}/file/c.pt"], ["not a folder"]), (["--epochs", "abc"], ["'abc'"]),
    (["--epochs", "0"], ["epochs", "0"]), (["--epochs", "-3"], ["epochs", "-3"]),
    (["--density", "0"], ["density=0.0"]), (["--density", "1.5"], ["density=1.5"]),
    (["--density", "nan"], ["density=nan"]), (["--density", "inf"], ["density=inf"]),
    (["--density", "-0.1"], ["density=-0.1"]), (["--dataset", "foo"], ["'foo'", "mnist5k"]),
    (["--method", "foo"], ["'foo'"]), (["--option", "foo=1"], ["foo"]),
    (["--method", "map", "--density", "0.1"], ["map", "density=0.1"]),
    (["--method", "em_mcmc", "--option", "n_cycles=abc"], ["n_cycles", "abc"]),
    (["--option", "novalue"], ["KEY=VALUE"]), (["--hidden", "2.7"], ["2.7"]),
    (["--hidden", "0"], ["hidden"]), (["--lr", "-1"], ["lr", "-1"]), (["--lr", "0"], ["lr"]),
    (["--lr", "nan"], ["lr", "nan"]), (["--batch-size", "0"], ["batch_size"]),
    (["--seed", "-1"], ["seed", "-1"]), (["--val-fraction", "0"], ["val_fraction=0.0"]),
    (["--val-fraction", "0.5"], ["val_fraction=0.5"]),
    (["--t-end-fraction", "0"], ["t_end_fraction"]), (["--t-end-fraction", "2"], ["2.0"]),
    (["--alpha", "1.5"], ["alpha=1.5"]), (["--device", "tpu"], ["tpu"]),
    (["--removal", "foo"], ["'foo'", "snr_abs"]), (["--addition", "foo"], ["'foo'", "grad"]),
    (["--model", "foo"], ["'foo'"]), (["--prior-sigma", "0"], ["prior_sigma"]),
    (["--sigma-init", "-1"], ["sigma_init"]), (["--n-eval-samples", "0"], ["n_eval_samples"]),
    (["--update-interval", "0"], ["update_interval"]), (["--n-train", "0"], ["n_train"]),
    (["--preset", "foo"], ["'foo'"]), (["--select", "foo"], ["'foo'"]),
    (["--augment", "foo"], ["'foo'"]), (["--mask-init", "foo"], ["'foo'"]),
    (["--optimizer", "foo"], ["'foo'"]), (["--mu-init", "foo"], ["'foo'"]),
    (["--momentum", "-1"], ["momentum"]), (["--weight-decay", "-1"], ["weight_decay"]),
    (["--kl-scale", "-1"], ["kl_scale"]), (["--rho-lr", "0"], ["rho_lr"]),
    (["--model", "lenet", "--dataset", "moons"], ["lenet"]),
    (["--dataset", "cifar10", "--data-root", "{t}/folder"], ["cifar10"]), (["--foo"], ["--foo"]),
]) + _cases("demo", [
    (["--epochs", "0"], ["--epochs", "'0'"]), (["--epochs", "-1"], ["'-1'"]),
    (["--epochs", "abc"], ["'abc'"]), (["--n-train", "0"], ["--n-train", "'0'"]),
    (["--n-train", "-5"], ["'-5'"]), (["--seeds", "-1"], ["--seeds"]),
    (["--seeds", "x"], ["--seeds", "'x'"]), (["--workers", "0"], ["--workers", "'0'"]),
    (["--out", "{t}/file"], ["is a file"]), (["--out", "{t}/file/sub"], ["not a folder"]),
    (["--json", "{t}/folder"], ["is a folder"]), (["--json", "{t}/file"], ["--overwrite"]),
    (["--json", "{t}/results.json"], ["other-run"]),
    (["--out", "{t}/png"], ["reliability.png", "--overwrite"]),
    (["--json", "{t}/demo/convergence.png"], ["same file"]),
    (["--json", "{t}/demo/reliability.png"], ["same file"]), (["--json", ""], ["empty"]),
    (["--foo"], ["--foo"]),
]) + _cases("fetch", [
    (["foo"], ["'foo'"]), (["mnist", "--root", "{t}/file"], ["is a file"]),
    (["mnist", "--root", "{t}/file/sub"], ["not a folder"]), ([], ["name"]),
]) + _cases("sweep", [
    (["--dataset", "foo"], ["'foo'"]), (["--seeds", "-1"], ["seed", "-1"]),
    (["--seeds", "abc"], ["'abc'"]), (["--densities", "0"], ["density=0.0"]),
    (["--densities", "2"], ["density=2.0"]), (["--timeout", "-5"], ["'-5'"]),
    (["--timeout", "0"], ["'0'"]), (["--timeout", "nan"], ["'nan'"]),
    (["--timeout", "inf"], ["'inf'"]), (["--workers", "0"], ["--workers", "'0'"]),
    (["--workers", "-1"], ["'-1'"]), (["--cpus-per-job", "0"], ["--cpus-per-job"]),
    (["--gpus-per-job", "-1"], ["--gpus-per-job"]), (["--slurm-time", "0"], ["--slurm-time"]),
    (["--devices", "tpu"], ["tpu"]), (["--methods", "foo"], ["'foo'"]),
    (["--removals", "foo"], ["'foo'"]), (["--additions", "foo"], ["'foo'"]),
    (["--out", "{t}/file"], ["is a file"]), (["--out", "{t}/sweep"], ["not a sweep results"]),
    (["--out", "{t}/csvdir"], ["is a folder"]), (["--cluster", "foo"], ["'foo'"]),
    (["--epochs", "0"], ["epochs"]),
]) + _cases("compare", [
    (["--seeds", "-1"], ["seed"]), (["--densities", "0"], ["density=0.0"]),
    (["--densities", "1.5"], ["density=1.5"]), (["--dataset", "foo"], ["'foo'"]),
    (["--methods", "foo"], ["'foo'"]), (["--out", "{t}/file"], ["is a file"]),
    (["--out", "{t}/sweep"], ["not a sweep results"]), (["--timeout", "-5"], ["'-5'"]),
    (["--workers", "0"], ["'0'"]), (["--cluster", "foo"], ["'foo'"]),
    (["--epochs", "0"], ["epochs"]), (["--lr", "nan"], ["lr"]),
]) + _cases("report", [
    (["{t}/nowhere"], ["nowhere", "does not exist"]), (["{t}/folder"], ["no run results"]),
    (["{t}/file"], ["no run results"]), (["{t}", "--csv", "{t}/folder"], ["is a folder"]),
    (["{t}", "--csv", "{t}/file"], ["not a report summary"]),
    (["{t}", "--csv", "{t}/file/x.csv"], ["not a folder"]), ([], ["path"]),
])


@pytest.fixture
def place(tmp_path):
    """What a hostile command line points at: a folder, a file of notes, another run's results,
    a folder whose results.csv is not a sweep's, a folder with only a figure, and a results.csv
    that is a folder."""
    (tmp_path / "folder").mkdir()
    (tmp_path / "file").write_text("my notes\n")
    (tmp_path / "results.json").write_text(json.dumps({"run_id": "other-run", "method": "map",
                                                       "accuracy": 0.9}))
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "results.csv").write_text("a,b\n1,2\n")
    (tmp_path / "png").mkdir()
    (tmp_path / "png" / "reliability.png").write_bytes(b"\x89PNG")
    (tmp_path / "csvdir" / "results.csv").mkdir(parents=True)
    return tmp_path


def _snapshot(root) -> dict:
    return {p: (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


@pytest.mark.parametrize("argv, words", CLI)
def test_cli_refuses_before_any_work(argv, words, place, capsys) -> None:
    before = _snapshot(place)
    assert main([a.replace("{t}", str(place)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.splitlines()) == 1 or "fetch" in err  # a missing dataset says where to look
    for word in words:
        assert word.replace("{t}", str(place)) in err
    assert _snapshot(place) == before  # nothing written or changed, no temporary left


@pytest.mark.parametrize("argv", [["demo", *PREFIX["demo"], "--out", "{t}/ro/demo"],
                                  ["train", *PREFIX["train"], "--json", "{t}/ro/r.json"],
                                  ["sweep", *PREFIX["sweep"], "--out", "{t}/ro"],
                                  ["report", "{t}", "--csv", "{t}/ro/s.csv"]],
                         ids=["demo", "train", "sweep", "report"])
def test_a_read_only_folder_is_refused_before_any_work(argv, place, capsys, monkeypatch) -> None:
    ro = place / "ro"  # read-only as far as the kit can tell (the tests may run as root)
    ro.mkdir()
    real = fileio.os.access
    monkeypatch.setattr(fileio.os, "access",
                        lambda p, mode: real(p, mode) and not str(p).startswith(str(ro)))
    assert main([a.replace("{t}", str(place)) for a in argv]) == 2
    assert f"{ro} is not writable" in capsys.readouterr().err and not list(ro.iterdir())


def test_cli_train_replaces_only_its_own_results(tmp_path, capsys) -> None:
    out, ckpt = tmp_path / "r.json", tmp_path / "r.pt"
    args = ["train", *TINY, "--no-progress", "--json", str(out), "--checkpoint", str(ckpt)]
    assert main(args) == 0
    row = json.loads(out.read_text())
    assert row["run_id"] and row["config_id"] and row["config"]["epochs"] == 1
    assert main([*args, "--resume"]) == 0  # the same run: its JSON may be rewritten
    before = ckpt.read_bytes()
    assert main([*args, "--resume", "--lr", "1e6"]) == 2  # changed settings: refused ...
    assert "lr" in capsys.readouterr().err and ckpt.read_bytes() == before  # ... nothing recorded
    other = ["train", *TINY, "--no-progress", "--method", "map", "--json", str(out)]
    assert main(other) == 2 and "--overwrite" in capsys.readouterr().err
    assert main([*other, "--overwrite"]) == 0 and json.loads(out.read_text())["method"] == "map"


@pytest.mark.parametrize("fail", ["second figure", "json rename"])
def test_demo_writes_json_and_figures_all_or_none(fail, tmp_path, monkeypatch) -> None:
    from ssvi_lite import demo, plots

    configs, save, replace = demo.demo_configs, plots.save_figure, fileio.os.replace
    monkeypatch.setattr(demo, "demo_configs", lambda *a, **k: [c.replace(hidden=(8,)) for c in
                                                               configs(*a, **k)])

    def broken_save(fig, path):
        if path.name == "convergence.png":
            raise OSError("disk full")
        return save(fig, path)

    def broken_replace(src, dst):
        if str(dst).endswith("/demo.json"):
            raise OSError("disk full")
        replace(src, dst)

    if fail == "second figure":
        monkeypatch.setattr(plots, "save_figure", broken_save)
    else:
        monkeypatch.setattr(fileio.os, "replace", broken_replace)
    assert main(["demo", *PREFIX["demo"][:-2], "--out", str(tmp_path / "demo")]) == 2
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no JSON or figure left alone


def test_atomic_paths_all_or_none(tmp_path, monkeypatch) -> None:
    a, b = tmp_path / "a.json", tmp_path / "b.png"
    with pytest.raises(RuntimeError), fileio.atomic_paths(a, b) as (ta, tb):
        ta.write_text("x")
        raise RuntimeError("in the block")
    real, calls = fileio.os.replace, []

    def second_fails(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("rename failed")
        real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", second_fails)
    with pytest.raises(OSError), fileio.atomic_paths(a, b) as (ta, tb):
        ta.write_text("x")
        tb.write_text("y")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the library
def _mlp(hidden=(8,)):
    return sl.build_model(make_config("kit", hidden=hidden), (1, 4, 4), 3)


def _layer():
    return sl.MeanFieldLinear(4, 3)


def _assign(value):
    layer = _layer()
    layer.mask = value


def _data_mask():
    layer = _layer()
    layer.mask.data = torch.rand(3, 4)
    layer(torch.zeros(2, 4))


CFG = make_config("kit")
API = [  # (call, exception, words)
    *[(lambda d=d: make_config("kit", density=d), ValueError, f"density={d!r}")
      for d in (0, 0.0, 1.5, -1, math.nan, math.inf, "0.1", True, None)],
    *[(lambda v=v: make_config("kit", epochs=v), ValueError, "epochs")
      for v in (0, 2.5, "3", True)],
    *[(lambda h=h: make_config("kit", hidden=h), ValueError, "hidden")
      for h in ((2.7,), (), (0,), "400", [True])],
    *[(lambda v=v: make_config("kit", lr=v), ValueError, "lr") for v in (-1, 0, math.nan, "x")],
    (lambda: make_config("kit", kl_warmup="no"), ValueError, "kl_warmup='no'"),
    (lambda: make_config("kit", progress=1), ValueError, "progress=1"),
    (lambda: make_config("kit", data_root=5), ValueError, "data_root=5"),
    (lambda: make_config("kit", method="foo"), ValueError, "'foo'"),
    (lambda: make_config("foo"), ValueError, "'foo'"),
    (lambda: make_config("kit", foo=1), ValueError, "foo"),
    (lambda: make_config("kit", dataset="imagenet"), ValueError, "imagenet"),
    (lambda: make_config("kit", method_options={"foo": 1}), ValueError, "foo"),
    (lambda: make_config("kit", method="em_mcmc", method_options={"n_cycles": "x"}), ValueError,
     "n_cycles='x'"),
    (lambda: make_config("kit", method="map", density=0.1), ValueError, "density=0.1"),
    (lambda: make_config("kit", seed=1.5), ValueError, "1.5"),
    (lambda: make_config("kit", val_fraction=0), ValueError, "val_fraction=0"),
    (lambda: CFG.replace(select="foo"), ValueError, "'foo'"),
    (lambda: sl.MeanFieldLinear(0, 3), ValueError, "in_features=0"),
    (lambda: sl.MeanFieldLinear(3, 2.5), ValueError, "out_features=2.5"),
    (lambda: sl.MeanFieldConv2d(1, 4, 0), ValueError, "kernel_size=0"),
    (lambda: sl.MeanFieldConv2d(1, 4, 3, stride=0), ValueError, "stride=0"),
    (lambda: sl.MeanFieldConv2d(1, 4, 3, padding=-1), ValueError, "padding=-1"),
    (lambda: sl.MeanFieldConv2d(3, 4, 3, groups=2), ValueError, "groups=2"),
    (lambda: sl.MeanFieldLinear(3, 2, prior_sigma=0), ValueError, "prior_sigma"),
    (lambda: sl.MeanFieldLinear(3, 2, sigma_init=math.nan), ValueError, "sigma_init"),
    (lambda: sl.MeanFieldLinear(3, 2, prior_sigma="x"), ValueError, "'x'"),
    (lambda: _assign(torch.full((3, 4), 0.5)), ValueError, "torch.float32"),
    (lambda: _assign(torch.ones(1, dtype=torch.bool)), ValueError, "shape (1,)"),
    (lambda: _assign(torch.ones(3, 4, dtype=torch.int64)), ValueError, "torch.int64"),
    (lambda: _assign([[True] * 4] * 3), ValueError, "list"),
    (_data_mask, ValueError, "bool tensor of shape (3, 4)"),
    *[(lambda k=k: sl.predict_proba(_mlp(), torch.zeros(2, 16), n_samples=k), ValueError,
       f"n_samples must be an integer ≥ 1, got {k!r}") for k in (0, -1, 1.5, True)],
    (lambda: sl.predict_proba(_mlp(), torch.zeros(0, 16)), ValueError, "(0, 16)"),
    (lambda: sl.predict_proba(_mlp(), torch.zeros(2, 16), mode="foo"), ValueError, "'foo'"),
    (lambda: sl.predict_proba(_mlp(), torch.zeros(2, 16), batch_size=0), ValueError,
     "batch_size"),
    (lambda: sl.predict_proba("model", torch.zeros(2, 16)), ValueError, "str"),
    (lambda: sl.evaluate(_mlp(), torch.zeros(2, 16), torch.zeros(3, dtype=torch.long)),
     ValueError, "(3,)"),
    (lambda: sl.evaluate(_mlp(), torch.zeros(2, 16), torch.tensor([0, 7])), ValueError, "7"),
    (lambda: sl.init_masks(_mlp(), 0), ValueError, "density=0"),
    (lambda: sl.init_masks(_mlp(), math.nan), ValueError, "density=nan"),
    (lambda: sl.init_masks(_mlp(), 0.5, method="foo"), ValueError, "'foo'"),
    (lambda: sl.init_masks(torch.nn.Linear(2, 2), 0.5), ValueError, "mean-field layers"),
    (lambda: prune_to_density(_mlp(), 0, "snr_abs"), ValueError, "density=0"),
    (lambda: prune_to_density(_mlp(), 0.5, "size"), ValueError, "'size'"),
    (lambda: removal_score("foo", torch.zeros(2), torch.ones(2)), ValueError, "'foo'"),
    (lambda: removal_score("snr", torch.zeros(2), torch.ones(3)), ValueError, "(3,)"),
    (lambda: top_k_mask(torch.zeros(4), -1), ValueError, "k=-1"),
    (lambda: top_k_mask(torch.zeros(4), 5), ValueError, "k=5"),
    (lambda: metrics.ece(torch.full((2, 3), 1 / 3), torch.tensor([0, 1]), n_bins=0), ValueError,
     "n_bins"),
    (lambda: metrics.nll(torch.zeros(2, 3), torch.tensor([0, 1])), ValueError, "sum to 1"),
    (lambda: metrics.accuracy(torch.zeros(0, 3), torch.zeros(0)), ValueError, "empty"),
    (lambda: sl.load_dataset("foo"), ValueError, "'foo'"),
    (lambda: sl.load_dataset("moons", seed=-1), ValueError, "-1"),
    (lambda: sl.load_dataset("moons", val_fraction=0.5), ValueError, "0.5"),
    (lambda: sl.load_dataset("moons", n_train=0), ValueError, "n_train=0"),
    (lambda: sl.load_dataset("moons", n_train=2.5), ValueError, "2.5"),
    (lambda: sl.load_dataset("moons", exclude_classes=[5]), ValueError, "(5,)"),
    (lambda: sl.load_dataset("moons", exclude_classes=5), ValueError, "exclude_classes=5"),
    (lambda: sl.load_dataset("mnist", root=5), ValueError, "root=5"),
    (lambda: SwapSchedule(100, interval=0), ValueError, "interval"),
    (lambda: SwapSchedule(-1), ValueError, "total_steps"),
    (lambda: SwapSchedule(100, alpha=2), ValueError, "alpha=2"),
    (lambda: sl.bayesianize("net"), ValueError, "str"),
    (lambda: sl.bayesianize(torch.nn.Linear(2, 2), sigma_init_std=-1), ValueError, "-1"),
    (lambda: sl.seed_everything(-1), ValueError, "-1"),
    (lambda: sl.build_model(make_config("kit"), (1, 4, 4), 0), ValueError, "n_classes=0"),
    (lambda: expand_grid(CFG, dataset=["foo"]), ValueError, "'foo'"),
    (lambda: expand_grid(CFG, seed=[-1]), ValueError, "-1"),
    (lambda: expand_grid(CFG, seed=3), ValueError, "seed=3"),
    (lambda: expand_grid(CFG, foo=[1]), ValueError, "'foo'"),
    (lambda: compare_configs(CFG, ["foo"], [0.1], [0]), ValueError, "foo"),
    (lambda: compare_configs(CFG, ["ssvi"], [], [0]), ValueError, "density"),
    (lambda: run_sweep([CFG], "/tmp", timeout_s=math.inf), ValueError, "inf"),
    (lambda: run_sweep([CFG], "/tmp", workers=True), ValueError, "True"),
    (lambda: run_sweep([CFG], "/tmp", devices=["tpu"]), ValueError, "'tpu'"),
    (lambda: checkpoint.load("/nonexistent/run.pt"), FileNotFoundError, "run.pt"),
    (lambda: guards.check_distinct(a="x.json", b="./x.json"), ValueError, "same file"),
    (lambda: fileio.check_output_path("x", kind="pipe"), ValueError, "'pipe'"),
]


@pytest.mark.parametrize("call, error, words", API, ids=[f"api{i}" for i in range(len(API))])
def test_public_api_refuses_bad_arguments_naming_them(call, error, words) -> None:
    with pytest.raises(error, match=re.escape(words)):
        call()


# ----------------------------------------------------------------------------- properties
@settings(max_examples=60, deadline=None)
@given(st.one_of(st.floats(), st.integers(-10**6, 10**6)))
def test_any_density_outside_0_1_is_refused_naming_it(density) -> None:
    if isinstance(density, (int, float)) and 0 < density <= 1:
        assert validate_density(density) == float(density)
        assert make_config("kit", density=density).density == density
    else:
        with pytest.raises(ValueError, match=re.escape(f"density={density!r}")):
            validate_density(density)


@settings(max_examples=40, deadline=None)
@given(st.integers(-10**9, 10**9))
def test_positive_int_flags_accept_exactly_the_positive_integers(value) -> None:
    if value >= 1:
        assert guards.positive_int(str(value)) == value
    else:
        with pytest.raises(Exception, match=re.escape(repr(str(value)))):
            guards.positive_int(str(value))


@settings(max_examples=30, deadline=None)
@given(st.floats(min_value=0, max_value=1, exclude_min=True))
def test_masks_at_any_allowed_density_hold_exactly_the_planned_count(density) -> None:
    model = _mlp((16,))
    try:
        sl.init_masks(model, density)
    except ValueError as err:  # so low that a layer would keep no weight: said, with the value
        assert f"density={density}" in str(err)
        return
    for _, layer in sl.mean_field_layers(model):
        assert layer.n_active == layer.n_weights - round((1 - density) * layer.n_weights)
        assert layer.mask.dtype == torch.bool


@settings(max_examples=30, deadline=None)
@given(st.text("abcxyz_-.0123456789", min_size=1, max_size=40).filter(
    lambda s: s not in (".", "..")))
def test_any_plain_file_name_in_a_writable_folder_is_accepted(tmp_path_factory, name) -> None:
    folder = tmp_path_factory.mktemp("out")
    assert fileio.check_output_path(folder / name) == folder / name
    assert list(folder.iterdir()) == []
