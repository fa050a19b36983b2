"""Sweeps: many configurations, one job each, one results table that only ever grows.

``expand_grid(base, removal=[...], density=[...], seed=[...])`` makes the configurations (the
Cartesian product of the axes); ``run_sweep(configs, "runs/sweep")`` trains each one as a submitit
job (``ssvi_lite.jobs``): by default a process of its own on this machine, spread over the devices
(one job per CUDA device, round-robin, or CPU jobs ≤ cores / 2); ``cluster="debug"`` runs them in
this process, ``cluster=Cluster("slurm", ...)`` as Slurm jobs. It writes

    runs/sweep/runs/<run-id>.json    one results row per finished run (atomic, ssvi_lite.fileio)
    runs/sweep/runs/<run-id>.log     the output of a run that failed or timed out (kept to read)
    runs/sweep/results.csv           one line per configuration (status ok/failed/missing), merged
                                     with the lines already there: rows of other runs are kept
    runs/sweep/jobs/                 submitit's pickles and logs of the jobs in flight

The run id is a stable hash of the configuration (fields that do not change the result, such as
``device`` and ``progress``, are left out), so a second call skips every run whose JSON exists and
an interrupted sweep resumes where it stopped; a core run interrupted mid-training continues from
its per-epoch checkpoint (runs/sweep/checkpoints/<run-id>.pt). Interrupting a sweep (Ctrl-C,
SIGTERM) stops all its jobs. One sweep at a time per folder: an OS-level lock on
``runs/sweep/.sweep.lock`` makes a second one fail at once with :class:`SweepBusyError`.
``python -m ssvi_lite sweep`` is the command line; ``ssvi_lite.compare`` builds on it.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from . import engine, jobs
from .config import NOT_IN_RUN_ID, TrainConfig, make_config, run_id
from .fileio import atomic_path, check_output_path, write_json, write_text
from .flags import add_config_flags, overrides_from_flags
from .guards import non_negative_int, positive_float, positive_int
from .jobs import CLUSTERS, Cluster, SweepBusyError
from .methods import REGISTRY

__all__ = ["Cluster", "SweepBusyError", "canonical", "config_from_dict", "expand_grid",
           "results_table", "run_id", "run_sweep", "run_worker"]

# traits of the methods, read from the registry
DENSE_ONLY = tuple(n for n, m in REGISTRY.items() if m.density == "dense")  # at density 1
DENSITY_FREE = tuple(n for n, m in REGISTRY.items() if m.density == "own")  # their own density
USES_REMOVAL = tuple(n for n, m in REGISTRY.items() if m.uses_removal)  # others ignore the scores
TABLE_FIRST = ("run_id", "status", "method", "dataset", "model", "target_density", "density",
               "removal", "addition", "seed", "accuracy", "nll", "ece", "brier")


# ----------------------------------------------------------------------------- configurations
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


# ----------------------------------------------------------------------------- one run (a job)
def run_worker(cfg: TrainConfig, json_path: str | Path, checkpoint: str | Path | None = None,
               device: str | None = None) -> None:
    """Train one configuration and write its results row (atomically) to ``json_path``.

    This is what each sweep job executes, on ``device`` when given. Every method writes a
    checkpoint after every epoch and resumes from it when it exists; it is deleted once the row is
    written.
    """
    from .experiment import run

    rid = run_id(cfg)
    if device is not None:
        cfg = cfg.replace(device=device, progress=False)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    resume = ckpt is not None and ckpt.is_file()
    if resume:
        print(f"{rid}: resuming from checkpoint {ckpt}", flush=True)
    result = run(cfg, checkpoint=ckpt, resume=resume)
    row = {"run_id": rid, "status": "ok", **result.row,
           "config": {k: v for k, v in cfg.to_dict().items() if k not in NOT_IN_RUN_ID}}
    write_json(json_path, row)
    if ckpt is not None and ckpt.is_file():
        ckpt.unlink()


# ----------------------------------------------------------------------------- the sweep
def run_sweep(configs: Sequence[TrainConfig], out_dir: str | Path, *, workers: int | None = None,
              devices: Sequence[str] | None = None, timeout_s: float | None = None,
              cluster: str | Cluster = "local", verbose: bool = True) -> pd.DataFrame:
    """Train every configuration as a job and return their results table.

    Runs whose ``out_dir/runs/<run-id>.json`` exists are skipped (resume). ``cluster``: ``local``
    (processes on this machine), ``debug`` (in this process) or a :class:`Cluster` (e.g. Slurm).
    ``devices`` defaults to every CUDA device, else the CPU; job slot w always uses
    ``devices[w % len(devices)]``. A failed run (an exception, a crash, or ``timeout_s`` exceeded:
    local jobs only) gets status ``failed``, its output is kept in ``runs/<run-id>.log`` and its
    error line in the table; the others carry on. The table (one line per configuration, see
    :func:`results_table`) is merged into ``out_dir/results.csv``, which keeps the lines of runs
    not in ``configs``. KeyboardInterrupt or SIGTERM stops every job, keeps what finished, writes
    the table and goes on up. SweepBusyError if another sweep holds ``out_dir``.
    """
    out_dir = Path(out_dir)
    configs = list({run_id(c): c for c in configs}.values())
    if not configs:
        raise ValueError("run_sweep needs at least one configuration")
    cluster = cluster if isinstance(cluster, Cluster) else Cluster(cluster)
    devices = jobs.check_devices(devices if devices is not None else jobs.default_devices())
    _check_arguments(out_dir, workers, timeout_s)
    say = print if verbose else (lambda *a, **k: None)
    with jobs.folder_lock(out_dir):
        todo = [c for c in configs if _finished_row(out_dir, run_id(c)) is None]
        n_workers = min(workers or jobs.default_workers(devices, len(todo), cluster.kind),
                        max(len(todo), 1))
        say(f"sweep: {len(configs)} runs, {len(configs) - len(todo)} already done, {len(todo)} to "
            f"run with {n_workers} {cluster.kind} job(s) at a time on {', '.join(devices)} "
            f"-> {out_dir}", flush=True)
        try:
            _run_todo(todo, out_dir, cluster, devices, n_workers, timeout_s, say)
        finally:  # also after an interrupt: the table then shows what finished
            table = write_results(configs, out_dir)
    failed = table.loc[table["status"] != "ok", "run_id"].tolist()
    if failed:
        say(f"sweep: {len(failed)} run(s) did not finish: {', '.join(failed)} "
            f"(logs in {out_dir / 'runs'}); run the sweep again to retry them", flush=True)
    return table


def _check_arguments(out_dir: Path, workers: int | None, timeout_s: float | None) -> None:
    """Before any work: the job options, and an output folder the sweep can write without losing
    anything (a results.csv that is not a sweep table is refused, never overwritten)."""
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if timeout_s is not None and not (isinstance(timeout_s, (int, float)) and
                                      math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout_s!r}")
    check_output_path(out_dir, "folder", what="sweep folder")
    for sub in ("runs", "checkpoints", "jobs"):
        check_output_path(out_dir / sub, "folder", what="sweep folder")
    check_output_path(out_dir / "results.csv", "file", what="results table")
    _csv_rows(out_dir)


def _run_todo(todo: list[TrainConfig], out_dir: Path, cluster: Cluster, devices: list[str],
              n_workers: int, timeout_s: float | None, say: Callable[..., None]) -> None:
    """Run the configurations still to do, one :func:`run_worker` job each."""
    ids = [run_id(c) for c in todo]
    tasks = [engine.Task(rid, run_worker, (cfg, str(out_dir / "runs" / f"{rid}.json"),
                                           str(out_dir / "checkpoints" / f"{rid}.pt")))
             for rid, cfg in zip(ids, todo)]
    try:
        engine.run_tasks(tasks, out_dir / "jobs", cluster, devices=devices, workers=n_workers,
                         timeout_s=timeout_s, on_done=_reporter(out_dir, len(todo), say))
    except KeyboardInterrupt:
        done = sum(_finished_row(out_dir, t.name) is not None for t in tasks)
        say(f"\nsweep interrupted: every job was stopped; {done} of the {len(tasks)} run(s) it "
            f"started finished (kept in {out_dir / 'runs'}). To resume, run the same sweep again "
            "(same options, same output folder): finished runs are skipped, interrupted core "
            "runs continue from their checkpoints.", flush=True)
        raise


def _reporter(out_dir: Path, total: int, say: Callable[..., None]
              ) -> Callable[[engine.Outcome], None]:
    """The ``on_done`` of a sweep: keep a failed run's log, drop a stale one, print a line."""
    count = [0]

    def report(outcome: engine.Outcome) -> None:
        count[0] += 1
        log, rid = out_dir / "runs" / f"{outcome.name}.log", outcome.name
        head = f"[{count[0]}/{total}]"
        if outcome.status == "ok":
            log.unlink(missing_ok=True)
            row = _finished_row(out_dir, rid) or {}
            say(f"{head} ok     {rid} ({outcome.seconds:.1f} s) "
                f"accuracy {row.get('accuracy', float('nan')):.4f}", flush=True)
        else:
            write_text(log, outcome.log)
            say(f"{head} FAILED {rid} ({outcome.seconds:.1f} s): {_last_line(outcome.log)}",
                flush=True)

    return report


