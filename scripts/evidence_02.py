"""Multi-seed evidence for notebook 02_mask_initialization: what a static random mask achieves.

    OMP_NUM_THREADS=1 PYTHONPATH=. python scripts/evidence_02.py

The static mask (``method="static"``: a uniform random support drawn once, never swapped) at
densities 0.5 / 0.2 / 0.1 / 0.05 / 0.02, and dense VI (density 1) beside it, all with the ``kit``
preset (the plain ELBO, κ = 1, 60 epochs, last epoch kept), seeds 0-2 (each seed its own split of
the embedded MNIST subset). One row per run in results/evidence/02_static.csv: the config, the
validation metrics of the last epoch, the test metrics, convergence and the seed. A run already in
the file is skipped, so an interrupted command resumes; one process, one torch thread.
Measured: 9.2 min with one thread on the shared 2-core machine while other jobs kept it busy
(load ≈ 4.7); each row's ``wall_time_s`` holds its own time.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pandas as pd  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ssvi_lite as sl  # noqa: E402
from ssvi_lite.fileio import atomic_path  # noqa: E402

OUT = ROOT / "results" / "evidence" / "02_static.csv"
RUNS = [("vi", 1.0)] + [("static", d) for d in (0.5, 0.2, 0.1, 0.05, 0.02)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = pd.read_csv(OUT).to_dict("records") if OUT.is_file() else []
    done = {(r["method"], float(r["target_density"]), int(r["seed"])) for r in rows}
    start = time.perf_counter()
    for seed in args.seeds:
        data = sl.load_dataset("mnist5k", seed=seed)
        for method, density in RUNS:
            if (method, density, seed) in done:
                continue
            cfg = sl.make_config("kit", method=method, density=density, seed=seed, progress=False)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the row records convergence
                result = sl.run(cfg, data=data, with_ood=False)
            last = result.history.iloc[-1]
            keep = ("method", "target_density", "density", "seed", "epochs", "accuracy", "nll",
                    "ece", "train_flops_ratio", "model_size_bytes", "converged",
                    "sigma_q90_q10_first_layer", "wall_time_s")
            row = {k: result.row[k] for k in keep}
            row.update(preset=cfg.preset, kl_scale=cfg.kl_scale, prior_sigma=cfg.prior_sigma,
                       val_acc=float(last["val_acc"]), val_nll=float(last["val_nll"]),
                       n_train=data.n_train)
            rows.append(row)
            with atomic_path(OUT) as tmp:
                pd.DataFrame(rows).to_csv(tmp, index=False)
            print(f"{method} D={density} seed {seed}: val acc {row['val_acc']:.3f}, test acc "
                  f"{row['accuracy']:.3f} ({row['wall_time_s']:.1f} s)", flush=True)
    print(f"total {(time.perf_counter() - start) / 60:.1f} min", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
