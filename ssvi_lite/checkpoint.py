"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, written atomically
(``ssvi_lite.fileio``) and read back with ``torch.load(weights_only=True)``, so loading one never
runs code. It holds the run's config, the model's and optimiser's state, the loop's progress
(stage, epochs, steps, FLOPs, wall time, history rows, the best-epoch weights, notes) and every
random number generator, so that ``fit(..., resume=True)`` reproduces an uninterrupted run
bit for bit on the CPU.

Resume is exact or refused: a checkpoint is only continued with the config that wrote it (every
field but those in :data:`FREE_FIELDS`, which do not change the numbers); otherwise the error
lists each field that differs.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .fileio import atomic_path

FORMAT = "ssvi_lite-checkpoint-v2"
FREE_FIELDS = ("device", "progress", "data_root")  # may change on --resume
PROGRESS_KEYS = ("stage", "stage_epoch", "stage_step", "epoch", "step", "flops", "wall", "rows",
                 "best", "notes")


def save(path: str | Path, state: dict[str, Any]) -> None:
    """Write ``state`` (see :func:`snapshot`) atomically."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)


def load(path: str | Path, cfg: TrainConfig | None = None) -> dict[str, Any]:
    """Read a checkpoint safely (``weights_only=True``), check its layout and, given ``cfg``,
    that it was written by the same configuration."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"checkpoint {path} is not a readable ssvi_lite checkpoint: "
                         f"{err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ssvi_lite checkpoint (expected format {FORMAT!r})")
    missing = [k for k in ("config", "model", "optimizer", "progress", "rng")
               if k not in state] + [k for k in PROGRESS_KEYS
                                     if k not in state.get("progress", {})]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {', '.join(missing)}: it is damaged")
    if cfg is not None:
        check_config(path, state["config"], cfg)
    return state


def check_config(path: Path, saved: dict[str, Any], cfg: TrainConfig) -> None:
    """ValueError listing every field (but :data:`FREE_FIELDS`) where ``cfg`` differs from the
    config that wrote the checkpoint."""
    mine = cfg.to_dict()
    bad = [k for k in sorted(set(saved) | set(mine))
           if k not in FREE_FIELDS and saved.get(k) != mine.get(k)]
    if bad:
        pairs = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs run {mine.get(k)!r}" for k in bad)
        raise ValueError(f"checkpoint {path} was written by a different run ({pairs}); "
                         "resume with the same settings, or start a new run")


# ----------------------------------------------------------------------------- random state
def rng_state(batch_gen: torch.Generator) -> dict[str, Any]:
    """Every generator a run draws from: batches, torch (CPU, CUDA), NumPy, Python."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, _ = random.getstate()
    return {"batches": batch_gen.get_state(), "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
            "python": [version, list(internal)]}


def restore_rng(state: dict[str, Any], batch_gen: torch.Generator) -> None:
    """Put back what :func:`rng_state` saved."""
    batch_gen.set_state(state["batches"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate((state["python"][0], tuple(state["python"][1]), None))
