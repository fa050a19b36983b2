"""Stochastic weight sharing, "2DGBNN" (Lin, Guan, Jing, Botterweck, Patane, "Stochastic Weight
Sharing for Bayesian Neural Networks", AISTATS 2025, arXiv 2505.17856); docs/baselines.md §B,
notebook 06_sparse_bnn_zoo.

Idea: every weight i of a mean-field BNN is a 2-D point (μ_i, σ_i). Most points are covered by
G 2-D Gaussians; a weight of cluster k takes, in each forward pass, the first coordinate of ONE draw
u_k ~ N(c_k, Σ_k), Σ_k = L_k L_kᵀ, shared by the whole cluster. Pipeline (our stage names):
 0. train the deterministic net (MAP, ``pretrain_epochs``);
 1. make it Bayesian with μ from it and learn σ with the data term only (κ = 0, μ lr tiny);
 1b. k-means (k-means++ seeding, Lloyd) on the standardised points (μ, σ), G = ``n_clusters``;
 2. outliers: |μ| ≥ μ_out, or the top ``outlier_grad_fraction`` of |∂CE/∂μ| over the training set,
    or members of a cluster with ≤ ``min_cluster_size`` inliers. Each remaining cluster gets the
    Gaussian (c_k, Σ_k) of its inliers. Inliers with Mahalanobis d_M² > 5.991 (outside the 95 %
    ellipse, χ²₂) are "ellipse points": θ_i = r̄_i c_{k₁,1} + (1 − r̄_i) c_{k₂,1} for their two
    most probable clusters k₁, k₂ (responsibilities r_k ∝ w_k N((μ_i, σ_i); c_k, Σ_k), w_k the
    cluster's share of the inliers, r̄_i = r_{k₁}/(r_{k₁} + r_{k₂}));
 3. VI over the cluster Gaussians q(u_k) = N(c_k, L_k L_kᵀ) and the outliers q(θ_o) = N(μ_o, σ_o²),
    priors = the stage-2 values, loss = CE_mean + β κ [Σ_k KL_k + Σ_o KL_o] / N,
        KL_k = ½[tr(Σ⁰⁻¹Σ) + (c−c⁰)ᵀΣ⁰⁻¹(c−c⁰) − 2 + log(det Σ⁰/det Σ)].
    After each epoch cluster pairs with W2² < a tiny threshold are merged (means and covariances
    averaged, priors likewise), where for Gaussians
        W2² = ‖c_i − c_j‖² + tr(Σ_i + Σ_j − 2(Σ_i^{1/2} Σ_j Σ_i^{1/2})^{1/2}),
    and for 2×2 matrices
        tr((Σ_i^{1/2}Σ_jΣ_i^{1/2})^{1/2}) = sqrt(tr(Σ_iΣ_j) + 2 sqrt(det Σ_i det Σ_j)).

The method does not prune: density = 1. Its saving is storage (a 16-bit cluster code per weight
instead of two floats) and far fewer trainable parameters; see :func:`report`.

Departures from the authors' code, and why:
- Their code copies the sampled cluster values into the net with a detach, so the data term never
  trains the clusters; here the weights are a differentiable gather (``index_select`` of the draw,
  then one permutation), so ∂CE/∂c_k and ∂CE/∂L_k are the sums over the cluster's weights.
  Only c_{k,1} and L_{k,11} touch the weights; the rest of (c_k, L_k) follows the KL alone.
- One codebook for the whole net (all layers), clustering on standardised coordinates (μ and σ
  differ by orders of magnitude, so raw k-means would cluster by μ alone), fitted on a random
  subset of 50,000 points and then assigning every point; the cluster Gaussians are parametrised
  in those standardised units (KL and Mahalanobis distances are unchanged; Adam's steps are not:
  in raw units σ's spread is ~100× smaller than μ's, and equal steps would throw the σ coordinate
  far from its prior), with a 10⁻⁶ jitter on Σ_k's diagonal. The merge threshold is relative
  (``merge_rel`` × the median tr Σ⁰_k) so that "tiny" does not depend on the weights' scale.
The codebook (k-means, partition, KL, W2, merging) lives in ``ssvi_lite.methods.codebook``.
- The net is the kit's MLP (``cfg.hidden``; the paper's small nets are 784-300-100-10 and CNNs),
  G ≈ 128 (paper ≈ 256), a few epochs per stage; merges rebuild the Adam state.
- The stages are stages of the kit's one epoch loop (``map``, ``noise``, ``shared``), so a run can
  be checkpointed and resumed in any of them.
- The whole net is in ``sample`` mode (one draw per forward pass shared by the batch): shared draws
  break the independence that the local reparameterisation needs.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import TrainConfig
from ..costs import forward_flops, layer_costs
from ..data import DataSplits, iterate_batches
from ..layers import bayesianize, forward_mode, mean_field_layers
from ..loop import Run, Stage, Stepper, make_optimizer
from ..models import build_model
from . import Method, settings_grid
from .codebook import Codebook, make_codebook
from .core import core_stage

CODE_BYTES, FLOAT_BYTES = 2, 4  # 16-bit cluster code per weight; float32 parameters


@dataclass(frozen=True)
class WeightSharingOptions:
    """``cfg.method_options`` of ``weight_sharing`` (stage 3 runs ``cfg.epochs`` epochs).

    pretrain_epochs: stage 0, deterministic (MAP) epochs.  noise_epochs: stage 1 epochs.
    noise_sigma_init, noise_mu_lr, noise_rho_lr: stage 1's σ start and Adam rates (μ tiny).
    n_clusters, kmeans_iters: stage 1b.  outlier_abs_mu (μ_out), outlier_grad_fraction,
    min_cluster_size: stage 2.  merge_rel: merge pairs with W2² < merge_rel × the median tr Σ⁰_k
    of the stage-2 clusters (a scale-free "tiny").  lr: stage 3 (None: cfg.lr).
    """

    pretrain_epochs: int = 5
    noise_epochs: int = 2
    noise_sigma_init: float = 0.01
    noise_mu_lr: float = 1e-7
    noise_rho_lr: float = 1e-2
    n_clusters: int = 128
    kmeans_iters: int = 30
    outlier_abs_mu: float = 0.2
    outlier_grad_fraction: float = 0.01
    min_cluster_size: int = 20
    merge_rel: float = 0.01
    lr: float | None = None

    def __post_init__(self) -> None:
        lows = {"pretrain_epochs": 1, "noise_epochs": 1, "n_clusters": 1, "kmeans_iters": 1,
                "min_cluster_size": 0}
        for name, low in lows.items():
            if getattr(self, name) < low:
                raise ValueError(f"weight_sharing option {name} must be an integer ≥ {low}, got "
                                 f"{getattr(self, name)!r}")
        if self.n_clusters >= 2**16:
            raise ValueError(f"n_clusters={self.n_clusters} does not fit a 16-bit code (< 65536)")
        if not 0.0 <= self.outlier_grad_fraction < 1.0:
            raise ValueError("outlier_grad_fraction must lie in [0, 1), got "
                             f"{self.outlier_grad_fraction!r}")
        for name in ("noise_sigma_init", "noise_mu_lr", "noise_rho_lr", "outlier_abs_mu"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")
        if not self.merge_rel >= 0 or (self.lr is not None and not self.lr > 0):
            raise ValueError(f"merge_rel must be ≥ 0 and lr positive or None, got "
                             f"{self.merge_rel!r}, {self.lr!r}")


# ----------------------------------------------------------------------------- the network
class SharedWeightNet(nn.Module):
    """A deterministic net (``net``) trained in three phases: ``map`` (stage 0, the plain net),
    ``noise`` (stage 1, a mean-field copy ``noise_net`` learning σ) and ``shared`` (stage 3, the
    Linear/Conv2d weights come from ``codebook``). ``mode``: ``sample`` or ``mean``. The phase, the
    noise net's prior σ and the codebook's shapes travel as extra state, so a checkpoint of any
    phase loads into a fresh model."""

    def __init__(self, net: nn.Module, kmeans_seed: int = 0):
        super().__init__()
        self.net = net
        self.noise_net: nn.Module | None = None
        self.codebook: Codebook | None = None
        self.phase, self.mode, self.kmeans_seed = "map", "sample", int(kmeans_seed)
        self.noise_prior_sigma = 1.0
        self.weight_shapes = {f"{name}.weight": m.weight.shape for name, m in net.named_modules()
                              if isinstance(m, (nn.Linear, nn.Conv2d))}

    def start_noise(self, prior_sigma: float, sigma_init: float) -> None:
        """Phase ``noise``: a mean-field copy of the net (μ = its weights) to learn σ on."""
        self.noise_net = bayesianize(copy.deepcopy(self.net), prior_sigma=prior_sigma,
                                     sigma_init=sigma_init)
        self.phase, self.noise_prior_sigma = "noise", float(prior_sigma)

    def start_sharing(self, codebook: Codebook) -> None:
        """Phase ``shared``: weights from ``codebook``; the dense weights and noise net go."""
        self.codebook, self.noise_net, self.phase = codebook, None, "shared"
        _drop_dense_weights(self.net)

    def sample_weights(self, mean: bool = False) -> dict[str, Tensor]:
        """One draw of every shared weight tensor (``mean``: the centres), by parameter name."""
        flat = self.codebook.weights(mean or self.mode == "mean")
        sizes = [math.prod(shape) for shape in self.weight_shapes.values()]
        return {name: part.view(shape) for (name, shape), part in
                zip(self.weight_shapes.items(), flat.split(sizes))}

    def forward(self, x: Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        if self.phase == "map":
            return self.net(x)
        if self.phase == "noise":
            return self.noise_net(x)
        weights = weights if weights is not None else self.sample_weights()
        return torch.func.functional_call(self.net, weights, (x,))

    def get_extra_state(self) -> dict[str, Any]:
        shapes = ({k: list(v.shape) for k, v in self.codebook.state_dict().items()
                   if isinstance(v, Tensor)} if self.codebook is not None else {})
        return {"phase": self.phase, "kmeans_seed": self.kmeans_seed,
                "noise_prior_sigma": self.noise_prior_sigma, "codebook_shapes": shapes}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        """Rebuild the phase's structure before the children's tensors are loaded into it."""
        self.kmeans_seed = int(state["kmeans_seed"])
        if state["phase"] == "noise" and self.phase == "map":
            self.start_noise(state["noise_prior_sigma"], 1.0)
        elif state["phase"] == "shared" and self.phase != "shared":
            self.start_sharing(Codebook.empty(state["codebook_shapes"]))


@contextmanager
def _mean_weights(model: SharedWeightNet) -> Iterator[None]:
    before, model.mode = model.mode, "mean"
    try:
        yield
    finally:
        model.mode = before


def _drop_dense_weights(net: nn.Module) -> None:
    """Replace each Linear/Conv2d weight by a shape-only (meta) placeholder: from stage 3 on the
    values come from the codebook, so no stale float copy is trained, stored or counted."""
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and isinstance(module.weight, nn.Parameter):
            shape = module.weight.shape
            del module.weight
            module.weight = torch.empty(shape, device="meta")


# ----------------------------------------------------------------------------- the stage changes
def _noise_points(model: SharedWeightNet, data: DataSplits) -> tuple[Tensor, Tensor]:
    """After stage 1: the points (μ, σ) (n, 2) and |∂CE/∂μ| (n,) of the whole training set at the
    mean network; the noise net's biases go back to the plain net."""
    bnn = model.noise_net
    layers = [layer for _, layer in mean_field_layers(bnn)]
    bnn.zero_grad()
    device = layers[0].mu.device
    with forward_mode(bnn, "mean"):
        for xb, yb in iterate_batches(data.x_train, data.y_train, 1000, shuffle=False):
            logits = bnn(xb.to(device))
            (F.cross_entropy(logits, yb.to(device), reduction="sum") / data.n_train).backward()
    with torch.no_grad():
        for (_, new), old in zip(mean_field_layers(bnn), (m for m in model.net.modules()
                                                        if isinstance(m, (nn.Linear, nn.Conv2d)))):
            if old.bias is not None:
                old.bias.copy_(new.bias)
    points = torch.cat([torch.stack([lay.mu.detach().flatten(), lay.sigma.detach().flatten()], -1)
                        for lay in layers])
    grads = torch.cat([lay.mu.grad.abs().flatten() for lay in layers])
    return points.cpu(), grads.cpu()


