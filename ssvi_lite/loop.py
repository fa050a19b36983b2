"""The one epoch loop: every method of the kit trains through :func:`train_stages`.

A run is a list of :class:`Stage` s (one for most methods; post-hoc pruning and weight sharing have
several). For every epoch of a stage the loop
  1. walks the training set in shuffled minibatches (one generator seeded with ``cfg.seed``,
     re-seeded at the start of each stage),
  2. computes  loss = CE_mean(logits, y) + β(e)·κ·R(model) / N_train  (docs/method.md §3), where
     R is the stage's regulariser (a KL, a log-prior penalty, or nothing) and β(e)·κ = kl_weight,
  3. stops on a NaN/inf loss, naming the epoch, the step and both terms,
  4. back-propagates, lets the stage's stepper replace the optimiser step where it wants to
     (SSVI's subspace update), else steps the optimiser,
  5. counts FLOPs (docs/method.md §8), wall time and the running sums,
then runs the stage's after-epoch hook, evaluates the validation split, appends one history row
and writes the checkpoint (``ssvi_lite.checkpoint``). At the end of a stage the weights of its
selected epoch are restored (``select``: the best validation accuracy, or the last epoch).
Notebook 01_dense_vi uses it through ``sl.fit``.
"""
from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import checkpoint, distributed, kernels, metrics
from .config import SELECTIONS, TrainConfig
from .convergence import sigma_quantiles
from .costs import layer_costs, step_flops
from .data import DataSplits, augmenter, iterate_batches
from .predict import is_bayesian, predict_proba
from .subspace import model_density


class Stepper:
    """Hooks around one optimiser step t (counted from 0 within the stage); override what you need.
    ``begin`` runs before the forward pass and says whether t pays the update step's FLOPs (a
    dense gradient pass),
    ``replace`` runs after the backward pass and returns True if it did the step itself (the
    optimiser then does not step), ``end`` runs after the step."""

    def begin(self, t: int, optimizer: torch.optim.Optimizer) -> bool:
        return False

    def replace(self, t: int, optimizer: torch.optim.Optimizer) -> bool:
        return False

    def end(self, t: int, optimizer: torch.optim.Optimizer) -> None:
        return None


@dataclass
class Stage:
    """One stage of a run: ``cfg.epochs`` epochs of the loop with its own loss and optimiser.

    regulariser: R(model) in nats (summed over weights), weighted by β(e)·κ/N_train; None = none.
    optimizer: builds the stage's optimiser from the model (and a cosine schedule if cfg says).
    stepper: hooks around each optimiser step (:class:`Stepper`).
    start: called once when the stage begins (not again when resuming inside it); may return
        notes for the run (kept in the checkpoint, handed to the method's report).
    after_epoch: called after each epoch's steps with the :class:`Run`; returns extra history
        columns (it may replace ``run.optimizer`` when parameters changed shape).
    finish: called once after the last epoch, after the selected epoch's weights are restored;
        may return notes like ``start``.
    predict: the validation predictive (model, x, K) -> (K, N, C); default: K posterior draws.
    cost: per-example FLOPs of (a plain step, an update step); default: the LRT/deterministic
        forward of the active weights (ssvi_lite.costs), measured at the start of each epoch.
    select: the epoch the stage keeps (``SELECTIONS``): the last, or the best by validation NLL
        or accuracy, restored when the stage ends.
    """

    name: str
    cfg: TrainConfig
    optimizer: Callable[[nn.Module], torch.optim.Optimizer]
    regulariser: Callable[[nn.Module], Tensor] | None = None
    stepper: Stepper = field(default_factory=Stepper)
    start: Callable[[Run], dict[str, Any] | None] | None = None
    after_epoch: Callable[[Run], dict[str, Any] | None] | None = None
    finish: Callable[[Run], dict[str, Any] | None] | None = None
    predict: Callable[[nn.Module, Tensor, int], Tensor] | None = None
    cost: Callable[[nn.Module, DataSplits], tuple[float, float]] | None = None
    select: str = "last"
    density: Callable[[nn.Module], float] = model_density

    def __post_init__(self) -> None:
        if self.select not in SELECTIONS:
            raise ValueError(f"select={self.select!r}; choose one of {', '.join(SELECTIONS)}")


