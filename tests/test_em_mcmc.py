"""EM-MCMC (methods/em_mcmc.py): step-size schedule, the sampler's update against its formulas,
group pruning that stays pruned, snapshot prediction, and one end-to-end run."""
from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from ssvi_lite.config import make_config, seed_everything
from ssvi_lite.data import DataSplits
from ssvi_lite.methods import em_mcmc
from ssvi_lite.train import fit


def _toy_data(n_train: int = 96, d: int = 8, n_classes: int = 3, seed: int = 0) -> DataSplits:
    """Linearly separable-ish blobs; the last two input features are always 0 (dead columns)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_classes, d, generator=g) * 2

    def part(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, n_classes, (n,), generator=g)
        x = centres[y] + torch.randn(n, d, generator=g)
        x[:, -2:] = 0.0
        return x.float(), y.long()

    (xt, yt), (xv, yv), (xs, ys) = part(n_train), part(48), part(48)
    return DataSplits("toy", xt, yt, xv, yv, xs, ys, n_classes, (d,), ["a", "b", "c"])


def _cfg(**opts):
    return make_config("kit", method="em_mcmc", hidden=(16,), epochs=4, batch_size=32,
                       progress=False, method_options=opts)


def test_options_reject_unknown_and_bad_values() -> None:
    with pytest.raises(ValueError, match="valid ones: n_cycles"):
        _cfg(n_cycle=3)
    with pytest.raises(ValueError, match="em_start_cycle"):
        _cfg(n_cycles=2, em_start_cycle=3)
    with pytest.raises(ValueError, match="hard_quantile"):
        _cfg(hard_quantile=0.8, soft_quantile=0.5)
    with pytest.raises(ValueError, match="n_cycles='3' must be of type int"):
        _cfg(n_cycles="3")
    opts = em_mcmc.METHOD.parse_options(_cfg().method_options)
    assert opts.first_snapshot_cycle == opts.em_start_cycle == 2 and opts.beta1 == 0.1
    assert _cfg().lr == 0.5  # the method's own default peak step size η₀, recorded in the config


@pytest.mark.parametrize("t, expected_factor", [(0, 1.0), (15, 0.5), (30, 1.0), (45, 0.5),
                                                (29, 0.5 * (math.cos(math.pi * 29 / 30) + 1)),
                                                (70, 0.5 * (math.cos(math.pi * 10 / 30) + 1))])
def test_step_size_is_the_cyclical_cosine(t: int, expected_factor: float) -> None:
    # total 90 steps, M = 3 cycles → T_cyc = 30: η_t = η₀·½[cos(π (t mod T_cyc)/T_cyc) + 1]
    assert em_mcmc.step_size(t, 90, 3, 0.2) == pytest.approx(0.2 * expected_factor, rel=1e-12)
    assert em_mcmc.cycle_position(t, 90, 3)[0] == t // 30 + 1


def test_sampler_step_matches_its_formulas_on_a_hand_case() -> None:
    n, temp, c2, eta, beta1, beta2, lam = 50, 0.02, 0.3, 0.1, 0.1, 1.0, 0.05
    w0 = torch.tensor([0.5, -1.0, 2.0])
    g = torch.tensor([0.2, -0.4, 1.5])
    xi_prev = torch.tensor([1.0, -0.5, 0.25])
    rho0 = torch.tensor([0.0, 1.0, -2.0])
    m0 = torch.tensor([0.1, 0.0, -0.3])
    w = torch.nn.Parameter(w0.clone())
    sampler = em_mcmc.PreconditionedSGHMC([w], n, lr=c2, temperature=temp, beta1=beta1,
                                          beta2=beta2, eta=eta, decay=lam,
                                          generator=torch.Generator().manual_seed(7))
    state = sampler.state[w]
    state["rho"].copy_(rho0), state["xi"].copy_(xi_prev), state["momentum"].copy_(m0)
    w.grad = g.clone()
    sampler.step()
    xi = torch.randn(3, generator=torch.Generator().manual_seed(7))  # the sampler's draw
    # the formulas of docs/baselines.md §A, written out with η_t = c2 = c², so η_t^{3/4} = c^1.5
    c = math.sqrt(c2)
    tau0 = 1 / (1 + torch.exp(-rho0))
    rho1 = rho0 - eta * (temp**2 * c**3 * lam * tau0 + temp * c**1.5 * xi_prev * g - 1 / (n * tau0))
    tau1 = 1 / (1 + torch.exp(-rho1))
    noise = math.sqrt(2 * (1 + beta1**2)) * c**1.5 * temp * xi
    m1 = beta1 * m0 - c**2 * beta2 * (g + lam * w0) + noise
    torch.testing.assert_close(state["rho"], rho1)
    torch.testing.assert_close(state["momentum"], m1)
    torch.testing.assert_close(w.detach(), w0 + tau1 * m1)
    torch.testing.assert_close(state["xi"], xi)


def test_preconditioner_starts_at_one_half_and_entropy_term_raises_it() -> None:
    w = torch.nn.Parameter(torch.zeros(4))
    sampler = em_mcmc.PreconditionedSGHMC([w], 10, lr=0.1,
                                          generator=torch.Generator().manual_seed(0))
    assert torch.sigmoid(sampler.state[w]["rho"]).eq(0.5).all()
    w.grad = torch.zeros(4)
    sampler.step()  # with ∇ = 0 and δ = 0 only −1/(Nτ) acts: ω rises by η_ω/(N·½) = 0.02
    torch.testing.assert_close(sampler.state[w]["rho"], torch.full((4,), 0.1 / (10 * 0.5)))


def test_pruned_groups_stay_exactly_zero_through_later_steps() -> None:
    data = _toy_data()
    cfg = _cfg(soft_quantile=0.5, hard_quantile=0.4)
    model = em_mcmc.build(cfg, data, seed_everything(0))
    sampler = em_mcmc.PreconditionedSGHMC(model.net.parameters(), data.n_train, lr=0.1,
                                          generator=torch.Generator().manual_seed(0))
    x, y = data.x_train, data.y_train

    def steps(k: int) -> None:
        for _ in range(k):
            sampler.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            sampler.step()

    steps(3)
    pruned_now = em_mcmc.em_step(model, sampler)
    assert pruned_now > 0
    dead = [~model.alive(k) for k in range(len(model.layer_names))]
    steps(20)
    em_mcmc.em_step(model, sampler)
    steps(5)
    for k, layer in enumerate(model.weight_layers()):
        assert not (model.alive(k) & dead[k]).any()  # more may die, none come back
        assert torch.equal(layer.weight[:, ~model.alive(k)], torch.zeros_like(
            layer.weight[:, ~model.alive(k)]))


def test_fit_trains_prunes_and_predicts_with_the_snapshots() -> None:
    data = _toy_data()
    cfg = _cfg(n_cycles=2, em_start_cycle=2, first_snapshot_cycle=1, soft_quantile=0.5,
               hard_quantile=0.3).replace(lr=0.3)
    model = em_mcmc.build(cfg, data, seed_everything(0))
    history = fit(model, data, cfg)
    expected = {"epoch", "nll", "train_acc", "val_acc", "val_nll", "val_ece", "density",
                "train_flops", "wall_time_s"}
    assert expected <= set(history.columns) and len(history) == 4
    assert history["train_flops"].is_monotonic_increasing
    assert history["nll"].iloc[-1] < history["nll"].iloc[0]
    assert history["val_acc"].iloc[-1] > 0.6  # three well separated blobs
    # warm-up = cycle 1 = epochs 1–2: the first EM step (thresholds fixed) ends epoch 2
    assert history["groups_pruned"].iloc[0] == 0 and history["groups_pruned"].iloc[1] > 0
    assert history["density"].iloc[0] == 1.0 and history["density"].iloc[-1] < 1.0
    assert len(model.snapshots) == 2  # end of cycle 1 and of cycle 2
    probs = em_mcmc.predict_proba(model, data.x_test, n_samples=10)
    assert probs.shape == (2, len(data.y_test), data.n_classes)
    for k, snap in enumerate(model.snapshots):  # slice k = the softmax of snapshot k
        logits = functional_call(model.net, snap, (data.x_test,))
        torch.testing.assert_close(probs[k], torch.softmax(logits, -1))
    assert not torch.allclose(probs[0], probs[1])
    # the last snapshot carries the final hard mask: its dead columns are zero
    first = model.layer_names[0]
    assert model.snapshots[-1][f"{first}.weight"][:, ~model.alive(0)].abs().sum() == 0
    rep = em_mcmc.report(model)
    assert rep["n_snapshots"] == 2
    assert rep["density"] == pytest.approx(history["density"].iloc[-1])
    assert rep[f"units_alive_{first}"] == int(model.alive(0).sum()) < data.input_shape[0]
    assert rep[f"groups_pruned_{first}"] + rep[f"units_alive_{first}"] == data.input_shape[0]


def test_run_end_to_end_on_mnist_subset() -> None:
    pytest.importorskip("ssvi_lite.metrics")
    from ssvi_lite.experiment import run

    cfg = make_config("kit", method="em_mcmc", epochs=2, n_train=400, progress=False)
    result = run(cfg, with_ood=False)
    row = result.row
    assert row["method"] == "em_mcmc" and row["n_snapshots"] == row["n_samples"] >= 1
    assert 0 < row["density"] < 1  # EM starts after cycle 1 (a third of the 2 epochs)
    assert row["accuracy"] > 0.3 and math.isfinite(row["nll"])  # 8 steps, 400 images: 0.56 here
    assert 0 < row["train_flops_ratio"] < 0.5  # one deterministic path vs dense VI's two
    # the cost columns count what the predictive needs: K snapshots of the surviving weights
    model, k = result.model, row["n_snapshots"]
    kept = sum(int((layer.weight != 0).sum()) for layer in model.weight_layers())
    biases = sum(layer.bias.numel() for layer in model.weight_layers())
    bitmaps = sum(-(-model.alive(i).numel() // 8) for i in range(len(model.layer_names)))
    assert row["model_size_bytes"] == 4 * k * (kept + biases) + bitmaps
    macs = sum(int((layer.weight != 0).sum()) for layer in model.weight_layers())  # an MLP
    assert row["inference_flops_per_example"] == k * 2 * macs
