"""Results tables: gather run results (JSON) and summarise them in the paper's table layout.

``collect("runs/")`` reads every ``*.json`` results row under a folder (``train --json``, sweep
runs, demo lists); ``paper_table(df)`` groups them by method, dataset and target density and shows
mean ± std over seeds of accuracy, NLL, ECE, the achieved density, training FLOPs vs dense VI and
the model size, as in Table 1 of Li et al. (ICLR 2024). ``python -m ssvi_lite report runs/`` prints
it.

Conventions, printed with every table: std is the sample standard deviation over seeds (n − 1);
ECE is top-label with 15 equal-width bins; FLOPs = 2 × multiply-adds of the weight layers, the
ratio is against dense VI over the same number of steps (docs/method.md §8); model size counts
μ, σ of the active weights, their index storage and the dense parameters, in MB = 10⁶ bytes.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from .fileio import atomic_path
from .methods import NAMES
from .sweep import DENSITY_FREE, USES_REMOVAL

GROUP_KEYS = ("dataset", "model", "label", "target_density")
METRICS = ("accuracy", "nll", "ece", "brier", "density", "train_flops_ratio", "train_flops",
           "model_size_bytes", "wall_time_s")
CONVENTIONS = ("mean ± std over seeds (sample std); ECE: top-label, 15 equal-width bins; "
               "FLOPs = 2 × multiply-adds of weight layers, ratio vs dense VI over the same steps; "
               "model size: μ, σ of active weights + indices + dense parameters, MB = 10^6 bytes")


# ----------------------------------------------------------------------------- reading results
def collect(path: str | Path) -> pd.DataFrame:
    """Every results row in the ``*.json`` files under ``path`` (a folder, searched recursively,
    or one file), one line per run, with a ``source`` column naming the file.

    A results row is a JSON object with at least ``method`` and ``accuracy`` (a file may hold a
    list of them, like ``demo --json``); other JSON files (sweep configs) are ignored, and nested
    values are dropped. Rows with the same ``run_id`` are counted once.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a folder of run results or a .json")
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.json")
                                                 if not p.name.startswith("."))
    rows = []
    for file in files:
        for row in _rows_in(file):
            rows.append({**{k: v for k, v in row.items() if not isinstance(v, (dict, list))},
                         "source": str(file)})
    if not rows:
        raise ValueError(f"no run results under {path}: expected *.json files holding objects "
                         "with 'method' and 'accuracy' (written by train --json or sweep)")
    df = pd.DataFrame(rows)
    if "run_id" in df.columns:
        df = df[df["run_id"].isna() | ~df["run_id"].duplicated()]
    return df.reset_index(drop=True)


