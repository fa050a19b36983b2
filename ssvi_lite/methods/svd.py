"""Sparse variational dropout (Molchanov, Ashukha & Vetrov, "Variational Dropout Sparsifies Deep
Neural Networks", ICML 2017), the classic one-row baseline of docs/baselines.md §D (notebook
06_sparse_bnn_zoo).

Family and parameterisation (paper §4.1–4.3). Each weight has q(θ_i) = N(μ_i, α_VD,i μ_i²), written
with the *additive* reparameterisation θ_i = μ_i + σ_i ε_i, ε_i ~ N(0, 1), whose free parameters are
μ_i (``mu``) and log σ_i² (stored in the layer's ``rho`` tensor, which in this family holds log σ²,
so σ = exp(½ log σ²), not the mean-field family's softplus(ρ)). The dropout rate follows:
    log α_VD,i = log σ_i² − log μ_i²           (α_VD,i = σ_i²/μ_i²).
The additive form lets large-α_VD weights keep a small-variance gradient for μ (paper §4.3).

Forward (training): local reparameterisation (§4.2, as the kit's LRT): mean = x μ, var = x² σ²,
out = mean + sqrt(var + 1e-8) ε.

Prior: log-uniform, p(log |θ|) = const. KL(q ‖ p) depends on α_VD only and has no closed form; the
paper fits (eq. 14), with (k1, k2, k3) = (0.63576, 1.87320, 1.48695),
    −KL ≈ k1·sigmoid(k2 + k3 log α_VD) − ½ log1p(1/α_VD) − k1.
Asymptotes: α_VD → ∞ gives −KL → k1 − 0 − k1 = 0 (a weight that is pure noise costs nothing);
α_VD → 0 gives −KL ≈ ½ log α_VD − k1, the exact small-α_VD limit
½ log α_VD − (γ_E + log 2)/2 = ½ log α_VD − 0.63518, γ_E Euler's constant. The exact value,
−KL = −½ Σ_j Pois(j; 1/(2α_VD)) [ψ(½ + j) − ψ(½)] (ψ the digamma; a Poisson mixture of log χ²
moments, with the improper prior's constant chosen so that −KL → 0 as α_VD → ∞), is the test
oracle.

Loss: the kit's loss with this KL, CE_mean + β κ Σ_i KL_i / N (κ = ``cfg.kl_scale``, β the
optional ``cfg.kl_warmup`` ramp, which the paper also uses for some nets). log σ² moves about one
learning rate per Adam step, so short runs need a larger rate than μ: the method sets
``rho_lr = 1e-2`` by default (its registry record; any ``rho_lr`` you set wins).

Pruning (§5): at evaluation weights with log α_VD > 3 (α_VD > e³ ≈ 20: dropout rate
α_VD/(1+α_VD) > 0.95) are set to exactly zero; training uses every weight (the mask buffer stays
all-true). The density cannot be targeted: ``cfg.density`` is ignored and :func:`report` gives the
density reached.

Departures from the authors' code (Theano/Lasagne, and their PyTorch colab), and why:
- log α_VD is clipped to [−10, 10] in the KL and the pruning test (their code: [−8, 8] or
  [−10, 10]); the LRT variance uses σ² directly rather than α_VD·μ² with the clipped α_VD, so the
  forward pass is the plain additive reparameterisation the paper describes.
- The net is the kit's MLP with ``cfg.hidden`` trained for ``cfg.epochs`` from a Kaiming start
  (the paper: LeNet-300-100 / LeNet-5 on full MNIST for 200 epochs); log σ² starts at −10 as in
  their code.
- Evaluation averages K posterior samples (``sample`` mode, pruned weights zero) like every kit
  method; the paper reports the mean network (also in the kit's history: ``mean_net_accuracy``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..config import TrainConfig
from ..costs import dense_vi_training_flops, layer_costs
from ..data import DataSplits
from ..layers import MeanFieldConv2d, MeanFieldLayer, MeanFieldLinear, mean_field_layers
from ..loop import Stage
from ..models import build_model
from ..subspace import model_density
from . import Method, settings_grid
from .core import core_stage, predict_proba

K1, K2, K3 = 0.63576, 1.87320, 1.48695  # Molchanov et al. 2017, eq. 14
LOG_ALPHA_CLIP = 10.0
THETA_EPS = 1e-8  # log μ² = log(μ² + THETA_EPS), as the authors' code


@dataclass(frozen=True)
class SVDOptions:
    """``cfg.method_options`` of ``svd``.

    log_sigma2_init: initial log σ² of every weight (authors' code: −10).
    threshold: prune weights whose log α_VD exceeds this at evaluation (paper: 3).
    """

    log_sigma2_init: float = -10.0
    threshold: float = 3.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.log_sigma2_init) and math.isfinite(self.threshold)):
            raise ValueError(f"svd options log_sigma2_init and threshold must be finite numbers, "
                             f"got {self.log_sigma2_init!r} and {self.threshold!r}")


def neg_kl_approx(log_alpha: Tensor) -> Tensor:
    """−KL(N(μ, α_VD μ²) ‖ log-uniform) ≈ k1·sigmoid(k2 + k3 log α_VD) − ½ log1p(1/α_VD) − k1
    (eq. 14; ``log_alpha`` is log α_VD)."""
    return K1 * torch.sigmoid(K2 + K3 * log_alpha) - 0.5 * nn.functional.softplus(-log_alpha) - K1


class _SparseVDMixin:
    """What turns a mean-field layer into a sparse-VD one (placed before it in the MRO)."""

    threshold: float

    def _become_sparse_vd(self, log_sigma2_init: float, threshold: float) -> None:
        if not (math.isfinite(log_sigma2_init) and math.isfinite(threshold)):
            raise ValueError(f"log_sigma2_init and threshold must be finite numbers, got "
                             f"{log_sigma2_init!r} and {threshold!r}")
        with torch.no_grad():
            self.rho.fill_(float(log_sigma2_init))  # the rho tensor holds log σ² in this family
        self.threshold = float(threshold)

    @property
    def log_sigma2(self) -> Tensor:
        return self.rho

    @property
    def sigma(self) -> Tensor:
        """σ = exp(½ log σ²)."""
        return torch.exp(0.5 * self.rho)

    @property
    def log_alpha(self) -> Tensor:
        """log α_VD = log σ² − log μ², clipped to [−10, 10]."""
        raw = self.rho - torch.log(self.mu**2 + THETA_EPS)
        return raw.clamp(-LOG_ALPHA_CLIP, LOG_ALPHA_CLIP)

    @property
    def keep(self) -> Tensor:
        """Bool: the weights that survive pruning (mask and log α_VD ≤ threshold)."""
        return self.mask & (self.log_alpha.detach() <= self.threshold)

    @property
    def n_active(self) -> int:
        return int(self.keep.sum())

    def kl_sum(self) -> Tensor:
        """Σ_i KL_i over the (structural) mask, eq. 14 — pruning plays no part in training."""
        kl = -neg_kl_approx(self.log_alpha)
        return torch.where(self.mask, kl, torch.zeros_like(kl)).sum()

    def active_mask(self) -> Tensor:
        """Training: the structural mask; evaluation: the weights kept (log α_VD ≤ threshold)."""
        return self.mask if self.training else self.keep


class SparseVDLinear(_SparseVDMixin, MeanFieldLinear):
    """Sparse-VD ``nn.Linear``: ``mu`` = μ, ``rho`` = log σ², both (out, in)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 log_sigma2_init: float = -10.0, threshold: float = 3.0) -> None:
        MeanFieldLinear.__init__(self, in_features, out_features, bias)
        self._become_sparse_vd(log_sigma2_init, threshold)


