"""Epoch wall time of SSVI vs dense VI (and the static mask), measured side by side in one run.

    python benchmarks/epoch_time.py [--epochs 5] [--repeats 7] [--threads 2] [--out FILE]

Each (method, repeat) trains in its own subprocess, interleaved (VI, SSVI, static, VI, SSVI, ...)
so that drifts in machine load hit every method alike. Reported: the median training wall time per
epoch (evaluation excluded: the history's ``wall_time_s``), the ratio to dense VI (target for SSVI:
≤ 1.15 — the subspace schedule must cost little), the analytic training-FLOPs ratio
(docs/method.md §8) and the peak resident memory of each process. Two diagnostics follow: SSVI /
static mask (same density, no swaps: the schedule's own cost) and the time of sqrt on zeros vs
ones, because on some CPUs a masked run pays for Adam's sqrt over the all-zero state of its
inactive weights. Setting:
the kit preset (MLP 784-100-100-10) on the embedded MNIST subset, density 0.1, snr_abs removal +
grad addition.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from machine import cpu_name  # benchmarks/machine.py (the script's folder is on sys.path)

from ssvi_lite.fileio import write_text

METHODS = (("vi", 1.0), ("ssvi", 0.1), ("static", 0.1))

WORKER = """
import json, resource, sys, torch
import ssvi_lite as sl
method, density = sys.argv[1], float(sys.argv[2])
epochs, threads = int(sys.argv[3]), int(sys.argv[4])
torch.set_num_threads(threads)
data = sl.load_dataset("mnist5k", seed=0)
cfg = sl.make_config("kit", method=method, density=density, epochs=epochs, progress=False)
model = sl.prepare_model(cfg, data, sl.seed_everything(0))
history = sl.fit(model, data, cfg)
flops = float(history["train_flops"].iloc[-1])
dense_flops = 3 * epochs * data.n_train * sl.costs.forward_flops(
    sl.layer_costs(model, data.input_shape), 1, dense=True)
print(json.dumps({"epoch_s": float(history["wall_time_s"].iloc[-1]) / epochs,
                  "flops_ratio": flops / dense_flops,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def sqrt_time(value: float, threads: int, repeats: int = 200) -> float:
    """ms per torch.sqrt of a first-layer-sized (100 × 784) tensor filled with ``value``."""
    torch.set_num_threads(threads)
    x = torch.full((100, 784), value)
    start = time.perf_counter()
    for _ in range(repeats):
        x.sqrt()
    return (time.perf_counter() - start) / repeats * 1e3


def measure(method: str, density: float, epochs: int, threads: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", WORKER, method, str(density), str(epochs),
                          str(threads)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, float]]] = {m: [] for m, _ in METHODS}
    for _ in range(args.repeats):
        for method, density in METHODS:
            runs[method].append(measure(method, density, args.epochs, args.threads))

    def paired_ratio(a: str, b: str) -> float:
        """Median over repeats of a's epoch time / b's from the same round (drifts cancel)."""
        return statistics.median(ra["epoch_s"] / rb["epoch_s"] for ra, rb in zip(runs[a], runs[b]))

    lines = [f"command: python {' '.join(sys.argv)}",
             f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}; "
             f"torch threads {args.threads}; {args.epochs} epochs × {args.repeats} repeats, "
             "interleaved; FLOPs = 2 × multiply-adds of weight layers",
             f"{'method':<8} {'density':>7} {'epoch s (median)':>17} {'time / dense VI':>16} "
             f"{'FLOPs / dense VI':>17} {'peak RSS MB':>12}"]
    for method, density in METHODS:
        epoch = statistics.median(r["epoch_s"] for r in runs[method])
        lines.append(f"{method:<8} {density:>7.2f} {epoch:>17.3f} "
                     f"{paired_ratio(method, 'vi'):>16.3f} "
                     f"{runs[method][0]['flops_ratio']:>17.3f} "
                     f"{max(r['peak_rss_mb'] for r in runs[method]):>12.0f}")
    ratio = paired_ratio("ssvi", "vi")
    lines.append(f"SSVI / dense VI epoch wall time: {ratio:.3f} (target ≤ 1.15): "
                 f"{'met' if ratio <= 1.15 else 'NOT met'}"
                 "  (time ratios: median of per-round ratios)")
    lines.append("SSVI / static mask (the swap schedule's own cost): "
                 f"{paired_ratio('ssvi', 'static'):.3f}")
    zeros, ones = sqrt_time(0.0, args.threads), sqrt_time(1.0, args.threads)
    lines.append(f"sqrt of 78,400 zeros vs ones (Adam's state of inactive weights is 0): "
                 f"{zeros:.3f} vs {ones:.3f} ms, ×{zeros / ones:.1f}")
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
