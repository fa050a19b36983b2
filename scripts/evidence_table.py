"""The resumable results table that the evidence scripts share (scripts/evidence_NN.py).

Each evidence script runs one setting (a removal score, an addition rule, ...) for several seeds
and keeps one CSV row per run. :func:`fill` runs only the (seed, setting) pairs the CSV does not
hold yet and rewrites the CSV atomically after every run, so an interrupted script continues where
it stopped.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from ssvi_lite.fileio import atomic_path


def fill(out: Path, column: str, seeds: Sequence[int], settings: Sequence[str],
         one_run: Callable[[str, int], dict[str, Any]],
         describe: Callable[[dict[str, Any]], str]) -> None:
    """Run ``one_run(setting, seed)`` for every pair missing from ``out`` (keyed by ``column`` and
    ``seed``), appending its row; ``describe(row)`` is the progress line of a finished run."""
    table = pd.read_csv(out) if out.is_file() else pd.DataFrame()
    done = set(zip(table[column], table["seed"])) if len(table) else set()
    todo = [(s, k) for s in seeds for k in settings if (k, s) not in done]
    print(f"{len(done)} runs in {out.name}; {len(todo)} to do", flush=True)
    start = time.perf_counter()
    for i, (seed, setting) in enumerate(todo, 1):
        row = one_run(setting, seed)
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            table.sort_values(["seed", column]).to_csv(tmp, index=False)
        print(f"[{i}/{len(todo)}] seed {seed} {describe(row)} "
              f"({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"total {time.perf_counter() - start:.0f} s")


def main(doc: str, out: Path, column: str, settings: Sequence[str],
         one_run: Callable[[str, int], dict[str, Any]],
         describe: Callable[[dict[str, Any]], str], seeds: Sequence[int] = (0, 1, 2),
         argv: list[str] | None = None) -> int:
    """The command line of an evidence script: ``[--seeds S ...] [--out CSV]``, then :func:`fill`
    on one CPU thread."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(seeds))
    parser.add_argument("--out", type=Path, default=out)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    fill(args.out, column, args.seeds, settings, one_run, describe)
    return 0
