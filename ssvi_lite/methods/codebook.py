"""The shared-weight codebook of stochastic weight sharing (2DGBNN, Lin et al., AISTATS 2025):
k-means on the 2-D weight points, the cluster/outlier/ellipse partition and the variational
parameters of stage 3, with the 2-D Gaussian maths they need (W2 distance, KL, log-density).
``ssvi_lite.methods.weight_sharing`` runs the pipeline; its docstring gives the equations and the
departures from the authors' code. Notebook 06_sparse_bnn_zoo.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..criteria import top_k_mask
from ..layers import softplus_inverse

ELLIPSE_D2 = 5.991  # χ²₂ 95 % quantile
KMEANS_FIT_POINTS = 50_000  # k-means is fitted on a random subset, then every point is assigned
COV_JITTER = 1e-6  # added to the diagonal of every Σ_k in standardised units


def kmeans(points: Tensor, k: int, n_iter: int = 30, generator: torch.Generator | None = None
           ) -> tuple[Tensor, Tensor]:
    """Lloyd's k-means with k-means++ seeding on (n, d) points: (centres (k, d), labels (n,))."""
    n = len(points)
    if not 1 <= k <= n:
        raise ValueError(f"k={k} clusters need 1 ≤ k ≤ {n} (the number of points)")
    centres = points[torch.randint(n, (1,), generator=generator)]  # (1, d)
    d2 = ((points - centres[0]) ** 2).sum(-1)  # (n,)
    for _ in range(1, k):  # k-means++: next centre with probability ∝ squared distance
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        new = points[torch.multinomial(weights, 1, generator=generator)]  # (1, d)
        centres = torch.cat([centres, new])
        d2 = torch.minimum(d2, ((points - new[0]) ** 2).sum(-1))
    for _ in range(n_iter):
        labels = _nearest(points, centres)
        sums = torch.zeros_like(centres).index_add_(0, labels, points)
        counts = torch.bincount(labels, minlength=k).unsqueeze(1)  # (k, 1)
        moved = torch.where(counts > 0, sums / counts.clamp_min(1), centres)
        if torch.equal(moved, centres):
            break
        centres = moved
    return centres, _nearest(points, centres)


def _nearest(points: Tensor, centres: Tensor, chunk: int = 65536) -> Tensor:
    """Index of the nearest centre: argmin_k ‖c_k‖² − 2 x·c_k (‖x‖² is common to all k)."""
    c2 = (centres**2).sum(-1)
    return torch.cat([(c2 - 2.0 * points[i:i + chunk] @ centres.T).argmin(1)  # (chunk,)
                      for i in range(0, len(points), chunk)])


def w2_squared(c_a: Tensor, cov_a: Tensor, c_b: Tensor, cov_b: Tensor) -> Tensor:
    """Squared 2-Wasserstein distance of 2-D Gaussians (broadcasting over leading dims).

    W2² = ‖c_a − c_b‖² + tr Σ_a + tr Σ_b − 2 sqrt(tr(Σ_aΣ_b) + 2 sqrt(det Σ_a det Σ_b)).
    """
    tr_ab = (cov_a * cov_b.transpose(-1, -2)).sum((-2, -1))
    det = (torch.linalg.det(cov_a) * torch.linalg.det(cov_b)).clamp_min(0.0)
    cross = (tr_ab + 2.0 * det.sqrt()).clamp_min(0.0).sqrt()
    trace = cov_a.diagonal(dim1=-2, dim2=-1).sum(-1) + cov_b.diagonal(dim1=-2, dim2=-1).sum(-1)
    return (((c_a - c_b) ** 2).sum(-1) + trace - 2.0 * cross).clamp_min(0.0)


def _chol_from_raw(raw: Tensor) -> Tensor:
    """(G, 3) = (log l11, l21, log l22) → lower-triangular L (G, 2, 2) with positive diagonal."""
    zero = torch.zeros_like(raw[:, 0])
    rows = [torch.stack([raw[:, 0].exp(), zero], -1), torch.stack([raw[:, 1], raw[:, 2].exp()], -1)]
    return torch.stack(rows, -2)


def _raw_from_cov(cov: Tensor) -> Tensor:
    chol = torch.linalg.cholesky(cov)  # (G, 2, 2)
    return torch.stack([chol[:, 0, 0].log(), chol[:, 1, 0], chol[:, 1, 1].log()], -1)


