"""Stochastic weight sharing (and its codebook): one shared draw per cluster, exact gradients of
the differentiable gather, W2 against scipy's sqrtm, the 2-D KL against torch.distributions,
merging, k-means against scikit-learn, the pipeline end to end."""
from __future__ import annotations

import copy
import functools
import math

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.cluster import KMeans
from torch.distributions import MultivariateNormal, Normal, kl_divergence

from ssvi_lite.config import make_config, seed_everything
from ssvi_lite.data import DataSplits
from ssvi_lite.experiment import run
from ssvi_lite.methods import weight_sharing as ws
from ssvi_lite.methods.codebook import Codebook, kmeans, make_codebook, w2_squared
from ssvi_lite.train import fit

TINY = {"pretrain_epochs": 1, "noise_epochs": 1, "n_clusters": 6, "min_cluster_size": 2,
        "outlier_grad_fraction": 0.02, "kmeans_iters": 10}


def _points(n: int = 600, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1-like points (μ, σ) in a few groups, and |∂CE/∂μ|."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.cat([torch.randn(n // 3, generator=g) * 0.01 + c for c in (-0.1, 0.0, 0.1)])
    sigma = 0.01 + 0.002 * torch.rand(len(mu), generator=g)
    mu[:5] = torch.tensor([0.3, -0.25, 0.4, 0.21, -0.5])  # |μ| ≥ μ_out = 0.2: outliers
    return torch.stack([mu, sigma], -1), torch.rand(len(mu), generator=g)


@functools.lru_cache(maxsize=8)
def _cached_book(seed: int) -> Codebook:
    points, grads = _points(seed=seed)
    return make_codebook(points, grads, n_clusters=8, min_cluster_size=5,
                         generator=torch.Generator().manual_seed(seed))


def _book(seed: int = 0) -> Codebook:
    return copy.deepcopy(_cached_book(seed))


def _spd(rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(2, 2))
    return a @ a.T + 0.05 * np.eye(2)


def _data(n: int = 128, d: int = 12, seed: int = 0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3 * n, d, generator=g)
    y = (x[:, 0] - x[:, 1] > 0).long()
    return DataSplits("tiny", x[:n], y[:n], x[n:2 * n], y[n:2 * n], x[2 * n:], y[2 * n:], 2, (d,),
                      ["a", "b"])


# ----------------------------------------------------------------------------- the codebook
def test_partition_covers_every_weight_once_and_follows_the_rules() -> None:
    points, grads = _points()
    book = make_codebook(points, grads, n_clusters=8, min_cluster_size=5, outlier_abs_mu=0.2,
                         outlier_grad_fraction=0.01, generator=torch.Generator().manual_seed(0))
    n = len(points)
    assert torch.equal(torch.sort(book.inverse).values, torch.arange(n))  # a permutation
    n_in, n_ell, n_out = len(book.labels), len(book.ell_alpha), len(book.out_mu)
    assert n_in + n_ell + n_out == n
    order = torch.argsort(book.inverse)  # flat position of each slot: inliers, ellipse, outliers
    outliers = set(order[n_in + n_ell:].tolist())
    assert {0, 1, 2, 3, 4} <= outliers  # |μ| ≥ 0.2
    assert set(torch.topk(grads, math.ceil(0.01 * n)).indices.tolist()) <= outliers
    assert int(book.labels.max()) < book.n_clusters and int(book.ell_k.max()) < book.n_clusters
    assert bool(((book.ell_alpha >= 0.5) & (book.ell_alpha <= 1)).all())  # the more probable first
    torch.testing.assert_close(book.out_mu.detach(), points[order[n_in + n_ell:], 0])


def test_inliers_of_a_cluster_share_one_draw_per_forward_pass() -> None:
    torch.manual_seed(0)
    book = _book()
    order = torch.argsort(book.inverse)
    inl = order[:len(book.labels)]
    draws = [book.weights().detach() for _ in range(2)]
    for w in draws:
        for k in range(book.n_clusters):
            values = w[inl[book.labels == k]]
            if len(values):
                assert bool((values == values[0]).all())
    shared = [w[inl] for w in draws]
    assert not torch.equal(shared[0], shared[1])  # a fresh draw per pass
    out = order[len(book.labels) + len(book.ell_alpha):]
    assert len(torch.unique(draws[0][out])) == len(out)  # outliers draw their own values
    c1 = book.centre[:, 0].detach()
    ell = order[len(book.labels):len(book.labels) + len(book.ell_alpha)]
    expected = book.ell_alpha * c1[book.ell_k[:, 0]] + (1 - book.ell_alpha) * c1[book.ell_k[:, 1]]
    torch.testing.assert_close(draws[0][ell], expected)  # ellipse points: blend of centres
    mean = book.weights(mean=True).detach()
    torch.testing.assert_close(mean[inl], c1[book.labels])


def test_gradients_of_the_gather_are_sums_over_each_cluster() -> None:
    book = _book()
    target = torch.randn(book.inverse.shape, generator=torch.Generator().manual_seed(1))
    w = book.weights(mean=True)
    loss = (w * target).sum()  # ∂loss/∂w_i = target_i
    loss.backward()
    order = torch.argsort(book.inverse)
    n_in, n_ell = len(book.labels), len(book.ell_alpha)
    expected = torch.zeros(book.n_clusters).index_add_(0, book.labels, target[order[:n_in]])
    t_ell = target[order[n_in:n_in + n_ell]]
    expected.index_add_(0, book.ell_k[:, 0], book.ell_alpha * t_ell)
    expected.index_add_(0, book.ell_k[:, 1], (1 - book.ell_alpha) * t_ell)
    torch.testing.assert_close(book.centre_z.grad[:, 0], book.scale[0] * expected)  # c = o + s·c_z
    torch.testing.assert_close(book.out_mu.grad, target[order[n_in + n_ell:]])
    book.zero_grad()
    (book.weights() * target).sum().backward()  # sampled: the draw's scale L11 gets a gradient
    assert book.chol_raw.grad[:, 0].abs().sum() > 0 and book.out_rho.grad.abs().sum() > 0


def test_kl_matches_torch_distributions_and_is_zero_at_the_prior() -> None:
    book = _book()
    assert abs(book.kl_sum().item()) < 1e-3
    with torch.no_grad():
        book.centre_z.add_(torch.randn_like(book.centre_z) * 0.3)
        book.chol_raw.add_(torch.randn_like(book.chol_raw) * 0.3)
        book.out_mu.add_(0.01)
        book.out_rho.sub_(0.5)
    q = MultivariateNormal(book.centre.double(), scale_tril=book.chol().double())
    p = MultivariateNormal(book.prior_centre.double(), covariance_matrix=book.prior_cov.double())
    q_out = Normal(book.out_mu.double(), torch.nn.functional.softplus(book.out_rho).double())
    p_out = Normal(book.prior_out_mu.double(), book.prior_out_sigma.double())
    expected = kl_divergence(q, p).sum() + kl_divergence(q_out, p_out).sum()
    assert book.kl_sum().item() == pytest.approx(expected.item(), rel=1e-3)


@given(st.integers(0, 10_000))
@settings(max_examples=40, deadline=None)
def test_w2_closed_form_matches_scipy_sqrtm(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = _spd(rng), _spd(rng)
    ca, cb = rng.normal(size=2), rng.normal(size=2)
    root_a = scipy.linalg.sqrtm(a)
    cross = np.real(scipy.linalg.sqrtm(root_a @ b @ root_a))
    expected = np.sum((ca - cb) ** 2) + np.trace(a + b - 2 * cross)
    got = w2_squared(*(torch.tensor(v) for v in (ca, a, cb, b)))
    assert float(got) == pytest.approx(expected, rel=1e-6, abs=1e-9)
    assert float(w2_squared(*(torch.tensor(v) for v in (ca, a, ca, a)))) < 1e-6


@given(st.integers(0, 1_000), st.floats(0.0, 1e-2))
@settings(max_examples=25, deadline=None)
def test_merging_never_increases_the_cluster_count(seed: int, threshold: float) -> None:
    book = _book(seed % 5)
    with torch.no_grad():  # move centres so that some pairs come close
        book.centre_z.add_(torch.randn(book.centre_z.shape, generator=torch.Generator()
                                       .manual_seed(seed)) * 0.5)
    k0 = book.n_clusters
    n_merged = book.merge(threshold)
    assert book.n_clusters == k0 - n_merged <= k0
    assert book.n_clusters >= math.ceil(k0 / 2)  # each cluster merges at most once per call
    assert int(book.labels.max()) < book.n_clusters and int(book.ell_k.max()) < book.n_clusters
    assert book.prior_centre.shape[0] == book.prior_cov.shape[0] == book.n_clusters
    assert book.weights().shape == book.inverse.shape
    assert math.isfinite(book.kl_sum().item())


def test_merge_averages_the_pair_and_relabels_its_members() -> None:
    book = _book()
    with torch.no_grad():
        book.centre_z[1] = book.centre_z[0] + 1e-6
        book.chol_raw[1] = book.chol_raw[0]
    c0, c1 = book.centre[0].detach().clone(), book.centre[1].detach().clone()
    members = int(((book.labels == 0) | (book.labels == 1)).sum())
    assert book.merge(1e-9) == 1
    torch.testing.assert_close(book.centre[0].detach(), (c0 + c1) / 2)
    assert int((book.labels == 0).sum()) == members
    assert book.merge(0.0) == 0


def test_kmeans_matches_scikit_learn_on_blobs() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [-5.0, 4.0], [4.0, -6.0]])
    points = torch.cat([c + torch.randn(200, 2, generator=g) for c in centres])
    found, labels = kmeans(points, 4, 50, torch.Generator().manual_seed(0))
    inertia = float(((points - found[labels]) ** 2).sum())
    reference = KMeans(4, n_init=10, random_state=0).fit(points.numpy()).inertia_
    assert inertia == pytest.approx(reference, rel=0.01)
    nearest = torch.cdist(points, found).argmin(1)
    assert torch.equal(labels, nearest)
    with pytest.raises(ValueError, match="k=9"):
        kmeans(points[:5], 9)


