"""Sparse storage and kernels for the SSVI Linear layer: only the active weights are multiplied.

The masked layers of :mod:`ssvi_lite.layers` keep μ, ρ dense and multiply by μ⊙m, so an SSVI step
costs a dense VI step whatever the density. Here a layer stores only its ``n_active`` weights, in
a fixed *slot* order, and multiplies with sparse kernels (benchmarks/sparse_layer.py measures them).

Pieces:
- :class:`SparseStructure` - the index structure of one (out × in) support: slot → (row, col), the
  CSR of W and the CSR of Wᵀ, each with the permutation between CSR order and slot order. Values
  are not part of it: μ, ρ are ``(n_active,)`` tensors in slot order, so they can be
  ``nn.Parameter``\\ s whose length never changes; the structure is rebuilt only when the support
  changes.
- :func:`sparse_lrt_linear` / :func:`sparse_linear` - autograd functions for the LRT forward
  (mean = x Wμᵀ + b, var = x² (Wσ²)ᵀ, out = mean + sqrt(var + 1e-8)·ε) and for a plain sparse
  Linear (``sample`` and ``mean`` modes). Backward gives grads for x, the active values and the
  bias, and on request the dense gradient gᵀx of the mean path (gradient addition needs it on
  subspace-update steps only).
- :class:`SparseMeanFieldLinear` - a prototype module with ``mu``, ``rho`` of shape (n_active,),
  the same modes, KL and attributes as :class:`ssvi_lite.layers.MeanFieldLinear`, conversions
  from/to it, and :meth:`SparseMeanFieldLinear.swap` (removed entries' slots go to added ones).

Kernels (chosen by measurement on a 2-core AMD EPYC, torch 2.13 CPU with MKL; numbers in
benchmarks/results/sparse_layer_cpu.txt, made by benchmarks/sparse_layer.py):
- x Wᵀ and g W: ATen's CSR kernel ``torch.sparse.mm(csr, dense, reduce="sum")`` on W's CSR and
  on a second CSR of Wᵀ (:func:`spmm`): 0.22-0.26 of the dense product at density 0.05. MKL's CSR
  product is level with it (±10%, 1 and 2 threads), with int64 indices or a strided operand
  10-25% slower; COO costs 2.5×, ``mm(dense, csr)`` 7-8× and the CSC view ``W.t()`` 3.5× as
  much. The ATen kernel is chosen as it needs neither MKL nor 32-bit indices;
- the gradient of the active entries: ``torch.sparse.sampled_addmm`` on W's pattern with int32
  indices: 0.17-0.24 of the dense product; a gather/sum over the active entries is 9-16× the
  dense product;
- a feature-major layout: activations are kept as (features, batch) contiguous and handed back as
  their transposed view, so a stack of sparse layers passes (B, F) tensors with column-major
  strides and never copies between them (every kernel above is fastest in that layout);
- slot ↔ CSR order by ``index_select`` (3× faster than ``values[perm]``); the mean and variance
  paths as separate products (one block-diagonal product each way measured 0.96-1.01 of it:
  not worth the concatenations).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import FORWARD_MODES
from .criteria import addition_score, removal_score, top_k_mask
from .layers import LRT_EPS, MeanFieldLinear, softplus_inverse

__all__ = ["SparseStructure", "SparseMeanFieldLinear", "sparse_lrt_linear", "sparse_linear", "spmm",
           "decide_swap", "reset_slot_state"]

_INT32_MAX = 2**31 - 1

with warnings.catch_warnings():  # torch warns once per process that CSR is "beta"; say it here
    warnings.simplefilter("ignore")
    torch.sparse_csr_tensor(torch.zeros(2, dtype=torch.int32), torch.zeros(0, dtype=torch.int32),
                            torch.zeros(0), (1, 1), check_invariants=False)


def _csr(crow: Tensor, col: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def spmm(a: Tensor, b: Tensor) -> Tensor:
    """CSR ``a`` @ dense ``b``. On the CPU through ATen's own CSR kernel (``reduce="sum"``: rows
    of ``b`` are read contiguously and vectorised over the batch), which measured level with
    MKL's (``torch.sparse.mm`` without ``reduce``) and works in builds without MKL and with
    int64 indices alike; elsewhere the vendor kernel (cuSPARSE)."""
    if a.device.type == "cpu":
        return torch.sparse.mm(a, b, reduce="sum")
    return torch.sparse.mm(a, b)


class SparseStructure:
    """Index structure of one sparse (out × in) weight whose active entries sit in fixed slots.

    ``rows[k], cols[k]`` is the position of slot k. For the kernels it keeps the CSR of W
    (``crow``, ``col``; CSR position p holds slot ``perm[p]``) and the CSR of Wᵀ (``crow_t``,
    ``col_t``, ``perm_t``), with int32 indices where they fit. Values are never stored: pass a
    (n_active,) tensor in slot order to :meth:`w` / :meth:`w_t`.
    """

    def __init__(self, rows: Tensor, cols: Tensor, shape: tuple[int, int]) -> None:
        out, inp = int(shape[0]), int(shape[1])
        # own copies: the layer's rows/cols buffers change in place on a swap, while a graph
        # built before it may still hold this structure
        rows, cols = rows.reshape(-1).long().clone(), cols.reshape(-1).long().clone()
        if rows.shape != cols.shape:
            raise ValueError(f"rows and cols differ in length: {rows.numel()} vs {cols.numel()}")
        n = rows.numel()
        if n and (int(rows.min()) < 0 or int(rows.max()) >= out or int(cols.min()) < 0
                  or int(cols.max()) >= inp):
            raise ValueError(f"an active position lies outside the weight's shape {(out, inp)}")
        self.shape = (out, inp)
        self.rows, self.cols = rows, cols
        self.n_active = n
        key = rows * inp + cols
        perm = torch.argsort(key)
        if n > 1 and not bool((key[perm].diff() > 0).all()):
            raise ValueError("two slots hold the same (row, col) position")
        perm_t = torch.argsort(cols * out + rows)
        idx = torch.int32 if max(n, out, inp) <= _INT32_MAX else torch.int64
        self.crow = _row_pointers(rows, out).to(idx)
        self.col = cols[perm].to(idx)
        self.crow_t = _row_pointers(cols, inp).to(idx)
        self.col_t = rows[perm_t].to(idx)
        arange = torch.arange(n, device=rows.device)
        # slot order == CSR order (a freshly built layer): the gathers below are skipped
        self.perm = None if bool((perm == arange).all()) else perm
        self.inv_perm = None if self.perm is None else torch.empty_like(perm).scatter_(0, perm,
                                                                                        arange)
        self.perm_t = perm_t
        self._zeros: dict[torch.dtype, Tensor] = {}

    @classmethod
    def from_mask(cls, mask: Tensor) -> SparseStructure:
        """Slots in row-major order of the True entries of a bool (out, in) ``mask``."""
        if mask.dim() != 2 or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a 2-D bool tensor, got {mask.dtype} "
                             f"{tuple(mask.shape)}")
        rows, cols = mask.nonzero(as_tuple=True)
        return cls(rows, cols, tuple(mask.shape))

    @property
    def device(self) -> torch.device:
        return self.rows.device

    def dense_mask(self) -> Tensor:
        """The support as a bool (out, in) tensor."""
        mask = torch.zeros(self.shape, dtype=torch.bool, device=self.device)
        mask[self.rows, self.cols] = True
        return mask

    def to_dense(self, values: Tensor) -> Tensor:
        """Scatter slot-ordered ``values`` into a dense (out, in) tensor (zeros elsewhere)."""
        dense = values.new_zeros(self.shape)
        dense[self.rows, self.cols] = values
        return dense

    def gather(self, dense: Tensor) -> Tensor:
        """The active entries of a dense (out, in) tensor, in slot order."""
        return dense[self.rows, self.cols]

    def csr_values(self, values: Tensor) -> Tensor:
        """Slot-ordered values → CSR order of W."""
        return values if self.perm is None else values.index_select(0, self.perm)

    def slot_values(self, csr_values: Tensor) -> Tensor:
        """CSR order of W → slot order (for gradients)."""
        if self.inv_perm is None:
            return csr_values
        return csr_values.index_select(0, self.inv_perm)

    def w(self, values: Tensor) -> Tensor:
        """W (out × in) as a CSR tensor holding slot-ordered ``values``."""
        return _csr(self.crow, self.col, self.csr_values(values), self.shape)

    def w_t(self, values: Tensor) -> Tensor:
        """Wᵀ (in × out) as a CSR tensor holding slot-ordered ``values``."""
        return _csr(self.crow_t, self.col_t, values.index_select(0, self.perm_t),
                    (self.shape[1], self.shape[0]))

    def pattern(self, dtype: torch.dtype) -> Tensor:
        """W's support with zero values, the mask argument of ``sampled_addmm`` (beta=0 still
        multiplies the mask's values, so they must be finite)."""
        zeros = self._zeros.get(dtype)
        if zeros is None:
            zeros = self._zeros[dtype] = torch.zeros(self.n_active, dtype=dtype,
                                                     device=self.device)
        return _csr(self.crow, self.col, zeros, self.shape)

    def sampled_grad(self, g_t: Tensor, x_t: Tensor) -> Tensor:
        """The active entries of ``g_t @ x_t.t()`` in slot order (the gradient of W's values).

        ``g_t`` is (out, B) and ``x_t`` is (in, B), both feature-major contiguous: the kernel dots
        row i of g_t with row j of x_t for every active (i, j).
        """
        sampled = torch.sparse.sampled_addmm(self.pattern(g_t.dtype), g_t, x_t.t(), beta=0.0)
        return self.slot_values(sampled.values())

    def to(self, device: torch.device | str) -> SparseStructure:
        return SparseStructure(self.rows.to(device), self.cols.to(device), self.shape)