def _rows_in(file: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return []
    items = data if isinstance(data, list) else [data]
    return [r for r in items if isinstance(r, dict) and "method" in r and "accuracy" in r
            and r.get("status", "ok") == "ok"]


# ----------------------------------------------------------------------------- summarising
def _label(df: pd.DataFrame) -> pd.Series:
    """``ssvi (snr_abs)`` for methods that use a removal score, else the method name; the
    addition score is added where a method was run with more than one."""
    out = df["method"].astype(str).copy()
    for method in set(df["method"]) & set(USES_REMOVAL):
        rows = df["method"] == method
        if "removal" in df.columns:
            text = df.loc[rows, "removal"].astype(str)
            if "addition" in df.columns and df.loc[rows, "addition"].nunique() > 1:
                text = text + ", " + df.loc[rows, "addition"].astype(str)
            out[rows] = method + " (" + text + ")"
    return out


def seed_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Numeric summary: one line per (dataset, model, label, target density) with ``n_seeds`` and
    ``<metric>_mean`` / ``<metric>_std`` for each metric of :data:`METRICS` present in ``df``."""
    missing = {"method", "accuracy"} - set(df.columns)
    if missing:
        raise ValueError(f"results table lacks column(s) {sorted(missing)}")
    df = df.copy()
    df["label"] = _label(df)
    if "target_density" not in df.columns:
        df["target_density"] = df["density"] if "density" in df.columns else 1.0
    df["target_density"] = df["target_density"].astype(float).round(6)
    for key in ("dataset", "model"):
        if key not in df.columns:
            df[key] = ""
    metrics = [m for m in METRICS if m in df.columns]
    grouped = df.groupby(list(GROUP_KEYS), sort=False, dropna=False)
    out = grouped[metrics].agg(["mean", "std"])
    out.columns = [f"{m}_{stat}" for m, stat in out.columns]
    out.insert(0, "n_seeds", grouped.size())
    out.insert(0, "method", grouped["method"].first())
    out = out.reset_index()
    order = {m: i for i, m in enumerate(NAMES)}
    out["_rank"] = out["method"].map(lambda m: order.get(m, len(order)))
    out = out.sort_values(["dataset", "model", "_rank", "label", "target_density"],
                          ascending=[True, True, True, True, False], kind="stable")
    return out.drop(columns="_rank").reset_index(drop=True)


def _pm(mean: float, std: float, scale: float, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return text if std is None or math.isnan(std) else f"{text} ± {std * scale:.{digits}f}"


def paper_table(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's table layout (strings, mean ± std over seeds): Method, Dataset, Target density,
    Density, Accuracy (%), NLL, ECE (15 bins), Train FLOPs / dense VI, Model size (MB), Seeds.

    Methods that reach a density of their own (em_mcmc, turbo_vbi, svd, weight_sharing) show
    "—" as target density; map and dense VI show 1.
    """
    s = seed_summary(df)

    def col(metric: str, scale: float, digits: int) -> list[str]:
        if f"{metric}_mean" not in s.columns:
            return ["—"] * len(s)
        return [_pm(m, sd, scale, digits) for m, sd in zip(s[f"{metric}_mean"], s[f"{metric}_std"])]

    target = ["—" if m in DENSITY_FREE else f"{d:g}" for m, d in zip(s["method"],
                                                                    s["target_density"])]
    return pd.DataFrame({
        "Method": s["label"], "Dataset": s["dataset"], "Target density": target,
        "Density": col("density", 1.0, 3), "Accuracy (%)": col("accuracy", 100.0, 2),
        "NLL": col("nll", 1.0, 3), "ECE (15 bins)": col("ece", 1.0, 3),
        "Train FLOPs / dense VI": col("train_flops_ratio", 1.0, 3),
        "Model size (MB)": col("model_size_bytes", 1e-6, 3), "Seeds": s["n_seeds"],
    })


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``table``'s cells (no extra package needed)."""
    cells = [[str(c) for c in table.columns]] + [[str(v) for v in row]
                                                 for row in table.itertuples(index=False)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(table.columns))]
    lines = ["| " + " | ".join(v.ljust(w) for v, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- command line
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m ssvi_lite report PATH [--csv FILE] [--markdown]``."""
    parser.add_argument("path", help="folder of run results (*.json, searched recursively) or "
                                     "one .json file")
    parser.add_argument("--csv", help="also write the numeric summary (mean/std columns) here")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")


def main(args: argparse.Namespace) -> int:
    df = collect(args.path)
    table = paper_table(df)
    if args.markdown:
        print(to_markdown(table))
    else:
        print(table.to_string(index=False))
    print(f"\n{len(df)} runs from {args.path}. {CONVENTIONS}.")
    if args.csv:
        with atomic_path(args.csv) as tmp:
            seed_summary(df).to_csv(tmp, index=False)
        print(f"summary: {args.csv}")
    return 0


def report_text(path: str | Path, markdown: bool = False) -> str:
    """The table ``report`` prints, as a string (for notebooks)."""
    table = paper_table(collect(path))
    return to_markdown(table) if markdown else table.to_string(index=False)