# ----------------------------------------------------------------------------- the results table
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
    return _ordered(pd.DataFrame(rows))


def _ordered(table: pd.DataFrame) -> pd.DataFrame:
    first = [c for c in TABLE_FIRST if c in table.columns]
    return table[first + [c for c in table.columns if c not in first]]


def _csv_rows(out_dir: Path) -> dict[str, dict[str, Any]]:
    """The rows of ``out_dir/results.csv`` by run id, in its order (none if there is no file or an
    empty one); ValueError if it is not a sweep's table (it is then never overwritten)."""
    path = out_dir / "results.csv"
    try:
        table = pd.read_csv(path)
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return {}
    except (OSError, ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not a readable results table ({err}); move it away or "
                         "choose another output folder: it is never overwritten") from err
    if "run_id" not in table.columns:
        raise ValueError(f"{path} is not a sweep results table (no run_id column); move it away "
                         "or choose another output folder: it is never overwritten")
    return {r["run_id"]: r for r in table.to_dict("records")}


def write_results(configs: Sequence[TrainConfig], out_dir: Path) -> pd.DataFrame:
    """Merge :func:`results_table` of ``configs`` into ``out_dir/results.csv``; returns that table.

    Merged by run id: results.csv's lines of other runs stay, in their order, the configs' lines
    replace theirs or come last, and finished runs that no line lists yet (their sweep was stopped
    before writing it) are added from runs/*.json. Nothing is ever dropped.
    """
    table = results_table(configs, out_dir)
    rows = _csv_rows(out_dir)
    rows.update({r["run_id"]: r for r in table.to_dict("records")})
    for path in sorted((out_dir / "runs").glob("*.json")):
        done = _finished_row(out_dir, path.stem)
        if done is not None:
            done.pop("config", None)
            rows[path.stem] = {**rows.get(path.stem, {}), **done}
    with atomic_path(out_dir / "results.csv") as tmp:
        _ordered(pd.DataFrame(list(rows.values()))).to_csv(tmp, index=False)
    return table