def _share(model: SharedWeightNet, data: DataSplits, opts: WeightSharingOptions, run: Run
           ) -> dict[str, Any]:
    """Stages 1b and 2: k-means and the partition; counts the gradient pass's FLOPs; the merge
    threshold (scale-free, from the stage-2 clusters) goes to the notes."""
    f_det = forward_flops(layer_costs(model.net, data.input_shape), 1, bayesian=False)
    points, grads = _noise_points(model, data)
    book = make_codebook(points, grads, n_clusters=opts.n_clusters,
                         kmeans_iters=opts.kmeans_iters, outlier_abs_mu=opts.outlier_abs_mu,
                         outlier_grad_fraction=opts.outlier_grad_fraction,
                         min_cluster_size=opts.min_cluster_size,
                         generator=torch.Generator().manual_seed(model.kmeans_seed))
    model.start_sharing(book.to(next(model.net.parameters()).device))
    run.progress.flops += 3 * data.n_train * f_det  # the gradient pass
    traces = model.codebook.prior_cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    return {"merge_w2": opts.merge_rel * float(traces.median())}


def _shared_cost(model: nn.Module, data: DataSplits) -> tuple[float, float]:
    """3 × the deterministic forward (one weight draw, no LRT) per example."""
    with _mean_weights(model):
        per_example = 3 * forward_flops(layer_costs(model, data.input_shape), 1, bayesian=False)
    return per_example, per_example


