"""Where a sweep's jobs run: submitit executors, devices, and one lock per output folder.

``make_executor(Cluster(kind), folder, timeout_s)`` is the submitit executor of a sweep:

- ``local`` (default): :class:`SessionLocalExecutor`, submitit's ``LocalExecutor`` (one process per
  job on this machine) with every job in a process group of its own, so that cancelling one ends
  its whole process tree; each job sees only its GPU (CUDA_VISIBLE_DEVICES, from
  :func:`local_gpu_parameters`) and gets its share of the CPU threads (:func:`job_environment`);
- ``debug``: ``submitit.DebugExecutor``, every job in this process (for a debugger or a notebook);
- ``slurm``: ``submitit.AutoExecutor(cluster="slurm")``, one Slurm job per run with the partition,
  time limit, GPUs and CPUs of :class:`Cluster` (:func:`slurm_parameters`).

``folder_lock(out_dir)`` holds an OS-level lock (flock, through filelock) on
``out_dir/.sweep.lock``, so two sweeps never share an output folder: the second fails at once with
:class:`SweepBusyError`.
``ssvi_lite.engine`` runs the jobs; ``ssvi_lite.sweep`` builds on both.
"""
from __future__ import annotations

import functools
import math
import os
import subprocess
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
import torch
from filelock import FileLock, Timeout
from submitit.local import local as submitit_local

CLUSTERS = ("local", "debug", "slurm")
LOCAL_BACKSTOP_MIN = 10 * 365 * 24 * 60  # submitit's LocalExecutor would stop a job after 2 min
SLURM_DEFAULT_MIN = 60
PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # on PYTHONPATH of jobs: an uninstalled kit


# ----------------------------------------------------------------------------- the folder lock
class SweepBusyError(ValueError):
    """Another sweep holds the folder's lock (two sweeps would race on the same runs)."""


