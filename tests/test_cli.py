"""The command line: demo and train end to end, and a table of bad calls with clear errors."""
from __future__ import annotations

import gzip
import json
import math

import pytest
import torch

from ssvi_lite import metrics
from ssvi_lite.checkpoint import load as load_checkpoint
from ssvi_lite.cli import main
from ssvi_lite.config import make_config
from ssvi_lite.data import read_idx

TINY = ["--epochs", "1", "--n-train", "256", "--hidden", "16", "--no-progress"]


def test_demo_prints_the_table_and_writes_figures_and_json(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--epochs", "2", "--n-train", "256", "--seeds", "0", "1", "--workers", "1",
            "--out", str(out)]
    assert main(argv) == 0
    text = capsys.readouterr().out
    for header in ("accuracy", "nll", "ece", "brier", "train FLOPs / dense VI", "converged",
                   "σ q90/q10 (layer 1)", "mean ± standard error over seeds"):
        assert header in text
    for preset in ("kit", "kit_tempered"):  # convergence verdicts of both dense VI posteriors
        assert f"dense VI, {preset}, seed 0: " in text and f"dense VI, {preset}, seed 1: " in text
    assert "kit_tempered (κ=0.03)" in text  # κ stated beside the tempered numbers
    rows = json.loads((out / "demo.json").read_text())
    assert [(r["method"], r["preset"], r["seed"]) for r in rows] == [
        (m, p, s) for m, p in (("map", "kit"), ("vi", "kit"), ("ssvi", "kit"), ("static", "kit"),
                               ("vi", "kit_tempered")) for s in (0, 1)]
    assert rows[4]["density"] == pytest.approx(0.1, abs=0.01)
    assert rows[0]["converged"] is None and isinstance(rows[2]["converged"], bool)
    assert rows[8]["kl_scale"] == make_config("kit_tempered").kl_scale < 1
    for name in ("reliability.png", "convergence.png", "convergence_tempered.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_runs_seeds_in_worker_processes(tmp_path, capsys) -> None:
    out = tmp_path / "demo"
    argv = ["demo", "--epochs", "1", "--n-train", "128", "--seeds", "3", "--workers", "2",
            "--quiet", "--out", str(out)]
    assert main(argv) == 0
    rows = json.loads((out / "demo.json").read_text())
    assert {r["seed"] for r in rows} == {3} and len(rows) == 5


def test_train_writes_json_and_a_checkpoint_that_resumes(tmp_path, capsys) -> None:
    out, ckpt = tmp_path / "r.json", tmp_path / "r.pt"
    args = ["train", "--method", "ssvi", "--density", "0.2", *TINY, "--json", str(out),
            "--checkpoint", str(ckpt)]
    assert main(args) == 0
    row = json.loads(out.read_text())
    assert row["method"] == "ssvi" and row["epochs"] == 1
    assert load_checkpoint(ckpt)["progress"]["epoch"] == 1
    assert main([*args, "--resume"]) == 0  # already finished: resumes to the same numbers
    assert json.loads(out.read_text())["accuracy"] == row["accuracy"]


def _corrupt_idx(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 5))  # truncated header
    return lambda: read_idx(path)


CLI_BAD = [  # (argv, words the message must contain)
    (["train", "--density", "0"], ["density=0.0", "(0, 1]"]),
    (["train", "--density", "1.5"], ["density=1.5", "(0, 1]"]),
    (["train", "--density", "nan"], ["density=nan"]),
    (["train", "--removal", "snr_ab"], ["snr_ab", "snr_abs"]),
    (["train", "--addition", "largest"], ["largest", "grad"]),
    (["train", "--dataset", "imagenet"], ["imagenet", "mnist5k"]),
    (["train", "--epochs", "0"], ["epochs", "0"]),
    (["train", "--method", "vi", "--density", "0.1"], ["vi", "density=1"]),
    (["train", "--resume"], ["--resume", "--checkpoint"]),
    (["train", "--model", "lenet", "--dataset", "moons"], ["lenet", "input_shape"]),
    (["train", "--dataset", "cifar10", "--data-root", "/nonexistent/place"], ["cifar10", "fetch"]),
    (["train", "--device", "tpu"], ["tpu", "cpu"]),
    (["train", "--batch-size", "-4"], ["batch_size", "-4"]),
    (["train", "--method", "em_mcmc", "--option", "n_cycles"], ["n_cycles", "KEY=VALUE"]),
    (["train", "--method", "em_mcmc", "--option", "cycles=3"], ["cycles", "n_cycles"]),
]


