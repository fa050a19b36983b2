"""The sparse Linear layer (ssvi_lite.sparse) against its oracle, the masked MeanFieldLinear:
same outputs for the same noise, same gradients on the active entries, same KL, same dense
gradient, same swaps; and exact conversions between the two."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ssvi_lite.layers import MeanFieldLinear
from ssvi_lite.sparse import (
    SparseMeanFieldLinear,
    decide_swap,
    masked_noise_stream,
    reset_slot_state,
)
from ssvi_lite.sparse_ops import SparseStructure
from ssvi_lite.subspace import apply_swap, swap_layer

DTYPES = [torch.float32, torch.float64]
MODES = ["lrt", "sample", "mean"]


def _tol(dtype: torch.dtype) -> dict[str, float]:
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 1e-11,
                                                                          "atol": 1e-11}


def _mask(kind: str, out: int, inp: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "dense":
        return torch.ones(out, inp, dtype=torch.bool)
    if kind == "one_off_per_row":  # every row misses exactly one entry
        mask = torch.ones(out, inp, dtype=torch.bool)
        mask[torch.arange(out), torch.randint(inp, (out,), generator=gen)] = False
        return mask
    if kind == "empty_rows_cols":  # whole rows and columns without an active entry
        mask = torch.rand(out, inp, generator=gen) < 0.4
        mask[1], mask[:, 2] = False, False
        mask[0, 0] = True
        return mask
    return torch.rand(out, inp, generator=gen) < float(kind)


def _masked(out: int, inp: int, mask: torch.Tensor, dtype: torch.dtype,
            gen: torch.Generator) -> MeanFieldLinear:
    layer = MeanFieldLinear(inp, out, prior_sigma=0.3).to(dtype)
    with torch.no_grad():
        layer.mask.copy_(mask)
        layer.mu.copy_(torch.randn(out, inp, generator=gen) * mask)
        layer.rho.copy_(torch.randn(out, inp, generator=gen) * 0.5 - 2.0)
        layer.bias.copy_(torch.randn(out, generator=gen))
    return layer


def _shuffle_slots(layer: SparseMeanFieldLinear, gen: torch.Generator) -> None:
    """Put the slots in a random order (as after swaps), so the CSR ↔ slot gathers are used."""
    order = torch.randperm(layer.n_active, generator=gen)
    with torch.no_grad():
        for t in (layer.mu, layer.rho, layer.rows, layer.cols):
            t.copy_(t[order])
    layer.rebuild()


def _masked_forward(layer: MeanFieldLinear, x: torch.Tensor, mode: str, eps: torch.Tensor
                    ) -> torch.Tensor:
    """The masked layer's forward with a given noise (its own code, minus the draw)."""
    m = layer.mask.to(layer.mu.dtype)
    if mode == "lrt":
        mean = F.linear(x, layer._watch(layer.mu * m), layer.bias)
        var = F.linear(x * x, layer.sigma**2 * m, None)
        return mean + torch.sqrt(var + 1e-8) * eps
    if mode == "sample":
        return F.linear(x, layer._watch((layer.mu + layer.sigma * eps) * m), layer.bias)
    return F.linear(x, layer._watch(layer.mu * m), layer.bias)