# ----------------------------------------------------------------------------- the verbs
def build(cfg: TrainConfig, data: DataSplits, generator: torch.Generator) -> nn.Module:
    """The deterministic ``cfg.model`` (Kaiming init) inside a :class:`SharedWeightNet`."""
    net = build_model(cfg.replace(method="map", density=1.0), data.input_shape, data.n_classes,
                      generator)
    return SharedWeightNet(net, int(torch.randint(2**31 - 1, (1,), generator=generator)))


def stages(model: nn.Module, data: DataSplits, cfg: TrainConfig, **_: Any) -> list[Stage]:
    """Stages 0 (``map``) → 1 (``noise``: σ with the data term only, κ = 0, μ lr tiny) → 1b/2 at
    the start of 3 (``shared``: VI over the codebook for ``cfg.epochs`` epochs, merging after each).

    FLOPs (docs/method.md §8): stages 0 and 1 as the core methods count them; the gradient pass of
    stage 2 and every stage-3 step at 3 × the deterministic forward; k-means is not counted (the
    convention counts Linear/Conv2d work only). Extra column: n_gaussians.
    """
    if not isinstance(model, SharedWeightNet):
        raise TypeError("weight_sharing needs a model from weight_sharing.build, got "
                        f"{type(model).__name__}")
    opts = METHOD.parse_options(cfg.method_options)
    pre = core_stage(model, data, cfg.replace(method="map", epochs=opts.pretrain_epochs),
                     name="map")
    noise_cfg = cfg.replace(method="vi", epochs=opts.noise_epochs, kl_scale=0.0, kl_warmup=False,
                            lr=opts.noise_mu_lr, rho_lr=opts.noise_rho_lr, weight_decay=0.0,
                            cosine_lr=False)
    noise = core_stage(model, data, noise_cfg, name="noise")
    noise.optimizer = lambda m: make_optimizer(m.noise_net, noise_cfg)
    noise.start = lambda run: model.start_noise(cfg.prior_sigma, opts.noise_sigma_init)
    lr = opts.lr or cfg.lr

    def merge(run: Run) -> dict[str, Any]:
        if model.codebook.merge(run.progress.notes["merge_w2"]):
            run.optimizer = torch.optim.Adam(model.parameters(), lr=lr)  # shapes changed
        return {"n_gaussians": model.codebook.n_clusters}

    shared = Stage("shared", cfg, optimizer=lambda m: torch.optim.Adam(m.parameters(), lr=lr),
                   regulariser=lambda m: m.codebook.kl_sum(), stepper=Stepper(),
                   start=lambda run: _share(model, data, opts, run), after_epoch=merge,
                   predict=predict_proba, cost=_shared_cost, select="last",
                   density=lambda m: 1.0)
    return [pre, noise, shared]