@contextmanager
def folder_lock(out_dir: str | Path) -> Iterator[None]:
    """Hold ``out_dir/.sweep.lock`` for the block; :class:`SweepBusyError` at once if it is taken.

    The lock is flock(2) (through filelock): the kernel gives it to one open file at a time and
    drops it when its process dies, so a lock file left by a crashed sweep never blocks anyone and
    two sweeps never both hold it. The file itself stays (deleting it would let a third one in).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(out_dir / ".sweep.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise SweepBusyError(f"another sweep is running in {out_dir}; wait for it to end or use "
                             "another output folder") from None
    try:
        yield
    finally:
        lock.release()


# ----------------------------------------------------------------------------- where jobs run
@dataclass(frozen=True)
class Cluster:
    """Which submitit executor runs the jobs, and what each Slurm job asks for.

    ``kind``: local, debug or slurm. ``partition``, ``time_min`` (the Slurm time limit; default:
    the run timeout rounded up to minutes, else 60) and ``gpus_per_job`` apply to Slurm only;
    ``cpus_per_job`` is each job's CPU threads (local default: a fair share of the cores).
    """

    kind: str = "local"
    partition: str | None = None
    time_min: int | None = None
    gpus_per_job: int = 0
    cpus_per_job: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in CLUSTERS:
            raise ValueError(f"cluster {self.kind!r} is not known; choose {', '.join(CLUSTERS)}")
        for name in ("time_min", "gpus_per_job", "cpus_per_job"):
            value = getattr(self, name)
            least = 0 if name == "gpus_per_job" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < least):
                raise ValueError(f"{name}={value!r} must be a whole number ≥ {least}")


class SessionLocalExecutor(submitit.LocalExecutor):
    """submitit's LocalExecutor, every job started in a session (process group) of its own.

    The job id is the pid of submitit's controller process, which is then also the process group
    of the controller, of the task it starts and of anything the task starts: ``os.killpg`` on the
    job id reaches the whole tree, and a Ctrl-C in the terminal reaches the sweep alone, which
    cancels its jobs itself. The controllers write to ``controllers.log`` in the folder (the
    tasks have their own logs), so a cancelled one does not print its traceback in the terminal.
    """

    def _submit_command(self, command: str) -> Any:
        real = submitit_local.subprocess
        with open(Path(self.folder) / "controllers.log", "ab") as log:
            submitit_local.subprocess = types.SimpleNamespace(Popen=functools.partial(
                subprocess.Popen, start_new_session=True, stdout=log, stderr=log))
            try:
                return super()._submit_command(command)
            finally:
                submitit_local.subprocess = real


def slurm_parameters(cluster: Cluster, timeout_s: float | None) -> dict[str, Any]:
    """``AutoExecutor.update_parameters`` arguments of one Slurm job per run."""
    minutes = cluster.time_min or (math.ceil(timeout_s / 60) if timeout_s else SLURM_DEFAULT_MIN)
    params: dict[str, Any] = {"name": "ssvi_lite", "timeout_min": minutes, "nodes": 1,
                              "tasks_per_node": 1}
    if cluster.gpus_per_job:
        params["gpus_per_node"] = cluster.gpus_per_job
    if cluster.cpus_per_job:
        params["cpus_per_task"] = cluster.cpus_per_job
    if cluster.partition:
        params["slurm_partition"] = cluster.partition
    return params


def make_executor(cluster: Cluster, folder: Path, timeout_s: float | None) -> submitit.Executor:
    """The submitit executor of ``cluster``, keeping its pickles and logs in ``folder``."""
    if cluster.kind == "debug":
        return submitit.DebugExecutor(folder)
    if cluster.kind == "local":
        executor = SessionLocalExecutor(folder)
        backstop = LOCAL_BACKSTOP_MIN if timeout_s is None else math.ceil(timeout_s / 60) + 1
        executor.update_parameters(timeout_min=backstop)
        return executor
    try:
        executor = submitit.AutoExecutor(folder, cluster="slurm")
    except RuntimeError as err:  # no srun on this machine
        raise ValueError(f"cluster slurm: {err}") from None
    executor.update_parameters(**slurm_parameters(cluster, timeout_s))
    return executor


# ----------------------------------------------------------------------------- devices
def default_devices() -> list[str]:
    """Every CUDA device (``cuda:0``, ``cuda:1``, ...) when present, else ``["cpu"]``."""
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def check_devices(devices: Sequence[str]) -> list[str]:
    """``devices`` as a list; ValueError for an empty list or a name other than cpu/cuda/cuda:N."""
    devices = list(devices)
    if not devices:
        raise ValueError("devices must name at least one device, e.g. ['cpu'] or ['cuda:0']")
    for d in devices:
        if d != "cpu" and not (d == "cuda" or (d.startswith("cuda:") and d[5:].isdigit())):
            raise ValueError(f"device {d!r} is not known; use cpu, cuda or cuda:N")
    return devices


def default_workers(devices: Sequence[str], n_runs: int, kind: str = "local") -> int:
    """Jobs at a time: local, one per CUDA device, or min(runs, cores // 2) on the CPU (torch
    threads need cores); debug, 1 (in this process); slurm, every run (the queue decides)."""
    if kind == "debug":
        return 1
    if kind == "slurm" or all(d.startswith("cuda") for d in devices):
        return max(1, n_runs if kind == "slurm" else min(len(devices), n_runs))
    return max(1, min(n_runs, (os.cpu_count() or 1) // 2))


def physical_gpu(index: int) -> int:
    """The GPU this process calls ``cuda:<index>``, numbered as in CUDA_VISIBLE_DEVICES."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return index
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    if index >= len(ids):
        raise ValueError(f"cuda:{index} is not visible (CUDA_VISIBLE_DEVICES={visible!r})")
    if not ids[index].isdigit():
        raise ValueError(f"CUDA_VISIBLE_DEVICES={visible!r} names GPUs by UUID; local sweeps "
                         "need GPU indices there (or leave it unset)")
    return int(ids[index])


def local_gpu_parameters(device: str) -> dict[str, Any]:
    """LocalExecutor parameters that show a job only its GPU (``device``), or none for the CPU."""
    if device == "cpu":
        return {"gpus_per_node": 0, "visible_gpus": ()}
    return {"gpus_per_node": 1, "visible_gpus": (physical_gpu(int(device.partition(":")[2] or 0)),)}


def job_device(kind: str, device: str, cluster: Cluster | None = None) -> str:
    """The device name a job uses inside its process: a local job sees its one GPU as ``cuda``."""
    if kind == "debug":
        return device
    if kind == "slurm":
        return "cuda" if cluster is not None and cluster.gpus_per_job else "cpu"
    return "cpu" if device == "cpu" else "cuda"


def job_environment(threads: int | None) -> dict[str, str]:
    """Environment variables of a job: this kit on PYTHONPATH and its share of CPU threads."""
    path = os.environ.get("PYTHONPATH")
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(PACKAGE_ROOT), path) if p)}
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


@contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """``os.environ`` with ``values`` for the block (submitit copies it into the job)."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
