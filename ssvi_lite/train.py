"""Training and evaluation: one ``fit`` for MAP, dense VI, SSVI and the static mask.

Notebook 01_dense_vi introduces it: ``history = sl.fit(model, data, config)``.

Loss per minibatch (method.md §3), N = number of training examples:
    loss = CE_mean(logits, y) + β(e) · κ · KL_sum / N,    β(e) = min(2e/E, 1) with warm-up, else 1.
MAP uses the same Gaussian prior as a penalty: loss = CE_mean + κ · ‖w‖² / (2 s² N).
SSVI replaces the optimiser step by a subspace update every ΔT steps (``subspace.SwapSchedule``).
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed, metrics
from .config import TrainConfig
from .costs import layer_costs, step_flops
from .data import DataSplits, cifar_augment, iterate_batches
from .fileio import atomic_path
from .layers import forward_mode, kl_sum, mean_field_layers
from .subspace import LayerSwap, SwapSchedule, enforce_masks, model_density, update_subspace

CHECKPOINT_FORMAT = "ssvi_lite-checkpoint-v1"
# Fields that must agree between a checkpoint and the config that resumes it.
RESUME_FIELDS = ("method", "model", "hidden", "dataset", "density", "removal", "addition",
                 "epochs", "batch_size", "optimizer", "seed", "n_train", "mask_init",
                 "first_layer_dense", "update_interval")
UpdateCallback = Callable[[int, list[LayerSwap]], None]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} was asked for but CUDA is not available here; use cpu")
    return torch.device(name)


def is_bayesian(model: nn.Module) -> bool:
    return bool(mean_field_layers(model))


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Two parameter groups: (μ, BN, biases) with weight decay, and ρ without (method.md §3)."""
    rho = [p for n, p in model.named_parameters() if n.endswith("rho")]
    rest = [p for n, p in model.named_parameters() if not n.endswith("rho")]
    groups = [{"params": rest, "weight_decay": cfg.weight_decay}]
    if rho:
        groups.append({"params": rho, "weight_decay": 0.0, "lr": cfg.rho_lr or cfg.lr})
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    # the fused kernel is the same algorithm in one pass; on CPU it also softens a cost that masks
    # bring: sqrt of the all-zero state of inactive weights is slow there (benchmarks/epoch_time.py)
    fused = all(p.device.type in ("cpu", "cuda") for p in model.parameters())
    return torch.optim.Adam(groups, lr=cfg.lr, fused=fused)


def kl_weight(cfg: TrainConfig, epoch: int) -> float:
    """β(e)·κ for epoch ``e`` counted from 1."""
    beta = min(2.0 * epoch / cfg.epochs, 1.0) if cfg.kl_warmup else 1.0
    return beta * cfg.kl_scale


def prior_penalty(model: nn.Module, prior_sigma: float) -> Tensor:
    """‖w‖² / (2 s²) over the weights of Linear/Conv2d layers (MAP's Gaussian prior)."""
    weights = [m.weight for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    return sum((w**2).sum() for w in weights) / (2 * prior_sigma**2)


@torch.no_grad()
def predict_proba(model: nn.Module, x: Tensor, n_samples: int = 10, mode: str = "sample",
                  batch_size: int = 1000, seed: int = 0) -> Tensor:
    """Softmax outputs of ``n_samples`` posterior draws, (K, N, C); K = 1 for ``mean`` or MAP.

    In ``sample`` mode draw k uses one weight sample for every example (the RNG is re-seeded with
    ``seed + k`` before each chunk, so chunking does not change the draw).
    """
    if not is_bayesian(model) or mode == "mean":
        n_samples = 1
    model.eval()
    device = next(model.parameters()).device
    out = []
    with forward_mode(model, mode if is_bayesian(model) else "mean"):
        for k in range(n_samples):
            chunks = []
            for start in range(0, len(x), batch_size):
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(seed + k)
                    logits = model(x[start:start + batch_size].to(device))
                chunks.append(torch.softmax(logits.float(), dim=-1).cpu())
            out.append(torch.cat(chunks))
    return torch.stack(out)  # (K, N, C)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, n_samples: int = 10,
             seed: int = 0) -> dict[str, float]:
    """Metrics of the K-sample predictive plus the mean network's accuracy and NLL (labelled)."""
    probs = predict_proba(model, x, n_samples, "sample", seed=seed)
    result = metrics.summarize(probs, y.cpu())
    if is_bayesian(model):
        mean_probs = predict_proba(model, x, 1, "mean")[0]
        result["mean_net_accuracy"] = metrics.accuracy(mean_probs, y.cpu())
        result["mean_net_nll"] = metrics.nll(mean_probs, y.cpu())
    return result


