"""Search for a ``kit`` training recipe in which dense VI converges and learns per-weight variances.

Stages, in this order (each appends to results/preset_search/ and skips runs already recorded, so
an interrupted stage resumes; minutes measured on a shared 2-core AMD EPYC, one thread):

    PYTHONPATH=. OMP_NUM_THREADS=1 python scripts/preset_search.py --stage timing   # 0.1 min
    ... --stage coarse    # σ0 x ρ lr at κ = 1, prior 0.1, 200-200, + the old preset  (3.4 min)
    ... --stage prior     # prior σ x κ, 200-200, constant μ lr 1e-3                  (9 min)
    ... --stage lr        # μ lr 3e-3 / 1e-2, and 80 epochs                           (4 min)
    ... --stage sched     # cosine decay of both lrs; 100-100 vs 200-200               (4 min)
    ... --stage grid      # prior σ x κ with the converging optimiser (OPT), seed 0    (10 min)
    ... --stage confirm   # candidates within MARGIN of the best, seeds 1-2            (7 min)
    ... --stage long      # the chosen recipes at 30 and 120 epochs                    (3 min)
    ... --stage fastmu    # μ lr 3e-2: 60 and 120 epochs, seeds 0-2                    (3 min)
    ... --stage recheck   # prior σ neighbours at the final μ lr (OPT_FINAL), seeds 0-2 (4 min)
    ... --stage seeds     # map/vi/ssvi/static x both recipes x 3 seeds + old kit, TEST (11 min)
    ... --stage spread [--shard 0/2]  # κ<1 x prior σ x μ lr, seeds 0-2: a tempered recipe whose
                          # first layer learns per-weight σ (the kit's split; 14 min, 7 per shard)
    ... --stage summary   # tables -> summary.txt (printed too) and epochs.csv.gz

Selection never looks at the test set: every stage before ``seeds`` computes validation metrics
only, and the recipes ``seeds`` evaluates come from validation tables (``final_recipes``).
Files: runs.csv (one row per run: config + final diagnostics), epochs.csv (one row per epoch of
every run; the summary stage writes the gzipped copy epochs.csv.gz that git keeps), summary.txt.
Always one thread (torch.set_num_threads(1)); one run at a time per process (``--shard K/N`` runs
every N-th job from the K-th, for N processes side by side; the CSVs are appended under a lock).
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock

import ssvi_lite as sl
from ssvi_lite import metrics
from ssvi_lite.data import ood_sets
from ssvi_lite.layers import kl_sum, softplus_inverse
from ssvi_lite.methods.core import prior_penalty

OUT = Path(__file__).resolve().parents[1] / "results" / "preset_search"
RUNS_CSV, EPOCHS_CSV, SUMMARY = OUT / "runs.csv", OUT / "epochs.csv", OUT / "summary.txt"
K_EVAL = 10  # posterior samples for every evaluation (the kit's n_eval_samples)
LAST = 5  # the plateau test looks at the last LAST epoch-to-epoch changes

# The old preset, for reference: hidden (400, 400), sigma_init 1e-3, rho_lr = lr = 1e-3, prior 0.1.
OLD_KIT: dict = dict(hidden=(400, 400), sigma_init=1e-3, rho_lr=None, prior_sigma=0.1,
                     kl_scale=1.0, epochs=30)
# Every run starts from the kit preset as it was when the search ran (2026-12-01, before its
# result became the preset), spelled out so that the search reproduces whatever the preset is now.
SEARCH_BASE: dict = dict(model="mlp", optimizer="adam", lr=1e-3, batch_size=128, kl_warmup=False,
                         sigma_init_std=0.0, mu_init="kaiming", update_interval=20,
                         first_layer_dense=False, cosine_lr=False, weight_decay=0.0,
                         n_eval_samples=10, select="last", **OLD_KIT)

# --------------------------------------------------------------------------- helpers
def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{cpu}, {os.cpu_count()} cores visible (shared), torch {torch.__version__} "
            f"({torch.get_num_threads()} thread), python {platform.python_version()}")


_DATA: dict[tuple[int, bool], sl.DataSplits] = {}
KIT_SPLIT_STAGES = ("spread",)  # stages run after the kit moved to 3,500 / 500 / 1,000


def data_for(seed: int, kit_split: bool = False) -> sl.DataSplits:
    if (seed, kit_split) not in _DATA:
        # the split of the first stages: 4,000 train / 500 val / 500 test; later stages use the
        # kit's own split (3,500 / 500 / 1,000), so that their validation numbers are the kit's
        _DATA[seed, kit_split] = sl.load_dataset(
            "mnist5k", seed=seed, **({} if kit_split else {"test_fraction": 0.1}))
    return _DATA[seed, kit_split]


def run_id(stage: str, method: str, over: dict, seed: int) -> str:
    keys = ("hidden", "sigma_init", "rho_lr", "prior_sigma", "kl_scale", "epochs", "lr",
            "cosine_lr", "density")
    parts = [stage, method] + [f"{k}={over[k]}" for k in keys if k in over] + [f"seed={seed}"]
    return "|".join(str(p).replace(" ", "") for p in parts)


def done_ids() -> set[str]:
    if not RUNS_CSV.exists():
        return set()
    return set(pd.read_csv(RUNS_CSV)["run_id"])


def append_csv(path: Path, rows: list[dict]) -> None:
    with FileLock(f"{path}.lock"):  # shards of one stage append side by side
        _append_csv(path, rows)


def _append_csv(path: Path, rows: list[dict]) -> None:
    frame = pd.DataFrame(rows)
    if path.exists():
        old_cols = list(pd.read_csv(path, nrows=0).columns)
        if list(frame.columns) != old_cols:  # columns changed: rewrite with the union
            merged = pd.concat([pd.read_csv(path), frame], ignore_index=True)
            merged.to_csv(path, index=False)
            return
        frame.to_csv(path, mode="a", header=False, index=False)
    else:
        frame.to_csv(path, index=False)


def q(t: torch.Tensor, p: float) -> float:
    return float(torch.quantile(t.double(), p)) if t.numel() else float("nan")


def sigma_stats(model: torch.nn.Module, dead: torch.Tensor) -> dict[str, float]:
    """q10/q50/q90 of σ over the active weights of each layer; first layer split by dead pixels."""
    out: dict[str, float] = {}
    for i, (_, layer) in enumerate(sl.mean_field_layers(model)):
        with torch.no_grad():
            sig, mask = layer.sigma.detach(), layer.mask
            act = sig[mask]
            for p in (0.1, 0.5, 0.9):
                out[f"L{i}_sig_q{int(p * 100)}"] = q(act, p)
            out[f"L{i}_sig_q90_q10"] = out[f"L{i}_sig_q90"] / out[f"L{i}_sig_q10"]
            out[f"L{i}_absmu_q50"] = q(layer.mu.detach()[mask].abs(), 0.5)
            out[f"L{i}_frac_at_prior"] = float((act > 0.9 * layer.prior_sigma).double().mean())
            out[f"L{i}_sig_q01"], out[f"L{i}_sig_min"] = q(act, 0.01), float(act.min())
            out[f"L{i}_sig_max"] = float(act.max())
            snr = layer.mu.detach()[mask].abs() / act
            out[f"L{i}_frac_snr_gt1"] = float((snr > 1).double().mean())  # "used" weights
            if i == 0:  # columns of the first layer = input pixels
                dead_cols = dead[None, :].expand_as(mask)
                out["L0_sig_q50_deadpix"] = q(sig[mask & dead_cols], 0.5)
                out["L0_sig_q50_livepix"] = q(sig[mask & ~dead_cols], 0.5)
                out["L0_sig_q10_livepix"] = q(sig[mask & ~dead_cols], 0.1)
    return out


@torch.no_grad()
def train_nll_fixed(model: torch.nn.Module, data: sl.DataSplits) -> float:
    """Mean CE over the whole training set, one LRT draw with a fixed seed (common random numbers
    across epochs, so epoch-to-epoch changes show the parameters' change, not MC noise)."""
    model.eval()
    total = 0.0
    with torch.random.fork_rng():
        torch.manual_seed(12345)
        for start in range(0, data.n_train, 1000):
            xb, yb = data.x_train[start:start + 1000], data.y_train[start:start + 1000]
            total += float(torch.nn.functional.cross_entropy(model(xb), yb, reduction="sum"))
    model.train()
    return total / data.n_train


def predictive(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    return sl.predict_proba(model, x, K_EVAL)  # (K, N, C); K = 1 for MAP


def full_eval(model: torch.nn.Module, data: sl.DataSplits, split: str, with_ood: bool,
              seed: int) -> dict[str, float]:
    """accuracy/NLL/ECE(15 bins)/MI of the K-sample predictive; OOD AUROC by entropy and MI."""
    x, y = (data.x_val, data.y_val) if split == "val" else (data.x_test, data.y_test)
    torch.manual_seed(seed)
    p_in = predictive(model, x)
    s = metrics.summarize(p_in, y)
    res = {f"{split}_acc": s["accuracy"], f"{split}_nll": s["nll"], f"{split}_ece": s["ece"],
           f"{split}_mi": s["mean_mutual_information"], f"{split}_entropy": s["mean_entropy"]}
    if with_ood:
        au_e, au_m, mi_o = [], [], []
        for name, x_out in ood_sets(data, seed=seed).items():
            p_out = predictive(model, x_out)
            e = metrics.ood_auroc(p_in, p_out, "entropy")["auroc"]
            m = (metrics.ood_auroc(p_in, p_out, "mutual_information")["auroc"]
                 if p_in.shape[0] > 1 else float("nan"))  # MAP has no MI (K = 1)
            mo = float(metrics.mutual_information(p_out).mean()) if p_in.shape[0] > 1 else 0.0
            res[f"ood_auroc_ent_{name}"], res[f"ood_auroc_mi_{name}"] = e, m
            res[f"ood_mi_{name}"] = mo
            au_e.append(e), au_m.append(m), mi_o.append(mo)
        res["ood_auroc_ent_mean"] = float(np.mean(au_e))
        res["ood_auroc_mi_mean"] = float(np.mean(au_m))
        res["ood_mi_mean"] = float(np.mean(mi_o))
    return res


def plateau(values: np.ndarray) -> dict[str, float]:
    """Relative epoch-to-epoch change of a per-example objective over the last LAST epochs."""
    v = np.asarray(values, float)
    if len(v) < LAST + 1:
        return {"max": float("nan"), "mean": float("nan"), "slope": float("nan")}
    rel = np.abs(np.diff(v[-LAST - 1:])) / np.abs(v[-LAST - 1:-1])
    slope = np.polyfit(np.arange(LAST + 1), v[-LAST - 1:], 1)[0] / abs(v[-LAST - 1:].mean())
    return {"max": float(rel.max()), "mean": float(rel.mean()), "slope": float(slope)}


def train_one(stage: str, method: str, over: dict, seed: int, test: bool) -> dict:
    """Train one configuration, record per-epoch diagnostics, return the run's summary row."""
    data = data_for(seed, kit_split=stage in KIT_SPLIT_STAGES)
    density = over.get("density", 1.0 if method in ("vi", "map") else 0.1)
    cfg = sl.make_config("kit", method=method, seed=seed, progress=False,
                         **{**SEARCH_BASE, **over, "density": density})
    rid = run_id(stage, method, {**over, "density": density}, seed)
    gen = sl.seed_everything(seed)
    model = sl.prepare_model(cfg, data, gen)
    n = data.n_train
    dead = (data.x_train.reshape(n, -1) == 0).all(0)  # pixels that are 0 in every train image
    bayes = bool(sl.mean_field_layers(model))
    epochs: list[dict] = []
    snaps: dict[str, tuple[float, int, dict]] = {}

    def on_epoch(row: dict, net: torch.nn.Module) -> None:
        epoch = row["epoch"]
        rec = {"run_id": rid, "epoch": epoch, "train_nll": row["nll"], "kl_sum": row["kl"],
               "kl_per_n": row["kl"] / n, "val_acc": row["val_acc"], "val_nll": row["val_nll"],
               "val_ece": row["val_ece"], "train_acc": row["train_acc"],
               "train_s": row["wall_time_s"]}
        nll_fix = train_nll_fixed(net, data)
        rec["train_nll_fixed"] = nll_fix
        if bayes:  # epoch averages (what the optimiser saw) and end-of-epoch fixed-noise values
            rec["elbo_per_n"] = -(row["nll"] + row["kl"] / n)
            rec["tempered_obj"] = row["nll"] + cfg.kl_scale * row["kl"] / n
            rec["kl_end"] = float(kl_sum(net).detach())
            rec["elbo_fixed"] = -(nll_fix + rec["kl_end"] / n)
            rec["tempered_fixed"] = nll_fix + cfg.kl_scale * rec["kl_end"] / n
            rec.update(sigma_stats(net, dead))
        else:  # MAP: the objective is CE + κ‖θ‖²/(2σ_p²N)
            pen = float(prior_penalty(net, cfg.prior_sigma).detach())
            rec["tempered_obj"] = row["nll"] + cfg.kl_scale * pen / n
            rec["tempered_fixed"] = nll_fix + cfg.kl_scale * pen / n
        epochs.append(rec)
        for key, score in (("val_acc", -row["val_acc"]), ("val_nll", row["val_nll"])):
            if key not in snaps or score < snaps[key][0]:  # first best kept on ties (as fit does)
                snaps[key] = (score, epoch, copy.deepcopy(net.state_dict()))

    start, load0 = time.perf_counter(), os.getloadavg()[0]
    history = sl.fit(model, data, cfg, on_epoch=on_epoch)  # cfg.select = "last": no restore
    total = time.perf_counter() - start
    hist = pd.DataFrame(epochs)
    last = hist.iloc[-1]
    row = {"run_id": rid, "stage": stage, "method": method, "seed": seed,
           **{k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.to_dict().items()
              if k in ("hidden", "sigma_init", "rho_lr", "prior_sigma", "kl_scale", "epochs",
                       "lr", "cosine_lr", "density", "batch_size", "removal", "addition")},
           "rho_lr_eff": cfg.rho_lr or cfg.lr,
           "n_weights": sum(p.numel() for nm, p in model.named_parameters()
                            if nm.endswith(("mu", "weight"))),
           "s_per_epoch_train": float(last["train_s"]) / cfg.epochs,
           "s_per_epoch_total": total / cfg.epochs, "run_s": total,
           "loadavg_start": load0, "loadavg_end": os.getloadavg()[0]}
    row.update({f"last_{k}": last[k] for k in hist.columns if k not in ("run_id", "epoch")})
    for obj in ("elbo_per_n", "tempered_obj", "elbo_fixed", "tempered_fixed"):
        if obj in hist:
            for k, v in plateau(hist[obj].to_numpy()).items():
                row[f"plateau_{obj}_{k}"] = v
    if bayes:
        for k, v in plateau(hist["L0_sig_q50"].to_numpy()).items():
            row[f"plateau_L0_sig_q50_{k}"] = v
        verdict = sl.convergence.assess(history)  # the kit's own test (fit warns on it)
        row.update(converged=verdict.converged, objective_change_per_epoch=verdict.relative_slope)
    row["best_val_acc_epoch"], row["best_val_nll_epoch"] = snaps["val_acc"][1], snaps["val_nll"][1]
    # last epoch, validation (fixed seed for the K draws)
    row.update(full_eval(model, data, "val", with_ood=False, seed=seed))
    if test:
        final = copy.deepcopy(model.state_dict())
        for sel, state in (("last", final), ("bestacc", snaps["val_acc"][2]),
                           ("bestnll", snaps["val_nll"][2])):
            model.load_state_dict(state)
            res = full_eval(model, data, "test", with_ood=True, seed=seed)
            res.update({k: v for k, v in full_eval(model, data, "val", False, seed).items()})
            row.update({f"{sel}_{k}": v for k, v in res.items()})
        model.load_state_dict(final)
    append_csv(EPOCHS_CSV, epochs)
    append_csv(RUNS_CSV, [row])
    return row


def show(row: dict) -> None:
    bits = [f"{row['run_id']}", f"{row['s_per_epoch_train']:.2f}s/ep(train) "
            f"{row['s_per_epoch_total']:.2f}s/ep(total)",
            f"val acc {row['val_acc']:.3f} nll {row['val_nll']:.3f} ece {row['val_ece']:.3f}"]
    if "last_elbo_per_n" in row and not pd.isna(row.get("last_elbo_per_n")):
        bits.append(f"NLL {row['last_train_nll']:.3f} KL/N {row['last_kl_per_n']:.3f} "
                    f"dELBO(avg) max {100 * row['plateau_elbo_per_n_max']:.2f}% "
                    f"dELBO(fixed) max {100 * row['plateau_elbo_fixed_max']:.2f}% "
                    f"slope {100 * row['plateau_elbo_fixed_slope']:.2f}%/ep "
                    f"dObj(fixed) max {100 * row['plateau_tempered_fixed_max']:.2f}% "
                    f"L0 sig q10/50/90 {row['last_L0_sig_q10']:.3g}/{row['last_L0_sig_q50']:.3g}/"
                    f"{row['last_L0_sig_q90']:.3g} (dead px {row['last_L0_sig_q50_deadpix']:.3g}, "
                    f"at prior {row['last_L0_frac_at_prior']:.2f})")
    print(" | ".join(bits), flush=True)


def execute(stage: str, jobs: list[tuple], shard: tuple[int, int] = (0, 1)) -> None:
    """Run jobs (method, overrides, seed, test) — or (stage, method, ...) to file a job under
    another stage's name — skipping those already in runs.csv; ``shard`` (k, n) runs jobs k, k + n,
    k + 2n, ... only."""
    done = done_ids()
    for job in jobs[shard[0]::shard[1]]:
        name, (method, over, seed, test) = (job[0], job[1:]) if len(job) == 5 else (stage, job)
        density = over.get("density", 1.0 if method in ("vi", "map") else 0.1)
        rid = run_id(name, method, {**over, "density": density}, seed)
        if rid in done:
            print(f"skip (done) {rid}", flush=True)
            continue
        show(train_one(name, method, over, seed, test))


# --------------------------------------------------------------------------- stages
def stage_timing() -> list:
    return [("vi", dict(hidden=h, epochs=3, sigma_init=1e-2, rho_lr=1e-2), 0, False)
            for h in ((400, 400), (200, 200), (100, 100))]


def stage_coarse() -> list:
    """Optimisation knobs at the plain ELBO (κ = 1, prior 0.1): does ρ reach its optimum?"""
    jobs = [("vi", dict(OLD_KIT), 0, False)]  # the old preset, for the mechanism
    for si in (1e-3, 1e-2, 3e-2):
        for rl in (3e-3, 1e-2, 3e-2):
            jobs.append(("vi", dict(hidden=(200, 200), sigma_init=si, rho_lr=rl, prior_sigma=0.1,
                                    kl_scale=1.0, epochs=40), 0, False))
    return jobs


def stage_prior() -> list:
    """Prior σ × κ on one seed, with ρ fast enough to reach σ = prior σ (≤ 1) within 40 epochs."""
    jobs = []
    for kappa in (1.0, 0.3, 0.1):
        for ps in (0.05, 0.1, 0.2, 0.5, 1.0):
            jobs.append(("vi", dict(hidden=(200, 200), sigma_init=1e-2, rho_lr=3e-2,
                                    prior_sigma=ps, kl_scale=kappa, epochs=40), 0, False))
    return jobs


def stage_lr() -> list:
    """The slow phase after σ has reached the prior is μ's: try a faster μ lr and longer runs."""
    jobs = []
    for ps, kappa in ((0.2, 1.0), (0.1, 0.1)):
        base = dict(hidden=(200, 200), sigma_init=1e-2, rho_lr=3e-2, prior_sigma=ps,
                    kl_scale=kappa)
        for lr in (3e-3, 1e-2):
            jobs.append(("vi", dict(base, lr=lr, epochs=40), 0, False))
        jobs.append(("vi", dict(base, lr=1e-3, epochs=80), 0, False))
    return jobs


def stage_sched() -> list:
    """Constant-lr Adam leaves the iterate jittering (lr 1e-2) or still drifting (lr 1e-3): try a
    cosine decay of both lrs, and 2x longer runs as the convergence reference."""
    jobs = []
    for ps, kappa in ((0.2, 1.0), (0.1, 0.1)):
        base = dict(sigma_init=1e-2, rho_lr=3e-2, prior_sigma=ps, kl_scale=kappa, cosine_lr=True)
        for lr in (3e-3, 1e-2):
            jobs.append(("vi", dict(base, hidden=(200, 200), lr=lr, epochs=40), 0, False))
        jobs.append(("vi", dict(base, hidden=(200, 200), lr=1e-2, epochs=80), 0, False))
        jobs.append(("vi", dict(base, hidden=(100, 100), lr=1e-2, epochs=60), 0, False))
    return jobs


# The optimisation settings the coarse/lr/sched stages arrived at (see summary.txt): σ₀ = 1e-2,
# ρ lr 3e-2 (ρ reaches any prior σ ≤ 1 within ~6 epochs), μ lr 1e-2 with a cosine decay of both
# (constant 1e-2 jitters, 1e-3 is still drifting at 80 epochs), MLP 784-100-100-10 for 60 epochs
# (same objective as 200-200 at 80 epochs, ~0.2 s/epoch).
OPT: dict = dict(hidden=(100, 100), sigma_init=1e-2, rho_lr=3e-2, lr=1e-2, cosine_lr=True,
                 epochs=60)
PRIORS = (0.05, 0.1, 0.2, 0.5, 1.0)
KAPPAS = (1.0, 0.3, 0.1, 0.03)


def stage_grid() -> list:
    """Prior σ × κ with the converging optimiser, seed 0, validation only."""
    return [("vi", dict(OPT, prior_sigma=ps, kl_scale=k), 0, False)
            for k in KAPPAS for ps in PRIORS]


def val_table(stages: tuple[str, ...], opt: dict | None = None) -> pd.DataFrame:
    """Validation summary per (κ, prior σ) over the runs of ``stages`` with optimiser ``opt``."""
    opt = OPT if opt is None else opt
    r = pd.read_csv(RUNS_CSV)
    r = r[r.stage.isin(stages) & (r.method == "vi")]
    for k, v in opt.items():
        if k not in ("epochs", "lr"):
            r = r[r[k].astype(str) == str(list(v) if isinstance(v, tuple) else v)]
    r = r[(r.epochs == opt["epochs"]) & np.isclose(r.lr, opt["lr"])]
    return (r.groupby(["kl_scale", "prior_sigma"])
            .agg(n=("val_nll", "size"), val_nll=("val_nll", "mean"),
                 val_nll_se=("val_nll", lambda x: x.std(ddof=1) / np.sqrt(len(x))
                             if len(x) > 1 else np.nan),
                 val_acc=("val_acc", "mean"), val_ece=("val_ece", "mean"),
                 elbo=("last_elbo_fixed", "mean"), obj=("last_tempered_fixed", "mean"),
                 L0_q90_q10=("last_L0_sig_q90_q10", "mean"),
                 L0_at_prior=("last_L0_frac_at_prior", "mean"))
            .reset_index())


def select_recipes(stages: tuple[str, ...] = ("grid", "confirm"),
                   opt: dict | None = None) -> dict[str, dict]:
    """Plain ELBO: the prior σ with the lowest mean val NLL at κ = 1. Tempered: the (κ < 1, prior σ)
    with the lowest mean val NLL. Only (κ, prior) pairs with the most seeds compete."""
    opt = OPT if opt is None else opt
    t = val_table(stages, opt)
    out = {}
    for name, sub in (("plain", t[t.kl_scale == 1.0]), ("tempered", t[t.kl_scale < 1.0])):
        sub = sub[sub.n == sub.n.max()]
        best = sub.loc[sub.val_nll.idxmin()]
        out[name] = dict(opt, prior_sigma=float(best.prior_sigma), kl_scale=float(best.kl_scale))
    return out


MARGIN = 0.03  # ≈ 1 SE of a 500-example val NLL: closer candidates are not yet told apart


def stage_confirm() -> list:
    """Every (κ, prior σ) whose seed-0 val NLL is within MARGIN of its recipe's best (plain: κ = 1;
    tempered: κ < 1), on two more seeds (val only)."""
    t = val_table(("grid",))
    jobs = []
    for sub in (t[t.kl_scale == 1.0], t[t.kl_scale < 1.0]):
        for _, c in sub[sub.val_nll <= sub.val_nll.min() + MARGIN].iterrows():
            for seed in (1, 2):
                jobs.append(("vi", dict(OPT, prior_sigma=float(c.prior_sigma),
                                        kl_scale=float(c.kl_scale)), seed, False))
    return jobs


SEEDS = (0, 1, 2)


def stage_long() -> list:
    """Is 60 epochs enough? The chosen recipes at 30 and 120 epochs (same cosine shape), seed 0."""
    return [("vi", dict(rec, epochs=e), 0, False)
            for rec in select_recipes().values() for e in (30, 120)]


def stage_fastmu() -> list:
    """The 60->120-epoch gain is slow pruning of hidden weights (μ's dynamics): does a 3x higher
    peak μ lr (3e-2) reach the 120-epoch objective in 60 epochs? Seed 0."""
    jobs = [("vi", dict(rec, lr=3e-2, epochs=e), 0, False) for rec in select_recipes().values()
            for e in (60, 120)]
    return jobs + [("vi", dict(rec, lr=3e-2), seed, False) for rec in select_recipes().values()
                   for seed in (1, 2)]


# lr 3e-2 reaches in 60 epochs the objective lr 1e-2 reaches in 120 (fastmu stage, 3 seeds), with
# no detectable change of val NLL: the final optimiser. The prior σ is re-checked with it.
OPT_FINAL: dict = dict(OPT, lr=3e-2)
PRIOR_NEIGHBOURS = {0.05: (0.05, 0.1), 0.1: (0.05, 0.1, 0.2), 0.2: (0.1, 0.2, 0.5),
                    0.5: (0.2, 0.5, 1.0), 1.0: (0.5, 1.0)}


def stage_recheck() -> list:
    """Each recipe's prior σ and its grid neighbours, at the final lr, seeds 0-2 (val only)."""
    jobs = []
    for rec in select_recipes().values():
        for ps in PRIOR_NEIGHBOURS[rec["prior_sigma"]]:
            for seed in SEEDS:
                over = dict(OPT_FINAL, prior_sigma=ps, kl_scale=rec["kl_scale"])
                stage = "fastmu" if ps == rec["prior_sigma"] else "recheck"  # done in fastmu
                jobs.append((stage, "vi", over, seed, False))
    return jobs


def final_recipes() -> dict[str, dict]:
    return select_recipes(("fastmu", "recheck"), OPT_FINAL)


def stage_seeds() -> list:
    """Test evaluation of the chosen recipes: map/vi/ssvi/static on 3 seeds (+ the old kit's vi)."""
    jobs = []
    for rec in final_recipes().values():
        for seed in SEEDS:
            for method in ("map", "vi", "ssvi", "static"):
                jobs.append((method, dict(rec), seed, True))
    jobs += [("vi", dict(OLD_KIT), seed, True) for seed in SEEDS]
    return jobs


# The plain ELBO's first layer keeps 95 % of its weights at the prior (mean-field over-pruning:
# hidden units switched off whole), so its σ q90/q10 is ≈ 1; so does kit_tempered as first chosen
# (κ 0.1, σ_p 0.1). Which tempered recipes let the first layer learn per-weight σ, and at what val
# NLL? κ < 1 x prior σ x peak μ lr (the final 3e-2, the earlier 1e-2), seeds 0-2, validation only.
SPREAD_KAPPAS, SPREAD_PRIORS, SPREAD_LRS = (0.1, 0.03, 0.01), (0.5, 1.0, 2.0), (3e-2, 1e-2)
SPREAD_MIN = 3.0  # "well above 1": the first layer's σ q90/q10 on every seed


def stage_spread() -> list:
    return [("vi", dict(OPT_FINAL, kl_scale=k, prior_sigma=ps, lr=lr), seed, False)
            for k in SPREAD_KAPPAS for ps in SPREAD_PRIORS for lr in SPREAD_LRS for seed in SEEDS]


def spread_table() -> pd.DataFrame:
    """Per (κ, prior σ, μ lr) of the spread stage: validation NLL/accuracy (mean, SE over seeds),
    how many seeds converged, and the first layer's σ q90/q10 (mean and minimum over seeds)."""
    r = pd.read_csv(RUNS_CSV).drop_duplicates("run_id")
    r = r[r.stage == "spread"]
    return (r.groupby(["kl_scale", "prior_sigma", "lr"])
            .agg(n=("val_nll", "size"), val_nll=("val_nll", "mean"),
                 val_nll_se=("val_nll", lambda x: x.std(ddof=1) / np.sqrt(len(x))),
                 val_acc=("val_acc", "mean"), converged=("converged", "sum"),
                 L0_q90_q10=("last_L0_sig_q90_q10", "mean"),
                 L0_q90_q10_min=("last_L0_sig_q90_q10", "min"),
                 L0_at_prior=("last_L0_frac_at_prior", "mean"),
                 L1_q90_q10=("last_L1_sig_q90_q10", "mean"))
            .reset_index())


def select_spread() -> dict:
    """The tempered recipe: lowest mean val NLL among the spread stage's settings that converged on
    every seed and whose first-layer σ q90/q10 is at least SPREAD_MIN on every seed."""
    t = spread_table()
    ok = t[(t.n == t.n.max()) & (t.converged == t.n) & (t.L0_q90_q10_min >= SPREAD_MIN)]
    best = ok.loc[ok.val_nll.idxmin()]
    return dict(OPT_FINAL, kl_scale=float(best.kl_scale), prior_sigma=float(best.prior_sigma),
                lr=float(best.lr))


# --------------------------------------------------------------------------- the summary
def ms(x: pd.Series, fmt: str = ".3f") -> str:
    """mean ± standard error over seeds."""
    x = pd.to_numeric(x, errors="coerce").dropna()
    if len(x) == 0:
        return "n/a"
    se = x.std(ddof=1) / math.sqrt(len(x)) if len(x) > 1 else float("nan")
    return f"{x.mean():{fmt}} ± {se:{fmt}}"


def rho_travel(sigma0: float, target: float, lr: float, steps_per_epoch: int) -> str:
    d = float(softplus_inverse(torch.tensor(target)) - softplus_inverse(torch.tensor(sigma0)))
    return (f"σ0={sigma0:g} -> σ={target:g}: Δρ = {d:.2f}; at {d / lr:.0f} Adam steps of "
            f"{lr:g} = {d / lr / steps_per_epoch:.1f} epochs")


def summary() -> str:
    r = pd.read_csv(RUNS_CSV).drop_duplicates("run_id")  # a reproduction rerun repeats its id
    e = pd.read_csv(EPOCHS_CSV)
    spe = math.ceil(data_for(0).n_train / 128)
    lines = [f"preset_search summary — machine: {machine()}",
             f"runs: {len(r)}; total training+evaluation time {r.run_s.sum() / 60:.1f} min of one "
             f"core; load average (other users share the 2 cores) {r.loadavg_start.min():.1f}"
             f"–{r.loadavg_start.max():.1f}, so seconds/epoch vary up to ~2x between runs",
             f"data: mnist5k, {data_for(0).n_train} train / 500 val / 500 test, batch 128 = "
             f"{spe} steps/epoch; K = {K_EVAL} posterior samples; ECE 15 bins", ""]

    lines += ["1. WHY THE OLD PRESET DOES NOT CONVERGE (coarse stage, seed 0)"]
    old = r[(r.stage == "coarse") & (r.hidden == "[400, 400]")]
    if len(old):
        o = old.iloc[0]
        eo = e[e.run_id == o.run_id]
        lines.append(f"  old kit (400-400, σ0 1e-3, ρ lr = lr = 1e-3, prior 0.1, κ 1, 30 ep): "
                     f"KL/N {eo.kl_per_n.iloc[0]:.1f} (epoch 1) -> {eo.kl_per_n.iloc[-1]:.1f} "
                     f"(epoch {len(eo)}) vs train NLL {eo.train_nll.iloc[-1]:.3f}; layer-0 σ "
                     f"q10/q50/q90 = {o.last_L0_sig_q10:.5f}/{o.last_L0_sig_q50:.5f}/"
                     f"{o.last_L0_sig_q90:.5f}; val acc {o.val_acc:.3f} NLL {o.val_nll:.3f}")
    lines += ["  ρ must travel from softplus⁻¹(σ0) to softplus⁻¹(σ*) (σ* = prior σ for a weight "
              "the data does not use); Adam moves each ρ by ≈ its lr per step while the KL "
              "gradient dominates, so every σ rises in lock-step:"]
    for s0, tgt, lr in ((1e-3, 0.1, 1e-3), (1e-3, 0.1, 1e-2), (1e-2, 0.5, 3e-2), (1e-2, 0.1, 3e-2),
                        (1e-2, 1.0, 3e-2)):
        lines.append("   " + rho_travel(s0, tgt, lr, spe))
    lines.append("  coarse grid (200-200, prior 0.1, κ 1, 40 epochs, constant lr 1e-3 for μ):")
    lines.append(f"  {'sigma_init':>10} {'rho_lr':>7} {'val_acc':>7} {'val_nll':>7} "
                 f"{'ELBO/N':>8} {'L0 σ q10/q50/q90':>24} {'q90/q10':>7}")
    for _, x in r[(r.stage == "coarse") & (r.hidden == "[200, 200]")].iterrows():
        lines.append(f"  {x.sigma_init:>10g} {x.rho_lr:>7g} {x.val_acc:>7.3f} {x.val_nll:>7.3f} "
                     f"{x.last_elbo_per_n:>8.3f} {x.last_L0_sig_q10:>8.4f}/{x.last_L0_sig_q50:.4f}/"
                     f"{x.last_L0_sig_q90:.4f} {x.last_L0_sig_q90_q10:>7.3f}")
    lines.append("")

    lines += ["2. CONVERGENCE VS OPTIMISER AND BUDGET (seed 0; ELBO/N and tempered objective "
              "NLL+κKL/N at the last epoch, end-of-epoch fixed-noise estimate)"]
    conv = r[r.stage.isin(["lr", "sched", "long", "fastmu"]) | ((r.stage == "grid") & (
        ((r.kl_scale == 1.0) & (r.prior_sigma == 0.5)) | ((r.kl_scale == 0.1) & (
            r.prior_sigma.isin([0.1, 0.2])))))]
    conv = conv[conv.seed == 0].copy()
    conv["cosine_lr"] = conv.cosine_lr.fillna(False).astype(bool)  # column added at stage sched
    lines.append(f"  {'stage':>6} {'κ':>4} {'prior':>5} {'hidden':>10} {'lr':>6} {'cos':>5} "
                 f"{'ep':>4} {'ELBO/N':>8} {'obj':>7} {'max|Δ|/ep last5':>15} {'slope%/ep':>9} "
                 f"{'val_nll':>7} {'s/ep':>5}")
    for _, x in conv.sort_values(["kl_scale", "prior_sigma", "hidden", "lr", "epochs"]).iterrows():
        lines.append(f"  {x.stage:>6} {x.kl_scale:>4g} {x.prior_sigma:>5g} {x.hidden:>10} "
                     f"{x.lr:>6g} {str(bool(x.cosine_lr)):>5} {x.epochs:>4} "
                     f"{x.last_elbo_fixed:>8.3f} {x.last_tempered_fixed:>7.3f} "
                     f"{100 * x.plateau_tempered_fixed_max:>14.2f}% "
                     f"{100 * x.plateau_tempered_fixed_slope:>9.2f} {x.val_nll:>7.3f} "
                     f"{x.s_per_epoch_train:>5.2f}")
    lines.append("")

    lines += ["3. PRIOR σ x κ ON VALIDATION (100-100, σ0 1e-2, ρ lr 3e-2, μ lr 1e-2 cosine, 60 ep)"]
    t = val_table(("grid", "confirm"))
    lines.append(t.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    lines += ["", "   re-check at the final μ lr 3e-2 (3 seeds each):"]
    t2 = val_table(("fastmu", "recheck"), OPT_FINAL)
    lines.append(t2.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    rec = final_recipes()
    lines += ["", "   chosen (lowest mean val NLL): " + json.dumps(rec, default=list), ""]

    lines += ["4. FINAL RECIPES ON 3 SEEDS (stage seeds; last epoch; mean ± SE over seeds)"]
    f = r[r.stage == "seeds"].copy()
    f["recipe"] = np.where(f.hidden == "[400, 400]", "old kit",
                           np.where(f.kl_scale == 1.0, "plain κ=1", "tempered κ<1"))
    groups = [("old kit", "vi")] + [(rn, m) for rn in ("plain κ=1", "tempered κ<1")
                                   for m in ("map", "vi", "ssvi", "static")]
    cols = [("val_acc", "val acc"), ("val_nll", "val NLL"), ("val_ece", "val ECE"),
            ("last_test_acc", "test acc"), ("last_test_nll", "test NLL"),
            ("last_test_ece", "test ECE"), ("last_ood_auroc_ent_mean", "OOD AUROC entropy"),
            ("last_ood_auroc_mi_mean", "OOD AUROC MI"), ("last_test_mi", "MI test (in-dist)"),
            ("last_ood_mi_mean", "MI OOD (mean of sets)"),
            ("plateau_elbo_fixed_max", "ELBO max|Δ|/ep last 5"),
            ("plateau_tempered_fixed_max", "objective max|Δ|/ep last 5"),
            ("plateau_elbo_fixed_slope", "ELBO slope/ep last 5"),
            ("last_elbo_fixed", "ELBO/N"), ("last_tempered_fixed", "objective"),
            ("last_kl_per_n", "KL/N"), ("last_train_nll_fixed", "train NLL"),
            ("s_per_epoch_train", "s/epoch (train)"), ("s_per_epoch_total", "s/epoch (+val)"),
            ("run_s", "run s (incl. test/OOD eval)")]
    for name in ("noise", "gaussian", "rotated"):
        cols += [(f"last_ood_auroc_ent_{name}", f"  AUROC ent {name}"),
                 (f"last_ood_auroc_mi_{name}", f"  AUROC MI {name}")]
    for i in range(3):
        for qn in ("q01", "q10", "q50", "q90"):
            cols.append((f"last_L{i}_sig_{qn}", f"L{i} σ {qn}"))
        cols += [(f"last_L{i}_sig_q90_q10", f"L{i} σ q90/q10"),
                 (f"last_L{i}_frac_at_prior", f"L{i} frac σ>0.9·prior"),
                 (f"last_L{i}_frac_snr_gt1", f"L{i} frac |μ|/σ>1")]
    cols += [("last_L0_sig_q50_deadpix", "L0 σ q50 dead pixels"),
             ("last_L0_sig_q50_livepix", "L0 σ q50 live pixels"),
             ("last_L0_sig_q10_livepix", "L0 σ q10 live pixels")]
    compact = [("val_nll", "valNLL"), ("last_test_acc", "test acc"), ("last_test_nll", "test NLL"),
               ("last_test_ece", "test ECE"), ("last_ood_auroc_ent_mean", "AUROC ent"),
               ("last_ood_auroc_mi_mean", "AUROC MI"), ("last_test_mi", "MI in"),
               ("last_ood_mi_mean", "MI OOD")]
    lines.append("  " + f"{'recipe / method':<22}" + "".join(f"{lab:>16}" for _, lab in compact))
    for rn, m in groups:
        g = f[(f.recipe == rn) & (f.method == m)]
        if len(g):
            lines.append("  " + f"{rn + ' / ' + m:<22}" + "".join(f"{ms(g[c]):>16}"
                                                                for c, _ in compact))
    lines += ["", "  paired differences over seeds (same split and seed; mean ± SE; "
              "|mean| < 2 SE = no detectable difference):"]
    for rn in ("plain κ=1", "tempered κ<1"):
        for a, b in (("vi", "map"), ("ssvi", "vi"), ("ssvi", "static")):
            ga = f[(f.recipe == rn) & (f.method == a)].set_index("seed")
            gb = f[(f.recipe == rn) & (f.method == b)].set_index("seed")
            bits = []
            for c, lab in (("last_test_acc", "acc"), ("last_test_nll", "NLL"),
                           ("last_test_ece", "ECE"), ("last_ood_auroc_ent_mean", "AUROC ent")):
                d = (ga[c] - gb[c]).dropna()
                flag = "" if len(d) < 2 or abs(d.mean()) >= 2 * d.std(ddof=1) / math.sqrt(
                    len(d)) else " (n.d.)"
                bits.append(f"{lab} {ms(d)}{flag}")
            lines.append(f"    {rn} {a}-{b}: " + "; ".join(bits))
    lines.append("")
    for rn, m in groups:
        g = f[(f.recipe == rn) & (f.method == m)]
        if not len(g):
            continue
        x = g.iloc[0]
        lines.append(f"  --- {rn} / {m} (n={len(g)} seeds; hidden {x.hidden}, prior "
                     f"{x.prior_sigma:g}, κ {x.kl_scale:g}, lr {x.lr:g}, ρ lr {x.rho_lr_eff:g}, "
                     f"σ0 {x.sigma_init:g}, {x.epochs} ep, density {x.density:g})")
        for c, label in cols:
            if c in g and g[c].notna().any():
                fmt = ".4f" if "sig" in c or "plateau" in c else (".2f" if "s_" in c or
                                                                     c == "run_s" else ".3f")
                lines.append(f"    {label:<30} {ms(g[c], fmt)}")
    lines.append("")

    lines += ["5. MODEL SELECTION: last epoch vs best val accuracy (current fit) vs best val NLL "
              "(test metrics, mean ± SE over seeds; chosen epoch in brackets)"]
    for rn, m in groups:
        g = f[(f.recipe == rn) & (f.method == m)]
        if not len(g):
            continue
        lines.append(f"  {rn} / {m}:")
        for sel, ep in (("last", None), ("bestacc", "best_val_acc_epoch"),
                        ("bestnll", "best_val_nll_epoch")):
            eps = (f"epochs {', '.join(str(int(v)) for v in g[ep])}" if ep else
                   f"epoch {int(g.epochs.iloc[0])}")
            lines.append(f"    {sel:<8} [{eps}] test acc {ms(g[f'{sel}_test_acc'])} "
                         f"NLL {ms(g[f'{sel}_test_nll'])} ECE {ms(g[f'{sel}_test_ece'])} "
                         f"AUROC ent {ms(g[f'{sel}_ood_auroc_ent_mean'])}")
    return "\n".join(lines + [""] + spread_summary())


def spread_summary() -> list[str]:
    if not (pd.read_csv(RUNS_CSV).stage == "spread").any():
        return []
    return ["6. A TEMPERED RECIPE WHOSE FIRST LAYER LEARNS PER-WEIGHT σ (stage spread; the kit's "
            "3,500 / 500 / 1,000 split; 100-100, σ0 1e-2, ρ lr 3e-2, cosine, 60 ep; seeds 0-2; "
            "validation only)",
            spread_table().to_string(index=False, float_format=lambda v: f"{v:.3f}"), "",
            f"   rule: lowest mean val NLL among settings converged on every seed with first-layer "
            f"σ q90/q10 ≥ {SPREAD_MIN:g} on every seed", "   chosen (kit_tempered): "
            + json.dumps(select_spread(), default=list)]


STAGES = {"timing": stage_timing, "coarse": stage_coarse, "prior": stage_prior, "lr": stage_lr,
          "sched": stage_sched, "grid": stage_grid, "confirm": stage_confirm, "long": stage_long,
          "fastmu": stage_fastmu, "recheck": stage_recheck, "seeds": stage_seeds,
          "spread": stage_spread}


def main() -> None:
    torch.set_num_threads(1)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stage", required=True, choices=list(STAGES) + ["summary"])
    ap.add_argument("--shard", default="0/1", help="K/N: run every N-th job from the K-th")
    args = ap.parse_args()
    shard = tuple(int(v) for v in args.shard.split("/"))
    OUT.mkdir(parents=True, exist_ok=True)
    print(f"machine: {machine()}", flush=True)
    t0 = time.perf_counter()
    if args.stage == "summary":
        text = summary()
        SUMMARY.write_text(text + "\n")
        pd.read_csv(EPOCHS_CSV).to_csv(OUT / "epochs.csv.gz", index=False)  # the committed copy
        print(text)
        return
    execute(args.stage, STAGES[args.stage](), shard)
    print(f"stage {args.stage} took {time.perf_counter() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
