"""Running a sweep's jobs: submission, collection, timeouts, and cancellation that sticks.

``run_tasks(tasks, folder, cluster, ...)`` hands each task (a function and its arguments) to the
submitit executor of ``cluster`` (``ssvi_lite.jobs``), at most ``workers`` at a time, round-robin
over ``devices``, and calls ``on_done(outcome)`` as each one ends. A local job that runs past
``timeout_s`` is stopped and fails. A KeyboardInterrupt (SIGTERM is turned into one while jobs run)
stops every job still running before it goes on: a local job's process group gets SIGINT (the run
stops training; its last per-epoch checkpoint stays), then SIGKILL; Slurm jobs are scancelled.
"""
from __future__ import annotations

import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import submitit
from submitit.local import local as submitit_local

from .jobs import Cluster, environ, job_device, job_environment, local_gpu_parameters, make_executor

STOP_GRACE_S = 5.0  # after SIGINT, a job's process group has this long before SIGKILL
POLL_S = 0.2


# ----------------------------------------------------------------------------- one job
@dataclass(frozen=True)
class Task:
    """One job: ``fn(*args, device)``, named ``name`` (a run id) in outcomes and logs."""

    name: str
    fn: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Outcome:
    """How a task ended: status ``ok`` or ``failed``, seconds since submission, and (failed) the
    job's output with the error last."""

    name: str
    status: str
    seconds: float
    log: str = ""


def call_logged(announce: bool, fn: Callable[..., Any], *args: Any) -> str | None:
    """What every job runs: ``fn(*args)``; returns None, or the traceback of its exception.

    Catching here, not in submitit, keeps the debug executor out of pdb and puts the traceback
    last in the run's log; KeyboardInterrupt is not caught, so cancelling still stops the job.
    """
    if announce:
        print(f"ssvi_lite job: pid {os.getpid()}, process group {os.getpgrp()}", flush=True)
    try:
        fn(*args)
    except Exception:
        return traceback.format_exc()
    return None


def _error_of(job: Any) -> str | None:
    """None for a job that finished its task, else why not (the task's traceback, a crash)."""
    if isinstance(job, submitit_local.LocalJob) and not job.paths.result_pickle.exists():
        return f"job {job.job_id} ended without a result ({job.state})"
    try:
        return job.result()
    except Exception as err:  # submitit's FailedJobError / UncompletedJobError
        return f"{type(err).__name__}: {err}"


def _log_of(job: Any, error: str) -> str:
    """The job's stdout and stderr, then the error (last, where the table finds it)."""
    parts = [job.stdout() or "", job.stderr() or "", error]
    return "\n".join(p.rstrip("\n") for p in parts if p) + "\n"


def _forget(job: Any) -> None:
    """Delete an ended job's pickles and logs (what matters went to the run's own files): a later
    job with the same id (a local job's id is a pid) must not find them."""
    for path in Path(job.paths.folder).glob(f"{job.job_id}_*"):
        path.unlink(missing_ok=True)


def _clear(folder: Path) -> None:
    """Delete job files left in ``folder`` by a sweep that was killed (the lock makes it ours)."""
    for path in folder.glob("*"):
        if path.is_file() and path.name != "controllers.log":
            path.unlink()


