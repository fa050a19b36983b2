"""Training checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only, written atomically
(``ssvi_lite.fileio``) and read back with ``torch.load(weights_only=True)``, so loading one never
runs code. It holds the run's config, the model's and optimiser's state, the loop's progress
(stage, epochs, steps, FLOPs, wall time, history rows, the best-epoch weights, notes) and every
random number generator, so that ``fit(..., resume=True)`` reproduces an uninterrupted run
bit for bit on the CPU.

Resume is exact or refused: a checkpoint is only continued with the config that wrote it (every
field but those in :data:`FREE_FIELDS`, which do not change the numbers); otherwise the error
lists each field that differs. Its contents are checked before anything is loaded
(:func:`load_contents`, :func:`check_optimizer`): the weights' names, shapes and dtypes against
the model, the progress counters' types and ranges against the run's stages (epochs ≥ 0, a valid
stage index, as many history rows as epochs), the best-epoch weights, the optimiser's state
against its parameters and the random-number state; a damaged one fails with one line.
"""
from __future__ import annotations

import math
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import TrainConfig
from .fileio import atomic_path

FORMAT = "ssvi_lite-checkpoint-v2"
# may change on --resume (kernels: the state is converted to the layers' storage, ssvi_lite.kernels)
FREE_FIELDS = ("device", "progress", "data_root", "kernels")
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
        with warnings.catch_warnings():  # torch's notes on pickle protocols: the error says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types
        raise ValueError(f"checkpoint {path} is not a readable ssvi_lite checkpoint "
                         f"({_reason(err)}); only tensors, numbers, strings, lists and dicts "
                         "are loaded") from err
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


def load_contents(state: dict[str, Any], model: torch.nn.Module, stage_epochs: list[int]
                  ) -> None:
    """Check a loaded checkpoint's progress against a run of stages of ``stage_epochs`` epochs,
    load its weights into ``model`` (whose extra state may rebuild the structure of a later
    stage first), and check every tensor's name, shape and dtype and the best-epoch weights
    against the loaded model. ValueError naming the first thing that does not fit."""
    check_progress(state["progress"], stage_epochs)
    if not isinstance(state["model"], dict):
        raise ValueError("its weights are not a dict of tensors")
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, KeyError, TypeError, ValueError, IndexError, AttributeError) as err:
        text = " ".join(str(err).split())
        raise ValueError(f"its weights do not fit the model ({text[:300]})") from err
    expected = model.state_dict()
    check_weights("its weights", state["model"], expected)
    best = state["progress"]["best"]
    if best is not None:
        if not (isinstance(best, (tuple, list)) and len(best) == 2
                and isinstance(best[0], (int, float)) and isinstance(best[1], dict)):
            raise ValueError("its best-epoch entry is not (score, weights)")
        check_weights("its best-epoch weights", best[1], expected)


def check_weights(what: str, saved: Any, expected: dict[str, Any]) -> None:
    """ValueError unless ``saved`` has exactly the tensors of ``expected`` (names, shapes and
    dtypes)."""
    if not isinstance(saved, dict):
        raise ValueError(f"{what} are not a dict of tensors")
    missing, extra = sorted(set(expected) - set(saved)), sorted(set(saved) - set(expected))
    if missing or extra:
        raise ValueError(f"{what} do not fit the model: missing {missing[:4]}, unexpected "
                         f"{extra[:4]} (a checkpoint of another model?)")
    for key, want in expected.items():
        got = saved[key]
        if isinstance(want, torch.Tensor) and (
                not isinstance(got, torch.Tensor) or got.shape != want.shape
                or got.dtype != want.dtype):
            found = (f"{tuple(got.shape)} {got.dtype}" if isinstance(got, torch.Tensor)
                     else type(got).__name__)
            raise ValueError(f"{what}: {key} is {found}, the model needs "
                             f"{tuple(want.shape)} {want.dtype}")


def check_progress(progress: dict[str, Any], stage_epochs: list[int]) -> None:
    """ValueError unless the counters are consistent with stages of ``stage_epochs`` epochs."""
    extra = sorted(set(progress) - set(PROGRESS_KEYS))
    if extra:
        raise ValueError(f"its progress has unknown entries {extra}")
    for key in ("stage", "stage_epoch", "stage_step", "epoch", "step"):
        value = progress[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(f"its progress says {key}={value!r}; a count ≥ 0 is needed")
    for key in ("flops", "wall"):
        value = progress[key]
        if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"its progress says {key}={value!r}; a finite number ≥ 0 is needed")
    stage, epoch = progress["stage"], progress["stage_epoch"]
    if stage > len(stage_epochs) or (stage < len(stage_epochs) and epoch >= stage_epochs[stage]) \
            or (stage == len(stage_epochs) and epoch != 0):
        raise ValueError(f"its progress (stage {stage}, epoch {epoch} of it) does not fit a run "
                         f"of {len(stage_epochs)} stage(s) of {stage_epochs} epochs")
    total = sum(stage_epochs[:stage]) + epoch
    rows = progress["rows"]
    if progress["epoch"] != total or not isinstance(rows, list) or len(rows) != total \
            or not all(isinstance(r, dict) for r in rows):
        raise ValueError(f"its progress says epoch {progress['epoch']} with "
                         f"{len(rows) if isinstance(rows, list) else rows!r} history rows; "
                         f"stage {stage}, epoch {epoch} means {total} of each")
    if progress["stage_step"] > progress["step"] or not isinstance(progress["notes"], dict):
        raise ValueError("its progress has inconsistent steps or notes")


def check_optimizer(saved: Any, optimizer: torch.optim.Optimizer) -> None:
    """ValueError unless ``saved`` is an optimiser state whose tensors fit its parameters."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict) \
            or not isinstance(saved.get("param_groups"), list):
        raise ValueError("its optimiser state is not a torch optimiser state")
    for index, entry in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) \
                or not isinstance(entry, dict):
            raise ValueError(f"its optimiser state names parameter {index!r} of {len(params)}")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor) and value.dim() and \
                    value.shape != params[index].shape:
                want = tuple(params[index].shape)
                raise ValueError(f"its optimiser state {name} of parameter {index} is "
                                 f"{tuple(value.shape)}, the parameter {want}")


def _reason(err: Exception) -> str:
    """The gist of a torch.load error in one line (its own message spans many, with advice to
    load without ``weights_only``, which the kit never does)."""
    text = str(err)
    found = re.search(r"Unsupported global: GLOBAL \S+|Unsupported [^\n.]+|invalid load key"
                      r"[^\n]*|PytorchStreamReader failed [^.\n]+", text)
    line = found.group(0) if found else (text.strip().split(".")[0] or type(err).__name__)
    return " ".join(line.split())[:200]


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
    """Put back what :func:`rng_state` saved; ValueError if it is damaged."""
    try:
        _restore_rng(state, batch_gen)
    except (TypeError, ValueError, RuntimeError, IndexError, KeyError, AttributeError) as err:
        raise ValueError(f"its random-number state is damaged ({err})") from err


def _restore_rng(state: dict[str, Any], batch_gen: torch.Generator) -> None:
    batch_gen.set_state(state["batches"])
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate((state["python"][0], tuple(state["python"][1]), None))