@pytest.mark.parametrize("argv, words", CLI_BAD, ids=[" ".join(a) for a, _ in CLI_BAD])
def test_bad_cli_calls_fail_clearly_and_write_nothing(argv, words, tmp_path, capsys) -> None:
    out = tmp_path / "never.json"
    assert main([argv[0], *TINY, *argv[1:], "--json", str(out)]) == 2  # later flags win
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for word in words:
        assert word in err
    assert list(tmp_path.iterdir()) == []  # no partial or temporary file left behind


def test_wrong_checkpoint_via_cli_names_the_difference(tmp_path, capsys) -> None:
    ckpt = tmp_path / "vi.pt"
    assert main(["train", "--method", "vi", *TINY, "--checkpoint", str(ckpt)]) == 0
    capsys.readouterr()
    before = ckpt.read_bytes()
    assert main(["train", "--method", "ssvi", "--density", "0.2", *TINY, "--checkpoint",
                 str(ckpt), "--resume"]) == 2
    assert "method" in capsys.readouterr().err
    assert ckpt.read_bytes() == before  # the refused checkpoint is untouched


LIBRARY_BAD = [
    (lambda: make_config("kit", density=0.0), ValueError, "density=0.0"),
    (lambda: make_config("kit", density=math.nan), ValueError, "density=nan"),
    (lambda: make_config("kit", removal="snr-abs"), ValueError, "snr_abs"),
    (lambda: make_config("kit", method="dropout"), ValueError, "dropout"),
    (lambda: make_config("kit", learning_rate=1e-3), ValueError, "learning_rate"),
    (lambda: make_config("fast"), ValueError, "fast"),
    (lambda: make_config("kit", prior_sigma=-1.0), ValueError, "prior_sigma"),
    (lambda: make_config("kit", t_end_fraction=1.5), ValueError, "t_end_fraction"),
    (lambda: metrics.ece(torch.rand(4, 3).softmax(-1), torch.tensor([0, 1, 2])), ValueError, ""),
    (lambda: metrics.nll(torch.full((2, 3), float("nan")), torch.tensor([0, 1])), ValueError, ""),
    (lambda: metrics.accuracy(torch.eye(3), torch.tensor([0, 1, 5])), ValueError, ""),
    (lambda: load_checkpoint("/nonexistent/run.pt"), FileNotFoundError, "run.pt"),
]


@pytest.mark.parametrize("call, error, words", LIBRARY_BAD)
def test_bad_library_calls_raise_clear_errors(call, error, words) -> None:
    with pytest.raises(error, match=words or None):
        call()


def test_corrupt_data_file_names_the_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        _corrupt_idx(tmp_path)()


def test_method_options_are_read_as_json_where_they_are_json() -> None:
    from ssvi_lite.flags import parse_method_options

    assert parse_method_options(["n_cycles=4", "temperature=null", "lr_max=0.25", "name=snr_abs",
                                 "flag=true", "sizes=[1, 2]"]) == {
        "n_cycles": 4, "temperature": None, "lr_max": 0.25, "name": "snr_abs", "flag": True,
        "sizes": [1, 2]}


def test_train_passes_method_options_to_the_method(tmp_path, capsys) -> None:
    out = tmp_path / "row.json"
    code = main(["train", "--method", "em_mcmc", "--epochs", "3", "--n-train", "200", "--hidden",
                 "16", "--option", "n_cycles=3", "--option", "em_start_cycle=3", "--no-progress",
                 "--json", str(out)])
    assert code == 0
    row = json.loads(out.read_text())
    # with EM starting in the last of 3 one-epoch cycles, one snapshot is taken
    assert row["method"] == "em_mcmc" and row["n_snapshots"] == 1