def _log_gauss(x: Tensor, centre: Tensor, chol: Tensor) -> Tensor:
    """log N(x_n; c_k, L_k L_kᵀ) of every pair: x (n, 2), centre (G, 2), chol (G, 2, 2) → (n, G)."""
    diff = (x[:, None, :] - centre[None]).unsqueeze(-1)  # (n, G, 2, 1)
    z = torch.linalg.solve_triangular(chol.expand(len(x), -1, -1, -1), diff, upper=False)
    log_det = chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # (G,) = ½ log det Σ
    return -math.log(2 * math.pi) - log_det - 0.5 * z.squeeze(-1).pow(2).sum(-1)


# ----------------------------------------------------------------------------- the codebook
class Codebook(nn.Module):
    """Stage 3's variational parameters and the fixed assignment of every weight.

    Cluster Gaussians live in standardised coordinates z = (x − ``offset``)/``scale`` (those of
    the k-means): parameters ``centre_z`` (G, 2) and ``chol_raw`` (G, 3) = (log l11, l21, log l22)
    of L_z, with priors ``prior_centre_z``/``prior_cov_z``. Adam's steps are then of one size for μ
    and σ (in raw units σ's spread is ~100× smaller), and the KL and Mahalanobis distances are
    unchanged (both are invariant under this affine map). :attr:`centre`, :meth:`chol`,
    :meth:`cov` give raw (μ, σ) units: c = offset + scale ⊙ c_z, L = diag(scale) L_z.
    Flat weight order (all layers concatenated): inliers, then ellipse points, then outliers, put
    back in place by ``inverse``. Buffers: ``labels`` (n_in,), ``ell_k`` (n_ell, 2), ``ell_alpha``.
    """

    def __init__(self, centre_z: Tensor, cov_z: Tensor, offset: Tensor, scale: Tensor,
                 labels: Tensor, ell_k: Tensor, ell_alpha: Tensor, out_mu: Tensor,
                 out_sigma: Tensor, inverse: Tensor):
        super().__init__()
        self.centre_z = nn.Parameter(centre_z.clone())  # (G, 2)
        self.chol_raw = nn.Parameter(_raw_from_cov(cov_z))  # (G, 3)
        self.out_mu = nn.Parameter(out_mu.clone())
        self.out_rho = nn.Parameter(softplus_inverse(out_sigma))
        for name, value in (("prior_centre_z", centre_z), ("prior_cov_z", cov_z),
                            ("offset", offset), ("scale", scale), ("labels", labels),
                            ("ell_k", ell_k), ("ell_alpha", ell_alpha), ("prior_out_mu", out_mu),
                            ("prior_out_sigma", out_sigma), ("inverse", inverse)):
            self.register_buffer(name, value.clone())
        self.n_merged = 0

    PARAMETERS = ("centre_z", "chol_raw", "out_mu", "out_rho")
    INDEX_BUFFERS = ("labels", "ell_k", "inverse")  # int64; the other buffers are float

    @classmethod
    def empty(cls, shapes: dict[str, list[int]]) -> Codebook:
        """A codebook of the given tensor shapes (by state-dict name), values zero: what a saved
        one (``load_state_dict``) is loaded into."""
        book = cls.__new__(cls)
        nn.Module.__init__(book)
        for name, shape in shapes.items():
            if name in cls.PARAMETERS:
                book.register_parameter(name, nn.Parameter(torch.zeros(shape)))
            else:
                dtype = torch.long if name in cls.INDEX_BUFFERS else torch.get_default_dtype()
                book.register_buffer(name, torch.zeros(shape, dtype=dtype))
        book.n_merged = 0
        return book

    def get_extra_state(self) -> dict[str, int]:
        return {"n_merged": self.n_merged}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.n_merged = int(state["n_merged"])

    @property
    def n_clusters(self) -> int:
        return len(self.centre_z)

    @property
    def centre(self) -> Tensor:
        """Cluster means c_k in (μ, σ) units, (G, 2)."""
        return self.offset + self.scale * self.centre_z

    def chol(self) -> Tensor:
        """Cholesky factors L_k of Σ_k in (μ, σ) units, (G, 2, 2)."""
        return self.scale[:, None] * _chol_from_raw(self.chol_raw)

    def cov(self) -> Tensor:
        chol = self.chol()
        return chol @ chol.transpose(-1, -2)

    @property
    def prior_centre(self) -> Tensor:
        return self.offset + self.scale * self.prior_centre_z

    @property
    def prior_cov(self) -> Tensor:
        return self.scale[:, None] * self.prior_cov_z * self.scale[None, :]

    def weights(self, mean: bool = False) -> Tensor:
        """All weights, flat (n,): one draw u_k per cluster (first coordinate) gathered to its
        inliers, the r̄-blend of centres for ellipse points, a draw per outlier (``mean``: centres
        and μ instead of draws)."""
        centre = self.centre
        u, out = centre, self.out_mu
        if not mean:
            eps = torch.randn_like(centre).unsqueeze(-1)  # (G, 2, 1)
            u = centre + (self.chol() @ eps).squeeze(-1)  # (G, 2): one draw per cluster
            out = out + F.softplus(self.out_rho) * torch.randn_like(out)
        inliers = u[:, 0].index_select(0, self.labels)
        c1 = centre[:, 0]
        alpha = self.ell_alpha
        ellipse = alpha * c1[self.ell_k[:, 0]] + (1 - alpha) * c1[self.ell_k[:, 1]]
        return torch.cat([inliers, ellipse, out])[self.inverse]

    def kl_sum(self) -> Tensor:
        """Σ_k KL(N(c_k, Σ_k) ‖ N(c⁰_k, Σ⁰_k)) + Σ_o KL(N(μ_o, σ_o²) ‖ N(μ⁰_o, σ⁰_o²)),
        the cluster terms evaluated in z units (the KL is invariant under the affine map)."""
        chol, chol0 = _chol_from_raw(self.chol_raw), torch.linalg.cholesky(self.prior_cov_z)
        m = torch.linalg.solve_triangular(chol0, chol, upper=False)  # L⁰⁻¹L (G, 2, 2)
        delta = (self.centre_z - self.prior_centre_z).unsqueeze(-1)  # (G, 2, 1)
        d = torch.linalg.solve_triangular(chol0, delta, upper=False)
        log_det = (chol0.diagonal(dim1=-2, dim2=-1).log() - chol.diagonal(dim1=-2, dim2=-1).log())
        kl = 0.5 * (m.pow(2).sum((-2, -1)) + d.pow(2).sum((-2, -1)) - 2.0) + log_det.sum(-1)
        sigma, s0 = F.softplus(self.out_rho), self.prior_out_sigma
        kl_out = torch.log(s0 / sigma) + (sigma**2 + (self.out_mu - self.prior_out_mu) ** 2) / (
            2 * s0**2) - 0.5
        return kl.sum() + kl_out.sum()

    @torch.no_grad()
    def merge(self, threshold: float) -> int:
        """Merge cluster pairs with W2² < ``threshold`` (raw units; closest first, each cluster at
        most once per call): means and covariances averaged, priors too. Returns the count."""
        centre, cov = self.centre, self.cov()
        dist = w2_squared(centre[:, None], cov[:, None], centre[None], cov[None])  # (G, G)
        dist = dist.triu(1) + torch.tril(torch.full_like(dist, math.inf))  # pairs i < j only
        close = (dist < threshold).nonzero().tolist()
        used, pairs = set(), []
        for i, j in sorted(close, key=lambda ij: float(dist[ij[0], ij[1]])):
            if i not in used and j not in used:
                pairs.append((i, j))
                used |= {i, j}
        if not pairs:
            return 0
        tensors = [t.clone() for t in (self.centre_z, _chol_from_raw(self.chol_raw),
                                        self.prior_centre_z, self.prior_cov_z)]
        tensors[1] = tensors[1] @ tensors[1].transpose(-1, -2)  # Σ_z: average covariances
        target = torch.arange(self.n_clusters, device=centre.device)
        for i, j in pairs:
            for tensor in tensors:  # averages in z equal averages in raw units (affine map)
                tensor[i] = 0.5 * (tensor[i] + tensor[j])
            target[j] = i
        keep = torch.ones(self.n_clusters, dtype=torch.bool, device=centre.device)
        keep[[j for _, j in pairs]] = False
        new_index = (torch.cumsum(keep.long(), 0) - 1)[target]  # old label → new label
        self.labels, self.ell_k = new_index[self.labels], new_index[self.ell_k]
        self.centre_z = nn.Parameter(tensors[0][keep])
        self.chol_raw = nn.Parameter(_raw_from_cov(tensors[1][keep]))
        self.prior_centre_z, self.prior_cov_z = tensors[2][keep], tensors[3][keep]
        self.n_merged += len(pairs)
        return len(pairs)


