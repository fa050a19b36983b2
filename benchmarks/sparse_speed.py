"""Where sparsity pays: epoch and K = 10 inference time of dense VI, SSVI on the masked path and
SSVI on the sparse kernels, measured side by side in one process (docs/method.md §8).

    python benchmarks/sparse_speed.py [--threads 2] [--clock wall|cpu] [--repeats 5]
        [--widths 400 1200 4096] [--densities 0.1 0.05 0.02]
        [--sections epoch,inference,memory,crossover,layers] [--out FILE]

Setting: the kit preset (Adam, batch 128, ΔT = 20, snr_abs removal, grad addition), an MLP
784-W-W-10 on the embedded MNIST subset (3,500 training images: 28 steps an epoch, one or two of
them subspace updates), every layer sparse at the density (SSVI ``auto``: the sparse path at
layer densities ≤ 0.3, ssvi_lite.kernels). An epoch is the loop's training pass (forward, loss,
backward, optimiser step or subspace update), without validation. Each variant keeps training
from repeat to repeat, and in each repeat every variant trains one epoch, in an order that
alternates between repeats, so drifts in machine load hit all alike; a ratio is the median over
repeats of the per-repeat ratio (in brackets: the smallest and largest). Inference: the K = 10
posterior-sample predictive of the 500 validation images. Memory: the peak resident memory of a
process while it trains 3 steps (the last a subspace update), above its memory before the model
was built (the build's own peak, which makes masked layers first, is left out). Crossover: SSVI
sparse / masked epoch time at higher densities, interpolated in log density where it reaches 1.
Wider nets (above 1200) train epochs of 2,560 images (20 steps, one subspace update each) and time
SSVI masked at the middle density only (its cost does not depend on it). Layers: one layer's
training step (LRT forward, KL, backward, fused Adam), sparse / masked, behind ``kernels="auto"``'s
rule. ``--clock cpu`` (with ``--threads 1``)
times the CPU time of the one thread, which other processes on a shared machine do not inflate.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's package

import torch  # noqa: E402
from machine import add_timing_arguments, clock_from, cpu_name, interleaved  # noqa: E402

from ssvi_lite.config import make_config, seed_everything  # noqa: E402
from ssvi_lite.data import load_dataset  # noqa: E402
from ssvi_lite.experiment import prepare_model  # noqa: E402
from ssvi_lite.fileio import write_text  # noqa: E402
from ssvi_lite.layers import MeanFieldLinear  # noqa: E402
from ssvi_lite.loop import Run, train_epoch  # noqa: E402
from ssvi_lite.methods import get_method  # noqa: E402
from ssvi_lite.predict import predict_proba  # noqa: E402
from ssvi_lite.sparse import SparseMeanFieldLinear  # noqa: E402
from ssvi_lite.subspace import enforce_masks  # noqa: E402

CLOCK = time.perf_counter  # time.thread_time with --clock cpu
WIDE = 1200  # wider nets: epochs of 20 steps (one subspace update each), fewer variants
CROSS_DENSITIES = (0.8, 0.5, 0.3, 0.2)
LAYER_SHAPES = ((10, 100), (100, 100), (100, 784), (400, 400), (1200, 1200))
LAYER_DENSITIES = (0.8, 0.5, 0.3, 0.1)


class _NoBar:
    def update(self, n: int) -> None:
        return None


# ----------------------------------------------------------------------------- timing
def timed(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds of each call over ``repeats`` interleaved rounds, by this run's clock."""
    return interleaved(fns, repeats, CLOCK)


def ratio(a: list[float], b: list[float]) -> tuple[float, float, float]:
    """(median, min, max) over rounds of a / b in the same round."""
    per = [x / y for x, y in zip(a, b)]
    return statistics.median(per), min(per), max(per)


def fmt(r: tuple[float, float, float]) -> str:
    return f"{r[0]:.3f} ({r[1]:.2f}-{r[2]:.2f})"