# ----------------------------------------------------------------------------- command line
SWEEP_AXES = ("method", "removal", "addition", "density", "seed")  # plural flags: --densities ...


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m ssvi_lite sweep``: methods × removals × additions × densities × seeds, one job
    each; every other config field is a single-valued flag, generated from TrainConfig."""
    add_config_flags(parser, axes=SWEEP_AXES, skip=("device", "progress"))
    parser.add_argument("--out", default="runs/sweep",
                        help="sweep folder (runs/, results.csv); one sweep at a time per folder")
    add_job_arguments(parser)


def add_job_arguments(parser: argparse.ArgumentParser) -> None:
    """Where and how the jobs run (shared by ``sweep`` and ``compare``)."""
    parser.add_argument("--cluster", choices=CLUSTERS, default="local",
                        help="local: one process per run on this machine (default); debug: every "
                             "run in this process, one after the other; slurm: one Slurm job "
                             "per run")
    parser.add_argument("--workers", type=positive_int,
                        help="runs at a time (default: one per GPU, or half the CPU cores; "
                             "slurm: all)")
    parser.add_argument("--devices", nargs="+", help="e.g. cpu, or cuda:0 cuda:1 (default: all "
                                                     "GPUs, else cpu)")
    parser.add_argument("--timeout", type=positive_float,
                        help="seconds before one run counts as failed (local jobs; on Slurm "
                             "the default time limit)")
    parser.add_argument("--cpus-per-job", type=positive_int,
                        help="CPU threads per run (default: a fair share of the cores)")
    parser.add_argument("--slurm-partition", help="Slurm partition of the jobs")
    parser.add_argument("--slurm-time", type=positive_int, metavar="MINUTES",
                        help="Slurm time limit per job (default: --timeout, else 60)")
    parser.add_argument("--gpus-per-job", type=non_negative_int, default=0,
                        help="GPUs per Slurm job")


def cluster_from_args(args: argparse.Namespace) -> Cluster:
    """The :class:`Cluster` of ``--cluster`` and its options."""
    return Cluster(args.cluster, partition=args.slurm_partition, time_min=args.slurm_time,
                   gpus_per_job=args.gpus_per_job, cpus_per_job=args.cpus_per_job)


def base_config(args: argparse.Namespace, axes: Sequence[str] = SWEEP_AXES) -> TrainConfig:
    """The preset plus the single-valued config flags of a sweep/compare command line."""
    return make_config(args.preset, **{**overrides_from_flags(args, axes), "progress": False})


def configs_from_args(args: argparse.Namespace) -> list[TrainConfig]:
    """The sweep's configurations: methods × removals × additions × densities × seeds (methods
    default to ssvi, seeds to 0, the others to the preset's value)."""
    axes = {axis: getattr(args, axis) for axis in SWEEP_AXES if getattr(args, axis)}
    axes.setdefault("method", ["ssvi"])
    axes.setdefault("seed", [0])
    return expand_grid(base_config(args), **axes)


def main(args: argparse.Namespace) -> int:
    """Run the sweep; exit status 1 if any run failed (the table still lists it), 130 when
    interrupted, 2 (through the CLI) for bad input or a folder another sweep holds."""
    try:
        table = run_sweep(configs_from_args(args), args.out, workers=args.workers,
                          devices=args.devices, timeout_s=args.timeout,
                          cluster=cluster_from_args(args))
    except KeyboardInterrupt:
        return 130
    shown = [c for c in ("method", "removal", "target_density", "density", "seed", "status",
                         "accuracy", "nll", "ece", "train_flops_ratio") if c in table.columns]
    print(table[shown].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"results: {Path(args.out) / 'results.csv'}")
    return 0 if (table["status"] == "ok").all() else 1