class SparseVDConv2d(_SparseVDMixin, MeanFieldConv2d):
    """Sparse-VD ``nn.Conv2d``: ``mu`` = μ, ``rho`` = log σ², both (out, in/groups, kh, kw)."""

    def __init__(self, *args: Any, log_sigma2_init: float = -10.0, threshold: float = 3.0,
                 **kwargs: Any) -> None:
        MeanFieldConv2d.__init__(self, *args, **kwargs)
        self._become_sparse_vd(log_sigma2_init, threshold)


def to_sparse_vd(model: nn.Module, log_sigma2_init: float = -10.0, threshold: float = 3.0
                 ) -> nn.Module:
    """Replace each mean-field layer of ``model`` by its sparse-VD twin, in place (μ and biases
    kept)."""
    for name, child in model.named_children():
        if isinstance(child, MeanFieldLinear):
            new: MeanFieldLayer = SparseVDLinear(child.in_features, child.out_features,
                                                 child.bias is not None,
                                                 log_sigma2_init=log_sigma2_init,
                                                 threshold=threshold)
        elif isinstance(child, MeanFieldConv2d):
            new = SparseVDConv2d(child.in_channels, child.out_channels, child.kernel_size,
                                 child.stride, child.padding, child.dilation, child.groups,
                                 child.bias is not None, log_sigma2_init=log_sigma2_init,
                                 threshold=threshold)
        else:
            to_sparse_vd(child, log_sigma2_init, threshold)
            continue
        with torch.no_grad():
            new.mu.copy_(child.mu)
            if child.bias is not None:
                new.bias.copy_(child.bias)
        setattr(model, name, new.to(child.mu.device))
    return model


