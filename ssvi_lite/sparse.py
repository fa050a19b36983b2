"""The mean-field Linear layer that stores only its active weights: SSVI's sparse execution path
(docs/method.md §8; chosen per run by ``TrainConfig.kernels``, see :mod:`ssvi_lite.kernels`).

:class:`SparseMeanFieldLinear` is a :class:`~ssvi_lite.layers.MeanFieldLayer` (so ``kl_sum``,
``forward_mode``, the FLOPs count, the swap schedule and the predictive treat it like its masked
twin) whose ``mu`` and ``rho`` are ``(n_active,)`` Parameters in a fixed *slot* order, with int64
buffers ``rows``/``cols`` holding each slot's position (so a ``state_dict`` carries the support).
Its forward runs the kernels of :mod:`ssvi_lite.sparse_ops`; the CSR structures of W and Wᵀ are
rebuilt only when the support changes (:meth:`SparseMeanFieldLinear.swap`, a loaded state).

Same numbers as the masked layer (tests/test_sparse.py): the LRT noise is drawn as the masked
layer draws it, ``(B, out)``; ``sample`` mode draws only the active entries' noise, in row-major
(CSR) order — the same law, another stream — unless :func:`masked_noise_stream` is on, when it
draws the masked layer's dense ``(out, in)`` noise and keeps the active entries (seeded runs then
agree with the masked path sample for sample, at the cost of the dense draw).

A subspace update (:func:`decide_swap`, then :meth:`SparseMeanFieldLinear.swap`) takes the masked
layer's decision entry for entry and keeps the slots fixed: entries that stay keep their slot,
grown entries take the freed slots; ``mu``/``rho`` stay the same Parameter objects (an optimiser
keeps stepping them) and the optimiser state of the changed slots is zeroed.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .config import FORWARD_MODES
from .criteria import addition_score, removal_score, top_k_mask
from .layers import (
    MeanFieldLayer,
    MeanFieldLinear,
    _check_positive,
    _check_sizes,
    gaussian_kl,
    softplus_inverse,
)
from .sparse_ops import SparseStructure, sparse_linear, sparse_lrt_linear

__all__ = ["SparseMeanFieldLinear", "decide_swap", "masked_noise_stream", "reset_slot_state",
           "top_k_dense"]


class SparseMeanFieldLinear(MeanFieldLayer):
    """Mean-field Gaussian Linear layer storing only its active weights.

    ``mu``, ``rho``: Parameters of shape (n_active,) in slot order; ``rows``, ``cols``: int64
    buffers with each slot's position; ``bias``: (out,) or None. The same ``mode`` (lrt, sample,
    mean), ``capture_dense_grad`` / ``dense_grad``, ``batch_rows``, ``sigma``, ``n_active``,
    ``n_weights``, ``mask`` (built on each call) and KL as
    :class:`~ssvi_lite.layers.MeanFieldLinear`.
    """

    noise_like_masked = False  # sample mode: draw the masked layer's stream (masked_noise_stream)

    def __init__(self, in_features: int, out_features: int, mask: Tensor | None = None,
                 bias: bool = True, *, prior_sigma: float = 0.1, sigma_init: float = 1e-3,
                 mu: Tensor | None = None, rho: Tensor | None = None) -> None:
        super().__init__()
        _check_sizes("SparseMeanFieldLinear", 1, in_features=in_features,
                     out_features=out_features)
        _check_positive("prior_sigma", prior_sigma)
        _check_positive("sigma_init", sigma_init)
        self.in_features, self.out_features = in_features, out_features
        mask = torch.ones(out_features, in_features, dtype=torch.bool) if mask is None else mask
        if not isinstance(mask, Tensor) or tuple(mask.shape) != (out_features, in_features):
            raise ValueError(f"mask must be a bool tensor of shape {(out_features, in_features)}"
                             f", got {tuple(getattr(mask, 'shape', ()))}")
        rows, cols = mask.to(torch.bool).nonzero(as_tuple=True)
        n = rows.numel()
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        if mu is None:  # Kaiming normal of the dense fan-in, as MeanFieldLinear before its mask
            mu = torch.randn(n, device=mask.device) * math.sqrt(2.0 / in_features)
        if rho is None:
            rho = torch.full((n,), float(softplus_inverse(torch.tensor(sigma_init))),
                             device=mask.device)
        if mu.shape != (n,) or rho.shape != (n,):
            raise ValueError(f"mu and rho must have shape ({n},) (the mask's active count), got "
                             f"{tuple(mu.shape)} and {tuple(rho.shape)}")
        self.mu = nn.Parameter(mu.detach().clone())
        self.rho = nn.Parameter(rho.detach().clone())
        self.bias = nn.Parameter(torch.zeros(out_features, device=mask.device)) if bias else None
        self.prior_sigma = float(prior_sigma)
        self.mode = "lrt"
        self.capture_dense_grad = False  # written by subspace.capture_dense_grads only
        self.dense_grad: Tensor | None = None
        self.batch_rows: tuple[int, int, int] | None = None
        self.structure = SparseStructure(self.rows, self.cols, (out_features, in_features))
        self.register_load_state_dict_post_hook(_rebuild_after_load)

    # --------------------------------------------------------------- shape, support, conversions
    @property
    def n_active(self) -> int:
        return self.mu.numel()

    @property
    def n_weights(self) -> int:
        return self.in_features * self.out_features

    @property
    def mask(self) -> Tensor:
        """The support as a dense bool (out, in) tensor (built on each call)."""
        return self.structure.dense_mask()

    def active_sigma(self) -> Tensor:
        """σ of the active weights in row-major order, as the masked layer gives them."""
        return self.structure.csr_values(self.sigma)

    def rebuild(self) -> None:
        """Re-derive the index structure from ``rows``/``cols`` (after they change)."""
        self.structure = SparseStructure(self.rows, self.cols,
                                         (self.out_features, self.in_features))

    def _apply(self, fn: Any, recurse: bool = True) -> SparseMeanFieldLinear:
        super()._apply(fn, recurse)  # .to(), .cuda(), .double(): move the structure too
        if self.structure.device != self.rows.device:
            self.rebuild()
        return self

    @classmethod
    def from_masked(cls, layer: MeanFieldLinear) -> SparseMeanFieldLinear:
        """The sparse twin of a masked layer: its active μ, ρ (row-major slots), bias, prior
        and mode; same device and dtype."""
        if not isinstance(layer, MeanFieldLinear):
            raise TypeError(f"from_masked takes a MeanFieldLinear, got {type(layer).__name__}")
        mask = layer.mask.detach()
        new = cls(layer.in_features, layer.out_features, mask, bias=layer.bias is not None,
                  prior_sigma=layer.prior_sigma, mu=layer.mu[mask], rho=layer.rho[mask])
        new.to(device=layer.mu.device, dtype=layer.mu.dtype)  # before copying the bias
        if layer.bias is not None:
            with torch.no_grad():
                new.bias.copy_(layer.bias)
        new.mode = layer.mode
        return new

    def to_masked(self, into: MeanFieldLinear | None = None) -> MeanFieldLinear:
        """The masked (dense-storage) layer with the same support, μ, ρ, bias, prior and mode.

        Inactive entries get μ = 0 and ρ = the mean active ρ (a masked layer never reads them),
        or, with ``into`` (a MeanFieldLinear of the same shape, written in place and returned),
        keep its ρ there, so masked → sparse → masked is exact. The global RNG is left as it was.
        """
        if into is None:
            with torch.random.fork_rng(devices=[]):  # MeanFieldLinear's init draws μ
                into = MeanFieldLinear(self.in_features, self.out_features,
                                       bias=self.bias is not None, prior_sigma=self.prior_sigma)
            into.to(device=self.mu.device, dtype=self.mu.dtype)
            with torch.no_grad():
                into.rho.fill_(float(self.rho.mean()) if self.n_active else 0.0)
        elif (into.in_features, into.out_features) != (self.in_features, self.out_features) \
                or (into.bias is None) != (self.bias is None):
            raise ValueError("into must be a MeanFieldLinear of the same shape and bias")
        st = self.structure
        with torch.no_grad():
            into.mask.copy_(st.dense_mask())
            into.mu.zero_()
            into.mu[st.rows, st.cols] = self.mu
            into.rho[st.rows, st.cols] = self.rho
            if self.bias is not None:
                into.bias.copy_(self.bias)
        into.prior_sigma, into.mode = self.prior_sigma, self.mode
        return into

    # --------------------------------------------------------------- forward and KL
    def kl_sum(self) -> Tensor:
        """Σ over active weights of KL(N(μ_i, σ_i²) ‖ N(0, prior_sigma²))."""
        return gaussian_kl(self.mu, self.sigma, self.prior_sigma).sum()

    def forward(self, x: Tensor, eps: Tensor | None = None) -> Tensor:
        """``eps``: the noise of this call (LRT: (B, out); sample: (n_active,) in slot order);
        drawn when None. The kernels do not autocast: under autocast the input is cast to the
        weights' dtype and the layer runs in it."""
        if torch.is_autocast_enabled(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                return self._forward(x.to(self.mu.dtype), eps)
        return self._forward(x, eps)

    def _forward(self, x: Tensor, eps: Tensor | None) -> Tensor:
        lead = x.shape[:-1]
        if x.dim() != 2:
            x = x.reshape(-1, self.in_features)
        sink = self if self.capture_dense_grad else None
        st = self.structure
        if self.mode == "lrt":
            sigma = self.sigma
            eps = self._lrt_noise(x) if eps is None else eps
            out = sparse_lrt_linear(x, self.mu, sigma * sigma, self.bias, eps, st, sink)
        elif self.mode == "sample":
            eps = self._sample_noise() if eps is None else eps
            out = sparse_linear(x, self.mu + self.sigma * eps, self.bias, st, sink)
        elif self.mode == "mean":
            out = sparse_linear(x, self.mu, self.bias, st, sink)
        else:
            raise ValueError(f"mode={self.mode!r} is not known; "
                             f"choose one of {', '.join(FORWARD_MODES)}")
        return out if len(lead) == 1 else out.reshape(*lead, self.out_features)

    def _lrt_noise(self, x: Tensor) -> Tensor:
        """ε ~ N(0, I) of shape (B, out), drawn as MeanFieldLinear draws it; under data
        parallelism this rank's rows of the global batch's draw."""
        start, stop, total = self.batch_rows or (0, x.shape[0], x.shape[0])
        return torch.randn(total, self.out_features, dtype=x.dtype, device=x.device)[start:stop]

    def _sample_noise(self) -> Tensor:
        """One weight draw's ε, (n_active,) in slot order: the active entries' noise drawn in
        row-major order (or, under :func:`masked_noise_stream`, the masked layer's dense draw)."""
        kw = dict(dtype=self.mu.dtype, device=self.mu.device)
        st = self.structure
        if self.noise_like_masked:
            return st.gather(torch.randn(st.shape, **kw))
        return st.slot_values(torch.randn(self.n_active, **kw))

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, sparse, " + super().extra_repr()

    # --------------------------------------------------------------- subspace update
    def swap(self, keep: Tensor, added: Tensor,
             optimizer: torch.optim.Optimizer | None = None) -> Tensor:
        """Install the support ``keep | added`` and return the slots that changed (int64, sorted).

        ``keep``: the active entries that stay, a bool (out, in) mask or a bool (n_active,) mask
        over slots; ``added``: bool (out, in),
        entries chosen by the addition score, disjoint from ``keep`` (it may hold entries active
        before that were not kept: those are re-added and keep their slot, μ and ρ). Entries
        active before and not in ``keep | added`` free their slots; the newly grown entries take
        them in row-major order with μ = 0 and ρ = mean ρ of ``keep`` (taken in row-major order,
        of all active entries if ``keep`` is empty), as :func:`ssvi_lite.subspace.apply_swap`.
        ``mu``/``rho`` stay the same Parameter objects; with ``optimizer``, their per-slot state
        at the changed slots is zeroed.
        """
        st = self.structure
        old = st.dense_mask()
        keep, added = keep.to(torch.bool), added.to(torch.bool)
        if keep.dim() == 1:  # over slots
            keep = st.to_dense(keep)
        _check_swap(old, keep, added, self.n_active)
        new = keep | added
        freed = (~new[st.rows, st.cols]).nonzero().squeeze(1)  # ascending slot ids
        grown_rows, grown_cols = (new & ~old).nonzero(as_tuple=True)  # row-major
        kept = st.csr_values(keep[st.rows, st.cols])  # row-major order, as the masked layer
        with torch.no_grad():
            rho_csr = st.csr_values(self.rho)
            rho_new = rho_csr[kept].mean() if bool(kept.any()) else rho_csr.mean()
            self.mu[freed] = 0.0
            self.rho[freed] = rho_new
            self.rows[freed] = grown_rows
            self.cols[freed] = grown_cols
        self.rebuild()
        if optimizer is not None:
            reset_slot_state(optimizer, self, freed)
        return freed


def _check_swap(old: Tensor, keep: Tensor, added: Tensor, n_active: int) -> None:
    """ValueError unless ``keep ⊆ old``, ``keep ∩ added = ∅`` and |keep ∪ added| = n_active."""
    if keep.shape != old.shape or added.shape != old.shape:
        raise ValueError(f"keep and added must be bool {tuple(old.shape)} masks")
    if bool((keep & ~old).any()):
        raise ValueError("keep holds entries that are not active")
    if bool((keep & added).any()):
        raise ValueError("keep and added overlap")
    if int((keep | added).sum()) != n_active:
        raise ValueError(f"keep | added has {int((keep | added).sum())} entries; the layer "
                         f"keeps {n_active}")


def decide_swap(layer: SparseMeanFieldLinear, n_swap: int, removal: str, addition: str
                ) -> tuple[Tensor, Tensor]:
    """(keep, added) bool (out, in) masks for :meth:`SparseMeanFieldLinear.swap`: the decision
    :func:`ssvi_lite.subspace.swap_layer` takes for the masked twin, entry for entry.

    The removal scores the active entries in row-major (= CSR) order, as the masked layer does,
    so ties (broken by the lower flat index) and the ``random`` score's draws land on the same
    entries; the addition selects on the dense score without gathering its candidates
    (:func:`top_k_dense`). Changes nothing.
    """
    if layer.dense_grad is None and addition == "grad":
        raise RuntimeError("the 'grad' addition score needs the dense gradient of this batch; "
                           "call capture_dense_grads(layers, True) and run backward first")
    st = layer.structure
    with torch.no_grad():
        scores = removal_score(removal, st.csr_values(layer.mu), st.csr_values(layer.sigma))
        kept = top_k_mask(scores, layer.n_active - n_swap)  # over CSR positions
        keep = torch.zeros(st.shape, dtype=torch.bool, device=layer.mu.device)
        keep[st.csr_rows(), st.col.long()] = kept
        grad = layer.dense_grad if layer.dense_grad is not None else torch.zeros(
            st.shape, dtype=layer.mu.dtype, device=layer.mu.device)
        added = top_k_dense(addition_score(addition, grad), n_swap, allowed=~keep)
    return keep, added


def top_k_dense(scores: Tensor, k: int, allowed: Tensor) -> Tensor:
    """:func:`ssvi_lite.criteria.top_k_mask` (the k highest ``scores`` among ``allowed``, ties
    to the lower flat index) in passes over the dense tensor instead of a gather of the allowed
    entries: 2-3× faster for a large layer. Falls back to ``top_k_mask`` where an allowed score
    is NaN or -inf (the addition scores never are: |∂CE/∂μ| ≥ 0, U(0, 1))."""
    if not 0 < k <= scores.numel():
        return top_k_mask(scores, k, allowed)
    values = scores.detach().masked_fill(~allowed, -math.inf).reshape(-1)
    kth = torch.topk(values, k, sorted=False).values.min()
    if bool(torch.isnan(kth)) or kth == -math.inf:
        return top_k_mask(scores, k, allowed)
    chosen = values >= kth
    surplus = int(chosen.sum()) - k
    if surplus > 0:  # ties at the k-th value: keep the lowest flat indices
        ties = (values == kth).nonzero().squeeze(1)
        chosen[ties[ties.numel() - surplus:]] = False
    return chosen.reshape(scores.shape)


def reset_slot_state(optimizer: torch.optim.Optimizer, layer: SparseMeanFieldLinear,
                     slots: Tensor) -> None:
    """Zero every per-slot state tensor (momentum, Adam moments) of ``layer.mu``/``layer.rho``."""
    for param in (layer.mu, layer.rho):
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value[slots] = 0


@contextmanager
def masked_noise_stream(on: bool = True) -> Iterator[None]:
    """Within the block, sparse layers in ``sample`` mode draw the masked layers' dense noise
    (and keep the active entries), so a seeded sparse run matches a masked one draw for draw
    (tests and parity checks; it costs a dense draw per sample)."""
    before = SparseMeanFieldLinear.noise_like_masked
    SparseMeanFieldLinear.noise_like_masked = on
    try:
        yield
    finally:
        SparseMeanFieldLinear.noise_like_masked = before


def _rebuild_after_load(module: nn.Module, incompatible_keys: Any) -> None:
    module.rebuild()