CASES = [  # (out, in, mask kind)
    (5, 7, "0.4"), (9, 4, "0.3"), (6, 6, "dense"), (5, 8, "one_off_per_row"),
    (7, 9, "empty_rows_cols"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("out,inp,kind", CASES)
@pytest.mark.parametrize("shuffled", [False, True])
def test_forward_and_gradients_match_the_masked_layer(out, inp, kind, mode, dtype, shuffled,
                                                      generator) -> None:
    mask = _mask(kind, out, inp, generator)
    masked = _masked(out, inp, mask, dtype, generator)
    sparse = SparseMeanFieldLinear.from_masked(masked)
    if shuffled:
        _shuffle_slots(sparse, generator)
    st = sparse.structure
    masked.mode = sparse.mode = mode
    masked.capture_dense_grad = sparse.capture_dense_grad = True
    x = torch.randn(11, inp, generator=generator, dtype=dtype)
    xm, xs = x.clone().requires_grad_(), x.clone().requires_grad_()
    if mode == "sample":
        eps_s = torch.randn(sparse.n_active, generator=generator, dtype=dtype)
        eps_m = st.to_dense(eps_s)
    else:
        eps_s = eps_m = torch.randn(11, out, generator=generator, dtype=dtype)
    ym, ys = _masked_forward(masked, xm, mode, eps_m), sparse(xs, eps_s)
    tol = _tol(dtype)
    torch.testing.assert_close(ys, ym, **tol)
    g = torch.randn(11, out, generator=generator, dtype=dtype)
    kl_m, kl_s = masked.kl_sum(), sparse.kl_sum()
    torch.testing.assert_close(kl_s, kl_m, **tol)
    ((ym * g).sum() + kl_m).backward()
    ((ys * g).sum() + kl_s).backward()
    torch.testing.assert_close(xs.grad, xm.grad, **tol)
    torch.testing.assert_close(sparse.mu.grad, st.gather(masked.mu.grad), **tol)
    torch.testing.assert_close(sparse.rho.grad, st.gather(masked.rho.grad), **tol)
    torch.testing.assert_close(sparse.bias.grad, masked.bias.grad, **tol)
    # gradient addition's dense gradient: ∂CE/∂W of the data term, every entry
    torch.testing.assert_close(sparse.dense_grad, masked.dense_grad, **tol)
    assert sparse.dense_grad.shape == (out, inp)


def test_dense_gradient_is_computed_only_when_asked(generator) -> None:
    sparse = SparseMeanFieldLinear(6, 4, _mask("0.5", 4, 6, generator))
    x = torch.randn(3, 6, requires_grad=True)
    sparse(x).sum().backward()
    assert sparse.dense_grad is None
    sparse.capture_dense_grad = True
    sparse(x).sum().backward()
    assert sparse.dense_grad is not None and sparse.dense_grad.shape == (4, 6)


def test_seeded_noise_follows_the_masked_stream(generator) -> None:
    """LRT noise is the masked layer's draw; sample-mode noise is too under
    masked_noise_stream(), and otherwise only the active entries are drawn (the same law)."""
    masked = _masked(6, 5, _mask("0.5", 6, 5, generator), torch.float32, generator)
    sparse = SparseMeanFieldLinear.from_masked(masked)
    _shuffle_slots(sparse, generator)  # the draw must not depend on the slot order
    x = torch.randn(4, 5, generator=generator)
    for mode in ("lrt", "sample"):
        masked.mode = sparse.mode = mode
        torch.manual_seed(3)
        ym = masked(x)
        torch.manual_seed(3)
        with masked_noise_stream():
            torch.testing.assert_close(sparse(x), ym, **_tol(torch.float32))
    torch.manual_seed(3)
    eps = torch.randn(sparse.n_active)  # the default: active entries, row-major order
    torch.manual_seed(3)
    torch.testing.assert_close(sparse(x), sparse(x, sparse.structure.slot_values(eps)))
    assert not SparseMeanFieldLinear.noise_like_masked


def test_layers_chain_in_feature_major_layout(generator) -> None:
    """A stack of sparse layers passes (B, F) views of (F, B) tensors; results and gradients
    are those of the masked stack."""
    dims = [8, 10, 6, 3]
    masked = [_masked(o, i, _mask("0.5", o, i, generator), torch.float64, generator)
              for i, o in zip(dims, dims[1:])]
    sparse = [SparseMeanFieldLinear.from_masked(m) for m in masked]
    x = torch.randn(5, 8, generator=generator, dtype=torch.float64)
    eps = [torch.randn(5, o, generator=generator, dtype=torch.float64) for o in dims[1:]]
    hm, hs = x, x
    for m, s, e in zip(masked, sparse, eps):
        hm, hs = torch.relu(_masked_forward(m, hm, "lrt", e)), torch.relu(s(hs, e))
    assert hs.t().is_contiguous()  # the feature-major layout survives the ReLU
    torch.testing.assert_close(hs, hm)
    hm.square().sum().backward()
    hs.square().sum().backward()
    for m, s in zip(masked, sparse):
        torch.testing.assert_close(s.mu.grad, s.structure.gather(m.mu.grad))
        torch.testing.assert_close(s.rho.grad, s.structure.gather(m.rho.grad))


def test_batched_leading_dimensions(generator) -> None:
    masked = _masked(4, 6, _mask("0.5", 4, 6, generator), torch.float64, generator)
    sparse = SparseMeanFieldLinear.from_masked(masked)
    masked.mode = sparse.mode = "mean"
    x = torch.randn(2, 3, 6, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(sparse(x), masked(x))


def test_adam_steps_match_and_inactive_entries_stay_zero(generator) -> None:
    mask = _mask("0.3", 8, 12, generator)
    masked = _masked(8, 12, mask, torch.float64, generator)
    sparse = SparseMeanFieldLinear.from_masked(masked)
    _shuffle_slots(sparse, generator)
    opt_m = torch.optim.Adam(masked.parameters(), lr=1e-2, fused=True)
    opt_s = torch.optim.Adam(sparse.parameters(), lr=1e-2, fused=True)
    rows, cols = sparse.rows.clone(), sparse.cols.clone()
    for _ in range(4):
        x = torch.randn(16, 12, generator=generator, dtype=torch.float64)
        eps = torch.randn(16, 8, generator=generator, dtype=torch.float64)
        for layer, opt, y in ((masked, opt_m, _masked_forward(masked, x, "lrt", eps)),
                              (sparse, opt_s, sparse(x, eps))):
            opt.zero_grad()
            (y.square().mean() + layer.kl_sum() / 100).backward()
            opt.step()
        with torch.no_grad():
            masked.mu.masked_fill_(~masked.mask, 0.0)  # subspace.enforce_masks
    st = sparse.structure
    torch.testing.assert_close(sparse.mu, st.gather(masked.mu))
    torch.testing.assert_close(sparse.rho, st.gather(masked.rho))
    assert torch.equal(sparse.rows, rows) and torch.equal(sparse.cols, cols)
    back = sparse.to_masked()
    assert torch.equal(back.mask, mask)
    assert not back.mu[~mask].any()


@pytest.mark.parametrize("density", ["0.3", "dense"])
def test_swap_matches_apply_swap_and_reports_the_changed_slots(density, generator) -> None:
    mask = _mask(density, 10, 14, generator)
    masked = _masked(10, 14, mask, torch.float64, generator)
    if density == "dense":  # room to grow: drop a few entries first
        with torch.no_grad():
            masked.mask[0, :5] = False
            masked.mu.masked_fill_(~masked.mask, 0.0)
    sparse = SparseMeanFieldLinear.from_masked(masked)
    _shuffle_slots(sparse, generator)
    opt_m = torch.optim.Adam(masked.parameters(), lr=1e-2, fused=True)
    opt_s = torch.optim.Adam(sparse.parameters(), lr=1e-2, fused=True)
    masked.capture_dense_grad = True
    x = torch.randn(16, 14, generator=generator, dtype=torch.float64)
    eps = torch.randn(16, 10, generator=generator, dtype=torch.float64)
    for layer, opt, y in ((masked, opt_m, _masked_forward(masked, x, "lrt", eps)),
                          (sparse, opt_s, sparse(x, eps))):
        (y.square().mean() + layer.kl_sum() / 100).backward()
        opt.step()  # fill Adam's state
    n_swap = math.floor(0.4 * sparse.n_active)
    keep, added = swap_layer(masked, n_swap, "snr_abs", "grad")
    sparse.dense_grad = masked.dense_grad
    keep_s, added_s = decide_swap(sparse, n_swap, "snr_abs", "grad")
    assert torch.equal(keep_s, keep) and torch.equal(added_s, added)
    old = masked.mask.clone()
    st_old = sparse.structure
    slot_of = {(int(r), int(c)): k for k, (r, c) in enumerate(zip(st_old.rows, st_old.cols))}
    before = {name: t.detach().clone() for name, t in (("mu", sparse.mu), ("rho", sparse.rho))}
    state_before = {p: {k: v.clone() for k, v in opt_s.state[p].items()}
                    for p in (sparse.mu, sparse.rho)}
    mu_param, rho_param = sparse.mu, sparse.rho

    apply_swap(masked, keep, added, opt_m)
    changed = sparse.swap(keep, added, opt_s)

    new = keep | added
    grown = new & ~old
    assert changed.numel() == int(grown.sum()) == int((old & ~new).sum())
    assert sparse.mu is mu_param and sparse.rho is rho_param  # the optimiser's references hold
    st = sparse.structure
    assert torch.equal(st.dense_mask(), masked.mask)
    torch.testing.assert_close(sparse.mu, st.gather(masked.mu))
    torch.testing.assert_close(sparse.rho, st.gather(masked.rho))
    # entries active before and after (kept or re-added) stay in their slot with their μ, ρ
    changed_set = set(changed.tolist())
    for r, c in (old & new).nonzero().tolist():
        k = slot_of[(r, c)]
        assert k not in changed_set and (int(st.rows[k]), int(st.cols[k])) == (r, c)
        assert sparse.mu[k] == before["mu"][k] and sparse.rho[k] == before["rho"][k]
    # grown entries sit in the freed slots, with μ = 0 and Adam's state zeroed exactly there
    assert set(zip(st.rows[changed].tolist(), st.cols[changed].tolist())) == \
        set(map(tuple, grown.nonzero().tolist()))
    assert not sparse.mu[changed].any()
    unchanged = torch.ones(sparse.n_active, dtype=torch.bool)
    unchanged[changed] = False
    for p in (sparse.mu, sparse.rho):
        for key in ("exp_avg", "exp_avg_sq"):
            assert not opt_s.state[p][key][changed].any()
            torch.testing.assert_close(opt_s.state[p][key][unchanged],
                                       state_before[p][key][unchanged], rtol=0, atol=0)
    # and the layers still agree after the swap (slots now out of CSR order)
    masked.mode = sparse.mode = "mean"
    torch.testing.assert_close(sparse(x), masked(x))


def test_swap_accepts_slot_keep_mask_and_rejects_bad_swaps(generator) -> None:
    mask = _mask("0.5", 6, 6, generator)
    sparse = SparseMeanFieldLinear(6, 6, mask)
    st = sparse.structure
    with torch.no_grad():
        sparse.rho.copy_(torch.randn(sparse.n_active, generator=generator))
    mu, rho = sparse.mu.detach().clone(), sparse.rho.detach().clone()
    keep_slots = torch.ones(sparse.n_active, dtype=torch.bool)
    keep_slots[:3] = False  # remove slots 0, 1, 2; re-add slot 1's entry and grow two new ones
    free = (~mask).nonzero()[:2]
    added = torch.zeros(6, 6, dtype=torch.bool)
    added[free[:, 0], free[:, 1]] = True
    added[st.rows[1], st.cols[1]] = True
    changed = sparse.swap(keep_slots, added)
    assert changed.tolist() == [0, 2]
    assert sparse.structure is not st
    assert sparse.mu[1] == mu[1] and sparse.rho[1] == rho[1]
    assert (int(sparse.rows[1]), int(sparse.cols[1])) == (int(st.rows[1]), int(st.cols[1]))
    torch.testing.assert_close(sparse.rho[[0, 2]], rho[3:].mean().expand(2))
    assert not sparse.mu[[0, 2]].any()
    assert [(int(sparse.rows[k]), int(sparse.cols[k])) for k in (0, 2)] == \
        [tuple(p) for p in free.tolist()]
    with pytest.raises(ValueError, match="entries"):
        sparse.swap(keep_slots, torch.zeros(6, 6, dtype=torch.bool))
    with pytest.raises(ValueError, match="overlap"):
        sparse.swap(sparse.mask, sparse.mask)


def test_reset_slot_state_zeroes_only_those_slots() -> None:
    layer = SparseMeanFieldLinear(4, 3, torch.ones(3, 4, dtype=torch.bool))
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, momentum=0.9)
    layer(torch.randn(2, 4)).sum().backward()
    opt.step()
    buf = opt.state[layer.rho]["momentum_buffer"]
    assert buf.abs().min() > 0
    reset_slot_state(opt, layer, torch.tensor([1, 5]))
    assert buf[[1, 5]].eq(0).all() and buf.ne(0).sum() == layer.n_active - 2


@pytest.mark.parametrize("dtype", DTYPES)
def test_conversions_round_trip_exactly(dtype, generator) -> None:
    mask = _mask("0.3", 7, 9, generator)
    masked = _masked(7, 9, mask, dtype, generator)
    masked.mode = "sample"
    sparse = SparseMeanFieldLinear.from_masked(masked)
    assert sparse.mu.dtype == dtype and sparse.bias.dtype == dtype
    assert (sparse.mode, sparse.prior_sigma) == ("sample", 0.3)
    # masked → sparse → masked (into a copy keeps its inactive ρ): every tensor equal
    copy = _masked(7, 9, torch.ones(7, 9, dtype=torch.bool), dtype, generator)
    copy.rho.data.copy_(masked.rho)
    back = sparse.to_masked(into=copy)
    for name in ("mu", "rho", "bias", "mask"):
        assert torch.equal(getattr(back, name), getattr(masked, name)), name
    # a new masked layer: equal on the support, μ = 0 off it; the global RNG is untouched
    state = torch.get_rng_state()
    fresh = sparse.to_masked()
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(fresh.mask, mask) and torch.equal(fresh.mu, masked.mu)
    assert torch.equal(fresh.rho[mask], masked.rho[mask]) and fresh.mode == "sample"
    # sparse (slots shuffled) → masked → sparse: the same weights (slots come back row-major)
    _shuffle_slots(sparse, generator)
    again = SparseMeanFieldLinear.from_masked(sparse.to_masked())
    for name in ("mu", "rho"):
        assert torch.equal(again.structure.to_dense(getattr(again, name)),
                           sparse.structure.to_dense(getattr(sparse, name)))


def test_state_dict_carries_the_support(generator) -> None:
    a = SparseMeanFieldLinear(9, 5, _mask("0.4", 5, 9, generator))
    _shuffle_slots(a, generator)
    n = a.n_active
    other = torch.zeros(5 * 9, dtype=torch.bool)
    other[torch.randperm(45, generator=generator)[:n]] = True
    b = SparseMeanFieldLinear(9, 5, other.view(5, 9))
    b.load_state_dict(a.state_dict())
    assert torch.equal(b.mask, a.mask)
    a.mode = b.mode = "mean"
    x = torch.randn(3, 9, generator=generator)
    torch.testing.assert_close(b(x), a(x))


def test_structure_matches_torch_csr_in_any_slot_order(generator) -> None:
    mask = _mask("0.4", 6, 8, generator)
    rows, cols = mask.nonzero(as_tuple=True)
    order = torch.randperm(rows.numel(), generator=generator)
    st = SparseStructure(rows[order], cols[order], (6, 8))
    values = torch.randn(rows.numel(), generator=generator, dtype=torch.float64)
    dense = st.to_dense(values)
    assert torch.equal(st.w(values).to_dense(), dense)
    assert torch.equal(st.w_t(values).to_dense(), dense.t())
    assert torch.equal(st.dense_mask(), mask)
    assert torch.equal(st.gather(dense), values)
    assert st.crow.dtype == torch.int32 and st.col.dtype == torch.int32
    with pytest.raises(ValueError, match="same"):
        SparseStructure(torch.tensor([0, 0]), torch.tensor([1, 1]), (2, 2))
    with pytest.raises(ValueError, match="outside"):
        SparseStructure(torch.tensor([2]), torch.tensor([0]), (2, 2))


def test_mode_errors_and_kl_of_no_weights(generator) -> None:
    layer = SparseMeanFieldLinear(3, 2, torch.eye(2, 3, dtype=torch.bool))
    layer.mode = "bogus"
    with pytest.raises(ValueError, match="mode"):
        layer(torch.randn(2, 3))
    assert layer.n_active == 2 and layer.n_weights == 6
    with pytest.raises(ValueError, match="shape"):
        SparseMeanFieldLinear(3, 2, torch.ones(3, 2, dtype=torch.bool))


@pytest.mark.parametrize("removal,addition", [("magnitude", "grad"), ("random", "random")])
def test_decide_swap_takes_the_masked_layers_decision(removal, addition, generator) -> None:
    masked = _masked(8, 9, _mask("0.4", 8, 9, generator), torch.float32, generator)
    with torch.no_grad():  # ties everywhere: the tie-break must follow row-major order
        masked.mu.copy_(masked.mu.sign() * masked.mask)
    sparse = SparseMeanFieldLinear.from_masked(masked)
    _shuffle_slots(sparse, generator)
    grad = torch.randn(8, 9, generator=generator).round()
    masked.dense_grad, sparse.dense_grad = grad, grad
    n_swap = sparse.n_active // 3
    torch.manual_seed(7)
    expected = swap_layer(masked, n_swap, removal, addition)
    torch.manual_seed(7)
    got = decide_swap(sparse, n_swap, removal, addition)
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    sparse.dense_grad = None
    with pytest.raises(RuntimeError, match="dense gradient"):
        decide_swap(sparse, n_swap, removal, "grad")