# ----------------------------------------------------------------------------- the verbs
def build(cfg: TrainConfig, data: DataSplits, generator: torch.Generator) -> nn.Module:
    """The kit's ``cfg.model`` (Kaiming μ) with every weight layer made sparse-VD."""
    opts = METHOD.parse_options(cfg.method_options)
    model = build_model(cfg.replace(method="vi", density=1.0), data.input_shape, data.n_classes,
                        generator)
    return to_sparse_vd(model, opts.log_sigma2_init, opts.threshold)


def _dense_cost(model: nn.Module, data: DataSplits) -> tuple[float, float]:
    """Every weight is computed while training: 3 × the dense LRT forward per example."""
    per_example = dense_vi_training_flops(layer_costs(model, data.input_shape), 1)
    return per_example, per_example


def stages(model: nn.Module, data: DataSplits, cfg: TrainConfig, **_: Any) -> list[Stage]:
    """One stage of the core loop with this family's KL (LRT, best-validation epoch restored).

    ``density`` in the history is the density reached by the log α_VD rule after each epoch;
    ``train_flops`` counts dense training (docs/method.md §8).
    """
    if not any(isinstance(layer, _SparseVDMixin) for _, layer in mean_field_layers(model)):
        raise TypeError("svd needs a model with sparse-VD layers (svd.build or to_sparse_vd), "
                        f"got {type(model).__name__}")
    stage = core_stage(model, data, cfg)
    stage.cost = _dense_cost
    return [stage]


def report(model: nn.Module, notes: dict[str, Any] | None = None
           ) -> dict[str, float | int]:
    """Density reached by log α_VD > threshold pruning, overall and per layer, and the counts."""
    layers = mean_field_layers(model)
    out: dict[str, float | int] = {
        "density": model_density(model),
        "n_weights": sum(layer.n_weights for _, layer in layers),
        "n_active": sum(layer.n_active for _, layer in layers),
        "log_alpha_threshold": float(layers[0][1].threshold) if layers else math.nan,
    }
    for i, (_, layer) in enumerate(layers):
        out[f"density_layer{i}"] = layer.n_active / layer.n_weights
    return out


METHOD = Method("svd", "sparse variational dropout", build, stages, predict_proba, report,
                density="own", options=SVDOptions, defaults={"rho_lr": 1e-2},
                # κ and the learning rate of log σ² (the log-uniform prior has no scale)
                tuning=settings_grid(kl_scale=(1.0, 0.1), rho_lr=(1e-2, 3e-2)))
