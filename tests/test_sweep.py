"""sweep: grids, stable run ids, submitit jobs (local, debug, slurm), the folder lock, interrupts,
resume, failures, timeouts and the merged results table."""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import submitit
from hypothesis import given, settings
from hypothesis import strategies as st

from ssvi_lite import cli, engine, jobs, sweep
from ssvi_lite.config import make_config
from ssvi_lite.sweep import (
    SweepBusyError,
    canonical,
    expand_grid,
    results_table,
    run_id,
    run_sweep,
    run_worker,
)

ROOT = Path(__file__).resolve().parents[1]
TINY = {"epochs": 1, "n_train": 64, "batch_size": 32, "hidden": (16,), "n_eval_samples": 2,
        "progress": False}


def _sigint_as_in_a_terminal() -> None:
    """preexec_fn of a child that must react to SIGINT like a terminal's foreground job: a shell
    without job control starts background commands with SIGINT ignored, and a child inherits that
    (Python then installs no KeyboardInterrupt handler), so pytest run as such a job would
    otherwise pass it on."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (dead, only not yet reaped by its parent,
    which for an orphan is PID 1)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc here: trust os.kill


def _group_alive(group: int) -> bool:
    """Whether any live (non-zombie) process is in process group ``group``."""
    if not Path("/proc/self").exists():
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return False
        return True
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def _job_files(folder: Path) -> list[str]:
    """submitit's pickles and logs of jobs in ``folder`` (the local controllers' log aside)."""
    return [p.name for p in folder.iterdir() if p.name != "controllers.log"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    sweep.add_arguments(parser)
    return parser


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


# ------------------------------------------------------------------- jobs in this process (debug)
@pytest.fixture
def fake_runs(monkeypatch):
    """Replace the training of a run: record its device, write a row, fail where seed == 99."""
    calls: list[tuple[str, str]] = []

    def fake(cfg, json_path, checkpoint=None, device=None):
        calls.append((run_id(cfg), device))
        if cfg.seed == 99:
            raise ValueError("boom at seed 99")
        row = {"run_id": run_id(cfg), "status": "ok", "method": cfg.method, "density": cfg.density,
               "target_density": cfg.density, "accuracy": 0.5 + cfg.seed / 100, "seed": cfg.seed,
               "config": cfg.to_dict()}
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(row))

    monkeypatch.setattr(sweep, "run_worker", fake)
    return calls


def test_round_robin_over_devices_resume_and_failures(tmp_path, fake_runs, capsys) -> None:
    cfgs = expand_grid(make_config("kit"), density=[0.1, 0.05], seed=[0, 1, 99])
    table = run_sweep(cfgs, tmp_path, workers=3, devices=["cuda:0", "cuda:1"], cluster="debug")
    assert len(fake_runs) == 6
    assert [dev for _, dev in fake_runs[:3]] == ["cuda:0", "cuda:1", "cuda:0"]  # slot w: w % 2
    assert {dev for _, dev in fake_runs} == {"cuda:0", "cuda:1"}
    assert table["status"].value_counts().to_dict() == {"ok": 4, "failed": 2}
    failed = table[table["status"] == "failed"]
    assert (failed["seed"] == 99).all()
    assert (failed["error"] == "ValueError: boom at seed 99").all()  # the traceback's last line
    assert "FAILED" in capsys.readouterr().out
    for rid in failed["run_id"]:  # the failed run's traceback is kept
        assert "Traceback" in (tmp_path / "runs" / f"{rid}.log").read_text()
    assert not _job_files(tmp_path / "jobs")  # submitit's files of ended jobs are gone
    on_disk = pd.read_csv(tmp_path / "results.csv")
    assert on_disk["run_id"].tolist() == [run_id(c) for c in cfgs]
    # second call: finished runs are skipped, only the failed ones are tried again
    fake_runs.clear()
    again = run_sweep(cfgs, tmp_path, workers=1, devices=["cpu"], cluster="debug")
    assert sorted(r for r, _ in fake_runs) == sorted(failed["run_id"])
    pd.testing.assert_frame_equal(again, table)


def test_results_table_lists_missing_runs_and_varying_fields(tmp_path, fake_runs) -> None:
    cfgs = expand_grid(make_config("kit"), update_interval=[10, 20], seed=[0])
    run_sweep(cfgs[:1], tmp_path, devices=["cpu"], cluster="debug", verbose=False)
    table = results_table(cfgs, tmp_path)
    assert table["status"].tolist() == ["ok", "missing"]
    assert table["update_interval"].tolist() == [10, 20]


def test_a_subset_rerun_keeps_the_rows_of_every_other_run(tmp_path, fake_runs) -> None:
    cfgs = expand_grid(make_config("kit"), seed=[0, 1, 2, 3])
    run_sweep(cfgs, tmp_path, devices=["cpu"], cluster="debug", verbose=False)
    first = pd.read_csv(tmp_path / "results.csv")
    (tmp_path / "runs" / f"{run_id(cfgs[1])}.json").unlink()  # to run it again
    other = make_config("kit", seed=7)
    run_sweep([cfgs[1], other], tmp_path, devices=["cpu"], cluster="debug", verbose=False)
    merged = pd.read_csv(tmp_path / "results.csv")
    assert merged["run_id"].tolist() == [run_id(c) for c in cfgs] + [run_id(other)]
    assert (merged["status"] == "ok").all()
    pd.testing.assert_frame_equal(merged.iloc[:4][first.columns], first)
    # finished runs that results.csv does not list yet (their sweep stopped first) are added
    (tmp_path / "results.csv").unlink()
    run_sweep(cfgs[:1], tmp_path, devices=["cpu"], cluster="debug", verbose=False)
    assert set(pd.read_csv(tmp_path / "results.csv")["run_id"]) == {run_id(c)
                                                                    for c in [*cfgs, other]}


def test_the_debug_executor_runs_each_job_in_this_process(tmp_path, monkeypatch) -> None:
    pids: list[int] = []
    monkeypatch.setattr(sweep, "run_worker", lambda *a: (pids.append(os.getpid()), run_worker(*a)))
    cfg = make_config("kit", method="ssvi", density=0.2, **TINY)
    table = run_sweep([cfg], tmp_path, devices=["cpu"], cluster="debug", verbose=False)
    assert pids == [os.getpid()] and table["status"].tolist() == ["ok"]
    assert 0.0 <= table["accuracy"][0] <= 1.0


def test_bad_devices_workers_and_clusters_are_rejected(tmp_path) -> None:
    cfgs = [make_config("kit")]
    with pytest.raises(ValueError, match="'gpu0'"):
        run_sweep(cfgs, tmp_path, devices=["gpu0"])
    with pytest.raises(ValueError, match="workers"):
        run_sweep(cfgs, tmp_path, workers=0, devices=["cpu"])
    with pytest.raises(ValueError, match="cluster 'k8s' is not known"):
        run_sweep(cfgs, tmp_path, cluster="k8s")
    with pytest.raises(ValueError, match="timeout"):
        run_sweep(cfgs, tmp_path, timeout_s=0, devices=["cpu"])
    with pytest.raises(ValueError, match="cpus_per_job=0"):
        jobs.Cluster("local", cpus_per_job=0)


def test_sigterm_interrupts_like_ctrl_c() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt, match="SIGTERM"), engine.interrupt_on_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(10)
    assert signal.getsignal(signal.SIGTERM) is before


# ----------------------------------------------------------------------------- executors
def test_each_local_job_sees_its_gpu_and_a_share_of_the_threads(monkeypatch) -> None:
    env = jobs.job_environment(3)
    assert env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "3"
    assert str(jobs.PACKAGE_ROOT) in env["PYTHONPATH"].split(os.pathsep)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert jobs.local_gpu_parameters("cuda:1") == {"gpus_per_node": 1, "visible_gpus": (1,)}
    assert jobs.local_gpu_parameters("cpu") == {"gpus_per_node": 0, "visible_gpus": ()}
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5")  # cuda:1 of this process is GPU 5
    assert jobs.local_gpu_parameters("cuda:1")["visible_gpus"] == (5,)
    with pytest.raises(ValueError, match="not visible"):
        jobs.local_gpu_parameters("cuda:2")
    assert [jobs.job_device(k, "cuda:1") for k in ("local", "debug")] == ["cuda", "cuda:1"]
    assert jobs.default_workers(["cuda:0", "cuda:1"], 10) == 2
    assert 1 <= jobs.default_workers(["cpu"], 10) <= (os.cpu_count() or 1)
    assert jobs.default_workers(["cpu"], 10, "debug") == 1
    assert jobs.default_workers(["cpu"], 10, "slurm") == 10


def test_local_jobs_get_their_gpu_threads_and_a_process_group_of_their_own(tmp_path,
                                                                           monkeypatch) -> None:
    """Two real local jobs run a probe script (runpy.run_path(script, {}, device)): each sees its
    CUDA_VISIBLE_DEVICES and OMP_NUM_THREADS, and leads no group but sits in its controller's."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    probe = tmp_path / "probe.py"
    probe.write_text("import json, os, pathlib\n"
                     f"pathlib.Path({str(tmp_path)!r}, __name__ + '.json').write_text(json.dumps("
                     "{'cvd': os.environ['CUDA_VISIBLE_DEVICES'], "
                     "'omp': os.environ['OMP_NUM_THREADS'], 'ppid': os.getppid(), "
                     "'group': os.getpgrp()}))\n")
    import runpy

    ended: list[engine.Outcome] = []
    tasks = [engine.Task(f"probe{i}", runpy.run_path, (str(probe), {})) for i in range(2)]
    engine.run_tasks(tasks, tmp_path / "jobs", jobs.Cluster("local", cpus_per_job=2),
                     devices=["cpu", "cuda:1"], workers=2, timeout_s=60, on_done=ended.append)
    assert [o.status for o in ended] == ["ok", "ok"], [o.log for o in ended]
    cpu, gpu = (json.loads((tmp_path / f"{d}.json").read_text()) for d in ("cpu", "cuda"))
    assert (cpu["cvd"], gpu["cvd"]) == ("", "1") and cpu["omp"] == gpu["omp"] == "2"
    for seen in (cpu, gpu):  # the controller (the job id) leads the job's process group
        assert seen["group"] == seen["ppid"] != os.getpgrp()


