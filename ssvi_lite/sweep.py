"""Sweeps: many configurations, each trained in its own process, one results table at the end.

``expand_grid(base, removal=[...], density=[...], seed=[...])`` makes the configurations (the
Cartesian product of the axes); ``run_sweep(configs, "runs/sweep")`` trains each one as an
independent ``python -m ssvi_lite.sweep --worker`` process, spread over the devices (one worker per
CUDA device, round-robin, or CPU workers ≤ cores), and writes

    runs/sweep/runs/<run-id>.json    one results row per finished run (atomic, ssvi_lite.fileio)
    runs/sweep/runs/<run-id>.log     the output of a run that failed (kept to read)
    runs/sweep/results.csv           every configuration of the sweep, one line each
                                     (status ok/failed)

The run id is a stable hash of the configuration (fields that do not change the result, such as
``device`` and ``progress``, are left out), so a second call skips every run whose JSON exists and
an interrupted sweep resumes where it stopped; a run interrupted mid-training continues from its
per-epoch checkpoint (runs/sweep/checkpoints/<run-id>.pt). ``python -m ssvi_lite sweep`` is the
command line; ``ssvi_lite.compare`` builds on it.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import itertools
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from .config import PRESETS, TrainConfig, make_config
from .fileio import atomic_path, write_json
from .methods import NAMES, REGISTRY

# Fields that do not change what a run computes: left out of the run id.
NOT_IN_RUN_ID = ("device", "progress", "data_root")
# traits of the methods, read from the registry
DENSE_ONLY = tuple(n for n, m in REGISTRY.items() if m.density == "dense")  # always density 1
DENSITY_FREE = tuple(n for n, m in REGISTRY.items() if m.density == "own")  # their own density
USES_REMOVAL = tuple(n for n, m in REGISTRY.items() if m.uses_removal)  # the rest ignore the scores
TABLE_FIRST = ("run_id", "status", "method", "dataset", "model", "target_density", "density",
               "removal", "addition", "seed", "accuracy", "nll", "ece", "brier")


# ----------------------------------------------------------------------------- configurations
def run_id(cfg: TrainConfig) -> str:
    """Stable id of a configuration: ``<method>-d<density>-s<seed>-<12 hex of SHA-1>``.

    The hash covers every field except ``NOT_IN_RUN_ID`` (device, progress bars and where the data
    files live; JSON with sorted keys), so it is the same in every process and on every machine.
    """
    fields = {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_RUN_ID}
    text = json.dumps(fields, sort_keys=True, default=str)
    digest = hashlib.sha1(text.encode()).hexdigest()[:12]
    return f"{cfg.method}-d{cfg.density:g}-s{cfg.seed}-{digest}"


def canonical(cfg: TrainConfig) -> TrainConfig:
    """The same experiment with the fields the method ignores set to fixed values.

    map and dense VI train at density 1 and, like every method but ssvi/posthoc, ignore the removal
    and addition scores; the density-free baselines (DENSITY_FREE) reach their own density.
    Two configurations that differ only in ignored fields become equal (one run, one id).
    """
    changes: dict[str, Any] = {}
    if cfg.method in DENSE_ONLY + DENSITY_FREE:
        changes["density"] = 1.0
    if cfg.method not in USES_REMOVAL:
        defaults = TrainConfig.__dataclass_fields__
        changes["removal"] = defaults["removal"].default
        changes["addition"] = defaults["addition"].default
    return cfg.replace(**changes) if changes else cfg


def expand_grid(base: TrainConfig, **axes: Sequence[Any]) -> list[TrainConfig]:
    """Every combination of the ``axes`` values applied to ``base``, made canonical, deduplicated.

    >>> cfgs = expand_grid(make_config("kit"), density=[0.1, 0.05], seed=[0, 1, 2])
    >>> len(cfgs)
    6

    Each axis is a config field name with a non-empty list of values; the last axis varies
    fastest. ``method=["vi", "ssvi"], density=[0.1, 0.05]`` gives one vi run (at density 1) and
    two ssvi runs.
    """
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for axis, values in axes.items():
        if axis not in names:
            raise ValueError(f"sweep axis {axis!r} is not a TrainConfig field; "
                             f"choose from {', '.join(sorted(names))}")
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ValueError(f"sweep axis {axis}={values!r} must be a non-empty list of values")
    out: dict[str, TrainConfig] = {}
    for combo in itertools.product(*axes.values()):
        overrides = dict(zip(axes, combo))
        if overrides.get("method", base.method) in DENSE_ONLY + DENSITY_FREE:
            overrides["density"] = 1.0  # before replace(): TrainConfig rejects them below 1
        cfg = canonical(base.replace(**overrides))
        out.setdefault(run_id(cfg), cfg)
    return list(out.values())


def config_from_dict(fields: dict[str, Any]) -> TrainConfig:
    """Rebuild a TrainConfig from ``TrainConfig.to_dict()`` output (validated again)."""
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(fields) - known
    if unknown:
        raise ValueError(f"unknown config field(s) {sorted(unknown)} in a sweep configuration")
    return TrainConfig(**fields)


# ----------------------------------------------------------------------------- one run (worker)
def run_worker(config_path: str | Path, json_path: str | Path,
               checkpoint: str | Path | None = None) -> None:
    """Train one configuration (read from ``config_path``) and write its results row atomically.

    This is what each sweep process executes. Every method writes a checkpoint after every epoch
    and resumes from it when it exists; it is deleted once the row is written.
    """
    from .experiment import run

    cfg = config_from_dict(json.loads(Path(config_path).read_text()))
    ckpt = Path(checkpoint) if checkpoint is not None else None
    resume = ckpt is not None and ckpt.is_file()
    result = run(cfg, checkpoint=ckpt, resume=resume)
    row = {"run_id": run_id(cfg), "status": "ok", **result.row,
           "config": {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_RUN_ID}}
    write_json(json_path, row)
    if ckpt is not None and ckpt.is_file():
        ckpt.unlink()


# ----------------------------------------------------------------------------- scheduling
def default_devices() -> list[str]:
    """Every CUDA device (``cuda:0``, ``cuda:1``, ...) when present, else ``["cpu"]``."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def default_workers(devices: Sequence[str], n_runs: int) -> int:
    """One worker per CUDA device; on the CPU min(runs, cores // 2) (torch threads need cores)."""
    if all(d.startswith("cuda") for d in devices):
        return max(1, min(len(devices), n_runs))
    return max(1, min(n_runs, (os.cpu_count() or 1) // 2))


def _check_devices(devices: Sequence[str]) -> list[str]:
    devices = list(devices)
    if not devices:
        raise ValueError("devices must name at least one device, e.g. ['cpu'] or ['cuda:0']")
    for d in devices:
        if d != "cpu" and not (d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ValueError(f"device {d!r} is not known; use cpu, cuda or cuda:N")
    return devices


def _worker_env(device: str, threads: int) -> dict[str, str]:
    """The environment of one run's process: its GPU only, and a fair share of CPU threads."""
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    if device.startswith("cuda:"):
        env["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]
    root = str(Path(__file__).resolve().parent.parent)  # the repository, for an uninstalled kit
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


def _launch(cfg: TrainConfig, out_dir: Path, device: str, threads: int,
            timeout_s: float | None) -> tuple[str, str]:
    """Run one configuration in a fresh Python process; returns (status, message)."""
    rid = run_id(cfg)
    process_device = "cpu" if device == "cpu" else "cuda"  # CUDA_VISIBLE_DEVICES picks the GPU
    cfg_path = out_dir / "configs" / f"{rid}.json"
    write_json(cfg_path, {**cfg.to_dict(), "device": process_device, "progress": False})
    command = [sys.executable, "-m", "ssvi_lite.sweep", "--worker", str(cfg_path),
               str(out_dir / "runs" / f"{rid}.json"),
               "--checkpoint", str(out_dir / "checkpoints" / f"{rid}.pt")]
    try:
        proc = subprocess.run(command, env=_worker_env(device, threads), capture_output=True,
                              text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as err:
        return "failed", f"timed out after {timeout_s} s\n{err.stderr or ''}"
    if proc.returncode != 0:
        return "failed", f"exit status {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return "ok", ""


def _serve(jobs: queue.Queue[TrainConfig], out_dir: Path, device: str, threads: int,
           timeout_s: float | None, report: Callable[[TrainConfig, str, str, float], None]) -> None:
    """One worker thread: take configurations until none are left, all on the same device."""
    while True:
        try:
            cfg = jobs.get_nowait()
        except queue.Empty:
            return
        start = time.perf_counter()
        status, message = _launch(cfg, out_dir, device, threads, timeout_s)
        report(cfg, status, message, time.perf_counter() - start)


def run_sweep(configs: Sequence[TrainConfig], out_dir: str | Path, *, workers: int | None = None,
              devices: Sequence[str] | None = None, timeout_s: float | None = None,
              verbose: bool = True) -> pd.DataFrame:
    """Train every configuration in its own process and return the results table.

    Runs whose ``out_dir/runs/<run-id>.json`` exists are skipped (resume). ``devices`` defaults to
    every CUDA device, else the CPU; worker w always uses ``devices[w % len(devices)]``. A failed
    run (non-zero exit or ``timeout_s`` exceeded) gets status ``failed``, its output is kept in
    ``runs/<run-id>.log`` and its error line in the table; the others carry on. The table (one line
    per configuration, see :func:`results_table`) is also written to ``out_dir/results.csv``.
    """
    out_dir = Path(out_dir)
    configs = list({run_id(c): c for c in configs}.values())
    if not configs:
        raise ValueError("run_sweep needs at least one configuration")
    devices = _check_devices(devices if devices is not None else default_devices())
    todo = [c for c in configs if _finished_row(out_dir, run_id(c)) is None]
    n_workers = workers if workers is not None else default_workers(devices, len(todo))
    if not isinstance(n_workers, int) or isinstance(n_workers, bool) or n_workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    n_workers = min(n_workers, max(len(todo), 1))
    say = print if verbose else (lambda *a, **k: None)
    with _sweep_lock(out_dir):
        say(f"sweep: {len(configs)} runs, {len(configs) - len(todo)} already done, {len(todo)} to "
            f"run with {n_workers} worker(s) on {', '.join(devices)} -> {out_dir}", flush=True)
        try:
            _run_all(todo, out_dir, devices, n_workers, timeout_s, say)
        except KeyboardInterrupt:
            say(f"\nsweep interrupted: finished runs are kept in {out_dir / 'runs'}; the same "
                "call again resumes (interrupted core runs continue from their checkpoints)")
            raise
        table = results_table(configs, out_dir)
        with atomic_path(out_dir / "results.csv") as tmp:
            table.to_csv(tmp, index=False)
    failed = table.loc[table["status"] != "ok", "run_id"].tolist()
    if failed:
        say(f"sweep: {len(failed)} run(s) did not finish: {', '.join(failed)} "
            f"(logs in {out_dir / 'runs'}); run the sweep again to retry them", flush=True)
    return table


class SweepBusyError(ValueError):
    """Another live sweep process holds the folder (two sweeps would race on the same runs)."""


@contextmanager
def _sweep_lock(out_dir: Path) -> Iterator[None]:
    """Hold ``out_dir/.sweep.lock`` (our pid) while the sweep runs; a lock left by a dead process
    is taken over."""
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = out_dir / ".sweep.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            text = lock.read_text().strip() if lock.is_file() else ""
            if text.isdigit() and _alive(int(text)):
                raise SweepBusyError(f"another sweep (process {text}) is running in {out_dir}; "
                                     f"wait for it, or delete {lock} if it is gone") from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as handle:
            handle.write(str(os.getpid()))
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _run_all(todo: list[TrainConfig], out_dir: Path, devices: list[str], n_workers: int,
             timeout_s: float | None, say: Callable[..., None]) -> None:
    jobs: queue.Queue[TrainConfig] = queue.Queue()
    for cfg in todo:
        jobs.put(cfg)
    lock, done = threading.Lock(), [0]
    threads = max(1, (os.cpu_count() or 1) // n_workers)

    def report(cfg: TrainConfig, status: str, message: str, seconds: float) -> None:
        rid = run_id(cfg)
        with lock:
            done[0] += 1
            if status == "ok":
                row = _finished_row(out_dir, rid) or {}
                (out_dir / "runs" / f"{rid}.log").unlink(missing_ok=True)
                say(f"[{done[0]}/{len(todo)}] ok     {rid} ({seconds:.1f} s) "
                    f"accuracy {row.get('accuracy', float('nan')):.4f}", flush=True)
            else:
                from .fileio import write_text

                write_text(out_dir / "runs" / f"{rid}.log", message)
                say(f"[{done[0]}/{len(todo)}] FAILED {rid} ({seconds:.1f} s): "
                    f"{_last_line(message)}", flush=True)

    pool = [threading.Thread(target=_serve, daemon=True,
                             args=(jobs, out_dir, devices[w % len(devices)], threads, timeout_s,
                                   report)) for w in range(n_workers)]
    for t in pool:
        t.start()
    for t in pool:
        while t.is_alive():  # join with a timeout so that Ctrl-C reaches the main thread
            t.join(timeout=0.5)


def _last_line(message: str) -> str:
    lines = [ln.strip() for ln in message.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else "(no output)"


def _finished_row(out_dir: Path, rid: str) -> dict[str, Any] | None:
    """The results row of a finished run, or None (missing or unreadable: run it again)."""
    path = out_dir / "runs" / f"{rid}.json"
    try:
        row = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return row if isinstance(row, dict) and row.get("status") == "ok" else None


def results_table(configs: Sequence[TrainConfig], out_dir: str | Path) -> pd.DataFrame:
    """One line per configuration: its results row, or status ``failed`` (with ``error``) or
    ``missing`` (not run yet). Config fields that vary across the sweep and are not in the results
    row become columns too (e.g. ``update_interval``), so any sweep axis can be grouped on."""
    out_dir = Path(out_dir)
    dicts = [{k: v for k, v in c.to_dict().items() if k not in NOT_IN_RUN_ID} for c in configs]
    varying = [k for k in dicts[0] if len({json.dumps(d[k], default=str) for d in dicts}) > 1]
    rows = []
    for cfg, fields in zip(configs, dicts):
        rid = run_id(cfg)
        row = _finished_row(out_dir, rid)
        if row is None:
            log = out_dir / "runs" / f"{rid}.log"
            error = _last_line(log.read_text()) if log.is_file() else ""
            row = {"run_id": rid, "status": "failed" if log.is_file() else "missing",
                   "error": error, "target_density": cfg.density,
                   **{k: fields[k] for k in ("method", "dataset", "model", "removal",
                                             "addition", "seed", "epochs", "n_train")}}
        row = {k: v for k, v in row.items() if k != "config"}
        for key in varying:
            if key not in row and key != "density":
                row[key] = fields[key] if not isinstance(fields[key], (list, dict)) else str(
                    fields[key])
        rows.append(row)
    table = pd.DataFrame(rows)
    first = [c for c in TABLE_FIRST if c in table.columns]
    return table[first + [c for c in table.columns if c not in first]]


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m ssvi_lite sweep``: methods × removals × densities × seeds, one process each."""
    parser.add_argument("--preset", choices=sorted(PRESETS), default="kit")
    parser.add_argument("--methods", nargs="+", default=["ssvi"], choices=NAMES,
                        metavar="METHOD",
                        help=f"any of {', '.join(NAMES)}")
    parser.add_argument("--removals", nargs="+", default=None,
                        help="removal score keys (default: the preset's)")
    parser.add_argument("--additions", nargs="+", default=None, help="addition score keys")
    parser.add_argument("--densities", nargs="+", type=float, default=None,
                        help="active fractions in (0, 1] (map/vi always run at 1)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--dataset")
    parser.add_argument("--data-root", help="folder with real dataset files")
    parser.add_argument("--model")
    parser.add_argument("--n-train", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--hidden", type=int, nargs="+", help="MLP hidden widths")
    parser.add_argument("--out", default="runs/sweep", help="sweep folder (runs/, results.csv)")
    parser.add_argument("--workers", type=int, help="parallel runs (default: one per GPU, or "
                                                    "half the CPU cores)")
    parser.add_argument("--devices", nargs="+", help="e.g. cpu, or cuda:0 cuda:1 (default: all "
                                                     "GPUs, else cpu)")
    parser.add_argument("--timeout", type=float, help="seconds before one run counts as failed")


def base_config(args: argparse.Namespace) -> TrainConfig:
    """The preset plus the single-valued options of a sweep/compare command line."""
    overrides = {k: v for k, v in {
        "epochs": args.epochs, "dataset": args.dataset, "data_root": args.data_root,
        "model": args.model, "n_train": args.n_train, "batch_size": args.batch_size,
        "hidden": tuple(args.hidden) if args.hidden else None, "progress": False,
    }.items() if v is not None}
    return make_config(args.preset, **overrides)


def configs_from_args(args: argparse.Namespace) -> list[TrainConfig]:
    """The sweep's configurations: methods × removals × additions × densities × seeds."""
    axes: dict[str, Sequence[Any]] = {"method": args.methods}
    for axis, values in (("removal", args.removals), ("addition", args.additions),
                         ("density", args.densities), ("seed", args.seeds)):
        if values:
            axes[axis] = values
    return expand_grid(base_config(args), **axes)


def main(args: argparse.Namespace) -> int:
    """Run the sweep; exit status 1 if any run failed (the table still lists it)."""
    try:
        table = run_sweep(configs_from_args(args), args.out, workers=args.workers,
                          devices=args.devices, timeout_s=args.timeout)
    except KeyboardInterrupt:
        return 130
    shown = [c for c in ("method", "removal", "target_density", "density", "seed", "status",
                         "accuracy", "nll", "ece", "train_flops_ratio") if c in table.columns]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"results: {Path(args.out) / 'results.csv'}")
    return 0 if (table["status"] == "ok").all() else 1


def _worker_main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ssvi_lite.sweep",
                                     description="one sweep run (started by run_sweep)")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG_JSON", "RESULT_JSON"), required=True)
    parser.add_argument("--checkpoint")
    args = parser.parse_args(argv)
    run_worker(args.worker[0], args.worker[1], args.checkpoint)
    return 0


if __name__ == "__main__":
    raise SystemExit(_worker_main())
