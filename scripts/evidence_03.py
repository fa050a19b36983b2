"""Evidence for notebook 03_snr_removal: SSVI with each removal score, several seeds.

    OMP_NUM_THREADS=1 python scripts/evidence_03.py            # ≈ 12 min of one core
    OMP_NUM_THREADS=1 python scripts/evidence_03.py --seeds 0 1 2 3 4   # more seeds, same file

One process, one thread. Writes ``results/evidence/03_removal_scores.csv``, one row per run
(config + metrics + seed), rewritten atomically after every run; runs already in the file are
skipped, so an interrupted call resumes where it stopped.

Each run: the ``kit`` preset (MLP 784-100-100-10, plain ELBO κ = 1, 60 epochs), SSVI at density
0.1, gradient addition, one removal score (the six of docs/method.md §6 and ``random``). Runs of
the same seed share the data split, the initial mask and the initial (μ, ρ), so the notebook can
compare scores seed by seed (paired differences). Besides the test metrics, every row holds the
agreement of the six scores with ``snr_abs`` on that run's final posterior: the IoU of the sets
each would remove (the lowest 30 % = ζ(0) of every layer's active weights) and the Spearman rank
correlation of the scores over the active weights.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
import evidence_table  # noqa: E402  (scripts/evidence_table.py)

import ssvi_lite as sl  # noqa: E402

OUT = ROOT / "results" / "evidence" / "03_removal_scores.csv"
PRESET, DENSITY = "kit", 0.1
KEYS = list(sl.criteria.REMOVAL_SCORES)  # the six scores and random
SIX = [k for k in KEYS if k != "random"]
METRICS = ("accuracy", "nll", "ece", "mean_net_accuracy", "density", "train_flops_ratio",
           "converged", "sigma_q90_q10_first_layer", "kl_per_example", "wall_time_s")


def removal_sets(model: torch.nn.Module, key: str, fraction: float) -> torch.Tensor:
    """The lowest ``fraction`` of every layer's active weights by score ``key``, concatenated."""
    out = []
    for _, layer in sl.mean_field_layers(model):
        mu, sigma, active = layer.mu.detach(), layer.sigma.detach(), layer.mask
        n = int(active.sum())
        keep = sl.criteria.top_k_mask(sl.criteria.removal_score(key, mu, sigma),
                                      n - math.floor(fraction * n), allowed=active)
        out.append((active & ~keep).reshape(-1))
    return torch.cat(out)


def agreement(model: torch.nn.Module, fraction: float) -> dict[str, float]:
    """IoU and Spearman of every score with snr_abs on the model's active weights."""
    sets = {k: removal_sets(model, k, fraction) for k in SIX}
    layers = [layer for _, layer in sl.mean_field_layers(model)]

    def scores(key: str) -> torch.Tensor:
        return torch.cat([sl.criteria.removal_score(key, lay.mu.detach(), lay.sigma.detach())
                          [lay.mask] for lay in layers])

    ref = scores("snr_abs")
    row = {}
    for key in SIX:
        row[f"iou_snr_abs_{key}"] = sl.criteria.removal_agreement(sets["snr_abs"], sets[key])
        row[f"spearman_snr_abs_{key}"] = sl.criteria.score_rank_correlation(ref, scores(key))
    return row


def one_run(removal: str, seed: int) -> dict:
    cfg = sl.make_config(PRESET, method="ssvi", density=DENSITY, removal=removal, seed=seed,
                         progress=False)
    data = sl.load_dataset(cfg.dataset, seed=cfg.seed)
    result = sl.run(cfg, data=data, with_ood=False)
    last = result.history.iloc[-1]
    row = {"preset": PRESET, "method": cfg.method, "target_density": cfg.density,
           "removal": removal, "addition": cfg.addition, "epochs": cfg.epochs,
           "hidden": "-".join(map(str, cfg.hidden)), "kl_scale": cfg.kl_scale,
           "prior_sigma": cfg.prior_sigma, "update_interval": cfg.update_interval,
           "alpha": cfg.alpha, "n_eval_samples": cfg.n_eval_samples, "seed": seed,
           "run_id": result.row["run_id"],
           **{k: result.row[k] for k in METRICS},
           "val_acc": float(last["val_acc"]), "val_nll": float(last["val_nll"])}
    row.update(agreement(result.model, cfg.alpha))
    return row


def main(argv: list[str] | None = None) -> int:
    return evidence_table.main(__doc__, OUT, "removal", KEYS, one_run,
                               lambda row: f"{row['removal']:13s} acc {row['accuracy']:.3f} "
                                           f"converged {row['converged']}", argv=argv)


if __name__ == "__main__":
    raise SystemExit(main())