def test_executors_local_debug_and_slurm_with_mapped_parameters(tmp_path, monkeypatch) -> None:
    local = jobs.make_executor(jobs.Cluster("local"), tmp_path / "a", timeout_s=90)
    assert isinstance(local, jobs.SessionLocalExecutor) and local.parameters["timeout_min"] == 3
    no_limit = jobs.make_executor(jobs.Cluster("local"), tmp_path / "b", timeout_s=None)
    assert no_limit.parameters["timeout_min"] == jobs.LOCAL_BACKSTOP_MIN  # not submitit's 2 min
    assert isinstance(jobs.make_executor(jobs.Cluster("debug"), tmp_path / "c", None),
                      submitit.DebugExecutor)
    args = _parser().parse_args(["--cluster", "slurm", "--slurm-partition", "gpu",
                                 "--slurm-time", "30", "--gpus-per-job", "1",
                                 "--cpus-per-job", "4"])
    cluster = sweep.cluster_from_args(args)
    assert cluster == jobs.Cluster("slurm", partition="gpu", time_min=30, gpus_per_job=1,
                                   cpus_per_job=4)
    with pytest.raises(ValueError, match="cluster slurm.*srun"):  # no Slurm on this machine
        run_sweep([make_config("kit")], tmp_path / "d", devices=["cpu"], cluster=cluster)
    fake_bin = tmp_path / "bin"  # a fake srun lets submitit build the executor (no submission)
    fake_bin.mkdir()
    for tool in ("srun", "sbatch"):
        (fake_bin / tool).write_text("#!/bin/sh\nexit 1\n")
        (fake_bin / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    slurm = jobs.make_executor(cluster, tmp_path / "e", timeout_s=None)
    assert isinstance(slurm, submitit.AutoExecutor) and slurm.cluster == "slurm"
    assert {k: slurm._executor.parameters.get(k) for k in ("partition", "time", "gpus_per_node",
                                                            "cpus_per_task", "nodes")} == {
        "partition": "gpu", "time": 30, "gpus_per_node": 1, "cpus_per_task": 4, "nodes": 1}
    script = slurm._executor._make_submission_file_text("python -m submitit.core._submit x", "u")
    for line in ("--partition=gpu", "--time=30", "--gpus-per-node=1", "--cpus-per-task=4"):
        assert f"#SBATCH {line}\n" in script
    assert jobs.slurm_parameters(jobs.Cluster("slurm"), 90)["timeout_min"] == 2  # from --timeout
    assert jobs.slurm_parameters(jobs.Cluster("slurm"), None)["timeout_min"] == 60


def test_cli_options_make_the_grid_and_the_cluster() -> None:
    args = _parser().parse_args(["--methods", "ssvi", "vi", "--removals", "snr_abs", "magnitude",
                                 "--densities", "0.1", "0.05", "--seeds", "0", "1", "2",
                                 "--epochs", "3", "--n-train", "100"])
    cfgs = sweep.configs_from_args(args)
    assert len(cfgs) == 3 + 2 * 2 * 3  # vi once per seed, ssvi per removal × density × seed
    assert all(c.epochs == 3 and c.n_train == 100 and not c.progress for c in cfgs)
    assert sweep.cluster_from_args(args) == jobs.Cluster("local")
    with pytest.raises(SystemExit):
        _parser().parse_args(["--cluster", "k8s"])


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
    assert "Traceback" in (tmp_path / "sweep" / "runs" / f"{run_id(bad)}.log").read_text()
    row = json.loads((tmp_path / "sweep" / "runs" / f"{run_id(ok)}.json").read_text())
    assert row["config"]["density"] == 0.2 and row["epochs"] == 1
    assert not list((tmp_path / "sweep").rglob("*.pt"))  # checkpoint removed after success
    assert not _job_files(tmp_path / "sweep" / "jobs")


def test_a_run_past_its_timeout_fails_and_leaves_no_process(tmp_path) -> None:
    cfg = make_config("kit", method="ssvi", density=0.2, **{**TINY, "epochs": 500})
    start = time.monotonic()
    table = run_sweep([cfg], tmp_path, devices=["cpu"], timeout_s=1.0, verbose=False)
    assert time.monotonic() - start < 30
    assert table["status"].tolist() == ["failed"]
    assert table["error"][0].startswith("timed out after 1 s")
    group = int(re.search(r"job (\d+) stopped", table["error"][0]).group(1))
    assert not _group_alive(group)
    assert (tmp_path / "runs" / f"{run_id(cfg)}.log").is_file()


def test_worker_resumes_an_interrupted_run_from_its_checkpoint(tmp_path, monkeypatch) -> None:
    from ssvi_lite import experiment

    cfg = make_config("kit", method="ssvi", density=0.2, update_interval=5,
                      **{**TINY, "epochs": 2, "n_train": 128})
    run_worker(cfg, tmp_path / "straight.json")
    ckpt = tmp_path / "run.pt"

    def interrupt(step, swaps):  # the update at step 5 lies in epoch 2 (4 steps per epoch)
        raise KeyboardInterrupt

    fit = experiment.fit
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(experiment, "fit", lambda *a, **k: fit(*a, **k, on_update=interrupt))
        run_worker(cfg, tmp_path / "never.json", ckpt)
    assert ckpt.is_file() and not (tmp_path / "never.json").exists()
    run_worker(cfg, tmp_path / "resumed.json", ckpt, "cpu")
    straight, resumed = (json.loads((tmp_path / f"{n}.json").read_text())
                         for n in ("straight", "resumed"))
    assert not ckpt.exists()
    for key in ("accuracy", "nll", "density", "train_flops"):
        assert resumed[key] == pytest.approx(straight[key], rel=1e-5), key


def test_interrupting_a_sweep_stops_every_job_and_a_second_call_resumes(tmp_path, capsys) -> None:
    out = tmp_path / "sweep"
    argv = ["--methods", "ssvi", "--densities", "0.2", "--epochs", "30", "--n-train", "200",
            "--hidden", "16", "--out", str(out), "--workers", "1", "--devices", "cpu",
            "--cpus-per-job", "1"]
    rid = run_id(sweep.configs_from_args(_parser().parse_args(argv))[0])
    ckpt = out / "checkpoints" / f"{rid}.pt"
    proc = subprocess.Popen([sys.executable, "-m", "ssvi_lite", "sweep", *argv], cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_sigint_as_in_a_terminal)
    deadline = time.monotonic() + 120
    while not ckpt.exists():  # the job is training: its first epoch is done
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.05)
    log = next((out / "jobs").glob("*_0_log.out"))
    controller = int(log.name.split("_")[0])
    task, group = map(int, re.search(r"pid (\d+), process group (\d+)", log.read_text()).groups())
    assert group == controller and _alive(task)
    proc.send_signal(signal.SIGINT)  # to the sweep process only, as `kill -INT` would
    output = proc.communicate(timeout=60)[0]
    assert proc.returncode == 130, output
    assert "sweep interrupted" in output and "To resume, run the same sweep again" in output
    assert not _alive(controller) and not _alive(task) and not _group_alive(group)
    assert ckpt.exists() and not (out / "runs" / f"{rid}.json").exists()
    assert pd.read_csv(out / "results.csv")["status"].tolist() == ["missing"]
    assert sweep.main(_parser().parse_args(argv + ["--cluster", "debug"])) == 0  # resume
    printed = capsys.readouterr().out
    assert "0 already done, 1 to run" in printed and "resuming from checkpoint" in printed
    assert (out / "runs" / f"{rid}.json").exists() and not ckpt.exists()