def make_codebook(points: Tensor, grad_abs: Tensor, *, n_clusters: int = 128,
                  kmeans_iters: int = 30, outlier_abs_mu: float = 0.2,
                  outlier_grad_fraction: float = 0.01, min_cluster_size: int = 20,
                  generator: torch.Generator | None = None) -> Codebook:
    """Stages 1b and 2 on the stage-1 points (n, 2) = (μ, σ) and |∂CE/∂μ| (n,).

    k-means on standardised points z (fitted on ≤ KMEANS_FIT_POINTS of them); outliers: |μ| ≥
    ``outlier_abs_mu``, the top ``outlier_grad_fraction`` by |∂CE/∂μ|, members of clusters with
    ≤ ``min_cluster_size`` inliers; Gaussians of the inliers; ellipse points (d_M² > 5.991) blend
    the centres of their two most responsible clusters. Variational values start at these priors.
    """
    offset, scale = points.mean(0), points.std(0).clamp_min(1e-12)
    z = (points - offset) / scale
    k = min(n_clusters, len(points))
    fit_on = torch.randperm(len(z), generator=generator)[:KMEANS_FIT_POINTS]
    centres, _ = kmeans(z[fit_on], min(k, len(fit_on)), kmeans_iters, generator)
    labels = _nearest(z, centres)
    outlier = points[:, 0].abs() >= outlier_abs_mu
    outlier |= top_k_mask(grad_abs, math.ceil(outlier_grad_fraction * len(points)))
    sizes = torch.bincount(labels[~outlier], minlength=k)
    outlier |= (sizes <= min_cluster_size)[labels]
    if bool(outlier.all()):
        raise ValueError(f"every weight is an outlier (n={len(points)}, n_clusters={k}, "
                         f"min_cluster_size={min_cluster_size}); lower them")
    kept = torch.unique(labels[~outlier])  # old labels of surviving clusters, sorted
    relabel = torch.full((k,), -1, dtype=torch.long).index_copy_(0, kept, torch.arange(len(kept)))
    inl = (~outlier).nonzero().squeeze(1)
    lab = relabel[labels[inl]]
    centre, cov, ellipse, ell_k, ell_alpha = _cluster_gaussians(z[inl], lab, len(kept))
    out = outlier.nonzero().squeeze(1)
    order = torch.cat([inl[~ellipse], inl[ellipse], out])
    return Codebook(centre, cov, offset, scale, lab[~ellipse], ell_k, ell_alpha, points[out, 0],
                    points[out, 1], torch.argsort(order))


