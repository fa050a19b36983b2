"""sweep: grids of configurations, stable run ids, scheduling over devices, resume, failures."""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssvi_lite import sweep
from ssvi_lite.config import make_config
from ssvi_lite.sweep import canonical, expand_grid, results_table, run_id, run_sweep, run_worker

TINY = {"epochs": 1, "n_train": 64, "batch_size": 32, "hidden": (16,), "n_eval_samples": 2,
        "progress": False}


# ----------------------------------------------------------------------------- grids and ids
def test_expand_grid_is_the_cartesian_product_last_axis_fastest() -> None:
    cfgs = expand_grid(make_config("kit"), removal=["snr_abs", "magnitude"], density=[0.1, 0.05],
                       seed=[0, 1, 2])
    assert len(cfgs) == 12
    assert [(c.removal, c.density, c.seed) for c in cfgs[:4]] == [
        ("snr_abs", 0.1, 0), ("snr_abs", 0.1, 1), ("snr_abs", 0.1, 2), ("snr_abs", 0.05, 0)]
    assert len({run_id(c) for c in cfgs}) == 12


def test_methods_that_ignore_density_or_scores_run_once() -> None:
    cfgs = expand_grid(make_config("kit"), method=["map", "vi", "ssvi", "static"],
                       removal=["snr_abs", "magnitude"], density=[0.1, 0.05])
    counts = pd.Series([c.method for c in cfgs]).value_counts().to_dict()
    assert counts == {"map": 1, "vi": 1, "ssvi": 4, "static": 2}
    assert all(c.density == 1.0 for c in cfgs if c.method in ("map", "vi"))
    assert canonical(make_config("kit", method="em_mcmc")).density == 1.0
    with pytest.raises(ValueError, match="em_mcmc.*reaches a density of its own.*density=0.3"):
        make_config("kit", method="em_mcmc", density=0.3)


@pytest.mark.parametrize("axes, match", [({"densty": [0.1]}, "not a TrainConfig field"),
                                         ({"density": []}, "non-empty list"),
                                         ({"removal": "snr_abs"}, "non-empty list"),
                                         ({"density": [1.5]}, "density=1.5")])
def test_expand_grid_rejects_bad_axes(axes: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        expand_grid(make_config("kit"), **axes)


def test_run_id_ignores_device_progress_data_root_and_is_the_same_in_another_process() -> None:
    cfg = make_config("kit", density=0.05, seed=3)
    assert run_id(cfg) == run_id(cfg.replace(device="cpu", progress=False, data_root="/x"))
    assert run_id(cfg) != run_id(cfg.replace(update_interval=21))
    code = ("from ssvi_lite.config import make_config; from ssvi_lite.sweep import run_id; "
            "print(run_id(make_config('kit', density=0.05, seed=3)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"})
    assert out.stdout.strip() == run_id(cfg)
    assert run_id(cfg).startswith("ssvi-d0.05-s3-")


@settings(max_examples=40, deadline=None)
@given(st.tuples(st.sampled_from([0.5, 0.1, 0.05]), st.integers(0, 5), st.integers(1, 50)),
       st.tuples(st.sampled_from([0.5, 0.1, 0.05]), st.integers(0, 5), st.integers(1, 50)))
def test_run_ids_differ_exactly_when_configs_differ(a: tuple, b: tuple) -> None:
    ca, cb = (make_config("kit", density=d, seed=s, epochs=e) for d, s, e in (a, b))
    assert (run_id(ca) == run_id(cb)) == (a == b)


# --------------------------------------------------------------------------- scheduling (fake runs)
@pytest.fixture
def fake_launch(monkeypatch):
    """Replace the subprocess launcher: record the device, write a row, fail where seed == 99."""
    calls: list[tuple[str, str]] = []
    lock = threading.Lock()
    first_three = threading.Barrier(3, timeout=10)  # a fast fake run must not let one worker
    # take every job: the first three launches wait for each other, so they come from 3 workers

    def launch(cfg, out_dir, device, threads, timeout_s):
        with lock:
            calls.append((run_id(cfg), device))
            n_calls = len(calls)
        if n_calls <= 3:
            try:
                first_three.wait()
            except threading.BrokenBarrierError:  # fewer than three workers in this test
                pass
        if cfg.seed == 99:
            return "failed", "Traceback (most recent call last):\nValueError: boom at seed 99"
        row = {"run_id": run_id(cfg), "status": "ok", "method": cfg.method, "density": cfg.density,
               "target_density": cfg.density, "accuracy": 0.5 + cfg.seed / 100, "seed": cfg.seed,
               "config": cfg.to_dict()}
        (out_dir / "runs").mkdir(parents=True, exist_ok=True)
        (out_dir / "runs" / f"{run_id(cfg)}.json").write_text(json.dumps(row))
        return "ok", ""

    monkeypatch.setattr(sweep, "_launch", launch)
    return calls


def test_round_robin_over_devices_resume_and_failures(tmp_path, fake_launch, capsys) -> None:
    cfgs = expand_grid(make_config("kit"), density=[0.1, 0.05], seed=[0, 1, 99])
    table = run_sweep(cfgs, tmp_path, workers=3, devices=["cuda:0", "cuda:1"])
    assert len(fake_launch) == 6
    assert {dev for _, dev in fake_launch} == {"cuda:0", "cuda:1"}  # workers 0, 2 → 0; 1 → 1
    assert table["status"].value_counts().to_dict() == {"ok": 4, "failed": 2}
    failed = table[table["status"] == "failed"]
    assert (failed["seed"] == 99).all() and failed["error"].str.contains("boom").all()
    assert "FAILED" in capsys.readouterr().out
    for rid in failed["run_id"]:  # the failed run's output is kept
        assert "boom" in (tmp_path / "runs" / f"{rid}.log").read_text()
    on_disk = pd.read_csv(tmp_path / "results.csv")
    assert on_disk["run_id"].tolist() == [run_id(c) for c in cfgs]
    # second call: finished runs are skipped, only the failed ones are tried again
    fake_launch.clear()
    again = run_sweep(cfgs, tmp_path, workers=1, devices=["cpu"])
    assert sorted(r for r, _ in fake_launch) == sorted(failed["run_id"])
    pd.testing.assert_frame_equal(again, table)


