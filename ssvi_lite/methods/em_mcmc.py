"""EM-MCMC: preconditioned SGHMC with a spike-and-slab group prior that prunes in one shot.

Paper: Ke & Fan, "On the optimization and pruning for Bayesian deep learning", arXiv 2210.12957
(docs/baselines.md §A; notebook 06_sparse_bnn_zoo). Idea: adaptive VB with a Gaussian of scale
T·η_t^{3/4}·τ is SGHMC with a learned per-weight preconditioner τ; an EM step inside the sampler,
under a spike-and-slab prior on groups of weights, shrinks some groups (spike), deletes others.

State per weight: θ, momentum v, dual preconditioner ω (τ = sigmoid(ω); ω = 0, τ = ½ at the start),
the last noise ξ, and its decay δ (δ₁ slab, δ₀ spike). Step t (∇ = minibatch-mean gradient of the
cross-entropy, N = training examples, T = temperature ≈ 1/N, η_ω = 0.1, (h₁, h₂) = (0.1, 1)):

    η_t = η₀ · ½[cos(π · (t mod T_cyc)/T_cyc) + 1],   T_cyc = T_total / M cycles  (cyclical cosine)
    ω ← ω − η_ω[T²η_t^{3/2}·δ·τ + T·η_t^{3/4}·ξ_prev⊙∇ − 1/(N·τ)],  τ = sigmoid(ω)   (VB ≡ SGHMC)
    ξ ~ N(0, I);  v ← h₁·v − η_t·h₂·(∇ + δ·θ) + sqrt(2(1 + h₁²))·η_t^{3/4}·T·ξ
    θ ← (θ + τ⊙v) ⊙ m

EM, once per epoch after a warm-up (the first ``em_start_cycle − 1`` cycles): a group j is an input
column of a Linear weight (a kernel (o, i) of a Conv2d weight); its mean square Q_j = mean(θ²).
Q_j < soft threshold → spike (δ = δ₀), else slab (δ = δ₁); Q_j < hard threshold → zeroed for good.
Prediction averages the softmax of the snapshots taken at the end of each cycle.

Departures from the authors' code, and why:
- Thresholds: theirs are absolute, tuned for CIFAR ResNets, and prune all of an MLP. Here each
  layer's are set once, at the end of warm-up, as quantiles of its Q_j (``soft_quantile`` 0.5,
  ``hard_quantile`` 0.2); a spike group decays under δ₀ until it crosses the hard one.
- Small scale: MLP (cfg.hidden; the paper's MNIST size is (300, 100)) on the embedded MNIST subset,
  30 epochs, 3 cycles, EM from cycle 2; biases are sampled too, with the slab decay and no groups.
- Snapshots start at ``first_snapshot_cycle`` (default ``em_start_cycle``): the warm-up net is
  dense, and averaging it in would make the "sparse" predictive use dense weights. One due at an
  epoch's last step is taken after that epoch's EM step, so the last one has the final hard mask.
- η₀ = ``cfg.lr``, set to 0.5 by the method (its registry record; the preset's lr is Adam's, unfit
  for an SGD-like step; with τ ≈ ½ the effective peak step is 0.25); δ₁ = 5e-4, δ₀ = 0.5 (a spike
  group crosses the hard threshold in ~1 epoch). With T = 1/N the noise is tiny (≈1e-4 per step at
  the peak) and τ drifts only 0.500 → 0.512 in 30 epochs: in effect SGD with momentum 0.1.
- Validation during training uses the current sampler state (one network), not the ensemble;
  ``predict_proba`` ignores ``n_samples``: the posterior samples are the K snapshots.
Measured before the kit's split changed (784-300-100-10, 30 epochs, 4,000 training images, seed 0,
one thread, ≈18 s): accuracy 0.940, K = 2, density 0.369; columns alive 278/784, 143/300, 50/100.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..config import TrainConfig
from ..costs import BYTES_PER_FLOAT, forward_flops, layer_costs
from ..data import DataSplits
from ..loop import Run, Stage, Stepper
from ..models import build_model
from . import Method, settings_grid


@dataclass
class EMMCMCOptions:
    """EM-MCMC's ``cfg.method_options``, symbols as in the module docstring (η₀ is ``cfg.lr``)."""

    n_cycles: int = 3  # M
    em_start_cycle: int = 2  # EM once per epoch from this cycle on (1-based)
    first_snapshot_cycle: int | None = None  # None: em_start_cycle
    temperature: float | None = None  # T; None: 1/N
    beta1: float = 0.1  # h₁
    beta2: float = 1.0  # h₂
    eta: float = 0.1  # step size η_ω of the ω (preconditioner) update
    slab_decay: float = 5e-4  # δ₁
    spike_decay: float = 0.5  # δ₀
    soft_quantile: float = 0.5
    hard_quantile: float = 0.2

    def __post_init__(self) -> None:
        if self.first_snapshot_cycle is None:
            self.first_snapshot_cycle = self.em_start_cycle
        for name in ("n_cycles", "em_start_cycle", "first_snapshot_cycle"):
            value = getattr(self, name)
            if value < 1 or (name != "n_cycles" and value > self.n_cycles):
                raise ValueError(f"em_mcmc option {name}={value!r} must be an integer in "
                                 f"1..n_cycles={self.n_cycles}")
        for name in ("eta", "beta2", "spike_decay"):
            if not getattr(self, name) > 0:
                raise ValueError(f"em_mcmc option {name}={getattr(self, name)!r} must be positive")
        if not (0 <= self.beta1 < 1 and self.slab_decay >= 0):
            raise ValueError(f"em_mcmc needs 0 ≤ beta1 < 1 and slab_decay ≥ 0, got "
                             f"{self.beta1!r}, {self.slab_decay!r}")
        if self.temperature is not None and not self.temperature > 0:
            raise ValueError(f"em_mcmc option temperature={self.temperature!r} must be positive")
        if not 0 <= self.hard_quantile <= self.soft_quantile <= 1:
            raise ValueError(f"em_mcmc needs 0 ≤ hard_quantile ≤ soft_quantile ≤ 1, got "
                             f"{self.hard_quantile!r}, {self.soft_quantile!r}")


