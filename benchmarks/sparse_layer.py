"""Sparse Linear layer (ssvi_lite.sparse) vs the masked dense one, measured side by side
(whole SSVI epochs: benchmarks/sparse_speed.py).

    python benchmarks/sparse_layer.py [--threads 2] [--rounds 11] [--batch 128] [--clock wall|cpu]
                                      [--sections kernels,layer,network] [--out FILE]

Everything runs in one process; in each round the masked and the sparse variant run back to back
(their order alternating between rounds) and the reported ratio is the median over rounds of
sparse time / masked time of the same round, so that drifts in machine load hit both alike.
Absolute times are printed too but are noisy on a shared machine. There, ``--threads 1 --clock cpu``
times each call by the CPU time of the (single) thread, which preemption by other processes does
not inflate: the cost of the work itself, not of the wait.

1. kernels: each candidate kernel for the three products of a sparse Linear (x Wᵀ, g W and the
   gradient of W's active entries) on one weight, relative to the dense product it replaces, plus
   the layer-level alternatives (block-diagonal fusion of the LRT's mean and variance paths, the
   layout of the LRT noise) - the measurements behind the choices in ssvi_lite/sparse_ops.py;
2. layer: one LRT layer, forward + backward (grads of x, μ, ρ, bias), for 4 weight shapes at
   densities 0.1, 0.05, 0.02: SparseMeanFieldLinear vs MeanFieldLinear with a mask;
3. inference: K = 10 sample-mode forward passes (no grad) of one layer;
4. network: MLP 784-1200-1200-10 (every layer sparse at the density), one training step
   (LRT forward, CE + KL, backward, fused Adam step) and K = 10 sample-mode inference passes.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

# measure this checkout's package even where another one is installed in editable mode
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from machine import add_timing_arguments, clock_from, cpu_name, interleaved  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from ssvi_lite.fileio import write_text  # noqa: E402
from ssvi_lite.layers import LRT_EPS, MeanFieldLinear  # noqa: E402
from ssvi_lite.sparse import SparseMeanFieldLinear  # noqa: E402
from ssvi_lite.sparse_ops import SparseStructure, sparse_lrt_linear, spmm  # noqa: E402

SHAPES = ((400, 784), (1200, 784), (1200, 1200), (4096, 4096))  # (out, in)
DENSITIES = (0.1, 0.05, 0.02)
K_SAMPLES = 10
CHOSEN = ("x Wᵀ: torch.sparse.mm(CSR of W, xᵀ, reduce='sum') with xᵀ (in, B) contiguous; "
          "g W: the same with a CSR of Wᵀ and gᵀ (out, B) contiguous; active ∂W: "
          "torch.sparse.sampled_addmm(W's int32 CSR pattern, gᵀ, x) with gᵀ and xᵀ contiguous; "
          "slot ↔ CSR order by index_select; mean and variance paths as separate products; "
          "LRT noise drawn (out, B)")


# ----------------------------------------------------------------------------- timing
CLOCK = time.perf_counter  # or time.thread_time (--clock cpu, one thread)


def paired(fns: dict[str, Callable[[], object]], rounds: int, base: str
           ) -> dict[str, tuple[float, float, float]]:
    """{name: (median seconds, median over rounds of time / time of ``base`` in that round,
    best time / best time of ``base``)}. Preemption on a shared machine only ever adds time, so
    the ratio of the best times is a check on the paired median."""
    for f in fns.values():  # warm-up
        f()
    times = interleaved(fns, rounds, CLOCK)
    return {k: (statistics.median(v), statistics.median(a / b for a, b in zip(v, times[base])),
                min(v) / min(times[base])) for k, v in times.items()}


def random_mask(out: int, inp: int, density: float, gen: torch.Generator) -> Tensor:
    n = out * inp
    mask = torch.zeros(n, dtype=torch.bool)
    mask[torch.randperm(n, generator=gen)[:round(density * n)]] = True
    return mask.view(out, inp)


def layer_pair(out: int, inp: int, density: float, gen: torch.Generator
               ) -> tuple[MeanFieldLinear, SparseMeanFieldLinear]:
    masked = MeanFieldLinear(inp, out)
    with torch.no_grad():
        masked.mask.copy_(random_mask(out, inp, density, gen))
        masked.mu.masked_fill_(~masked.mask, 0.0)
    sparse = SparseMeanFieldLinear.from_masked(masked)
    # slots out of CSR order, as after the first subspace update (the gathers are then paid)
    order = torch.randperm(sparse.n_active, generator=gen)
    with torch.no_grad():
        for t in (sparse.mu, sparse.rho, sparse.rows, sparse.cols):
            t.copy_(t[order])
    sparse.rebuild()
    return masked, sparse


def feature_major(rows: int, cols: int) -> Tensor:
    """A (rows, cols) tensor laid out as the sparse layers hand activations over: (cols, rows)
    contiguous, transposed."""
    return torch.randn(cols, rows).t()


# ----------------------------------------------------------------------------- 1. kernels
def csr(dense: Tensor, index: torch.dtype) -> Tensor:
    c = dense.to_sparse_csr()
    return torch.sparse_csr_tensor(c.crow_indices().to(index), c.col_indices().to(index),
                                   c.values(), c.shape, check_invariants=False)


def kernel_rows(out: int, inp: int, density: float, batch: int, rounds: int,
                gen: torch.Generator) -> list[str]:
    mask = random_mask(out, inp, density, gen)
    w = torch.randn(out, inp) * mask
    w32, w64, wt32 = csr(w, torch.int32), csr(w, torch.int64), csr(w.t().contiguous(), torch.int32)
    coo = w.to_sparse().coalesce()
    x, g = torch.randn(batch, inp), torch.randn(batch, out)  # batch-major (row-major)
    x_t, g_t = x.t().contiguous(), g.t().contiguous()  # feature-major
    rows, cols = mask.nonzero(as_tuple=True)
    zeros = torch.zeros(int(mask.sum()))  # sampled_addmm reads the mask's values (β = 0)
    pattern = torch.sparse_csr_tensor(w32.crow_indices(), w32.col_indices(), zeros, w.shape,
                                      check_invariants=False)
    pattern64 = torch.sparse_csr_tensor(w64.crow_indices(), w64.col_indices(), zeros, w.shape,
                                        check_invariants=False)
    groups = {
        "x Wᵀ (forward)": {
            "dense x @ Wᵀ": lambda: x @ w.t(),
            "CSR, reduce='sum', xᵀ contiguous (chosen)": lambda: spmm(w32, x_t),
            "CSR int32 (MKL), xᵀ contiguous": lambda: torch.sparse.mm(w32, x_t),
            "CSR int32 (MKL), xᵀ a strided view": lambda: torch.sparse.mm(w32, x.t()),
            "CSR int64 (MKL), xᵀ a strided view": lambda: torch.sparse.mm(w64, x.t()),
            "COO, xᵀ contiguous": lambda: torch.sparse.mm(coo, x_t),
            "dense @ CSR of Wᵀ: mm(x, Wᵀ)": lambda: torch.mm(x, wt32),
        },
        "g W (input gradient)": {
            "dense g @ W": lambda: g @ w,
            "CSR of Wᵀ, reduce='sum', gᵀ contiguous (chosen)": lambda: spmm(wt32, g_t),
            "CSR int32 of Wᵀ (MKL), gᵀ contiguous": lambda: torch.sparse.mm(wt32, g_t),
            "CSR int32 of Wᵀ (MKL), gᵀ a strided view": lambda: torch.sparse.mm(wt32, g.t()),
            "CSC view W.t() of W's CSR": lambda: torch.sparse.mm(w32.t(), g_t),
            "dense @ CSR: mm(g, W)": lambda: torch.mm(g, w32),
        },
        "active entries of gᵀ x (weight gradient)": {
            "dense gᵀ @ x (all entries)": lambda: g_t @ x,
            "sampled_addmm int32, gᵀ, xᵀ contiguous (chosen)":
                lambda: torch.sparse.sampled_addmm(pattern, g_t, x_t.t(), beta=0.0),
            "sampled_addmm int32, batch-major g, x":
                lambda: torch.sparse.sampled_addmm(pattern, g.t(), x, beta=0.0),
            "sampled_addmm int64, batch-major g, x":
                lambda: torch.sparse.sampled_addmm(pattern64, g.t(), x, beta=0.0),
            "gather + sum: (gᵀ[rows] * xᵀ[cols]).sum(1)": lambda: (g_t[rows] * x_t[cols]).sum(1),
        },
    }
    lines = [f"kernels, W {out} × {inp}, density {density}, batch {batch} "
             "(time / the dense product; median of per-round ratios)"]
    for title, fns in groups.items():
        base = next(iter(fns))
        res = paired(fns, rounds, base)
        lines.append(f"  {title}")
        for name, (sec, ratio, best) in res.items():
            lines.append(f"    {name:<52} {sec * 1e3:9.3f} ms  {ratio:7.3f}  ({best:.3f})")
    return lines


class _BlockDiagonalLRT(torch.autograd.Function):
    """The rejected alternative: the LRT's mean and variance paths as ONE product each way with
    the block-diagonal matrix diag(Wμ, Wσ²) (halves the kernel calls, adds concatenations)."""

    @staticmethod
    def forward(ctx, x, mu, var, bias, eps, bd):
        out, inp = bd["st"].shape
        xx = x.new_empty(2 * inp, x.shape[0])
        xx[:inp].copy_(x.t())
        torch.mul(xx[:inp], xx[:inp], out=xx[inp:])
        vals = torch.cat([mu, var]).index_select(0, bd["perm2"])
        r = spmm(torch.sparse_csr_tensor(bd["crow"], bd["col"], vals, (2 * out, 2 * inp),
                                         check_invariants=False), xx)
        mean_t = r[:out].add_(bias.unsqueeze(1))
        sd_t = r[out:].add_(LRT_EPS).sqrt_()
        ctx.bd = bd
        ctx.save_for_backward(xx, mu, var, sd_t, eps.t())
        return torch.addcmul(mean_t, sd_t, eps.t()).t()

    @staticmethod
    def backward(ctx, grad):
        xx, mu, var, sd_t, eps_t = ctx.saved_tensors
        bd = ctx.bd
        (out, inp), n = bd["st"].shape, bd["st"].n_active
        gg = grad.new_empty(2 * out, grad.shape[0])
        gg[:out].copy_(grad.t())
        torch.mul(gg[:out], eps_t, out=gg[out:])
        gg[out:].div_(sd_t).mul_(0.5)
        vt = torch.cat([mu, var]).index_select(0, bd["perm_t2"])
        r = spmm(torch.sparse_csr_tensor(bd["crow_t"], bd["col_t"], vt, (2 * inp, 2 * out),
                                         check_invariants=False), gg)
        gx = r[inp:].mul_(2.0 * xx[:inp]).add_(r[:inp]).t()
        pattern = torch.sparse_csr_tensor(bd["crow"], bd["col"], bd["zeros"], (2 * out, 2 * inp),
                                          check_invariants=False)
        sv = torch.sparse.sampled_addmm(pattern, gg, xx.t(), beta=0.0).values()
        sv = sv.index_select(0, bd["inv2"])
        return gx, sv[:n], sv[n:], gg[:out].sum(1), None, None


def block_diagonal(st: SparseStructure) -> dict[str, object]:
    (out, inp), n = st.shape, st.n_active
    perm = st.perm if st.perm is not None else torch.arange(n)
    perm2 = torch.cat([perm, perm + n])
    return {"st": st, "crow": torch.cat([st.crow, st.crow[1:] + n]),
            "col": torch.cat([st.col, st.col + inp]),
            "crow_t": torch.cat([st.crow_t, st.crow_t[1:] + n]),
            "col_t": torch.cat([st.col_t, st.col_t + out]),
            "perm2": perm2, "perm_t2": torch.cat([st.perm_t, st.perm_t + n]),
            "inv2": torch.empty_like(perm2).scatter_(0, perm2, torch.arange(2 * n)),
            "zeros": torch.zeros(2 * n)}


def layer_variant_rows(out: int, inp: int, density: float, batch: int, rounds: int,
                       gen: torch.Generator) -> list[str]:
    _, layer = layer_pair(out, inp, density, gen)
    st, bd = layer.structure, block_diagonal(layer.structure)
    x = feature_major(batch, inp).requires_grad_()
    g = feature_major(batch, out)
    eps_fm, eps_bm = feature_major(batch, out), torch.randn(batch, out)
    values = torch.randn(layer.n_active)
    perm = torch.randperm(layer.n_active, generator=gen)

    def run(fn: Callable, eps: Tensor) -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        sigma = F.softplus(layer.rho)
        fn(x, layer.mu, sigma * sigma, layer.bias, eps).backward(g)

    fns = {
        "separate products, noise (out, B) (chosen)":
            lambda: run(lambda *a: sparse_lrt_linear(*a, st), eps_fm),
        "separate products, noise (B, out)":
            lambda: run(lambda *a: sparse_lrt_linear(*a, st), eps_bm),
        "block-diagonal diag(Wμ, Wσ²), noise (out, B)":
            lambda: run(lambda *a: _BlockDiagonalLRT.apply(*a, bd), eps_fm),
    }
    res = paired(fns, rounds, next(iter(fns)))
    lines = [f"LRT layer variants, W {out} × {inp}, density {density} (forward + backward; "
             "time / the chosen one)"]
    lines += [f"    {name:<52} {sec * 1e3:9.3f} ms  {ratio:7.3f}  ({best:.3f})"
              for name, (sec, ratio, best) in res.items()]
    gathers = paired({"values.index_select(0, perm) (chosen)": lambda: values.index_select(0, perm),
                      "values[perm]": lambda: values[perm]}, rounds * 4, "values[perm]")
    lines.append(f"  slot ↔ CSR gather of {layer.n_active} values (time / values[perm])")
    lines += [f"    {name:<52} {sec * 1e6:9.1f} µs  {ratio:7.3f}  ({best:.3f})"
              for name, (sec, ratio, best) in gathers.items()]
    return lines


# ----------------------------------------------------------------------------- 2./3. one layer
def layer_case(out: int, inp: int, density: float, batch: int, rounds: int,
               gen: torch.Generator) -> str:
    masked, sparse = layer_pair(out, inp, density, gen)
    # inputs and output gradients as each kind of layer receives them from its neighbours
    x_m, x_s = torch.randn(batch, inp).requires_grad_(), feature_major(batch, inp).requires_grad_()
    g_m, g_s = torch.randn(batch, out), feature_major(batch, out)

    def step(layer: nn.Module, x: Tensor, g: Tensor) -> None:
        layer.zero_grad(set_to_none=True)
        x.grad = None
        layer(x).backward(g)

    def infer(layer: nn.Module, x: Tensor) -> None:
        with torch.no_grad():
            for _ in range(K_SAMPLES):
                layer(x)

    n = rounds if out * inp < 10**7 else max(3, rounds // 2)
    train = paired({"masked": lambda: step(masked, x_m, g_m),
                    "sparse": lambda: step(sparse, x_s, g_s)}, n, "masked")
    masked.mode = sparse.mode = "sample"
    inference = paired({"masked": lambda: infer(masked, x_m.detach()),
                        "sparse": lambda: infer(sparse, x_s.detach())}, n, "masked")
    return (f"{f'{out} × {inp}':<18} {density:>7.2f} "
            f"{train['masked'][0] * 1e3:>10.2f} {train['sparse'][0] * 1e3:>10.2f} "
            f"{_ratio(train['sparse']):>16} {inference['masked'][0] * 1e3:>15.2f} "
            f"{inference['sparse'][0] * 1e3:>15.2f} {_ratio(inference['sparse']):>16}")


def _ratio(result: tuple[float, float, float]) -> str:
    return f"{result[1]:.3f} ({result[2]:.3f})"


def layer_rows(shapes: list[tuple[int, int]], batch: int, rounds: int, gen: torch.Generator
               ) -> list[str]:
    lines = [f"one LRT layer, forward + backward (grads of x, μ, ρ, bias), batch {batch}; "
             f"inference: {K_SAMPLES} sample-mode forward passes, no grad",
             f"{'weight (out × in)':<18} {'density':>7} {'masked ms':>10} {'sparse ms':>10} "
             f"{'sparse/masked':>16} {'K=10 masked ms':>15} {'K=10 sparse ms':>15} "
             f"{'K=10 ratio':>16}"]
    print("\n".join(lines), flush=True)
    for out, inp in shapes:
        for density in DENSITIES:
            lines.append(layer_case(out, inp, density, batch, rounds, gen))
            print(lines[-1], flush=True)
    return lines


# ----------------------------------------------------------------------------- 4. the MLP
MLP_DIMS = (784, 1200, 1200, 10)


class MLP(nn.Module):
    def __init__(self, layers: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x


def network_case(density: float, batch: int, rounds: int, gen: torch.Generator) -> str:
    pairs = [layer_pair(o, i, density, gen) for i, o in zip(MLP_DIMS, MLP_DIMS[1:])]
    nets = {"masked": MLP([m for m, _ in pairs]), "sparse": MLP([s for _, s in pairs])}
    opts = {k: torch.optim.Adam(net.parameters(), lr=1e-3, fused=True) for k, net in nets.items()}
    x, y = torch.randn(batch, MLP_DIMS[0]), torch.randint(MLP_DIMS[-1], (batch,))

    def step(key: str) -> None:
        net, opt = nets[key], opts[key]
        logits = net(x)
        kl = sum(layer.kl_sum() for layer in net.layers)
        loss = F.cross_entropy(logits, y) + kl / 60000
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if key == "masked":  # what the trainer does after every step (subspace.enforce_masks)
            with torch.no_grad():
                for layer in net.layers:
                    layer.mu.masked_fill_(~layer.mask, 0.0)

    def infer(key: str) -> None:
        with torch.no_grad():
            for _ in range(K_SAMPLES):
                nets[key](x).softmax(-1)

    train = paired({"masked": lambda: step("masked"), "sparse": lambda: step("sparse")},
                   rounds, "masked")
    for net in nets.values():
        for layer in net.layers:
            layer.mode = "sample"
    inference = paired({"masked": lambda: infer("masked"), "sparse": lambda: infer("sparse")},
                       rounds, "masked")
    return (f"{density:>7.2f} {train['masked'][0] * 1e3:>10.2f} "
            f"{train['sparse'][0] * 1e3:>10.2f} {_ratio(train['sparse']):>16} "
            f"{inference['masked'][0] * 1e3:>15.2f} {inference['sparse'][0] * 1e3:>15.2f} "
            f"{_ratio(inference['sparse']):>16}")


def network_rows(batch: int, rounds: int, gen: torch.Generator) -> list[str]:
    lines = [f"MLP {'-'.join(map(str, MLP_DIMS))}, every layer sparse at the density, batch "
             f"{batch}: train step = LRT forward, CE + KL/60000, backward, fused Adam step; "
             f"inference = {K_SAMPLES} sample-mode forward passes",
             f"{'density':>7} {'masked ms':>10} {'sparse ms':>10} {'step ratio':>16} "
             f"{'K=10 masked ms':>15} {'K=10 sparse ms':>15} {'K=10 ratio':>16}"]
    print("\n".join(lines), flush=True)
    for density in DENSITIES:
        lines.append(network_case(density, batch, rounds, gen))
        print(lines[-1], flush=True)
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_timing_arguments(parser)
    parser.add_argument("--rounds", type=int, default=11)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--sections", default="kernels,layer,network",
                        help="comma-separated subset of kernels, layer, network")
    parser.add_argument("--shapes", default=",".join(f"{o}x{i}" for o, i in SHAPES),
                        help="weight shapes OUTxIN of the layer section, comma-separated")
    parser.add_argument("--out", help="also write the report here")
    args = parser.parse_args()
    global CLOCK
    CLOCK = clock_from(args, parser)
    torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    sections = set(args.sections.split(","))
    load_before = os.getloadavg()
    lines = [f"command: python {' '.join(sys.argv)}",
             f"machine: {cpu_name()}, {os.cpu_count()} logical CPUs, {platform.system()}; "
             f"torch {torch.__version__} (MKL {torch.backends.mkl.is_available()}), "
             f"threads {args.threads}; batch {args.batch}; {args.rounds} rounds, interleaved; "
             f"clock: {'wall time' if args.clock == 'wall' else 'CPU time of the thread'}; "
             "ratio = median over rounds of sparse / masked time in the same round "
             "(in brackets: best sparse time / best masked time); ms = median times",
             f"chosen kernels: {CHOSEN}", ""]
    print("\n".join(lines), flush=True)
    body: list[str] = []
    if "kernels" in sections:
        for out, inp in ((1200, 784), (1200, 1200)):
            body += kernel_rows(out, inp, 0.05, args.batch, args.rounds, gen)
        body += layer_variant_rows(1200, 1200, 0.05, args.batch, args.rounds, gen)
        body.append("")
        print("\n".join(body), flush=True)
    if "layer" in sections:
        shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
        body += layer_rows(shapes, args.batch, args.rounds, gen) + [""]
    if "network" in sections:
        body += network_rows(args.batch, args.rounds, gen) + [""]
    load_after = os.getloadavg()
    body.append("load average (1, 5, 15 min) before: {:.2f} {:.2f} {:.2f}; after: {:.2f} {:.2f} "
                "{:.2f}".format(*load_before, *load_after))
    # the 1-minute load before the run is others' alone; after it, it includes our threads
    busy = max(load_before[0], load_after[0] - args.threads)
    if busy > 0.5:
        if args.threads > 1 and args.clock == "wall":
            why = ("With more than one thread, an OpenMP region waits whenever one of its threads "
                   "is preempted, so wall times come quantised by the scheduler (multiples of its "
                   "time slice) and even the paired ratios are unreliable; --threads 1 --clock "
                   "cpu measures the work itself.")
        else:
            why = "Absolute times are noisy; the paired ratios less so."
        body.append(f"SHARED MACHINE: other processes kept ~{busy:.1f} of {os.cpu_count()} CPUs "
                    f"busy. {why}")
    text = "\n".join(lines + body)
    print(body[-1])
    if args.out:
        write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