@torch.no_grad()
def predict_proba(model: nn.Module, x: Tensor, n_samples: int, batch_size: int = 1000) -> Tensor:
    """K forward passes, each with one draw of every cluster and outlier: (K, N, C)."""
    model.eval()
    device = next(model.parameters()).device
    if model.codebook is None or model.mode == "mean":
        n_samples = 1
    out = []
    for _ in range(n_samples):
        weights = model.sample_weights() if model.codebook is not None else None
        chunks = [torch.softmax(model(x[i:i + batch_size].to(device), weights).float(), -1).cpu()
                  for i in range(0, len(x), batch_size)]
        out.append(torch.cat(chunks))
    return torch.stack(out)  # (K, N, C)


def report(model: nn.Module, notes: dict[str, Any] | None = None
           ) -> dict[str, float | int]:
    """Counts, trainable-parameter ratio and storage vs mean-field (2 float32 per weight).

    Biases are left out of both sides. Stored bytes: a 16-bit code per weight (2 B), each cluster's
    (c, L) = 5 floats, each outlier's (μ, σ), and per ellipse point a second code and r̄ (6 B).
    ``model_size_bytes`` (the common column) is the stored bytes plus the float32 biases and other
    parameters of the net. The method does not prune: density = 1.
    """
    book = model.codebook
    n = sum(math.prod(shape) for shape in model.weight_shapes.values())
    if book is None:
        return {"density": 1.0, "n_weights": n}
    k, n_out, n_ell = book.n_clusters, len(book.out_mu), len(book.ell_alpha)
    trainable = 5 * k + 2 * n_out
    stored = CODE_BYTES * n + FLOAT_BYTES * trainable + (CODE_BYTES + FLOAT_BYTES) * n_ell
    mean_field = 2 * FLOAT_BYTES * n
    biases = sum(p.numel() for p in model.net.parameters())  # the weights live in the codebook
    return {"density": 1.0, "n_weights": n, "n_gaussians": k, "n_outliers": n_out,
            "n_ellipse_points": n_ell, "n_inliers": len(book.labels), "n_merged": book.n_merged,
            "trainable_params": trainable, "param_ratio_mean_field": 2 * n / trainable,
            "bytes_stored": stored, "bytes_mean_field": mean_field,
            "storage_saving": 1.0 - stored / mean_field,
            "model_size_bytes": stored + FLOAT_BYTES * biases}


METHOD = Method("weight_sharing", "stochastic weight sharing (2DGBNN)", build, stages,
                predict_proba, report, density="own", options=WeightSharingOptions,
                # κ of stage 3 (its KL to the stage-2 clusters), the lr of its Adam stages
                tuning=settings_grid(kl_scale=(1.0, 0.1), lr=(3e-2, 3e-3)))