def _row_pointers(rows: Tensor, n_rows: int) -> Tensor:
    crow = torch.zeros(n_rows + 1, dtype=torch.long, device=rows.device)
    crow[1:] = torch.bincount(rows, minlength=n_rows).cumsum(0)
    return crow


def _feature_major(x: Tensor) -> Tensor:
    """x (B, F) → (F, B) contiguous; free when x is already the transposed view of such a tensor
    (what these functions return)."""
    return x.t().contiguous()


def _capture(sink: object, g_t: Tensor, x_t: Tensor) -> None:
    if sink is not None and getattr(sink, "capture_dense_grad", False):
        sink.dense_grad = g_t @ x_t.t()  # (out, in) = g_outᵀ · x, every entry


# ----------------------------------------------------------------------------- autograd functions
class _SparseLinear(torch.autograd.Function):
    """y = x Wᵀ + b with W sparse (slot-ordered values)."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, st: SparseStructure,
                sink: object) -> Tensor:
        x_t = _feature_major(x)
        y_t = spmm(st.w(values), x_t)
        if bias is not None:
            y_t.add_(bias.unsqueeze(1))
        ctx.st, ctx.sink, ctx.has_bias = st, sink, bias is not None
        ctx.save_for_backward(x_t, values)
        return y_t.t()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_t, values = ctx.saved_tensors
        st = ctx.st
        g_t = _feature_major(grad)
        gx = gv = gb = None
        if ctx.needs_input_grad[0]:
            gx = spmm(st.w_t(values), g_t).t()
        if ctx.needs_input_grad[1]:
            gv = st.sampled_grad(g_t, x_t)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = g_t.sum(1)
        _capture(ctx.sink, g_t, x_t)
        return gx, gv, gb, None, None


class _SparseLRTLinear(torch.autograd.Function):
    """out = (x Wμᵀ + b) + sqrt(x² Wvᵀ + 1e-8)·ε with Wμ, Wv sparse on one support."""

    @staticmethod
    def forward(ctx, x: Tensor, mu: Tensor, var: Tensor, bias: Tensor | None, eps: Tensor,
                st: SparseStructure, sink: object) -> Tensor:
        x_t = _feature_major(x)
        x2_t = x_t * x_t
        mean_t = spmm(st.w(mu), x_t)
        if bias is not None:
            mean_t.add_(bias.unsqueeze(1))
        sd_t = spmm(st.w(var), x2_t).add_(LRT_EPS).sqrt_()
        eps_t = eps.t()
        out_t = torch.addcmul(mean_t, sd_t, eps_t)
        dvar_t = sd_t.reciprocal_().mul_(eps_t).mul_(0.5)  # ∂out/∂var = ε / (2 sd), in sd's place
        ctx.st, ctx.sink, ctx.has_bias = st, sink, bias is not None
        ctx.save_for_backward(x_t, x2_t, mu, var, dvar_t)
        return out_t.t()

    @staticmethod
    def backward(ctx, grad: Tensor):
        x_t, x2_t, mu, var, dvar_t = ctx.saved_tensors
        st = ctx.st
        g_t = _feature_major(grad)  # ∂L/∂mean
        gv_t = g_t * dvar_t  # ∂L/∂var
        gx = gmu = gvar = gb = None
        if ctx.needs_input_grad[0]:  # Wμᵀ-path + 2x ⊙ Wvᵀ-path
            gx = torch.addcmul(spmm(st.w_t(mu), g_t), spmm(st.w_t(var), gv_t), x_t,
                               value=2.0).t()
        if ctx.needs_input_grad[1]:
            gmu = st.sampled_grad(g_t, x_t)
        if ctx.needs_input_grad[2]:
            gvar = st.sampled_grad(gv_t, x2_t)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            gb = g_t.sum(1)
        _capture(ctx.sink, g_t, x_t)
        return gx, gmu, gvar, gb, None, None, None


def sparse_linear(x: Tensor, values: Tensor, bias: Tensor | None, st: SparseStructure,
                  sink: object = None) -> Tensor:
    """x Wᵀ + b for a 2-D x (B, in), W sparse with slot-ordered ``values`` (n_active,).

    Differentiable in x, values and bias. When ``sink.capture_dense_grad`` is true, backward also
    stores ``sink.dense_grad`` = ∂L/∂W for every entry of W (dense, (out, in)). The result is a
    (B, out) view of a (out, B) contiguous tensor.
    """
    return _SparseLinear.apply(x, values, bias, st, sink)


def sparse_lrt_linear(x: Tensor, mu: Tensor, var: Tensor, bias: Tensor | None, eps: Tensor,
                      st: SparseStructure, sink: object = None) -> Tensor:
    """The LRT forward of a sparse Linear: (x Wμᵀ + b) + sqrt(x² Wvᵀ + 1e-8)·ε.

    ``mu``, ``var`` (= σ²) are slot-ordered (n_active,); ``eps`` is (B, out). Differentiable in
    x, mu, var and bias (not ε). ``sink`` as in :func:`sparse_linear` (the mean path's gradient).
    """
    return _SparseLRTLinear.apply(x, mu, var, bias, eps, st, sink)


# ----------------------------------------------------------------------------- the layer
class SparseMeanFieldLinear(nn.Module):
    """Mean-field Gaussian Linear layer storing only its active weights (prototype).

    ``mu``, ``rho``: Parameters of shape (n_active,) in slot order; ``rows``, ``cols``: int64
    buffers with each slot's position (so ``state_dict`` holds the support and loading it rebuilds
    the structure); ``bias``: (out,) or None. The same ``mode`` (lrt, sample, mean),
    ``capture_dense_grad`` / ``dense_grad``, ``batch_rows``, ``sparse`` and KL as
    :class:`~ssvi_lite.layers.MeanFieldLinear`.
    """

    def __init__(self, in_features: int, out_features: int, mask: Tensor | None = None,
                 bias: bool = True, *, prior_sigma: float = 0.1, sigma_init: float = 1e-3,
                 mu: Tensor | None = None, rho: Tensor | None = None) -> None:
        super().__init__()
        if not (prior_sigma > 0 and math.isfinite(prior_sigma)):
            raise ValueError(f"prior_sigma must be a positive number, got {prior_sigma!r}")
        if not (sigma_init > 0 and math.isfinite(sigma_init)):
            raise ValueError(f"sigma_init must be a positive number, got {sigma_init!r}")
        self.in_features, self.out_features = in_features, out_features
        if mask is None:
            mask = torch.ones(out_features, in_features, dtype=torch.bool)
        if tuple(mask.shape) != (out_features, in_features):
            raise ValueError(f"mask must have shape {(out_features, in_features)}, "
                             f"got {tuple(mask.shape)}")
        rows, cols = mask.nonzero(as_tuple=True)
        n = rows.numel()
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)
        # default μ: Kaiming normal of the dense fan-in, as MeanFieldLinear before its mask
        if mu is None:
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
        self.sparse = n < mask.numel()
        self.capture_dense_grad = False
        self.dense_grad: Tensor | None = None
        self.batch_rows: tuple[int, int, int] | None = None
        # LRT noise: drawn (out, B) (feature-major, the kernels' layout: ~5% faster per step) or,
        # when True, (B, out) - the same stream as MeanFieldLinear, so seeded runs agree
        self.noise_like_masked = False
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

    @property
    def sigma(self) -> Tensor:
        """σ = softplus(ρ), (n_active,)."""
        return F.softplus(self.rho)

    def rebuild(self) -> None:
        """Re-derive the index structure from ``rows``/``cols`` (after they change)."""
        self.structure = SparseStructure(self.rows, self.cols,
                                         (self.out_features, self.in_features))

    def _apply(self, fn, recurse: bool = True):  # .to(), .cuda(), .double(): move the structure
        super()._apply(fn, recurse)
        if self.structure.device != self.rows.device:
            self.rebuild()
        return self

    @classmethod
    def from_masked(cls, layer: MeanFieldLinear) -> SparseMeanFieldLinear:
        """The sparse twin of a masked layer: its active μ, ρ (row-major slots), bias, prior,
        mode and ``sparse`` flag; same device and dtype."""
        if not isinstance(layer, MeanFieldLinear):
            raise TypeError(f"from_masked takes a MeanFieldLinear, got {type(layer).__name__}")
        mask = layer.mask.detach().to(torch.bool)
        new = cls(layer.in_features, layer.out_features, mask, bias=layer.bias is not None,
                  prior_sigma=layer.prior_sigma, mu=layer.mu[mask], rho=layer.rho[mask])
        new.to(device=layer.mu.device, dtype=layer.mu.dtype)  # before copying the bias
        if layer.bias is not None:
            with torch.no_grad():
                new.bias.copy_(layer.bias)
        new.mode, new.sparse = layer.mode, layer.sparse
        return new

    def to_masked(self, into: MeanFieldLinear | None = None) -> MeanFieldLinear:
        """The masked (dense-storage) layer with the same support, μ, ρ, bias, prior and mode.

        Inactive entries get μ = 0 and ρ = the mean active ρ (a masked layer never reads them),
        or, with ``into`` (a MeanFieldLinear of the same shape, written in place and returned),
        keep its ρ there, so masked → sparse → masked is exact. The global RNG is left as it was.
        """
        if into is None:
            with torch.random.fork_rng(devices=[]):  # MeanFieldLinear's init draws μ
                layer = MeanFieldLinear(self.in_features, self.out_features,
                                        bias=self.bias is not None, prior_sigma=self.prior_sigma)
            layer.to(device=self.mu.device, dtype=self.mu.dtype)
            with torch.no_grad():
                layer.rho.fill_(float(self.rho.mean()) if self.n_active else 0.0)
        else:
            layer = into
            if (layer.in_features, layer.out_features) != (self.in_features, self.out_features) \
                    or (layer.bias is None) != (self.bias is None):
                raise ValueError("into must be a MeanFieldLinear of the same shape and bias")
            layer.prior_sigma = self.prior_sigma
        st = self.structure
        with torch.no_grad():
            layer.mask.copy_(st.dense_mask())
            layer.mu.zero_()
            layer.mu[st.rows, st.cols] = self.mu
            layer.rho[st.rows, st.cols] = self.rho
            if self.bias is not None:
                layer.bias.copy_(self.bias)
        layer.mode, layer.sparse = self.mode, self.sparse
        return layer

    # --------------------------------------------------------------- forward and KL
    def kl_sum(self) -> Tensor:
        """Σ over active weights of KL(N(μ_i, σ_i²) ‖ N(0, prior_sigma²))."""
        s2 = self.prior_sigma**2
        sigma = self.sigma
        return (math.log(self.prior_sigma) - torch.log(sigma)
                + (sigma**2 + self.mu**2) / (2 * s2) - 0.5).sum()

    def forward(self, x: Tensor, eps: Tensor | None = None) -> Tensor:
        """``eps``: the noise of this call (LRT: (B, out); sample: (n_active,)); drawn when None.

        LRT noise is drawn as ``torch.randn(out, B).t()``, or with ``noise_like_masked`` as
        ``torch.randn(B, out)``, MeanFieldLinear's stream, so that a seeded masked and sparse
        layer give the same output. Sample-mode noise is (n_active,) (the masked layer draws
        (out, in)).
        """
        lead = x.shape[:-1]
        if x.dim() != 2:
            x = x.reshape(-1, self.in_features)
        sink = self if self.capture_dense_grad else None
        st = self.structure
        if self.mode == "lrt":
            sigma = self.sigma
            if eps is None:
                eps = self._lrt_noise(x.shape[0], x)
            out = sparse_lrt_linear(x, self.mu, sigma * sigma, self.bias, eps, st, sink)
        elif self.mode == "sample":
            if eps is None:
                eps = torch.randn_like(self.mu)
            out = sparse_linear(x, self.mu + self.sigma * eps, self.bias, st, sink)
        elif self.mode == "mean":
            out = sparse_linear(x, self.mu, self.bias, st, sink)
        else:
            raise ValueError(f"mode={self.mode!r} is not known; "
                             f"choose one of {', '.join(FORWARD_MODES)}")
        return out if len(lead) == 1 else out.reshape(*lead, self.out_features)

    def _lrt_noise(self, batch: int, like: Tensor) -> Tensor:
        """ε ~ N(0, I) of shape (batch, out); under data parallelism this rank's rows of the
        global batch's draw (as MeanFieldLinear)."""
        start, stop, total = self.batch_rows if self.batch_rows is not None else (0, batch, batch)
        kw = dict(dtype=like.dtype, device=like.device)
        if self.noise_like_masked:
            return torch.randn(total, self.out_features, **kw)[start:stop]
        return torch.randn(self.out_features, total, **kw)[:, start:stop].t()

    # --------------------------------------------------------------- subspace update
    def swap(self, keep: Tensor, added: Tensor,
             optimizer: torch.optim.Optimizer | None = None) -> Tensor:
        """Install the support ``keep | added`` and return the slots that changed (int64, sorted).

        ``keep``: the active entries that stay, as a bool (out, in) mask or a bool (n_active,)
        mask over slots; ``added``: bool (out, in), entries chosen by the addition score, disjoint
        from ``keep`` (it may hold entries active before that were not kept: those are re-added
        and keep their slot, μ and ρ). Entries active before and not in ``keep | added`` free
        their slots; the newly grown entries take them in row-major order with μ = 0 and
        ρ = mean ρ of ``keep`` (of all active entries if ``keep`` is empty), as
        :func:`ssvi_lite.subspace.apply_swap`. ``mu``/``rho`` stay the same Parameter objects;
        with ``optimizer``, their per-slot state at the changed slots is zeroed.
        """
        st = self.structure
        old = st.dense_mask()
        added = added.to(torch.bool)
        if keep.dim() == 1:
            keep_slots = keep.to(torch.bool)
            keep = torch.zeros_like(old)
            keep[st.rows[keep_slots], st.cols[keep_slots]] = True
        else:
            keep = keep.to(torch.bool)
            keep_slots = keep[st.rows, st.cols]
        if keep.shape != old.shape or added.shape != old.shape:
            raise ValueError(f"keep and added must be bool {tuple(old.shape)} masks")
        if bool((keep & ~old).any()):
            raise ValueError("keep holds entries that are not active")
        if bool((keep & added).any()):
            raise ValueError("keep and added overlap")
        new = keep | added
        if int(new.sum()) != self.n_active:
            raise ValueError(f"keep | added has {int(new.sum())} entries; the layer keeps "
                             f"{self.n_active}")
        freed = (~new[st.rows, st.cols]).nonzero().squeeze(1)  # ascending slot ids
        grown_rows, grown_cols = (new & ~old).nonzero(as_tuple=True)  # row-major
        with torch.no_grad():
            rho_new = self.rho[keep_slots].mean() if bool(keep_slots.any()) else self.rho.mean()
            self.mu[freed] = 0.0
            self.rho[freed] = rho_new
            self.rows[freed] = grown_rows
            self.cols[freed] = grown_cols
        self.rebuild()
        if optimizer is not None:
            reset_slot_state(optimizer, self, freed)
        return freed


