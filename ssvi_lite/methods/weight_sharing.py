"""Stochastic weight sharing, "2DGBNN" (Lin, Guan, Jing, Botterweck, Patane, "Stochastic Weight
Sharing for Bayesian Neural Networks", AISTATS 2025, arXiv 2505.17856); seed_systems.md §B,
notebook 06_sparse_bnn_zoo.

Idea: every weight i of a mean-field BNN is a 2-D point x_i = (μ_i, σ_i). Most points are covered by
K 2-D Gaussians; a weight of cluster k takes, in each forward pass, the first coordinate of ONE draw
u_k ~ N(c_k, Σ_k), Σ_k = L_k L_kᵀ, shared by the whole cluster. Pipeline (our stage names):
 0. train the deterministic net (MAP, ``pretrain_epochs``);
 1. make it Bayesian with μ from it and learn σ with the data term only (κ = 0, μ lr tiny);
 1b. k-means (k-means++ seeding, Lloyd) on the standardised points (μ, σ), K = ``n_clusters``;
 2. outliers: |μ| ≥ τ_w, or the top ``outlier_grad_fraction`` of |∂CE/∂μ| over the training set,
    or members of a cluster with ≤ ``min_cluster_size`` inliers. Each remaining cluster gets the
    Gaussian (c_k, Σ_k) of its inliers. Inliers with Mahalanobis d² > 5.991 (outside the 95 %
    ellipse, χ²₂) are "ellipse points": w_i = α c_{a,1} + (1 − α) c_{b,1} for their two most
    probable clusters a, b (responsibilities r_k ∝ π_k N(x_i; c_k, Σ_k), α = r_a/(r_a + r_b));
 3. VI over the cluster Gaussians q(u_k) = N(c_k, L_k L_kᵀ) and the outliers q(w_o) = N(μ_o, σ_o²),
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
  K ≈ 128 (paper ≈ 256), a few epochs per stage; merges rebuild the Adam state.
- The whole net is in ``sample`` mode (one draw per forward pass shared by the batch): shared draws
  break the independence that the local reparameterisation needs.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import metrics, train
from ..config import TrainConfig
from ..costs import forward_flops, layer_costs
from ..data import DataSplits, iterate_batches
from ..layers import bayesianize, forward_mode, mean_field_layers
from ..models import build_model
from . import make_options
from .codebook import Codebook, make_codebook

CODE_BYTES, FLOAT_BYTES = 2, 4  # 16-bit cluster code per weight; float32 parameters


@dataclass(frozen=True)
class WeightSharingOptions:
    """``cfg.method_options`` of ``weight_sharing`` (stage 3 runs ``cfg.epochs`` epochs).

    pretrain_epochs: stage 0, deterministic (MAP) epochs.  noise_epochs: stage 1 epochs.
    noise_sigma_init, noise_mu_lr, noise_rho_lr: stage 1's σ start and Adam rates (μ tiny).
    n_clusters, kmeans_iters: stage 1b.  outlier_abs_mu (τ_w), outlier_grad_fraction,
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