def test_results_table_lists_missing_runs_and_varying_fields(tmp_path, fake_launch) -> None:
    cfgs = expand_grid(make_config("kit"), update_interval=[10, 20], seed=[0])
    run_sweep(cfgs[:1], tmp_path, workers=1, devices=["cpu"])
    table = results_table(cfgs, tmp_path)
    assert table["status"].tolist() == ["ok", "missing"]
    assert table["update_interval"].tolist() == [10, 20]


def test_bad_devices_and_workers_are_rejected(tmp_path) -> None:
    cfgs = [make_config("kit")]
    with pytest.raises(ValueError, match="'gpu0'"):
        run_sweep(cfgs, tmp_path, devices=["gpu0"])
    with pytest.raises(ValueError, match="workers"):
        run_sweep(cfgs, tmp_path, workers=0, devices=["cpu"])


def test_worker_environment_pins_one_gpu_and_shares_threads() -> None:
    env = sweep._worker_env("cuda:1", 3)
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["OMP_NUM_THREADS"] == "3"
    assert "CUDA_VISIBLE_DEVICES" not in sweep._worker_env("cpu", 1) or \
        sweep._worker_env("cpu", 1)["CUDA_VISIBLE_DEVICES"] == os.environ["CUDA_VISIBLE_DEVICES"]
    assert sweep.default_workers(["cuda:0", "cuda:1"], 10) == 2
    assert 1 <= sweep.default_workers(["cpu"], 10) <= (os.cpu_count() or 1)


def test_cli_options_make_the_grid() -> None:
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    args = parser.parse_args(["--methods", "ssvi", "vi", "--removals", "snr_abs", "magnitude",
                              "--densities", "0.1", "0.05", "--seeds", "0", "1", "2",
                              "--epochs", "3", "--n-train", "100"])
    cfgs = sweep.configs_from_args(args)
    assert len(cfgs) == 3 + 2 * 2 * 3  # vi once per seed, ssvi per removal × density × seed
    assert all(c.epochs == 3 and c.n_train == 100 and not c.progress for c in cfgs)


# ----------------------------------------------------------------------------- real processes
def test_real_processes_write_rows_and_report_a_failed_run(tmp_path) -> None:
    ok = make_config("kit", method="ssvi", density=0.2, **TINY)
    bad = make_config("kit", method="vi", density=1.0, dataset="cifar10",
                      data_root=str(tmp_path / "no_data"), **TINY)
    table = run_sweep([ok, bad], tmp_path / "sweep", workers=2, devices=["cpu"], verbose=False)
    by = table.set_index("method")
    assert by.loc["ssvi", "status"] == "ok" and 0.0 <= by.loc["ssvi", "accuracy"] <= 1.0
    assert by.loc["ssvi", "density"] == pytest.approx(0.2, abs=0.01)
    assert by.loc["vi", "status"] == "failed" and "cifar10" in by.loc["vi", "error"]
    row = json.loads((tmp_path / "sweep" / "runs" / f"{run_id(ok)}.json").read_text())
    assert row["config"]["density"] == 0.2 and row["epochs"] == 1
    assert not list((tmp_path / "sweep").rglob("*.pt"))  # checkpoint removed after success


def test_worker_resumes_an_interrupted_run_from_its_checkpoint(tmp_path, monkeypatch) -> None:
    from ssvi_lite import experiment

    cfg = make_config("kit", method="ssvi", density=0.2, update_interval=5,
                      **{**TINY, "epochs": 2, "n_train": 128})
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(cfg.to_dict()))
    run_worker(cfg_path, tmp_path / "straight.json")
    ckpt = tmp_path / "run.pt"

    def interrupt(step, swaps):  # the update at step 5 lies in epoch 2 (4 steps per epoch)
        raise KeyboardInterrupt

    fit = experiment.fit
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(experiment, "fit", lambda *a, **k: fit(*a, **k, on_update=interrupt))
        run_worker(cfg_path, tmp_path / "never.json", ckpt)
    assert ckpt.is_file() and not (tmp_path / "never.json").exists()
    run_worker(cfg_path, tmp_path / "resumed.json", ckpt)
    straight, resumed = (json.loads((tmp_path / f"{n}.json").read_text())
                         for n in ("straight", "resumed"))
    assert not ckpt.exists()
    for key in ("accuracy", "nll", "density", "train_flops"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5), key


def test_a_second_live_sweep_on_the_same_folder_is_refused(tmp_path, fake_launch) -> None:
    (tmp_path / ".sweep.lock").write_text(str(os.getpid()))  # a live process holds it
    with pytest.raises(sweep.SweepBusyError, match=f"process {os.getpid()}"):
        run_sweep([make_config("kit")], tmp_path, devices=["cpu"])
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    (tmp_path / ".sweep.lock").write_text(gone)  # a dead process left it: taken over
    assert (run_sweep([make_config("kit")], tmp_path, devices=["cpu"])["status"] == "ok").all()
    assert not (tmp_path / ".sweep.lock").exists()