class _Run:
    """Mutable state of one ``fit``: what a checkpoint stores and ``--resume`` restores."""

    def __init__(self, model: nn.Module, data: DataSplits, cfg: TrainConfig):
        self.model, self.data, self.cfg = model, data, cfg
        self.device = next(model.parameters()).device
        self.net = distributed.wrap(model)  # what the training forward calls (DDP when distributed)
        self.optimizer = make_optimizer(model, cfg)
        self.lr_schedule = (torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, cfg.epochs)
                            if cfg.cosine_lr else None)
        self.steps_per_epoch = math.ceil(data.n_train / cfg.batch_size)
        self.schedule = (SwapSchedule(cfg.epochs * self.steps_per_epoch, cfg.update_interval,
                                      cfg.alpha, cfg.t_end_fraction)
                         if cfg.method == "ssvi" else None)
        self.costs = layer_costs(model, data.input_shape)
        self.batch_gen = torch.Generator().manual_seed(cfg.seed)
        self.epoch, self.step, self.flops, self.wall = 0, 0, 0.0, 0.0
        self.rows: list[dict[str, Any]] = []
        self.best: tuple[float, dict[str, Tensor]] | None = None

    # ---------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT, "config": self.cfg.to_dict(),
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "lr_schedule": self.lr_schedule.state_dict() if self.lr_schedule else None,
            "epoch": self.epoch, "step": self.step, "flops": self.flops, "wall": self.wall,
            "rows": self.rows, "best": self.best, "batch_gen": self.batch_gen.get_state(),
            "rng_torch": torch.get_rng_state(),
            "rng_cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "rng_numpy": _numpy_state_to_tensors(), "rng_python": _python_state(),
        }

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            torch.save(self.state_dict(), tmp)

    def load(self, path: Path) -> None:
        state = load_checkpoint(path, self.cfg)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_schedule is not None:
            self.lr_schedule.load_state_dict(state["lr_schedule"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.flops, self.wall, self.rows = state["flops"], state["wall"], state["rows"]
        self.best = state["best"]
        self.batch_gen.set_state(state["batch_gen"])
        torch.set_rng_state(state["rng_torch"])
        if state["rng_cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng_cuda"])
        _restore_numpy_state(state["rng_numpy"])
        random.setstate((state["rng_python"][0], tuple(state["rng_python"][1]), None))
        for _, layer in mean_field_layers(self.model):  # `sparse` is not part of state_dict
            layer.sparse = layer.n_active < layer.n_weights and self.cfg.method == "ssvi"


def load_checkpoint(path: str | Path, cfg: TrainConfig | None = None) -> dict[str, Any]:
    """Load a training checkpoint safely (``weights_only=True``) and check it fits ``cfg``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"checkpoint {path} is not a readable ssvi_lite checkpoint: "
                         f"{err}") from err
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path} is not an ssvi_lite checkpoint (expected format "
                         f"{CHECKPOINT_FORMAT!r})")
    if cfg is not None:
        mine = cfg.to_dict()
        bad = [k for k in RESUME_FIELDS if state["config"].get(k) != mine[k]]
        if bad:
            pairs = ", ".join(f"{k}: checkpoint {state['config'].get(k)!r} vs run {mine[k]!r}"
                              for k in bad)
            raise ValueError(f"checkpoint {path} was written by a different run ({pairs})")
    return state


def _numpy_state_to_tensors() -> list[Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]


def _restore_numpy_state(state: list[Any]) -> None:
    name, keys, pos, has_gauss, cached = state
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))


def _python_state() -> list[Any]:
    version, internal, _ = random.getstate()
    return [version, list(internal)]


def _augmenter(data: DataSplits) -> Callable[[Tensor, torch.Generator], Tensor] | None:
    """CIFAR gets random crops and flips; digits (SVHN, MNIST) are not mirrored."""
    return cifar_augment if data.name in ("cifar10", "cifar100") else None


def _train_epoch(run: _Run, on_update: UpdateCallback | None, progress: Any) -> dict[str, float]:
    """One pass over the training data; returns the epoch's mean loss terms and accuracy."""
    cfg, model, data = run.cfg, run.model, run.data
    bayes, augment = is_bayesian(model), _augmenter(data)
    weight = kl_weight(cfg, run.epoch)
    layers = [layer for _, layer in mean_field_layers(model)]
    world = distributed.world()[1]
    sums = torch.zeros(4, dtype=torch.float64)  # Σ nll·n, Σ kl·n, correct, n (over all ranks)
    model.train()
    for xb, yb in iterate_batches(data.x_train, data.y_train, cfg.batch_size, shuffle=True,
                                  generator=run.batch_gen):
        xb, yb = xb.to(run.device, non_blocking=True), yb.to(run.device, non_blocking=True)
        if augment is not None:
            xb = augment(xb, None)
        if cfg.channels_last and xb.dim() == 4:
            xb = xb.contiguous(memory_format=torch.channels_last)
        xb, yb, rows = distributed.shard(xb, yb)
        update = run.schedule is not None and run.schedule.is_update_step(run.step)
        for layer in layers:
            layer.capture_dense_grad, layer.dense_grad = update, None
        with distributed.noise_rows(model, rows), torch.autocast(
                run.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
            logits = run.net(xb).float()
        # this rank's share of the global-batch mean; DDP's gradient average (÷ world) is undone by
        # the factor world, so the update equals one process on the whole batch
        nll_part = F.cross_entropy(logits, yb, reduction="sum") / rows[2]
        nll = nll_part * world
        reg = kl_sum(model) if bayes else prior_penalty(model, cfg.prior_sigma)
        loss = nll + weight * reg / data.n_train
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite loss ({loss.item()}) at epoch {run.epoch}, step {run.step} "
                f"(nll={nll.item()}, kl={reg.item()}); lower lr or sigma_init, or check the data")
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if update:
            swaps = update_subspace(model, run.schedule.zeta(run.step), cfg.removal, cfg.addition,
                                    run.optimizer)
            if on_update is not None:
                on_update(run.step, swaps)
        else:
            run.optimizer.step()
            enforce_masks(model)
        run.flops += step_flops(run.costs, rows[2], update=update, bayesian=bayes)  # global batch
        run.step += 1
        n = rows[2]
        sums += torch.tensor([nll_part.item() * n, reg.item() * n / world,
                              (logits.argmax(-1) == yb).sum().item(), n / world],
                             dtype=torch.float64)
        progress.update(1)
    for layer in layers:
        layer.capture_dense_grad, layer.dense_grad = False, None
    if world > 1:
        torch.distributed.all_reduce(sums)
    nll_mean, kl_mean, accuracy, _ = (sums / sums[3]).tolist()
    return {"loss": nll_mean + weight * kl_mean / data.n_train, "nll": nll_mean, "kl": kl_mean,
            "kl_weight": weight, "train_acc": accuracy}


def fit(model: nn.Module, data: DataSplits, cfg: TrainConfig, *,
        checkpoint: str | Path | None = None, resume: bool = False,
        on_update: UpdateCallback | None = None) -> pd.DataFrame:
    """Train ``model`` in place with ``cfg`` (map, vi, ssvi or static) and return its history.

    The history has one row per epoch: loss, nll and kl (the ELBO's two terms, KL unweighted),
    kl_weight (β·κ), train_acc, val_acc, val_nll, val_ece, density, train_flops (cumulative,
    method.md §8), wall_time_s, lr. At the end the weights of the epoch with the best validation
    accuracy are restored (selection never looks at the test set). ``checkpoint`` is written
    atomically after every epoch; ``resume=True`` continues from it.
    """
    if cfg.method not in ("map", "vi", "ssvi", "static"):
        raise ValueError(f"fit trains map, vi, ssvi or static; method={cfg.method!r} has its own "
                         "entry point in ssvi_lite.methods")
    device = distributed.local_device(resolve_device(cfg.device))
    distributed.init_from_env(device)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    run = _Run(model, data, cfg)
    if resume:
        if checkpoint is None:
            raise ValueError("resume=True needs a checkpoint path")
        run.load(Path(checkpoint))
    from tqdm.auto import tqdm

    total = cfg.epochs * run.steps_per_epoch
    with tqdm(total=total, initial=run.step, desc=f"{cfg.method} d={cfg.density:g}",
              disable=not (cfg.progress and distributed.is_main()), leave=False) as progress:
        while run.epoch < cfg.epochs:
            run.epoch += 1
            start = time.perf_counter()
            row = _train_epoch(run, on_update, progress)
            if run.lr_schedule is not None:
                run.lr_schedule.step()
            run.wall += time.perf_counter() - start
            val = evaluate(model, data.x_val, data.y_val, cfg.n_eval_samples, seed=cfg.seed)
            run.rows.append({"epoch": run.epoch, "step": run.step, **row,
                             "val_acc": val["accuracy"], "val_nll": val["nll"],
                             "val_ece": val["ece"], "density": model_density(model),
                             "train_flops": run.flops, "wall_time_s": run.wall,
                             "lr": run.optimizer.param_groups[0]["lr"]})
            if run.best is None or val["accuracy"] > run.best[0]:
                run.best = (val["accuracy"], {k: v.detach().clone()
                                              for k, v in model.state_dict().items()})
            progress.set_postfix(val_acc=f"{val['accuracy']:.3f}")
            if checkpoint is not None and distributed.is_main():
                run.save(Path(checkpoint))
    if run.best is not None:
        model.load_state_dict(run.best[1])
    return pd.DataFrame(run.rows)
