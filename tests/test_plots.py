"""plots: each figure draws small inputs (Agg), returns its Axes/Figure and labels what it shows."""
from __future__ import annotations

import math
import re
import struct

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from torch import nn

from ssvi_lite import metrics, plots
from ssvi_lite.config import seed_everything

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _close_figures():
    matplotlib.use("Agg")  # headless (tests/conftest.py also sets MPLBACKEND=Agg)
    yield
    plt.close("all")


def _probs(n: int = 300, c: int = 5, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = seed_everything(seed)
    probs = (2 * torch.randn(n, c, generator=g)).softmax(-1)  # (N, C)
    return probs, torch.randint(0, c, (n,), generator=g)


class _Sparse(nn.Module):
    """Stand-in for a mean-field layer: only a bool ``mask`` buffer matters to plot_masks."""

    def __init__(self, shape: tuple[int, ...], density: float, seed: int) -> None:
        super().__init__()
        g = seed_everything(seed)
        self.register_buffer("mask", torch.rand(shape, generator=g) < density)


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = _Sparse((4, 3, 3, 3), 0.5, 0)  # (out, in, k, k)
        self.act = nn.ReLU()
        self.fc = _Sparse((6, 10), 0.2, 1)
        self.head = _Sparse((3, 6), 0.9, 2)


# ----------------------------------------------------------------------------- reliability
def test_reliability_diagram_states_bins_and_the_ece_of_metrics() -> None:
    probs, labels = _probs()
    ax = plots.reliability_diagram(probs, labels)
    assert isinstance(ax, Axes)
    assert "15 bins" in ax.get_title()
    assert "confidence" in ax.get_xlabel() and "accuracy" in ax.get_ylabel()
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    shown = float(re.search(r"ECE = (\d+\.\d+)", legend).group(1))
    assert shown == pytest.approx(metrics.ece(probs, labels, 15), abs=5e-5)
    bins = metrics.reliability_bins(probs, labels, 15)
    heights = [p.get_height() for p in ax.patches[:15]]  # the accuracy bars come first
    np.testing.assert_allclose(heights, np.nan_to_num(bins["accuracy"]))


def test_reliability_diagram_on_given_axes_with_samples_and_label() -> None:
    probs, labels = _probs(seed=1)
    probs_k = torch.stack([probs, probs.roll(1, dims=1)])  # (K=2, N, C)
    _, ax = plt.subplots()
    out = plots.reliability_diagram(probs_k, labels, n_bins=7, ax=ax, label="ssvi")
    assert out is ax
    assert ax.get_title().startswith("ssvi") and "7 bins" in ax.get_title()
    legend = " ".join(t.get_text() for t in ax.get_legend().get_texts())
    assert f"{metrics.ece(probs_k.mean(0), labels, 7):.4f}" in legend
    with pytest.raises(ValueError, match="n_bins"):
        plots.reliability_diagram(probs, labels, n_bins=0)


# ----------------------------------------------------------------------------- history
def _history() -> pd.DataFrame:
    epochs = np.arange(1, 6)
    return pd.DataFrame({"epoch": epochs, "step": epochs * 10, "loss": 1 / epochs,
                         "nll": 0.9 / epochs, "kl": 100.0 - epochs, "kl_weight": 1.0,
                         "train_acc": 0.5 + epochs / 20, "val_acc": 0.4 + epochs / 20,
                         "val_nll": 1.0 / epochs, "val_ece": 0.05, "density": 0.1,
                         "train_flops": np.cumsum(epochs) * 1e9, "wall_time_s": epochs * 0.5,
                         "lr": 1e-3})


def test_plot_history_draws_each_existing_column_against_epoch() -> None:
    history = _history()
    fig = plots.plot_history(history)
    assert isinstance(fig, Figure)
    assert [a.get_title() for a in fig.axes] == ["nll", "kl", "val_acc", "density"]
    kl_axes = fig.axes[1]
    np.testing.assert_allclose(kl_axes.lines[0].get_ydata(), history["kl"])
    np.testing.assert_allclose(kl_axes.lines[0].get_xdata(), history["epoch"])
    assert kl_axes.get_xlabel() == "epoch" and "nats" in kl_axes.get_ylabel()
    assert fig.axes[3].get_ylabel() == "density (active fraction)"


def test_plot_history_skips_missing_columns_and_rejects_none_present() -> None:
    fig = plots.plot_history(_history()[["epoch", "nll", "lr"]], columns=("nll", "lr", "missing"))
    assert [a.get_title() for a in fig.axes] == ["nll", "lr"]
    with pytest.raises(ValueError, match="none of the columns"):
        plots.plot_history(_history(), columns=("nope",))


# ----------------------------------------------------------------------------- masks
def test_plot_masks_shows_each_mask_with_name_and_density() -> None:
    net = _Net()
    fig = plots.plot_masks(net)
    assert isinstance(fig, Figure)
    titles = [a.get_title() for a in fig.axes]
    assert len(titles) == 3
    for ax, (name, module) in zip(fig.axes, [("conv", net.conv), ("fc", net.fc),
                                             ("head", net.head)]):
        image = np.asarray(ax.images[0].get_array())
        flat = module.mask.reshape(module.mask.shape[0], -1)  # (out, in·k·k)
        assert image.shape == tuple(flat.shape)
        np.testing.assert_array_equal(image, flat.numpy())
        assert ax.get_title() == f"{name}: density {flat.float().mean():.3f}"


def test_plot_masks_limits_layers_and_validates() -> None:
    fig = plots.plot_masks(_Net(), max_layers=2)
    assert [a.get_title().split(":")[0] for a in fig.axes] == ["conv", "fc"]
    _, ax = plt.subplots()
    assert len(plots.plot_masks(_Net(), ax=ax).axes) == 1  # one Axes given: one layer drawn
    with pytest.raises(ValueError, match="no layer with a `mask`"):
        plots.plot_masks(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="max_layers"):
        plots.plot_masks(_Net(), max_layers=0)


# ----------------------------------------------------------------------------- sweeps
def _sweep() -> pd.DataFrame:
    rows = []
    for method, offset in (("ssvi", 0.0), ("static", -0.05)):
        for density in (0.05, 0.1, 0.5):
            for seed in range(3):
                rows.append({"method": method, "density": density, "seed": seed,
                             "accuracy": 0.9 + offset + 0.01 * seed + density / 10,
                             "train_flops_ratio": density * 1.05 + 0.001 * seed})
    return pd.DataFrame(rows)


def _bars(ax: Axes) -> list[tuple[float, float]]:
    """(centre, half-length) of every vertical error bar drawn on ``ax``."""
    out = []
    for collection in ax.collections:
        for seg in getattr(collection, "get_segments", lambda: [])():
            if len(seg) == 2 and seg[0, 0] == seg[1, 0]:
                out.append((float(seg[:, 1].mean()), float(abs(seg[1, 1] - seg[0, 1]) / 2)))
    return out


def test_plot_metric_vs_density_means_and_standard_errors_over_seeds() -> None:
    df = _sweep()
    ax = plots.plot_metric_vs_density(df, "accuracy")
    assert isinstance(ax, Axes)
    assert ax.get_xlabel() == "density (active fraction)" and ax.get_xscale() == "log"
    assert "standard error over 3 seeds" in ax.get_title()
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["ssvi", "static"]
    expected = df[df.method == "ssvi"].groupby("density")["accuracy"]
    np.testing.assert_allclose(ax.lines[0].get_ydata(), expected.mean())
    se = expected.std(ddof=1) / np.sqrt(3)  # bars: mean ± one standard error
    bars = sorted(_bars(ax))[:3]  # the three lowest centres belong to the lower line (static)...
    static = df[df.method == "static"].groupby("density")["accuracy"]
    np.testing.assert_allclose([c for c, _ in bars], sorted(static.mean()))
    np.testing.assert_allclose([h for _, h in bars], (static.std(ddof=1) / np.sqrt(3))
                               .reindex(static.mean().sort_values().index))
    assert np.allclose(se, se.iloc[0])  # the toy sweep's seeds spread alike at each density
    linear = plots.plot_metric_vs_density(df, "accuracy", logx=False)
    assert linear.get_xscale() == "linear"


def test_plot_metric_vs_flops_uses_the_ratio_column() -> None:
    df = _sweep()
    ax = plots.plot_metric_vs_flops(df)
    assert "FLOPs" in ax.get_xlabel() and "dense VI" in ax.get_xlabel()
    expected = df[df.method == "ssvi"].groupby("density")["train_flops_ratio"].mean()
    np.testing.assert_allclose(ax.lines[0].get_xdata(), expected)


@pytest.mark.parametrize("call, message", [
    (lambda: plots.plot_metric_vs_density(_sweep(), "nope"), "lacks column"),
    (lambda: plots.plot_metric_vs_density(_sweep().drop(columns="method"), "accuracy"), "method"),
    (lambda: plots.plot_metric_vs_flops(_sweep().drop(columns="train_flops_ratio")),
     "train_flops_ratio"),
    (lambda: plots.plot_metric_vs_density(_sweep().iloc[:0], "accuracy"), "empty"),
])
def test_sweep_plots_reject_bad_tables(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- 2-D pictures
def test_plot_entropy_map_contours_entropy_and_scatters_data() -> None:
    g = seed_everything(3)
    x, y = torch.randn(40, 2, generator=g), torch.randint(0, 2, (40,), generator=g)
    weight = torch.tensor([[2.0, -1.0], [-2.0, 1.0]])
    seen = {}

    def predict(points: torch.Tensor) -> torch.Tensor:
        seen["shape"], seen["grad"] = points.shape, torch.is_grad_enabled()
        return (points @ weight.T).softmax(-1)  # (M, 2)

    ax = plots.plot_entropy_map(predict, x, y, grid=25)
    assert isinstance(ax, Axes)
    assert seen == {"shape": (625, 2), "grad": False}
    assert "25×25" in ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert len(ax.figure.axes) == 2 and "nats" in ax.figure.axes[1].get_ylabel()  # colour bar
    assert ax.collections[-1].get_offsets().shape == (40, 2)


def test_plot_entropy_map_validates_inputs() -> None:
    x, y = torch.zeros(5, 2), torch.zeros(5, dtype=torch.long)

    def uniform(p: torch.Tensor) -> torch.Tensor:
        return torch.full((len(p), 3), 1 / 3)

    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        plots.plot_entropy_map(uniform, torch.zeros(5, 3), y)
    with pytest.raises(ValueError, match="grid"):
        plots.plot_entropy_map(uniform, x, y, grid=1)
    with pytest.raises(ValueError, match="predict_fn returned"):
        plots.plot_entropy_map(lambda p: torch.full((3, 3), 1 / 3), x, y, grid=4)
    with pytest.raises(ValueError, match="sum to 1"):
        plots.plot_entropy_map(lambda p: torch.zeros(len(p), 3), x, y, grid=4)


def _snr(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return mu.abs() / sigma


def test_plot_score_plane_colours_scores_and_draws_the_boundary() -> None:
    ax = plots.plot_score_plane(_snr, (-0.1, 0.1), (1e-3, 0.1), threshold=5.0, grid=31)
    assert isinstance(ax, Axes)
    assert ax.get_yscale() == "log" and "μ" in ax.get_xlabel() and "σ" in ax.get_ylabel()
    assert "_snr" in ax.get_title()
    mesh = ax.collections[0]
    mu = torch.linspace(-0.1, 0.1, 31, dtype=torch.float64)
    sigma = torch.logspace(-3, -1, 31, dtype=torch.float64)
    expected = mu[None, :].abs() / sigma[:, None]  # (σ rows, μ columns)
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(31, 31), expected.numpy())
    assert len(ax.collections) >= 2  # the score = 5 contour
    legend = ax.get_legend().get_texts()[0].get_text()
    assert "removal boundary" in legend and "5" in legend and "outside" not in legend
    assert "higher = keep" in ax.figure.axes[1].get_ylabel()


def test_plot_score_plane_linear_sigma_threshold_outside_and_bad_input() -> None:
    ax = plots.plot_score_plane(_snr, (-1, 1), (0.5, 1.0), threshold=1e9, grid=11)
    assert ax.get_yscale() == "linear"
    assert "outside" in ax.get_legend().get_texts()[0].get_text()
    with pytest.raises(ValueError, match="sigma_range"):
        plots.plot_score_plane(_snr, (-1, 1), (0.0, 1.0))
    with pytest.raises(ValueError, match="mu_range"):
        plots.plot_score_plane(_snr, (1, -1), (0.1, 1.0))
    with pytest.raises(ValueError, match="shape"):
        plots.plot_score_plane(lambda m, s: m[0], (-1, 1), (0.1, 1.0), grid=5)


# ----------------------------------------------------------------------------- widget panels
def test_pruning_and_trainer_figures_compose_panels() -> None:
    probs, labels = _probs(c=3)
    fig = plots.pruning_figure(probs, labels, _Net(), n_bins=15, title="snr_abs, density 0.10")
    assert isinstance(fig, Figure) and len(fig.axes) == 3  # reliability + 2 masks (notebook width)
    assert "15 bins" in fig.axes[0].get_title()
    fig2 = plots.trainer_figure(_history(), probs, labels, n_bins=10, title="SSVI")
    assert [a.get_title() for a in fig2.axes[:4]] == ["nll", "kl", "val_acc", "density"]
    assert "10 bins" in fig2.axes[4].get_title()
    plots.close_figure(fig2.axes[0])
    assert fig2.number not in plt.get_fignums() and fig.number in plt.get_fignums()


# ----------------------------------------------------------------------------- save_figure
def _png_dpi(data: bytes) -> float:
    """Horizontal resolution from the pHYs chunk (pixels per metre → dots per inch)."""
    at = data.index(b"pHYs")
    per_metre = struct.unpack(">I", data[at + 4: at + 8])[0]
    return per_metre * 0.0254


def test_save_figure_writes_a_png_at_120_dpi_and_nothing_else(tmp_path) -> None:
    ax = plots.reliability_diagram(*_probs())
    path = plots.save_figure(ax.figure, tmp_path / "sub" / "reliability.png")
    assert path == tmp_path / "sub" / "reliability.png"
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert _png_dpi(data) == pytest.approx(120, abs=0.1)
    image = plt.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100
    assert sorted(p.name for p in path.parent.iterdir()) == ["reliability.png"]
    assert plots.save_figure(ax, tmp_path / "from_axes.png").read_bytes().startswith(PNG_MAGIC)


def test_save_figure_is_atomic_when_saving_fails(tmp_path, monkeypatch) -> None:
    fig, _ = plt.subplots()
    target = tmp_path / "figure.png"
    target.write_bytes(b"old")

    def broken_savefig(path, **kwargs):
        with open(path, "wb") as handle:
            handle.write(PNG_MAGIC[:4])  # a half-written file
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.save_figure(fig, target)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["figure.png"]  # no temporary file left


@pytest.mark.parametrize("fig, path, message", [
    (None, "out.png", "Figure or Axes"),
    ("figure", "out.jpg", r"\.png"),
    ("figure", "out", r"\.png"),
])
def test_save_figure_rejects_bad_input(tmp_path, fig, path: str, message: str) -> None:
    figure = plt.subplots()[0] if fig == "figure" else fig
    with pytest.raises(ValueError, match=message):
        plots.save_figure(figure, tmp_path / path)
    assert not list(tmp_path.iterdir())


def test_entropy_of_uniform_prediction_fills_the_top_level() -> None:
    x, y = torch.tensor([[0.0, 0.0], [1.0, 1.0]]), torch.tensor([0, 1])
    ax = plots.plot_entropy_map(lambda p: torch.full((len(p), 4), 0.25), x, y, grid=6)
    levels = ax.collections[0].levels
    assert levels[-1] == pytest.approx(math.log(4))