# ----------------------------------------------------------------------------- the pipeline
def test_unknown_option_is_rejected_with_the_valid_names() -> None:
    with pytest.raises(ValueError, match="n_clusters"):
        ws.METHOD.parse_options({"n_cluster": 64})
    with pytest.raises(ValueError, match="16-bit"):
        ws.METHOD.parse_options({"n_clusters": 70_000})


def test_pipeline_trains_a_few_steps_and_reports() -> None:
    data = _data()
    cfg = make_config("kit", method="weight_sharing", hidden=(16,), epochs=2, batch_size=32,
                      n_eval_samples=2, progress=False, method_options=TINY)
    model = ws.build(cfg, data, seed_everything(0))
    history = fit(model, data, cfg)
    assert list(history["stage"]) == ["map", "noise", "shared", "shared"]
    assert list(history["epoch"]) == [1, 2, 3, 4]
    assert history["train_flops"].is_monotonic_increasing
    assert history["wall_time_s"].is_monotonic_increasing
    assert all(math.isfinite(v) for v in history["nll"])
    rep = ws.report(model, {})
    assert rep["density"] == 1.0 and rep["n_weights"] == 12 * 16 + 16 * 2
    assert rep["n_inliers"] + rep["n_ellipse_points"] + rep["n_outliers"] == rep["n_weights"]
    assert rep["trainable_params"] == 5 * rep["n_gaussians"] + 2 * rep["n_outliers"]
    assert rep["bytes_mean_field"] == 8 * rep["n_weights"]
    probs = ws.predict_proba(model, data.x_test, 3)
    assert probs.shape == (3, len(data.y_test), 2)
    torch.testing.assert_close(probs.sum(-1), torch.ones(3, len(data.y_test)))