def _cluster_gaussians(x: Tensor, lab: Tensor, k: int
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gaussians (centre (k, 2), cov (k, 2, 2)) of the inliers x (n, 2) with labels lab; the
    ellipse points (bool (n,), Mahalanobis d_M² > 5.991 to their own cluster), their two most
    responsible clusters k₁, k₂ (n_ell, 2) and r̄ = r_{k₁}/(r_{k₁} + r_{k₂}) with
    r_k ∝ w_k N((μ, σ); c_k, Σ_k), w_k the cluster's share of the inliers."""
    counts = torch.bincount(lab, minlength=k).to(x.dtype)  # (k,)
    centre = torch.zeros(k, 2, dtype=x.dtype).index_add_(0, lab, x) / counts[:, None]
    diff = x - centre[lab]
    outer = diff.unsqueeze(-1) * diff.unsqueeze(-2)  # (n, 2, 2)
    cov = torch.zeros(k, 2, 2, dtype=x.dtype).index_add_(0, lab, outer)
    cov = cov / counts[:, None, None] + COV_JITTER * torch.eye(2, dtype=x.dtype)
    chol = torch.linalg.cholesky(cov)
    white = torch.linalg.solve_triangular(chol[lab], diff.unsqueeze(-1), upper=False)
    ellipse = white.squeeze(-1).pow(2).sum(-1) > ELLIPSE_D2
    log_resp = _log_gauss(x[ellipse], centre, chol) + torch.log(counts / counts.sum())  # (n_ell, k)
    top2 = log_resp.topk(min(2, k), dim=1)
    ell_k = top2.indices if k > 1 else top2.indices.repeat(1, 2)
    ell_alpha = torch.sigmoid(top2.values[:, 0] - top2.values[:, -1])
    return centre, cov, ellipse, ell_k, ell_alpha
