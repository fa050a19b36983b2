"""Sparse kernels for a mean-field Linear layer that stores only its active weights
(docs/method.md §8; the layer is :class:`ssvi_lite.sparse.SparseMeanFieldLinear`).

The masked layers of :mod:`ssvi_lite.layers` keep μ, ρ dense and multiply by μ⊙m, so an SSVI step
costs a dense VI step whatever the density. A sparse layer stores its ``n_active`` weights in a
fixed *slot* order and multiplies with the kernels below, so its cost falls with the density
(benchmarks/sparse_speed.py measures whole epochs, benchmarks/sparse_layer.py single layers).

Pieces:
- :class:`SparseStructure` - the index structure of one (out × in) support: slot → (row, col), the
  CSR of W and the CSR of Wᵀ, each with the permutation between CSR order and slot order. Values
  are not part of it: μ, ρ are ``(n_active,)`` tensors in slot order, so they can be
  ``nn.Parameter``\\ s whose length never changes; the structure is rebuilt only when the support
  changes (at a subspace update).
- :func:`sparse_lrt_linear` / :func:`sparse_linear` - autograd functions for the LRT forward
  (mean = x Wμᵀ + b, var = x² (Wσ²)ᵀ, out = mean + sqrt(var + 1e-8)·ε) and for a plain sparse
  Linear (``sample`` and ``mean`` modes). Backward gives grads for x, the active values and the
  bias, and, only when the layer asks for it, the dense gradient gᵀx of the mean path (gradient
  addition needs it on subspace-update steps only).

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

import warnings

import torch
from torch import Tensor

from .layers import LRT_EPS

__all__ = ["SparseStructure", "sparse_lrt_linear", "sparse_linear", "spmm"]

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

    def csr_rows(self) -> Tensor:
        """The row of each CSR position (int64), in CSR order."""
        return self.rows if self.perm is None else self.rows.index_select(0, self.perm)

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