def test_pipeline_runs_on_a_conv_net() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 1, 16, 16, generator=g)
    y = (x[:, 0, :8].mean((1, 2)) > x[:, 0, 8:].mean((1, 2))).long()
    data = DataSplits("img", x[:32], y[:32], x[32:64], y[32:64], x[64:], y[64:], 2, (1, 16, 16),
                      ["a", "b"])
    cfg = make_config("kit", method="weight_sharing", model="lenet", epochs=1, batch_size=16,
                      n_eval_samples=2, progress=False, method_options=TINY)
    model = ws.build(cfg, data, seed_everything(0))
    history = fit(model, data, cfg)
    assert len(history) == 3 and all(math.isfinite(v) for v in history["nll"])
    weights = model.sample_weights()
    assert weights["features.0.weight"].shape == (6, 1, 5, 5)
    assert ws.predict_proba(model, data.x_test, 2).shape == (2, 32, 2)


def test_experiment_run_end_to_end() -> None:
    cfg = make_config("kit", method="weight_sharing", epochs=2, n_train=400,
                      progress=False)
    row = run(cfg, with_ood=False).row
    assert row["method"] == "weight_sharing" and row["density"] == 1.0
    assert row["accuracy"] > 0.5 and math.isfinite(row["nll"])
    assert row["n_gaussians"] > 1 and row["storage_saving"] > 0.5
    assert row["param_ratio_mean_field"] > 10
    biases = 4 * sum(b for b in cfg.hidden) + 4 * 10  # float32 biases of the MLP's layers
    assert row["model_size_bytes"] == row["bytes_stored"] + biases  # 16-bit codes included