# ----------------------------------------------------------------------------- schedule
def cycle_position(t: int, total_steps: int, n_cycles: int) -> tuple[int, float]:
    """(cycle index from 1, position (t mod T_cyc)/T_cyc ∈ [0, 1)) of step t, T_cyc = T_total/M."""
    x = t * n_cycles / total_steps  # t / T_cyc
    cycle = min(math.floor(x), n_cycles - 1)
    return cycle + 1, x - cycle


def step_size(t: int, total_steps: int, n_cycles: int, lr_max: float) -> float:
    """η_t = η₀·½[cos(π·(t mod T_cyc)/T_cyc) + 1] (cyclical cosine, restarts at each cycle)."""
    _, frac = cycle_position(t, total_steps, n_cycles)
    return lr_max * 0.5 * (math.cos(math.pi * frac) + 1.0)


# ----------------------------------------------------------------------------- the sampler
class PreconditionedSGHMC(torch.optim.Optimizer):
    """SGHMC with the learned dual preconditioner ω (τ = sigmoid ω) and per-weight decay δ.
    ``state[p]`` holds ``momentum`` (v), ``rho`` (ω), ``xi`` (the last noise ξ), ``decay`` (δ, a
    tensor broadcastable to p), ``mask`` (m: bool, or None = all kept). ``lr`` is η_t: set it each
    step."""

    def __init__(self, params: Any, n_train: int, *, lr: float = 0.1, temperature: float | None =
                 None, beta1: float = 0.1, beta2: float = 1.0, eta: float = 0.1, decay: float = 0.0,
                 generator: torch.Generator | None = None) -> None:
        temperature = 1.0 / n_train if temperature is None else temperature
        super().__init__(params, {"lr": lr, "temperature": temperature, "n_train": n_train,
                                  "beta1": beta1, "beta2": beta2, "eta": eta, "decay": decay})
        self.generator = generator
        for group in self.param_groups:
            for p in group["params"]:
                self.state[p].update(momentum=torch.zeros_like(p), rho=torch.zeros_like(p),
                                     xi=torch.zeros_like(p), mask=None,
                                     decay=torch.full((), float(decay), device=p.device))

    def state_dict(self) -> dict[str, Any]:
        """The optimiser's state plus the noise generator's (a resumed run draws the same)."""
        state = super().state_dict()
        state["generator"] = self.generator.get_state() if self.generator is not None else None
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state = dict(state_dict)
        generator = state.pop("generator", None)
        super().load_state_dict(state)
        if generator is not None and self.generator is not None:
            self.generator.set_state(generator)

    @torch.no_grad()
    def step(self, closure: Any = None) -> None:
        for group in self.param_groups:
            c2, temp, n = group["lr"], group["temperature"], group["n_train"]
            c15, c3 = c2**0.75, c2**1.5  # η_t^{3/4}, η_t^{3/2}
            noise = math.sqrt(2 * (1 + group["beta1"] ** 2)) * c15 * temp
            for p in group["params"]:
                if p.grad is None:
                    continue
                s, g = self.state[p], p.grad
                lam, rho, xi, m = s["decay"], s["rho"], s["xi"], s["momentum"]
                tau = torch.sigmoid(rho)
                # ω ← ω − η_ω[T²η_t^{3/2}δτ + T·η_t^{3/4}·ξ_prev⊙∇ − 1/(Nτ)]
                drift = (tau * lam).mul_(temp**2 * c3).addcmul_(xi, g, value=temp * c15)
                drift.sub_(tau.reciprocal_().mul_(1.0 / n))
                rho.add_(drift, alpha=-group["eta"])
                torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype,
                            out=xi)  # ξ, kept as ξ_prev for the next step
                # v ← h₁·v − η_t·h₂(∇ + δθ) + sqrt(2(1+h₁²))·η_t^{3/4}·T·ξ
                m.mul_(group["beta1"]).add_(g, alpha=-c2 * group["beta2"])
                m.add_(lam * p, alpha=-c2 * group["beta2"]).add_(xi, alpha=noise)
                p.addcmul_(torch.sigmoid(rho), m)  # θ ← θ + τ⊙v
                if s["mask"] is not None:
                    p.mul_(s["mask"])
                    m.mul_(s["mask"])