def decide_swap(layer: SparseMeanFieldLinear, n_swap: int, removal: str, addition: str
                ) -> tuple[Tensor, Tensor]:
    """(keep, added) bool (out, in) masks for :meth:`SparseMeanFieldLinear.swap`: the decision
    :func:`ssvi_lite.subspace.swap_layer` takes for the masked twin, entry for entry.

    Scores are taken over the active entries in row-major (= CSR) order, as the masked layer
    does, so ties and the ``random`` scores' draws land on the same entries. Changes nothing.
    """
    if layer.dense_grad is None and addition == "grad":
        raise RuntimeError("the 'grad' addition score needs the dense gradient of this batch; "
                           "set capture_dense_grad and run backward first")
    st = layer.structure
    with torch.no_grad():
        active = st.dense_mask()
        scores = torch.full(st.shape, -math.inf, dtype=layer.mu.dtype, device=layer.mu.device)
        scores[active] = removal_score(removal, st.csr_values(layer.mu),
                                       st.csr_values(layer.sigma))
        keep = top_k_mask(scores, layer.n_active - n_swap, allowed=active)
        grad = layer.dense_grad if layer.dense_grad is not None else torch.zeros_like(scores)
        added = top_k_mask(addition_score(addition, grad), n_swap, allowed=~keep)
    return keep, added


def reset_slot_state(optimizer: torch.optim.Optimizer, layer: SparseMeanFieldLinear,
                     slots: Tensor) -> None:
    """Zero every per-slot state tensor (momentum, Adam moments) of ``layer.mu``/``layer.rho``."""
    for param in (layer.mu, layer.rho):
        for value in optimizer.state.get(param, {}).values():
            if isinstance(value, Tensor) and value.shape == param.shape:
                value[slots] = 0


def _rebuild_after_load(module: nn.Module, incompatible_keys) -> None:
    module.rebuild()
