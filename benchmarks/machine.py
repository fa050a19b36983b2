"""What the benchmarks share: the machine they ran on, and how they time (interleaved rounds)."""
from __future__ import annotations

import argparse
import platform
import time
from collections.abc import Callable


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo where there is one (Linux), else platform's guess."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- timing
Clock = Callable[[], float]


def add_timing_arguments(parser: argparse.ArgumentParser) -> None:
    """``--threads`` and ``--clock``, the same in every benchmark."""
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or the thread's CPU time (only with --threads 1)")


def clock_from(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Clock:
    """``time.perf_counter`` (wall) or ``time.thread_time`` (``--clock cpu``: the CPU time of the
    one thread, which preemption by other processes does not inflate)."""
    if args.clock == "cpu":
        if args.threads != 1:
            parser.error("--clock cpu measures one thread's CPU time: use it with --threads 1")
        return time.thread_time
    return time.perf_counter


def interleaved(fns: dict[str, Callable[[], object]], rounds: int,
                clock: Clock = time.perf_counter) -> dict[str, list[float]]:
    """Seconds of each call over ``rounds`` rounds, the order reversing from round to round, so
    that drifts in machine load hit every variant alike."""
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            start = clock()
            fns[k]()
            times[k].append(clock() - start)
    return times
