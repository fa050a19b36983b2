"""Training throughput of the kit's own loop on CIFAR-shaped data: deterministic, dense VI, SSVI.

    python benchmarks/gpu_throughput.py                      # GPU, ResNet-18, batch 128
    python benchmarks/gpu_throughput.py --device cpu --tiny  # proves it runs anywhere (minutes → s)
    python benchmarks/gpu_throughput.py --out throughput.json

Each method trains ResNet-18 (``ssvi_lite.models.build_model``, the ``paper`` preset: SGD, cosine
LR, first layer dense) through ``ssvi_lite.fit`` on random CIFAR-shaped tensors (3×32×32, 10
classes; named ``cifar10`` so the loop applies the same crop/flip augmentation as real CIFAR).
An "epoch" here is ``--steps`` optimiser steps; the first epoch is a warm-up (CUDA context, kernel
selection, allocator) and is not counted; images/s is batch·steps / (median wall time of the other
epochs). ``fit`` times only its training epochs (validation excluded) and calls ``.item()`` on
every step, which waits for the GPU; torch.cuda.synchronize() is also called around each method.

Methods, measured one after the other in one process on the same device:
- ``map``: the deterministic network (one forward path);
- ``vi``: dense mean-field VI with local reparameterisation (two paths: mean and variance);
- ``ssvi``: density ``--density`` (0.1), subspace updates every ``--update-interval`` steps for the
  whole run (``t_end_fraction = 1``: slightly more updates than the paper's 75 %), update steps
  included in the timing. Masks are dense tensors on the GPU, so SSVI is not expected to be
  faster than dense VI in wall time; the FLOP saving is analytic (docs/method.md §8).
Targets printed with the result: time per image dense VI / deterministic ≤ 2.3 and
SSVI / dense VI ≤ 1.1. Peak memory is torch.cuda.max_memory_allocated() per method.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import pandas as pd
import torch
from machine import cpu_name  # benchmarks/machine.py (the script's folder is on sys.path)

from ssvi_lite.config import make_config, seed_everything
from ssvi_lite.data import DataSplits
from ssvi_lite.experiment import prepare_model
from ssvi_lite.fileio import write_json, write_text
from ssvi_lite.subspace import SwapSchedule
from ssvi_lite.train import fit, resolve_device

METHODS = (("map", 1.0), ("vi", 1.0), ("ssvi", None))  # None: --density
TARGETS = {"vi/map": 2.3, "ssvi/vi": 1.1}


def random_cifar(n_train: int, side: int, n_val: int = 256, seed: int = 0) -> DataSplits:
    """Random CIFAR-shaped splits: x ~ N(0, 1) of shape (N, 3, side, side), 10 uniform labels."""
    g = torch.Generator().manual_seed(seed)

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.randn(n, 3, side, side, generator=g), torch.randint(0, 10, (n,), generator=g)

    (xtr, ytr), (xva, yva), (xte, yte) = part(n_train), part(n_val), part(n_val)
    return DataSplits("cifar10", xtr, ytr, xva, yva, xte, yte, 10, (3, side, side),
                      [str(c) for c in range(10)])


def measure(method: str, density: float, args: argparse.Namespace, data: DataSplits) -> dict:
    """Train ``method`` for 1 warm-up + ``--epochs`` timed epochs; return its throughput row."""
    cfg = make_config("paper", method=method, density=density, model="resnet18",
                      epochs=1 + args.epochs, batch_size=args.batch_size,
                      update_interval=args.update_interval, t_end_fraction=1.0,
                      n_eval_samples=1, device=args.device, progress=False, amp=args.amp,
                      channels_last=args.channels_last)
    device = resolve_device(cfg.device)
    model = prepare_model(cfg, data, seed_everything(0))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    history = fit(model, data, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    total = time.perf_counter() - start
    epoch_s = history["wall_time_s"].diff().iloc[1:].tolist()  # timed epochs only
    per_epoch = args.batch_size * args.steps
    schedule = SwapSchedule(cfg.epochs * args.steps, cfg.update_interval, cfg.alpha, 1.0)
    updates = [t for t in schedule.update_steps() if t >= args.steps] if method == "ssvi" else []
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return {"method": method, "density": round(float(history["density"].iloc[-1]), 4),
            "images_per_s": per_epoch / statistics.median(epoch_s),
            "ms_per_step": 1e3 * statistics.median(epoch_s) / args.steps,
            "timed_steps": args.steps * args.epochs, "update_steps_timed": len(updates),
            "peak_memory_mib": peak, "total_wall_s": total}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {cpu_name()} ({torch.get_num_threads()} threads)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="cuda, cuda:N, cpu or auto (default cuda)")
    p.add_argument("--tiny", action="store_true",
                   help="batch 4, 8×8 images, 2 steps per epoch, ΔT = 2: a quick CPU check")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--side", type=int, default=32, help="image side (CIFAR: 32)")
    p.add_argument("--steps", type=int, default=200, help="optimiser steps per epoch")
    p.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up one")
    p.add_argument("--density", type=float, default=0.1, help="SSVI's density (active fraction)")
    p.add_argument("--update-interval", type=int, default=100, help="ΔT (paper: 100)")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (config field amp)")
    p.add_argument("--channels-last", action="store_true", help="NHWC layout (channels_last)")
    p.add_argument("--out", help="write the table here (.json: table + ratios; else CSV)")
    args = p.parse_args(argv)
    if args.tiny:
        args.batch_size, args.side, args.steps, args.epochs, args.update_interval = 4, 8, 2, 1, 2
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = resolve_device(args.device)
    data = random_cifar(args.batch_size * args.steps, args.side, n_val=16 if args.tiny else 256)
    rows = []
    for method, density in METHODS:
        rows.append(measure(method, density if density is not None else args.density, args, data))
        print(f"  {method:>4}: {rows[-1]['images_per_s']:.1f} images/s", flush=True)
    table = pd.DataFrame(rows).astype({"peak_memory_mib": float})  # None (CPU) -> NaN -> n/a
    speed = table.set_index("method")["images_per_s"]
    ratios = {"vi/map": speed["map"] / speed["vi"], "ssvi/vi": speed["vi"] / speed["ssvi"]}
    print(f"\ndevice: {device_name(device)}; torch {torch.__version__}; ResNet-18, batch "
          f"{args.batch_size}, {args.side}×{args.side} images, amp={args.amp}, "
          f"channels_last={args.channels_last}")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}", na_rep="n/a"))
    for key, value in ratios.items():
        verdict = "meets" if value <= TARGETS[key] else "MISSES"
        print(f"time per image {key}: {value:.2f} ({verdict} the target ≤ {TARGETS[key]})")
    if args.out:
        if args.out.endswith(".json"):
            write_json(args.out, {"device": device_name(device), "torch": torch.__version__,
                                  "settings": vars(args), "ratios": ratios, "rows": rows})
        else:
            write_text(args.out, table.to_csv(index=False))
        print(f"table: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