@dataclass
class Progress:
    """Where a run stands; what a checkpoint stores besides the weights and generators."""

    stage: int = 0  # index of the current stage
    stage_epoch: int = 0  # epochs finished in it
    stage_step: int = 0  # optimiser steps taken in it
    epoch: int = 0  # epochs finished over all stages
    step: int = 0  # optimiser steps over all stages
    flops: float = 0.0
    wall: float = 0.0
    rows: list[dict[str, Any]] = field(default_factory=list)
    best: tuple[float, dict[str, Tensor]] | None = None  # (score, weights) of this stage's best
    notes: dict[str, Any] = field(default_factory=dict)


class Run:
    """The mutable state of one training run (what hooks see): model, data, the current stage and
    its optimiser, the progress counters and the batch generator."""

    def __init__(self, model: nn.Module, data: DataSplits, cfg: TrainConfig) -> None:
        self.model, self.data, self.cfg = model, data, cfg
        self.device = next(model.parameters()).device
        self.batch_gen = torch.Generator()
        self.progress = Progress()
        self.stage: Stage | None = None
        self.net: nn.Module = model
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_schedule: Any = None

    def enter(self, stage: Stage) -> None:
        """Make ``stage`` current: its optimiser and (optional) cosine learning-rate schedule."""
        self.stage = stage
        self.net = distributed.wrap(self.model)  # what the training forward calls (DDP or not)
        self.optimizer = stage.optimizer(self.model)
        self.lr_schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(
            self.optimizer, stage.cfg.epochs) if stage.cfg.cosine_lr else None)

    def state_dict(self) -> dict[str, Any]:
        return {"config": self.cfg.to_dict(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "lr_schedule": self.lr_schedule.state_dict() if self.lr_schedule else None,
                "progress": vars(self.progress), "rng": checkpoint.rng_state(self.batch_gen)}

    def load_state_dict(self, state: dict[str, Any], stages: list[Stage]) -> None:
        """Restore a checkpoint written by :meth:`state_dict` (model first: the stage's optimiser
        is built on the restored parameters). Its contents are checked first (ValueError). A
        checkpoint of the other kernels is moved to this model's storage (ssvi_lite.kernels)."""
        saved_weights = state["model"]
        state = kernels.adapt_checkpoint(state, self.model)
        checkpoint.load_contents(state, self.model, [s.cfg.epochs for s in stages])
        self.progress = Progress(**state["progress"])
        if self.progress.stage < len(stages) and self.progress.stage_epoch > 0:
            self.enter(stages[self.progress.stage])  # inside a stage: its optimiser's state too
            saved = kernels.adapt_optimizer_state(state["optimizer"], self.optimizer,
                                                  saved_weights, self.model)
            checkpoint.check_optimizer(saved, self.optimizer)
            self.optimizer.load_state_dict(saved)
            if self.lr_schedule is not None:
                self.lr_schedule.load_state_dict(state["lr_schedule"])
        checkpoint.restore_rng(state["rng"], self.batch_gen)


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups: (μ, BN, biases) with weight decay, and ρ without (docs/method.md §3).

    Adam uses torch's fused kernel: the same algorithm in one pass; on the CPU it also softens a
    cost that masks bring (the sqrt over the all-zero state of inactive weights is slow there,
    benchmarks/epoch_time.py).
    """
    rho = [p for n, p in model.named_parameters() if n.endswith("rho")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("rho")]
    groups = [{"params": rest, "weight_decay": cfg.weight_decay}]
    if rho:
        groups.append({"params": rho, "weight_decay": 0.0, "lr": cfg.rho_lr or cfg.lr})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.Adam(groups, lr=cfg.lr, fused=fused)


def kl_weight(cfg: TrainConfig, epoch: int) -> float:
    """β(e)·κ for epoch ``e`` counted from 1: β(e) = min(2e/E, 1) with warm-up, else 1."""
    beta = min(2.0 * epoch / cfg.epochs, 1.0) if cfg.kl_warmup else 1.0
    return beta * cfg.kl_scale


def default_cost(model: nn.Module, data: DataSplits) -> tuple[float, float]:
    """Per-example FLOPs of a plain step (3 f_active) and an update step (2 f_active + f_dense)."""
    costs, bayes = layer_costs(model, data.input_shape), is_bayesian(model)
    return (step_flops(costs, 1, update=False, bayesian=bayes),
            step_flops(costs, 1, update=True, bayesian=bayes))


# ----------------------------------------------------------------------------- one epoch
def _batch_loss(run: Run, xb: Tensor, yb: Tensor, weight: float) -> tuple[Tensor, ...]:
    """Forward one (global) batch; returns loss, this rank's NLL share, the regulariser, the
    logits and the global batch size."""
    stage, cfg = run.stage, run.stage.cfg
    if cfg.augment != "none":
        xb = augmenter(cfg.augment)(xb, None)
    if cfg.channels_last and xb.dim() == 4:
        xb = xb.contiguous(memory_format=torch.channels_last)
    xb, yb, rows = distributed.shard(xb, yb)
    with distributed.noise_rows(run.model, rows), torch.autocast(
            run.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
        logits = run.net(xb).float()
    nll_part = F.cross_entropy(logits, yb, reduction="sum") / rows[2]
    reg = stage.regulariser(run.model) if stage.regulariser else torch.zeros((), device=run.device)
    loss = distributed.global_mean(nll_part) + weight * reg / run.data.n_train
    return loss, nll_part, reg, logits, yb, rows[2]


def _check_finite(run: Run, loss: Tensor, nll: Tensor, reg: Tensor) -> None:
    if not torch.isfinite(loss):
        p = run.progress
        raise FloatingPointError(
            f"non-finite loss ({loss.item()}) at epoch {p.epoch + 1}, step {p.step} "
            f"(nll={nll.item()}, regulariser={reg.item()}); lower lr or sigma_init, or check "
            "the data")


def train_epoch(run: Run, bar: Any) -> dict[str, float]:
    """One pass over the training data; returns the epoch's mean loss terms and accuracy."""
    stage, p, data = run.stage, run.progress, run.data
    weight = kl_weight(stage.cfg, p.stage_epoch + 1)
    plain, update_cost = (stage.cost or default_cost)(run.model, data)
    sums = torch.zeros(4, dtype=torch.float64)  # Σ nll·n, Σ reg·n, correct, n (over all ranks)
    run.model.train()
    for xb, yb in iterate_batches(data.x_train, data.y_train, stage.cfg.batch_size, shuffle=True,
                                  generator=run.batch_gen):
        xb, yb = xb.to(run.device, non_blocking=True), yb.to(run.device, non_blocking=True)
        update = stage.stepper.begin(p.stage_step, run.optimizer)
        loss, nll_part, reg, logits, yb, n = _batch_loss(run, xb, yb, weight)
        _check_finite(run, loss, nll_part, reg)
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not stage.stepper.replace(p.stage_step, run.optimizer):
            run.optimizer.step()
        stage.stepper.end(p.stage_step, run.optimizer)
        p.flops += (update_cost if update else plain) * n  # the global batch
        p.step, p.stage_step = p.step + 1, p.stage_step + 1
        sums += distributed.local_sums(nll_part, reg, logits, yb, n)
        bar.update(1)
    nll_mean, reg_mean, accuracy, _ = distributed.finish_sums(sums).tolist()
    return {"loss": nll_mean + weight * reg_mean / data.n_train, "nll": nll_mean,
            "kl": reg_mean, "kl_weight": weight, "kl_per_example": reg_mean / data.n_train,
            "elbo": -(nll_mean + reg_mean / data.n_train), "train_acc": accuracy}


# ----------------------------------------------------------------------------- epochs and stages
def _validate(run: Run) -> dict[str, float]:
    cfg, data = run.stage.cfg, run.data
    if run.stage.predict is not None:
        probs = run.stage.predict(run.model, data.x_val, cfg.n_eval_samples)
    else:
        probs = predict_proba(run.model, data.x_val, cfg.n_eval_samples, "sample", seed=cfg.seed)
    val = metrics.summarize(probs, data.y_val.cpu())
    return {"val_acc": val["accuracy"], "val_nll": val["nll"], "val_ece": val["ece"]}


def _epoch(run: Run, bar: Any) -> dict[str, Any]:
    """Train one epoch, run the after-epoch hook, validate; returns the history row."""
    stage, p = run.stage, run.progress
    start = time.perf_counter()
    row = train_epoch(run, bar)
    if run.lr_schedule is not None:
        run.lr_schedule.step()
    p.epoch, p.stage_epoch = p.epoch + 1, p.stage_epoch + 1
    extra = (stage.after_epoch(run) if stage.after_epoch else None) or {}
    p.wall += time.perf_counter() - start
    row = {"epoch": p.epoch, "step": p.step, "stage": stage.name, **row, **_validate(run),
           "density": stage.density(run.model), "train_flops": p.flops, "wall_time_s": p.wall,
           "lr": run.optimizer.param_groups[0]["lr"], **extra, **sigma_quantiles(run.model)}
    _keep_if_best(run, row)
    bar.set_postfix(val_acc=f"{row['val_acc']:.3f}")
    return row


def _keep_if_best(run: Run, row: dict[str, Any]) -> None:
    """Copy the weights when this epoch is the best so far by the stage's selection rule."""
    p, select = run.progress, run.stage.select
    if select == "last":
        return
    score = row["val_acc"] if select == "best_val_acc" else -row["val_nll"]
    if p.best is None or score > p.best[0]:
        p.best = (score, {k: v.detach().clone() if isinstance(v, Tensor) else copy.deepcopy(v)
                          for k, v in run.model.state_dict().items()})


def _finish_stage(run: Run) -> None:
    """Restore the stage's selected epoch, run its finish hook; on to the next stage."""
    stage, p = run.stage, run.progress
    if stage.select != "last" and p.best is not None:
        run.model.load_state_dict(p.best[1])
    if stage.finish is not None:
        p.notes.update(stage.finish(run) or {})
    p.stage, p.stage_epoch, p.stage_step, p.best = p.stage + 1, 0, 0, None


def _begin_stage(run: Run, stage: Stage) -> None:
    """Start a stage afresh: its start hook (timed), its optimiser, the batch order re-seeded."""
    start = time.perf_counter()
    notes = stage.start(run) if stage.start is not None else None
    run.progress.notes.update(notes or {})
    run.enter(stage)
    run.batch_gen.manual_seed(stage.cfg.seed)
    run.progress.wall += time.perf_counter() - start


def train_stages(model: nn.Module, data: DataSplits, cfg: TrainConfig, stages: list[Stage], *,
                 checkpoint_path: str | Path | None = None, resume: bool = False,
                 on_epoch: Callable[[dict[str, Any], nn.Module], None] | None = None
                 ) -> pd.DataFrame:
    """Train ``model`` through ``stages`` (already on its device) and return the history (one row
    per epoch; ``history.attrs["notes"]`` holds the notes of the stages' start hooks)."""
    run = Run(model, data, cfg)
    if resume:
        if checkpoint_path is None:
            raise ValueError("resume=True needs a checkpoint path")
        try:
            run.load_state_dict(checkpoint.load(checkpoint_path, cfg), stages)
        except ValueError as err:
            if str(checkpoint_path) in str(err):
                raise
            raise ValueError(f"checkpoint {checkpoint_path} cannot be resumed: {err}") from err
    from tqdm.auto import tqdm

    steps = math.ceil(data.n_train / cfg.batch_size)  # per epoch, every stage
    total = steps * sum(s.cfg.epochs for s in stages)
    with tqdm(total=total, initial=run.progress.step, desc=f"{cfg.method} d={cfg.density:g}",
              disable=not (cfg.progress and distributed.is_main()), leave=False) as bar:
        while run.progress.stage < len(stages):
            stage = stages[run.progress.stage]
            if run.progress.stage_epoch == 0:
                _begin_stage(run, stage)
            row = _epoch(run, bar)
            run.progress.rows.append(row)
            if on_epoch is not None:
                on_epoch(row, model)
            if run.progress.stage_epoch == stage.cfg.epochs:
                _finish_stage(run)
            if checkpoint_path is not None and distributed.is_main():
                checkpoint.save(checkpoint_path, run.state_dict())
    history = pd.DataFrame(run.progress.rows)
    history.attrs["notes"] = dict(run.progress.notes)
    return history