# ----------------------------------------------------------------------------- groups and the model
def _group_dims(weight: Tensor) -> tuple[int, ...]:
    return (0,) if weight.dim() == 2 else (2, 3)  # Linear (o, i): columns; Conv (o,i,kh,kw): (o, i)


def group_mean_squares(weight: Tensor) -> Tensor:
    """Q_j = mean of θ² over each group j: (in,) for a Linear weight, (out, in) for a Conv2d one."""
    return weight.detach().pow(2).mean(_group_dims(weight))


def expand_groups(group_values: Tensor, weight: Tensor) -> Tensor:
    """Broadcast per-group values to the weight's shape."""
    if weight.dim() == 2:
        return group_values[None, :].expand_as(weight)  # (in,) → (out, in)
    return group_values[:, :, None, None].expand_as(weight)  # (o, i) → (o, i, kh, kw)


class EMMCMCNet(nn.Module):
    """A deterministic net plus EM-MCMC's group state: ``alive_k`` (bool per group, the hard mask),
    ``spike_k`` (bool per group), per-layer thresholds, and the list of snapshot state dicts.
    ``input_shape`` (one example's) is kept for the cost columns of :func:`report`."""

    def __init__(self, net: nn.Module, opts: EMMCMCOptions, input_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.net, self.opts, self.input_shape = net, opts, tuple(input_shape)
        self.layer_names = [n for n, m in net.named_modules()
                            if isinstance(m, (nn.Linear, nn.Conv2d))]
        for k, layer in enumerate(self.weight_layers()):
            groups = group_mean_squares(layer.weight)
            self.register_buffer(f"alive_{k}", torch.ones_like(groups, dtype=torch.bool))
            self.register_buffer(f"spike_{k}", torch.zeros_like(groups, dtype=torch.bool))
        self.thresholds: list[tuple[float, float]] | None = None  # (soft, hard) per layer
        self.snapshots: list[dict[str, Tensor]] = []

    def weight_layers(self) -> list[nn.Module]:
        modules = dict(self.net.named_modules())
        return [modules[n] for n in self.layer_names]

    def alive(self, k: int) -> Tensor:
        return getattr(self, f"alive_{k}")

    def spike(self, k: int) -> Tensor:
        return getattr(self, f"spike_{k}")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def get_extra_state(self) -> dict[str, Any]:
        """Thresholds and snapshots travel with the state dict (checkpoints, resume)."""
        return {"thresholds": [list(t) for t in self.thresholds or []],
                "snapshots": list(self.snapshots)}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.thresholds = [tuple(t) for t in state["thresholds"]] or None
        self.snapshots = list(state["snapshots"])


def em_step(model: EMMCMCNet, sampler: PreconditionedSGHMC) -> int:
    """E-step: spike where Q_j < soft, hard-prune where Q_j < hard; M-step: set δ per group. The
    first call fixes the thresholds from the quantiles of each layer's Q_j. Returns the number of
    groups newly pruned."""
    opts, layers = model.opts, model.weight_layers()
    qs = [group_mean_squares(layer.weight) for layer in layers]
    if model.thresholds is None:
        model.thresholds = [(float(torch.quantile(q.flatten().float(), opts.soft_quantile)),
                             float(torch.quantile(q.flatten().float(), opts.hard_quantile)))
                            for q in qs]
    newly = 0
    with torch.no_grad():
        for k, (layer, q) in enumerate(zip(layers, qs)):
            soft, hard = model.thresholds[k]
            alive, spike = model.alive(k), model.spike(k)
            dead = alive & (q < hard)
            newly += int(dead.sum())
            alive &= ~dead
            spike.copy_(q < soft)
            lam = torch.where(spike, opts.spike_decay, opts.slab_decay).to(layer.weight.dtype)
            state = sampler.state[layer.weight]
            state["decay"] = expand_groups(lam, layer.weight)
            state["mask"] = expand_groups(alive, layer.weight).to(layer.weight.dtype)
            layer.weight.mul_(state["mask"])
            state["momentum"].mul_(state["mask"])
    return newly


# ----------------------------------------------------------------------------- the verbs
def build(cfg: TrainConfig, data: DataSplits, generator: torch.Generator) -> nn.Module:
    """The deterministic ``cfg.model`` (Kaiming init) wrapped with EM-MCMC's group state."""
    opts = METHOD.parse_options(cfg.method_options)
    net = build_model(cfg.replace(method="map"), data.input_shape, data.n_classes, generator)
    return EMMCMCNet(net, opts, data.input_shape)


def _active_costs(model: EMMCMCNet, input_shape: tuple[int, ...]) -> list:
    costs = {c.name: c for c in layer_costs(model.net, input_shape)}
    out = []
    for name, layer in zip(model.layer_names, model.weight_layers()):
        n_active = int((layer.weight != 0).sum())
        out.append(dataclasses.replace(costs[name], n_active=n_active))
    return out


def _cost(model: nn.Module, data: DataSplits) -> tuple[float, float]:
    """3 × the deterministic forward of the weights still alive, per example."""
    per_example = 3 * forward_flops(_active_costs(model, data.input_shape), 1, bayesian=False)
    return per_example, per_example


class CycleStepper(Stepper):
    """Sets the step size η_t before each step; after it, takes a snapshot where a cycle ends (from
    ``first_snapshot_cycle`` on); one due at an epoch's last step waits for that epoch's EM step."""

    def __init__(self, model: EMMCMCNet, cfg: TrainConfig, total: int, per_epoch: int) -> None:
        self.model, self.cfg, self.total, self.per_epoch = model, cfg, total, per_epoch
        self.snapshot_due = False

    def begin(self, t: int, optimizer: torch.optim.Optimizer) -> bool:
        optimizer.param_groups[0]["lr"] = step_size(t, self.total, self.model.opts.n_cycles,
                                                    self.cfg.lr)
        return False

    def end(self, t: int, optimizer: torch.optim.Optimizer) -> None:
        n_cycles = self.model.opts.n_cycles
        cycle, _ = cycle_position(t, self.total, n_cycles)
        ends = t + 1 == self.total or cycle_position(t + 1, self.total, n_cycles)[0] != cycle
        if ends and cycle >= self.model.opts.first_snapshot_cycle:
            if (t + 1) % self.per_epoch == 0:
                self.snapshot_due = True
            else:
                self.model.snapshots.append(_snapshot(self.model))


def stages(model: nn.Module, data: DataSplits, cfg: TrainConfig, **_: Any) -> list[Stage]:
    """One stage: the sampler for ``cfg.epochs`` epochs, EM after each epoch from the end of the
    warm-up, a snapshot per cycle; no best-epoch restore (the snapshots are the answer). Extra
    history columns: step_size (η_t at the epoch's end), tau_mean, groups_pruned, n_snapshots;
    ``density`` = nonzero weights / all; validation uses the current sampler state."""
    if not isinstance(model, EMMCMCNet):
        raise TypeError(f"em_mcmc needs the model from em_mcmc.build, got {type(model).__name__}")
    opts, per_epoch = model.opts, math.ceil(data.n_train / cfg.batch_size)
    total = cfg.epochs * per_epoch
    stepper = CycleStepper(model, cfg, total, per_epoch)

    def sampler(m: nn.Module) -> PreconditionedSGHMC:
        device = next(m.parameters()).device
        return PreconditionedSGHMC(m.net.parameters(), data.n_train, lr=cfg.lr,
                                   temperature=opts.temperature, beta1=opts.beta1,
                                   beta2=opts.beta2, eta=opts.eta, decay=opts.slab_decay,
                                   generator=torch.Generator(device=device).manual_seed(cfg.seed))

    def after_epoch(run: Run) -> dict[str, Any]:
        warm = run.progress.stage_step >= (opts.em_start_cycle - 1) * total / opts.n_cycles - 1e-9
        pruned = em_step(model, run.optimizer) if warm else 0
        if stepper.snapshot_due:
            model.snapshots.append(_snapshot(model))
            stepper.snapshot_due = False
        taus = torch.cat([torch.sigmoid(run.optimizer.state[p]["rho"]).flatten()
                          for p in model.net.parameters()])
        return {"step_size": run.optimizer.param_groups[0]["lr"], "tau_mean": float(taus.mean()),
                "groups_pruned": pruned, "n_snapshots": len(model.snapshots)}

    def finish(run: Run) -> None:
        if not model.snapshots:  # cannot happen with valid options; a guard for hand-made models
            model.snapshots.append(_snapshot(model))

    return [Stage("train", cfg, optimizer=sampler, stepper=stepper, after_epoch=after_epoch,
                  finish=finish, predict=lambda m, x, k: _current_proba(m, x)[None],
                  cost=_cost, select="last", density=_density)]


def _snapshot(model: EMMCMCNet) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.net.state_dict().items()}