def _signal_group(group: int, sig: int) -> None:
    try:
        os.killpg(group, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_jobs(jobs: Sequence[Any], grace_s: float = STOP_GRACE_S) -> None:
    """Cancel ``jobs`` and, for local ones, end every process of their process groups.

    Local groups get SIGINT (the task stops training; its last per-epoch checkpoint stays), then
    SIGKILL once their controller has exited or ``grace_s`` has passed; Slurm jobs are scancelled,
    debug jobs marked cancelled.
    """
    local = [j for j in jobs if isinstance(j, submitit_local.LocalJob)]
    for job in jobs:
        if job not in local:
            try:
                job.cancel(check=False)
            except OSError:  # scancel missing or failing: nothing more to do from here
                pass
    for job in local:
        _signal_group(int(job.job_id), signal.SIGINT)
    deadline = time.monotonic() + grace_s
    while any(not j.done() for j in local) and time.monotonic() < deadline:
        time.sleep(0.05)
    for job in local:
        _signal_group(int(job.job_id), signal.SIGKILL)
    deadline = time.monotonic() + grace_s
    while any(not j.done() for j in local) and time.monotonic() < deadline:
        time.sleep(0.01)  # reap the controllers


# ----------------------------------------------------------------------------- signals
@contextmanager
def _handlers(handler: Callable[[int, Any], None], *signals: int) -> Iterator[None]:
    """``handler`` for ``signals`` during the block (main thread only: elsewhere, no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


def interrupt_on_sigterm() -> Any:
    """SIGTERM raises KeyboardInterrupt for the block (main thread), so it cancels jobs too."""
    return _handlers(_raise_interrupt, signal.SIGTERM)


@contextmanager
def _signals_held() -> Iterator[list[int]]:
    """SIGINT and SIGTERM are only recorded during the block (yielded list), not acted on: a job
    being submitted is then always known, so an interrupt can cancel it."""
    caught: list[int] = []
    with _handlers(lambda n, f: caught.append(n), signal.SIGINT, signal.SIGTERM):
        yield caught


# ----------------------------------------------------------------------------- the pool
class _Pool:
    """Jobs in flight: at most one per slot, each slot bound to a device."""

    def __init__(self, executor: submitit.Executor, cluster: Cluster, slots: list[str],
                 threads: int | None, timeout_s: float | None) -> None:
        self.executor, self.cluster, self.free = executor, cluster, list(slots)
        self.threads, self.timeout_s = threads, timeout_s
        self.running: dict[Any, tuple[Task, str, float]] = {}

    def run(self, tasks: Sequence[Task], on_done: Callable[[Outcome], None]) -> None:
        queue = list(tasks)[::-1]
        while queue or self.running:
            while queue and self.free:
                self._submit(queue.pop(), self.free.pop(0))
            ended = 0
            for job in list(self.running):
                outcome = self._check(job)
                if outcome is not None:
                    ended += 1
                    on_done(outcome)  # at once: an interrupt must not lose a reported end
            if not ended and self.running:
                time.sleep(POLL_S)

    def _submit(self, task: Task, device: str) -> None:
        kind = self.cluster.kind
        with _signals_held() as caught, environ(job_environment(self.threads)):
            if kind == "local":
                self.executor.update_parameters(**local_gpu_parameters(device))
            job = self.executor.submit(call_logged, kind != "debug", task.fn, *task.args,
                                       job_device(kind, device, self.cluster))
            self.running[job] = (task, device, time.monotonic())
        if caught:
            raise KeyboardInterrupt("interrupted while submitting a job")

    def _check(self, job: Any) -> Outcome | None:
        task, device, start = self.running[job]
        done = job.done()  # a debug job runs here, in this process
        seconds = time.monotonic() - start
        if done:
            error = _error_of(job)
        elif self.cluster.kind == "local" and self.timeout_s is not None \
                and seconds > self.timeout_s:
            stop_jobs([job])
            error = f"timed out after {self.timeout_s:g} s (job {job.job_id} stopped)"
        else:
            return None
        del self.running[job]
        self.free.append(device)
        log = _log_of(job, error) if error is not None else ""
        _forget(job)
        return Outcome(task.name, "ok" if error is None else "failed", seconds, log)

    def stop_all(self) -> None:
        with _signals_held():  # a second Ctrl-C must not cut the cancelling short
            stop_jobs(list(self.running))
            for job in self.running:
                _forget(job)


def run_tasks(tasks: Sequence[Task], folder: str | Path, cluster: Cluster, *,
              devices: Sequence[str], workers: int, timeout_s: float | None,
              on_done: Callable[[Outcome], None]) -> None:
    """Run every task as a submitit job (see the module docstring) and report each as it ends.

    Slot w uses ``devices[w % len(devices)]``; a local job gets ``cpus_per_job`` threads or a
    fair share of the cores. On any exception (KeyboardInterrupt, SIGTERM) the jobs still running
    are stopped before it goes on; the ones that ended were reported already.
    """
    _clear(Path(folder))
    slots = [devices[w % len(devices)] for w in range(workers)]
    threads = cluster.cpus_per_job
    if threads is None and cluster.kind == "local":
        threads = max(1, (os.cpu_count() or 1) // workers)
    pool = _Pool(make_executor(cluster, Path(folder), timeout_s), cluster, slots, threads,
                 timeout_s)
    with interrupt_on_sigterm():
        try:
            pool.run(tasks, on_done)
        except BaseException:
            pool.stop_all()
            raise