def parse_options(options: dict[str, Any]) -> WeightSharingOptions:
    """``WeightSharingOptions`` from a dict; unknown keys raise ValueError naming the valid ones."""
    opts = make_options(WeightSharingOptions, options, "weight_sharing")
    ints = {"pretrain_epochs": 1, "noise_epochs": 1, "n_clusters": 1, "kmeans_iters": 1,
            "min_cluster_size": 0}
    for name, low in ints.items():
        value = getattr(opts, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer ≥ {low}, got {value!r}")
    if opts.n_clusters >= 2**16:
        raise ValueError(f"n_clusters={opts.n_clusters} does not fit a 16-bit code (< 65536)")
    if not 0.0 <= opts.outlier_grad_fraction < 1.0:
        raise ValueError("outlier_grad_fraction must lie in [0, 1), got "
                         f"{opts.outlier_grad_fraction!r}")
    for name in ("noise_sigma_init", "noise_mu_lr", "noise_rho_lr", "outlier_abs_mu"):
        if not getattr(opts, name) > 0:
            raise ValueError(f"{name} must be positive, got {getattr(opts, name)!r}")
    if not opts.merge_rel >= 0 or (opts.lr is not None and not opts.lr > 0):
        raise ValueError(f"merge_rel must be ≥ 0 and lr positive or None, got {opts.merge_rel!r}, "
                         f"{opts.lr!r}")
    return opts


# ----------------------------------------------------------------------------- the network
class SharedWeightNet(nn.Module):
    """A deterministic net (``net``) whose Linear/Conv2d weights come from ``codebook`` once it is
    set (stage 3); before that it is the plain net (stage 0). ``mode``: ``sample`` or ``mean``."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net
        self.codebook: Codebook | None = None
        self.mode = "sample"
        self.weight_shapes = {f"{name}.weight": m.weight.shape for name, m in net.named_modules()
                              if isinstance(m, (nn.Linear, nn.Conv2d))}

    def sample_weights(self, mean: bool = False) -> dict[str, Tensor]:
        """One draw of every shared weight tensor (``mean``: the centres), by parameter name."""
        flat = self.codebook.weights(mean or self.mode == "mean")
        sizes = [math.prod(shape) for shape in self.weight_shapes.values()]
        return {name: part.view(shape) for (name, shape), part in
                zip(self.weight_shapes.items(), flat.split(sizes))}

    def forward(self, x: Tensor, weights: dict[str, Tensor] | None = None) -> Tensor:
        if self.codebook is None:
            return self.net(x)
        weights = weights if weights is not None else self.sample_weights()
        return torch.func.functional_call(self.net, weights, (x,))


# ----------------------------------------------------------------------------- the stages
def _stage1_points(model: SharedWeightNet, data: DataSplits, cfg: TrainConfig,
                   opts: WeightSharingOptions) -> tuple[Tensor, Tensor, pd.DataFrame]:
    """Stage 1: σ with the data term only; returns points (n, 2), |∂CE/∂μ| (n,) and the history."""
    bnn = bayesianize(copy.deepcopy(model.net), prior_sigma=cfg.prior_sigma,
                      sigma_init=opts.noise_sigma_init)
    history = train.fit(bnn, data, cfg.replace(
        method="vi", density=1.0, epochs=opts.noise_epochs, kl_scale=0.0, kl_warmup=False,
        lr=opts.noise_mu_lr, rho_lr=opts.noise_rho_lr, weight_decay=0.0, cosine_lr=False))
    layers = [layer for _, layer in mean_field_layers(bnn)]
    bnn.zero_grad()
    device = layers[0].mu.device
    with forward_mode(bnn, "mean"):  # ∂CE/∂μ of the whole training set at the mean network
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
    return points.cpu(), grads.cpu(), history


def _stage3_epoch(model: SharedWeightNet, data: DataSplits, cfg: TrainConfig, epoch: int,
                  optimizer: torch.optim.Optimizer, gen: torch.Generator, progress: Any
                  ) -> dict[str, float]:
    """One epoch of VI over the codebook; returns mean nll, kl and training accuracy."""
    device = model.codebook.centre.device
    sums = torch.zeros(4, dtype=torch.float64)  # Σ nll·n, Σ kl·n, correct, n
    model.train()
    for xb, yb in iterate_batches(data.x_train, data.y_train, cfg.batch_size, shuffle=True,
                                  generator=gen):
        xb, yb = xb.to(device), yb.to(device)
        logits = model(xb)
        nll, kl = F.cross_entropy(logits, yb), model.codebook.kl_sum()
        loss = nll + train.kl_weight(cfg, epoch) * kl / data.n_train
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite loss {loss.item()} in stage 3, epoch {epoch}; "
                                     "lower method_options['lr']")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = len(yb)
        sums += torch.tensor([nll.item() * n, kl.item() * n, (logits.argmax(-1) == yb).sum().item(),
                              n], dtype=torch.float64)
        progress.update(1)
    nll_mean, kl_mean, acc, _ = (sums / sums[3]).tolist()
    return {"nll": nll_mean, "kl": kl_mean, "kl_weight": train.kl_weight(cfg, epoch),
            "train_acc": acc}


def _drop_dense_weights(net: nn.Module) -> None:
    """Replace each Linear/Conv2d weight by a shape-only (meta) placeholder: from stage 3 on the
    values come from the codebook, so no stale float copy is trained, stored or counted."""
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)) and isinstance(module.weight, nn.Parameter):
            shape = module.weight.shape
            del module.weight
            module.weight = torch.empty(shape, device="meta")


# ----------------------------------------------------------------------------- the four verbs
def build(cfg: TrainConfig, data: DataSplits, generator: torch.Generator) -> nn.Module:
    """The deterministic ``cfg.model`` (Kaiming init) inside a :class:`SharedWeightNet`."""
    parse_options(cfg.method_options)
    net = build_model(cfg.replace(method="map", density=1.0), data.input_shape, data.n_classes,
                      generator)
    model = SharedWeightNet(net)
    model.seed = int(torch.randint(2**31 - 1, (1,), generator=generator))  # k-means, batches
    return model


def fit(model: nn.Module, data: DataSplits, cfg: TrainConfig) -> pd.DataFrame:
    """Stages 0 → 1 → 1b/2 → 3 (``cfg.epochs`` epochs, merging after each); one history.

    Column ``stage`` names the stage; epoch, train_flops and wall_time_s run on across stages.
    FLOPs (method.md §8): stages 0 and 1 as counted by ``train.fit``; the gradient pass of stage 2
    and every stage-3 step at 3 × the deterministic forward (one weight draw, no LRT); k-means is
    not counted (the convention counts Linear/Conv2d work only).
    """
    if not isinstance(model, SharedWeightNet) or model.codebook is not None:
        raise TypeError("weight_sharing.fit needs a fresh model from weight_sharing.build, got "
                        f"{type(model).__name__}")
    opts = parse_options(cfg.method_options)
    pre = train.fit(model.net, data, cfg.replace(method="map", density=1.0,
                                                 epochs=opts.pretrain_epochs)).assign(stage="map")
    start = time.perf_counter()
    f_det = forward_flops(layer_costs(model.net, data.input_shape), 1, bayesian=False)
    points, grads, noise = _stage1_points(model, data, cfg, opts)
    gen = torch.Generator().manual_seed(getattr(model, "seed", cfg.seed))
    book = make_codebook(points, grads, n_clusters=opts.n_clusters,
                         kmeans_iters=opts.kmeans_iters, outlier_abs_mu=opts.outlier_abs_mu,
                         outlier_grad_fraction=opts.outlier_grad_fraction,
                         min_cluster_size=opts.min_cluster_size, generator=gen)
    model.codebook = book.to(next(model.net.parameters()).device)
    _drop_dense_weights(model.net)
    noise = noise.assign(stage="noise")
    for column in ("train_flops", "wall_time_s"):
        noise[column] += pre[column].iloc[-1]
    noise["epoch"] += len(pre)
    flops = float(noise["train_flops"].iloc[-1]) + 3 * data.n_train * f_det  # + gradient pass
    wall = float(pre["wall_time_s"].iloc[-1]) + time.perf_counter() - start
    shared = _stage3(model, data, cfg, opts, gen, f_det, flops, wall)
    shared["epoch"] += len(pre) + len(noise)
    return pd.concat([pre, noise, shared], ignore_index=True)


def _stage3(model: SharedWeightNet, data: DataSplits, cfg: TrainConfig,
            opts: WeightSharingOptions, gen: torch.Generator, f_det: float, flops: float,
            wall: float) -> pd.DataFrame:
    """VI over the codebook for ``cfg.epochs`` epochs, merging after each; one row per epoch."""
    from tqdm.auto import tqdm

    lr = opts.lr or cfg.lr
    optimizer, rows = torch.optim.Adam(model.parameters(), lr=lr), []
    traces = model.codebook.prior_cov.diagonal(dim1=-2, dim2=-1).sum(-1)
    merge_w2 = opts.merge_rel * float(traces.median())
    steps = math.ceil(data.n_train / cfg.batch_size)
    with tqdm(total=cfg.epochs * steps, desc="weight_sharing", leave=False,
              disable=not cfg.progress) as progress:
        for epoch in range(1, cfg.epochs + 1):
            start = time.perf_counter()
            row = _stage3_epoch(model, data, cfg, epoch, optimizer, gen, progress)
            if model.codebook.merge(merge_w2):
                optimizer = torch.optim.Adam(model.parameters(), lr=lr)  # shapes changed
            flops += 3 * data.n_train * f_det
            wall += time.perf_counter() - start
            val = metrics.summarize(predict_proba(model, data.x_val, cfg.n_eval_samples),
                                    data.y_val.cpu())
            rows.append({"epoch": epoch, **row, "val_acc": val["accuracy"], "val_nll": val["nll"],
                         "val_ece": val["ece"], "density": 1.0, "train_flops": flops,
                         "wall_time_s": wall, "n_gaussians": model.codebook.n_clusters,
                         "stage": "shared"})
            progress.set_postfix(val_acc=f"{val['accuracy']:.3f}", K=model.codebook.n_clusters)
    return pd.DataFrame(rows)


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


def report(model: nn.Module) -> dict[str, float | int]:
    """Counts, trainable-parameter ratio and storage vs mean-field (2 float32 per weight).

    Biases are left out of both sides. Stored bytes: a 16-bit code per weight (2 B), each cluster's
    (c, L) = 5 floats, each outlier's (μ, σ), and per ellipse point a second code and α (6 B).
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
