"""Post-hoc pruning of a dense mean-field posterior, then a short fine-tune (docs/baselines.md §D;
notebook 06_sparse_bnn_zoo; ``prune_to_density`` also drives the live-pruning widgets).

The classic alternative to SSVI's "sparse from the first step": pay for dense VI, then cut.
1. Dense VI (docs/method.md §1–3): the ``vi`` stage on the Bayesian ``cfg.model`` at density 1,
   loss CE_mean + β κ KL_sum / N, for ``dense_epochs`` (default ``cfg.epochs``).
2. Prune, per layer l: keep the n_active,l = n_l − round((1 − d_l)·n_l) weights with the highest
   removal score S(μ, σ) = ``criteria.REMOVAL_SCORES[cfg.removal]`` (higher = keep; the same
   top-k routine and per-layer counts as SSVI's removal and initial masks), set the mask, zero μ
   where pruned.
   d_l = ``cfg.density`` in every layer ("uniform") or the ERK split (``cfg.mask_init``).
3. Fine-tune (μ, σ) on the fixed support for ``fine_tune_epochs`` (the ``static`` stage, the
   same loss with β = 1). 0 epochs = pure one-shot pruning.

Costs (docs/method.md §8): ``train_flops`` = dense VI steps at 3 f_dense + fine-tune steps at
3 f_sparse, so the ratio to dense VI exceeds 1 — the point of the comparison with SSVI. The
history's epochs count both stages (column ``stage``). There is no authors' code to depart from;
the paper's "post-hoc" rows (Li et al. 2024, Table 3) prune a trained dense BNN by |μ| or SNR in
the same way.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..config import TrainConfig, validate_density
from ..criteria import check_removal_key, removal_score, top_k_mask
from ..data import DataSplits
from ..layers import mean_field_layers
from ..loop import Run, Stage
from ..models import build_model
from ..predict import evaluate
from ..subspace import enforce_masks, layer_densities, model_density
from . import Method
from .core import MEAN_FIELD_GRID, core_stage, predict_proba


@dataclass(frozen=True)
class PosthocOptions:
    """``cfg.method_options`` of ``posthoc``.

    dense_epochs: epochs of dense VI before pruning (None: ``cfg.epochs``).
    fine_tune_epochs: epochs on the fixed sparse support after pruning (0: none).
    fine_tune_lr: learning rate of the fine-tune (None: ``cfg.lr``).
    """

    dense_epochs: int | None = None
    fine_tune_epochs: int = 3
    fine_tune_lr: float | None = None

    def __post_init__(self) -> None:
        for name, minimum in (("dense_epochs", 1), ("fine_tune_epochs", 0)):
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ValueError(f"posthoc option {name} must be an integer ≥ {minimum}, "
                                 f"got {value!r}")
        if self.fine_tune_lr is not None and not self.fine_tune_lr > 0:
            raise ValueError(f"posthoc option fine_tune_lr must be positive or None, got "
                             f"{self.fine_tune_lr!r}")


def prune_to_density(model: nn.Module, density: float, removal: str, *,
                     mask_init: str = "uniform", first_layer_dense: bool = False) -> None:
    """Prune every mean-field layer of ``model`` in place to ``density`` by the removal score.

    Layer l keeps the top n_active,l = n_l − round((1 − d_l)·n_l) of its active weights by
    ``REMOVAL_SCORES[removal](μ, σ)`` (ties: lower index first); μ is zeroed where pruned. No
    retraining. Pruning can only remove: to try a higher density, prune a fresh copy of the dense
    posterior (``copy.deepcopy``), as the widgets do.
    """
    density = validate_density(density)
    check_removal_key(removal)
    named = mean_field_layers(model)
    if not named:
        raise ValueError("prune_to_density needs a model with mean-field layers (see bayesianize)")
    targets = layer_densities([layer for _, layer in named], density, mask_init, first_layer_dense)
    for (name, layer), d in zip(named, targets):
        k = layer.n_weights - round((1.0 - d) * layer.n_weights)
        if k < 1:
            raise ValueError(f"density={density} leaves no active weight in layer {name!r} "
                             f"({layer.n_weights} weights)")
        if k > layer.n_active:
            raise ValueError(f"layer {name!r} has only {layer.n_active} active weights, fewer than "
                             f"the {k} that density={density} keeps; prune a copy of the dense "
                             "posterior instead")
        with torch.no_grad():
            keep = top_k_mask(removal_score(removal, layer.mu, layer.sigma), k, allowed=layer.mask)
            layer.mask.copy_(keep)
    enforce_masks(model)


# ----------------------------------------------------------------------------- the verbs
def build(cfg: TrainConfig, data: DataSplits, generator: torch.Generator) -> nn.Module:
    """The dense Bayesian ``cfg.model`` (every mask all-ones)."""
    return build_model(cfg.replace(method="vi", density=1.0), data.input_shape, data.n_classes,
                       generator)


def stages(model: nn.Module, data: DataSplits, cfg: TrainConfig, **_: Any) -> list[Stage]:
    """Dense VI (stage ``dense``), pruned to ``cfg.density`` by ``cfg.removal`` when it ends (the
    validation metrics right after pruning go to the notes), then the fine-tune (stage
    ``fine_tune``, the static method on the pruned support)."""
    opts = METHOD.parse_options(cfg.method_options)
    dense_cfg = cfg.replace(method="vi", density=1.0, epochs=opts.dense_epochs or cfg.epochs)

    def prune(run: Run) -> dict[str, Any]:
        prune_to_density(run.model, cfg.density, cfg.removal, mask_init=cfg.mask_init,
                         first_layer_dense=cfg.first_layer_dense)
        before = evaluate(run.model, data.x_val, data.y_val, cfg.n_eval_samples, seed=cfg.seed)
        return {"removal": cfg.removal, "dense_epochs": dense_cfg.epochs,
                "fine_tune_epochs": opts.fine_tune_epochs,
                "val_acc_before_fine_tune": before["accuracy"],
                "val_nll_before_fine_tune": before["nll"],
                "val_ece_before_fine_tune": before["ece"]}

    dense = core_stage(model, data, dense_cfg, name="dense")
    dense.finish = prune
    if opts.fine_tune_epochs == 0:
        return [dense]
    tune_cfg = cfg.replace(method="static", epochs=opts.fine_tune_epochs, kl_warmup=False,
                           lr=opts.fine_tune_lr or cfg.lr)
    return [dense, core_stage(model, data, tune_cfg, name="fine_tune")]


def report(model: nn.Module, notes: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    """Density reached, removal key, epochs of each stage, validation metrics before fine-tune."""
    return {"density": model_density(model), **(notes or {})}


METHOD = Method("posthoc", "post-hoc pruning + fine-tune", build, stages, predict_proba, report,
                density="target", uses_removal=True, options=PosthocOptions,
                tuning=MEAN_FIELD_GRID)  # its loss is SSVI's: the same knobs
