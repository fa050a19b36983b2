"""``fit``: train a model with any method of the kit (notebook 01_dense_vi:
``history = sl.fit(model, data, config)``).

The method's registry record (``ssvi_lite.methods``) says what to train — a list of stages, each
with its regulariser, optimiser and hooks — and the one epoch loop (``ssvi_lite.loop``) trains
them: loss = CE_mean + β(e)·κ·R/N_train per minibatch, NaN guard, FLOPs, validation row,
checkpoints and exact resume (docs/method.md §3).
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from . import distributed
from .config import TrainConfig
from .convergence import Convergence, assess
from .data import DataSplits
from .kernels import masked_parameter_count, use_kernels
from .loop import Stage, train_stages
from .methods import get_method
from .methods.core import UpdateCallback


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but CUDA is not available here; use cpu")
    return torch.device(name)


SMALL_MODEL = 1_000_000  # weights: below this, one CPU thread is the default


@contextmanager
def cpu_threads(cfg: TrainConfig, model: nn.Module) -> Iterator[None]:
    """Run the block with ``cfg.threads`` torch CPU threads — by default 1 for a model under
    :data:`SMALL_MODEL` weights (a small net gains ≈ 25 % from a second thread on an idle
    2-core machine but loses several times that when other processes share the cores, as in a
    course's JupyterHub or a notebook next to a widget), else torch's own count — and restore
    the previous count afterwards."""
    before = torch.get_num_threads()
    n_weights = masked_parameter_count(model)  # the same on the sparse path
    wanted = cfg.threads or (1 if n_weights < SMALL_MODEL else before)
    torch.set_num_threads(wanted)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fit(model: nn.Module, data: DataSplits, cfg: TrainConfig, *,
        checkpoint: str | Path | None = None, resume: bool = False,
        on_update: UpdateCallback | None = None,
        on_epoch: Callable[[dict[str, Any], nn.Module], None] | None = None) -> pd.DataFrame:
    """Train ``model`` in place with ``cfg`` and return its history, one row per epoch.

    Columns: epoch, step, stage, loss, nll and kl (the loss's two terms; kl unweighted),
    kl_weight (β·κ), kl_per_example (kl/N), elbo, train_acc, val_acc, val_nll, val_ece, density,
    σ quantiles per layer (``sigma_q10 <layer>``, q50, q90), train_flops (cumulative,
    docs/method.md §8), wall_time_s, lr, and the method's own columns. Each stage ends by restoring
    its selected epoch (``cfg.select``: the last one, or the best by validation NLL or accuracy);
    selection never looks at the test set. ``cfg.kernels`` ("sparse", "auto") first gives the
    sparse layers of ssvi/static their sparse storage, in place (re-read layers from ``model``
    afterwards); layers that keep the masked path are named in one warning line
    (ssvi_lite.kernels).
    ``checkpoint`` is written atomically after every epoch; ``resume=True``
    continues from it exactly. ``on_update(step, swaps)`` sees every SSVI subspace update,
    ``on_epoch(row, model)`` every history row. A variational run that ends unconverged
    (``ssvi_lite.convergence``) gets a warning naming the numbers.
    """
    method = get_method(cfg.method)
    device = distributed.local_device(resolve_device(cfg.device))
    distributed.init_from_env(device)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    note = use_kernels(model, cfg.kernels, cfg.method, method.sparse_kernels)
    if note:
        warnings.warn(note, stacklevel=2)
    stages = method.stages(model, data, cfg, on_update=on_update)
    with cpu_threads(cfg, model):
        history = train_stages(model, data, cfg, stages, checkpoint_path=checkpoint,
                               resume=resume, on_epoch=on_epoch)
    verdict = final_convergence(history, stages[-1])
    if verdict is not None and not verdict.converged:
        warnings.warn(f"{cfg.method} (κ = {stages[-1].cfg.kl_scale:g}) ended {verdict.summary()}."
                      " Its results come from an unconverged posterior: train longer, or see "
                      "docs/method.md §3 for the kit's converging recipe.", stacklevel=2)
    return history


def final_convergence(history: pd.DataFrame, stage: Stage) -> Convergence | None:
    """The convergence of the last stage of a variational run (None for MAP, EM-MCMC and other
    stages without a KL term)."""
    rows = history[history["stage"] == stage.name] if "stage" in history else history
    if stage.regulariser is None or stage.cfg.method == "map" or rows.empty:
        return None
    return assess(rows)