def _current_proba(model: EMMCMCNet, x: Tensor, params: dict[str, Tensor] | None = None,
                   batch_size: int = 1000) -> Tensor:
    device = next(model.net.parameters()).device
    out = []
    for start in range(0, len(x), batch_size):
        xb = x[start:start + batch_size].to(device)
        logits = model.net(xb) if params is None else functional_call(model.net, params, (xb,))
        out.append(torch.softmax(logits.float(), dim=-1).cpu())
    return torch.cat(out)  # (N, C)


@torch.no_grad()
def predict_proba(model: nn.Module, x: Tensor, n_samples: int = 0) -> Tensor:
    """Softmax of every snapshot, (K, N, C) with K = number of snapshots (``n_samples`` is not
    used: the posterior sample set is the snapshots; before any snapshot, K = 1 current net)."""
    model.eval()
    if not model.snapshots:
        return _current_proba(model, x)[None]  # (1, N, C)
    return torch.stack([_current_proba(model, x, snap) for snap in model.snapshots])  # (K, N, C)


def _density(model: EMMCMCNet) -> float:
    layers = model.weight_layers()
    return sum(int((layer.weight != 0).sum()) for layer in layers) / sum(
        layer.weight.numel() for layer in layers)


def report(model: nn.Module, notes: dict[str, Any] | None = None) -> dict[str, float | int]:
    """Density reached (nonzero weights / all, final net), surviving input units (columns, or
    input channels for conv) and groups pruned per layer, number of snapshots. The common cost
    columns become what the predictive really needs: K snapshots of the surviving weights (plus
    biases/BN, float32) and a bitmap of the alive groups for ``model_size_bytes``; K forward passes
    over the surviving weights for ``inference_flops_per_example`` (K = snapshots, at least 1)."""
    n_nets = max(1, len(model.snapshots))
    out: dict[str, float | int] = {"density": _density(model), "n_snapshots": len(model.snapshots)}
    costs = _active_costs(model, model.input_shape)
    weights = {id(layer.weight) for layer in model.weight_layers()}
    others = sum(p.numel() for p in model.net.parameters() if id(p) not in weights)
    bitmaps = sum(-(-model.alive(k).numel() // 8) for k in range(len(model.layer_names)))
    kept = sum(c.n_active for c in costs) + others  # floats of one network
    out["model_size_bytes"] = BYTES_PER_FLOAT * n_nets * kept + bitmaps
    out["inference_flops_per_example"] = n_nets * forward_flops(costs, 1, bayesian=False)
    for k, name in enumerate(model.layer_names):
        alive = model.alive(k)
        units = alive if alive.dim() == 1 else alive.any(0)  # conv: input channels with a kernel
        out[f"units_alive_{name}"] = int(units.sum())
        out[f"units_total_{name}"] = int(units.numel())
        out[f"groups_pruned_{name}"] = int((~alive).sum())
    if model.thresholds is not None:
        out["soft_threshold_first_layer"] = model.thresholds[0][0]
        out["hard_threshold_first_layer"] = model.thresholds[0][1]
    return out


METHOD = Method("em_mcmc", "EM-MCMC spike-and-slab", build, stages, predict_proba, report,
                density="own", options=EMMCMCOptions, defaults={"lr": 0.5},  # tuned: its step
                tuning=settings_grid(lr=(0.5, 1.0, 0.2, 0.1)))  # size η₀ (it has no KL weight)