# ----------------------------------------------------------------------------- the variants
def variants(densities: tuple[float, ...], wide: bool = False
             ) -> list[tuple[str, str, float, str]]:
    """(key, method, density, kernels): dense VI, then SSVI masked / sparse / auto per density;
    for a wide net SSVI masked at the middle density only (its cost does not depend on it) and
    no auto (the same layers as sparse)."""
    out = [("vi", "vi", 1.0, "masked")]
    for d in densities:
        kinds = ("masked", "sparse", "auto") if not wide else (
            ("masked", "sparse") if d == densities[len(densities) // 2] else ("sparse",))
        out += [(f"{k}@{d:g}", "ssvi", d, k) for k in kinds]
    return out


def make_run(data, width: int, method: str, density: float, kernels: str) -> Run:
    """A training run of the kit preset, ready for :func:`train_epoch` (60 epochs scheduled, so
    subspace updates go on through every measured epoch)."""
    cfg = make_config("kit", method=method, density=density, hidden=(width, width),
                      kernels=kernels, progress=False)
    model = prepare_model(cfg, data, seed_everything(0))
    run = Run(model, data, cfg)
    run.enter(get_method(method).stages(model, data, cfg)[0])
    run.batch_gen.manual_seed(cfg.seed)
    return run


def epoch_fn(run: Run, flops: list[float]) -> Callable[[], None]:
    def epoch() -> None:
        before = run.progress.flops
        train_epoch(run, _NoBar())
        flops.append(run.progress.flops - before)
    return epoch


def warm_up(run: Run, batch) -> None:
    """One untimed training step (an epoch of one batch); every variant's schedule shifts alike."""
    data, run.data = run.data, batch
    try:
        train_epoch(run, _NoBar())
    finally:
        run.data = data


def width_rows(data, width: int, densities: tuple[float, ...], repeats: int,
               sections: set[str], found: dict) -> list[str]:
    wide = width > WIDE
    runs = {k: make_run(data, width, m, d, kern) for k, m, d, kern in variants(densities, wide)}
    flops: dict[str, list[float]] = {k: [] for k in runs}
    lines: list[str] = []
    if "epoch" in sections:
        for run in runs.values():
            warm_up(run, load_dataset("mnist5k", seed=0, n_train=128))
        t = timed({k: epoch_fn(runs[k], flops[k]) for k in runs}, repeats)
        found[width] = {d: ratio(t[f"sparse@{d:g}"], t[f"masked@{d:g}"]) for d in densities
                        if f"masked@{d:g}" in t}
        lines += epoch_table(width, densities, t, flops, data.n_train)
    if "inference" in sections:
        x = data.x_val
        fns = {k: (lambda r=r: predict_proba(r.model, x, 10, "sample")) for k, r in runs.items()
               if not k.startswith("auto")}  # auto: sparse where it matters, a mix otherwise
        for f in fns.values():
            f()
        lines += inference_table(width, densities, timed(fns, repeats))
    return lines


def median_cell(x: list[float] | None, width: int, scale: float = 1.0, digits: int = 3) -> str:
    """The median of ``x`` (times ``scale``) right-aligned in ``width``, or "-" if unmeasured."""
    return f"{scale * statistics.median(x):>{width}.{digits}f}" if x else f"{'-':>{width}}"


def ratio_cell(x: list[float] | None, y: list[float] | None) -> str:
    """The per-round ratio x / y (median, min-max) in 18 columns, or "-" if either is missing."""
    return f"{fmt(ratio(x, y)):>18}" if x and y else f"{'-':>18}"


def epoch_table(width: int, densities: tuple[float, ...], t: dict[str, list[float]],
                flops: dict[str, list[float]], n_train: int) -> list[str]:
    vi = t["vi"]
    lines = [f"MLP 784-{width}-{width}-10, epochs of {n_train} images: epoch time (s, median), "
             f"ratios to dense VI (dense VI {statistics.median(vi):.3f} s)",
             f"{'density':>7} {'masked s':>9} {'sparse s':>9} {'auto s':>8} {'masked/VI':>18} "
             f"{'sparse/VI':>18} {'auto/VI':>18} {'sparse/masked':>18} {'FLOPs/VI':>9}"]
    for d in densities:
        m, s, a = (t.get(f"{k}@{d:g}") for k in ("masked", "sparse", "auto"))
        f = statistics.median(flops[f"sparse@{d:g}"]) / statistics.median(flops["vi"])
        cells = [median_cell(x, w) for x, w in ((m, 9), (s, 9), (a, 8))]
        cells += [ratio_cell(x, y) for x, y in ((m, vi), (s, vi), (a, vi), (s, m))]
        lines.append(f"{d:>7.2f} " + " ".join(cells) + f" {f:>9.3f}")
    return lines + [""]


def inference_table(width: int, densities: tuple[float, ...], t: dict[str, list[float]]
                    ) -> list[str]:
    vi = t["vi"]
    lines = [f"MLP 784-{width}-{width}-10: K = 10 inference over 500 images (ms, median; dense "
             f"VI {1e3 * statistics.median(vi):.1f} ms)",
             f"{'density':>7} {'masked ms':>10} {'sparse ms':>10} {'masked/VI':>18} "
             f"{'sparse/VI':>18}"]
    for d in densities:
        m, s = t.get(f"masked@{d:g}"), t[f"sparse@{d:g}"]
        cells = [median_cell(x, 10, 1e3, 1) for x in (m, s)] + [ratio_cell(x, vi) for x in (m, s)]
        lines.append(f"{d:>7.2f} " + " ".join(cells))
    return lines + [""]


# ----------------------------------------------------------------------------- crossover
def crossover_rows(data, width: int, measured: dict, repeats: int) -> list[str]:
    """SSVI sparse / masked epoch time at each density (those of the epoch table reused); the
    density where it reaches 1."""
    points = dict(measured)
    for d in sorted(set(CROSS_DENSITIES) - set(points), reverse=True):
        runs = {k: make_run(data, width, "ssvi", d, k) for k in ("masked", "sparse")}
        for run in runs.values():
            warm_up(run, load_dataset("mnist5k", seed=0, n_train=128))
        t = timed({k: epoch_fn(r, []) for k, r in runs.items()}, repeats)
        points[d] = ratio(t["sparse"], t["masked"])
    points = sorted(points.items(), reverse=True)
    text = ", ".join(f"{d:g}: {fmt(r)}" for d, r in points)
    return [f"MLP 784-{width}-{width}-10, SSVI sparse / masked epoch time by density: {text}",
            f"  crossover (sparse wins below): {crossing(points)}", ""]


def crossing(points: list[tuple[float, tuple[float, float, float]]]) -> str:
    """The density where the median ratio crosses 1, linear in log density between the two
    measured densities around it (points sorted by density, highest first)."""
    for (d_hi, r_hi), (d_lo, r_lo) in zip(points, points[1:]):
        if r_hi[0] >= 1.0 > r_lo[0]:
            w = math.log(r_hi[0]) / (math.log(r_hi[0]) - math.log(r_lo[0]))
            return f"D ≈ {math.exp(math.log(d_hi) + w * (math.log(d_lo) - math.log(d_hi))):.2f}"
    if points and points[0][1][0] < 1.0:
        return f"above {points[0][0]:g} (sparse wins at every measured density)"
    return "not found among the measured densities"


# ----------------------------------------------------------------------------- one layer
def layer_step(layer: torch.nn.Module, x: torch.Tensor) -> Callable[[], None]:
    opt = torch.optim.Adam(layer.parameters(), lr=1e-3, fused=True)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        (torch.relu(layer(x)).square().mean() + layer.kl_sum() / 3500).backward()
        opt.step()
        if isinstance(layer, MeanFieldLinear):
            enforce_masks(layer)
    return step


def layer_rows(repeats: int) -> list[str]:
    gen = torch.Generator().manual_seed(0)
    lines = ["one layer's training step (LRT forward, KL, backward, fused Adam; batch 128), "
             "sparse / masked, by density"]
    for out, inp in LAYER_SHAPES:
        cells = []
        for d in LAYER_DENSITIES:
            masked = MeanFieldLinear(inp, out)
            n = out * inp
            flat = torch.zeros(n, dtype=torch.bool)
            flat[torch.randperm(n, generator=gen)[:max(1, round(d * n))]] = True
            with torch.no_grad():
                masked.mask.copy_(flat.view(out, inp))
                masked.mu.masked_fill_(~masked.mask, 0.0)
            sparse = SparseMeanFieldLinear.from_masked(masked)
            x = torch.randn(128, inp, generator=gen)
            fns = {"m": layer_step(masked, x), "s": layer_step(sparse, x)}
            for f in fns.values():
                f()
            t = timed(fns, max(repeats, 20 if n < 10**5 else 5))
            cells.append(f"{d:g}: {fmt(ratio(t['s'], t['m']))}")
        lines.append(f"  {out:>4} × {inp:<4} ({out * inp:>9,} weights)  " + "   ".join(cells))
    return lines + [""]


# ----------------------------------------------------------------------------- memory
WORKER = """
import ctypes, sys
sys.path.insert(0, sys.argv[1])
import torch
from ssvi_lite.config import make_config, seed_everything
from ssvi_lite.data import load_dataset
from ssvi_lite.experiment import prepare_model
from ssvi_lite.loop import Run, train_epoch
from ssvi_lite.methods import get_method
width, method, density, kernels = int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), sys.argv[5]
torch.set_num_threads(int(sys.argv[6]))
data = load_dataset("mnist5k", seed=0, n_train=3 * 128)
class Bar:
    update = staticmethod(lambda n: None)
def status(key):  # kB; VmHWM: this process's peak (getrusage's would include its parent's)
    return int(next(l for l in open("/proc/self/status") if l.startswith(key)).split()[1])
def reset_peak():
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap memory back to the system
        open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
    except OSError:
        pass
def train(width):
    cfg = make_config("kit", method=method, density=density, hidden=(width, width),
                      kernels=kernels, progress=False, update_interval=2)  # step 2 of 3: update
    model = prepare_model(cfg, data, seed_everything(0))
    reset_peak()  # the build makes masked layers first: training's peak is what counts here
    run = Run(model, data, cfg)
    run.enter(get_method(method).stages(model, data, cfg)[0])
    train_epoch(run, Bar())
train(8)  # the same code paths on a tiny net first: libraries and kernels are paged in
reset_peak()
base = status("VmRSS")
train(width)
print((status("VmHWM") - base) / 1024)
"""


def memory_rows(widths: tuple[int, ...], densities: tuple[float, ...], threads: int) -> list[str]:
    root = str(Path(__file__).resolve().parent.parent)
    lines = ["peak resident memory while training 3 steps, the last a subspace update (MB above "
             "the process before the model was built, after the same steps on a tiny net)",
             f"{'width':>6} {'dense VI':>9} " + " ".join(
                 f"{f'masked@{d:g}':>12} {f'sparse@{d:g}':>12}" for d in densities)]
    for width in widths:
        cells = []
        for _, method, d, kern in variants(densities):
            if kern == "auto":
                continue  # the same layers as sparse, or fewer
            out = subprocess.run([sys.executable, "-c", WORKER, root, str(width), method, str(d),
                                  kern, str(threads)], capture_output=True, text=True, check=True)
            cells.append(float(out.stdout.strip().splitlines()[-1]))
        lines.append(f"{width:>6} {cells[0]:>9.0f} " + " ".join(f"{c:>12.0f}" for c in cells[1:]))
    return lines + [""]


# ----------------------------------------------------------------------------- the report
def header(args: argparse.Namespace) -> list[str]:
    clock = "wall time" if args.clock == "wall" else "CPU time of the one thread"
    return [f"command: python {' '.join(sys.argv)}",
            f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}; torch "
            f"{torch.__version__}, threads {args.threads}; clock: {clock}; {args.repeats} "
            "repeats, interleaved; ratio = median over repeats of the per-repeat ratio "
            "(min-max in brackets); FLOPs = 2 × multiply-adds of the weight layers (analytic)", ""]


def targets(lines: list[str]) -> list[str]:
    return ["targets (2 threads, wall clock; MLP 784-1200-1200-10): SSVI sparse / dense VI epoch "
            "time ≤ 0.4 at density 0.05 (stretch ≤ 0.3), ≤ 0.6 at 0.1; K = 10 inference ≤ 0.4 "
            "at 0.05 — read them off the 1200 tables above", ""]


def load_note(before: tuple[float, ...], after: tuple[float, ...], threads: int) -> list[str]:
    line = ("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} "
            "{:.2f}".format(*before, *after))
    busy = max(before[0], after[0] - threads)
    if busy > 0.5:
        line += (f"\nSHARED MACHINE: other processes kept ~{busy:.1f} of {os.cpu_count()} CPUs "
                 "busy; wall times are then inflated and noisy (--threads 1 --clock cpu measures "
                 "the work itself)")
    return [line]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_timing_arguments(parser)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--widths", type=int, nargs="+", default=[400, 1200, 4096])
    parser.add_argument("--densities", type=float, nargs="+", default=[0.1, 0.05, 0.02])
    parser.add_argument("--sections", default="epoch,inference,memory,crossover,layers")
    parser.add_argument("--out", help="also write the report here")
    args = parser.parse_args()
    global CLOCK
    CLOCK = clock_from(args, parser)
    torch.set_num_threads(args.threads)
    sections, densities = set(args.sections.split(",")), tuple(args.densities)
    data = load_dataset("mnist5k", seed=0)
    before, lines, found = os.getloadavg(), header(args), {}
    print("\n".join(lines), flush=True)
    for width in args.widths:
        wide = width > WIDE  # epochs of 20 steps (one subspace update each), fewer repeats
        lines += _show(width_rows(load_dataset("mnist5k", seed=0, n_train=2560) if wide else data,
                                  width, densities, max(2, args.repeats // 2) if wide
                                  else args.repeats, sections, found))
    if "crossover" in sections:
        for width in (w for w in args.widths if w <= WIDE):
            lines += _show(crossover_rows(data, width, found.get(width, {}),
                                          max(3, args.repeats // 2)))
    if "layers" in sections:
        lines += _show(layer_rows(args.repeats))
    if "memory" in sections:
        lines += _show(memory_rows(tuple(args.widths), densities, args.threads))
    lines += _show(targets(lines) + load_note(before, os.getloadavg(), args.threads))
    if args.out:
        write_text(args.out, "\n".join(lines) + "\n")
    return 0


def _show(lines: list[str]) -> list[str]:
    print("\n".join(lines), flush=True)
    return lines


if __name__ == "__main__":
    raise SystemExit(main())