# ------------------------------------------------------------------------ one sweep per folder
def test_a_held_folder_fails_at_once_and_a_stale_lock_file_blocks_nothing(tmp_path, fake_runs,
                                                                          capsys) -> None:
    (tmp_path / ".sweep.lock").write_text("12345\n")  # left behind by some dead process
    cfg = make_config("kit")
    assert run_sweep([cfg], tmp_path, devices=["cpu"], cluster="debug")["status"].tolist() == ["ok"]
    capsys.readouterr()
    with jobs.folder_lock(tmp_path):  # another sweep holds it
        start = time.monotonic()
        with pytest.raises(SweepBusyError,
                           match=f"^another sweep is running in {re.escape(str(tmp_path))};"):
            run_sweep([cfg], tmp_path, devices=["cpu"], cluster="debug")
        assert time.monotonic() - start < 1
        status = cli.main(["sweep", "--out", str(tmp_path), "--cluster", "debug"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: another sweep is running in") \
        and err.count("\n") == 1
    assert run_sweep([cfg], tmp_path, devices=["cpu"], cluster="debug")["status"].tolist() == ["ok"]


def _contend(barrier, results, base: str, rounds: int, hold_s: float) -> None:
    """One of six processes: each round, start a sweep on the round's folder with the others.

    The sweep's jobs are replaced by ``hold_s`` of sleep, so the winner holds the lock that long
    without training."""
    engine.run_tasks = lambda *a, **k: time.sleep(hold_s)
    cfg = make_config("kit")
    for r in range(rounds):
        barrier.wait(timeout=60)
        start = time.monotonic()
        try:
            run_sweep([cfg], Path(base) / f"round{r}", devices=["cpu"], cluster="debug",
                      verbose=False)
            outcome = "ran"
        except SweepBusyError as err:
            outcome = str(err)
        results.put((r, outcome, time.monotonic() - start))


def test_six_sweeps_started_together_on_one_folder_exactly_one_runs(tmp_path) -> None:
    n_procs, rounds, hold_s = 6, 20, 1.0
    ctx = multiprocessing.get_context("fork")  # fast: the processes do not import torch again
    barrier, results = ctx.Barrier(n_procs), ctx.Queue()
    procs = [ctx.Process(target=_contend, args=(barrier, results, str(tmp_path), rounds, hold_s))
             for _ in range(n_procs)]
    start = time.monotonic()
    for p in procs:
        p.start()
    got = [results.get(timeout=90) for _ in range(n_procs * rounds)]
    for p in procs:
        p.join(timeout=30)
    elapsed = time.monotonic() - start
    one_winner, slowest_loser = 0, 0.0
    for r in range(rounds):
        this = [(outcome, s) for i, outcome, s in got if i == r]
        winners = [s for outcome, s in this if outcome == "ran"]
        losers = [(outcome, s) for outcome, s in this if outcome != "ran"]
        one_winner += len(winners) == 1
        assert len(winners) == 1 and len(losers) == n_procs - 1, (r, this)
        for outcome, seconds in losers:  # at once, with the clear error
            assert outcome.startswith(f"another sweep is running in {tmp_path / f'round{r}'}")
            assert seconds < hold_s / 2, (r, seconds)
            slowest_loser = max(slowest_loser, seconds)
    print(f"\n{one_winner}/{rounds} rounds with exactly one winner; the others failed within "
          f"{slowest_loser * 1000:.0f} ms; {elapsed:.1f} s in all")
    assert all(p.exitcode == 0 for p in procs)
