"""Data-parallel training on torch.distributed (``torchrun --nproc_per_node=N -m ssvi_lite train``).

Each rank holds the same model and the same seeded RNGs, walks the same shuffled global batches
and trains on its contiguous share of each one. Gradients are averaged by DDP; the loss is scaled
so that the average equals the gradient of the global-batch mean. Mean-field layers draw their LRT
noise for the whole global batch and keep their rows, so N processes reproduce one process with the
same global batch up to floating-point noise. Subspace decisions are made from all-reduced dense
gradients and broadcast from rank 0 (``subspace.update_subspace``), so masks stay identical.

Caveat: with Adam, weights added in the same update take the same first step (≈ lr·sign(g)), so
their removal scores can tie to within one float32 ulp at the next update; then reduction-order
noise may rank them differently in an N-process and a 1-process run (each run stays consistent
across its own ranks). With SGD, the paper preset's optimiser, the runs agree to ~1e-8.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .layers import mean_field_layers


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) outside torch.distributed."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_from_env(device: torch.device) -> None:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on the CPU)."""
    if dist.is_initialized() or not launched_by_torchrun():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))


def local_device(device: torch.device) -> torch.device:
    """On CUDA each rank takes the GPU of its LOCAL_RANK."""
    if device.type == "cuda" and launched_by_torchrun():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return device


def wrap(model: nn.Module) -> nn.Module:
    """The module to call in the training forward: DDP-wrapped when running distributed."""
    if world()[1] == 1:
        return model
    device = next(model.parameters()).device
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def shard(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, tuple[int, int, int]]:
    """This rank's contiguous rows of a global batch and (start, stop, global size)."""
    rank, size = world()
    n = len(x)
    start, stop = rank * n // size, (rank + 1) * n // size
    return x[start:stop], y[start:stop], (start, stop, n)


@contextmanager
def noise_rows(model: nn.Module, rows: tuple[int, int, int] | None) -> Iterator[None]:
    """Make every mean-field layer draw LRT noise for the global batch and keep ``rows``."""
    layers = [layer for _, layer in mean_field_layers(model)]
    for layer in layers:
        layer.batch_rows = rows if world()[1] > 1 else None
    try:
        yield
    finally:
        for layer in layers:
            layer.batch_rows = None


# ----------------------------------------------------------------------------- the loss arithmetic
def global_mean(part: Tensor) -> Tensor:
    """This rank's share of the global-batch mean, times the world size: DDP averages gradients
    over ranks (÷ world), so the update then equals one process on the whole batch."""
    return part * world()[1]


def local_sums(nll_part: Tensor, reg: Tensor, logits: Tensor, y: Tensor, n: int) -> Tensor:
    """This rank's contribution to (Σ nll·n, Σ reg·n, correct, n) of an epoch; ``nll_part`` is
    its share of the global-batch mean CE, ``n`` the global batch size."""
    size = world()[1]
    return torch.tensor([nll_part.item() * n, reg.item() * n / size,
                         (logits.argmax(-1) == y).sum().item(), n / size], dtype=torch.float64)


def finish_sums(sums: Tensor) -> Tensor:
    """Sum the epoch's running sums over ranks and divide by the example count: (mean nll, mean
    regulariser, accuracy, 1)."""
    if world()[1] > 1:
        dist.all_reduce(sums)
    return sums / sums[3]
