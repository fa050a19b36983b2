"""Results tables: gather run results (JSON) and summarise them in the paper's table layout.

``collect("runs/")`` reads every ``*.json`` results row under a folder (``train --json``, sweep
runs, demo lists); ``paper_table(df)`` groups them by configuration and shows mean ± standard
error over seeds of accuracy, NLL, ECE, the achieved density, training FLOPs vs dense VI and the
model size, as in Table 1 of Li et al. (ICLR 2024). ``python -m ssvi_lite report runs/`` prints it.

What is averaged: the runs of one ``config_id`` (``ssvi_lite.config.config_id``: every setting
but the seed, the device, progress bars and the data folder), and only those — a 1-epoch run is
never averaged with 30-epoch runs. Each run counts once: rows with the same config id and seed
(two copies of one JSON, a demo and a train of the same run) are one run, the first file in path
order is kept and the others are listed as dropped. Rows written before runs carried a
``config_id`` get one from their ``config`` (sweep rows), else from the fields they show (method,
dataset, model, target density, scores, epochs, n_train).

Conventions, printed with every table: ± is the standard error over seeds (sample std / √n, the
kit's evidence standard); ECE is top-label with 15 equal-width bins; FLOPs = 2 × multiply-adds of
the weight layers, the ratio is against dense VI over the same number of steps (docs/method.md
§8); model size counts μ, σ of the active weights, their index storage and the dense parameters,
in MB = 10⁶ bytes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from .config import NOT_IN_RUN_ID, config_id
from .fileio import atomic_path, check_output_path
from .methods import NAMES
from .sweep import DENSITY_FREE, USES_REMOVAL, config_from_dict

TUNING_DIR = "tuning"  # compare --tune's trials: OUT/tuning/runs/*.json, not results of OUT
GROUP_KEYS = ("dataset", "model", "label", "target_density")  # shown with each configuration
LEGACY_KEYS = ("method", "dataset", "model", "target_density", "removal", "addition", "epochs",
               "n_train")  # what identifies a row that carries no config
METRICS = ("accuracy", "nll", "ece", "brier", "density", "train_flops_ratio", "train_flops",
           "model_size_bytes", "wall_time_s")
CONVENTIONS = ("mean ± standard error over seeds (sample std / √n); ECE: top-label, 15 "
               "equal-width bins; FLOPs = 2 × multiply-adds of weight layers, ratio vs dense VI "
               "over the same steps; model size: μ, σ of active weights + indices + dense "
               "parameters, MB = 10^6 bytes")


# ----------------------------------------------------------------------------- reading results
def collect(path: str | Path) -> pd.DataFrame:
    """Every results row in the ``*.json`` files under ``path`` (a folder, searched recursively,
    or one file), one line per run, with ``config_id``, ``config_json`` (the configuration, as
    JSON text, where the row has one) and ``source`` (the file) columns.

    A results row is a JSON object with at least ``method`` and ``accuracy`` (a file may hold a
    list of them, like ``demo --json``); other JSON files (sweep configs) are ignored, and nested
    values are dropped. Each run counts once (see the module's docstring); the dropped rows are
    listed in ``df.attrs["dropped"]`` as (file, file kept instead). Files under a ``tuning``
    folder below ``path`` (``compare --tune``'s trials) are skipped.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: give a folder of run results or a .json")
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*.json") if not p.name.startswith(".")
        and TUNING_DIR not in p.relative_to(path).parts[:-1])
    rows = [_flat(row, file) for file in files for row in _rows_in(file)]
    if not rows:
        raise ValueError(f"no run results under {path}: expected *.json files holding objects "
                         "with 'method' and 'accuracy' (written by train --json or sweep)")
    return _once_each(pd.DataFrame(rows))


def _rows_in(file: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    items = data if isinstance(data, list) else [data]
    return [r for r in items if isinstance(r, dict) and "method" in r and "accuracy" in r
            and r.get("status", "ok") == "ok"]


def _flat(row: dict[str, Any], file: Path) -> dict[str, Any]:
    config = row.get("config") if isinstance(row.get("config"), dict) else None
    return {**{k: v for k, v in row.items() if not isinstance(v, (dict, list))},
            "config_id": row_config_id(row),
            "config_json": json.dumps(config, sort_keys=True, default=str) if config else None,
            "source": str(file)}


def row_config_id(row: dict[str, Any]) -> str:
    """The ``config_id`` of a results row: its own, else that of its ``config`` (sweep rows), else
    a hash of the fields it shows (LEGACY_KEYS)."""
    if isinstance(row.get("config_id"), str):
        return row["config_id"]
    config = row.get("config")
    if isinstance(config, dict) and config.get("method") == row.get("method"):
        try:
            return config_id(config_from_dict(config))
        except (ValueError, TypeError):
            pass
    shown = {k: _plain(row.get(k)) for k in LEGACY_KEYS}
    if isinstance(config, dict) and "method" in config:  # a whole config, of another version
        shown["config"] = {k: v for k, v in config.items() if k not in ("seed", *NOT_IN_RUN_ID)}
    text = json.dumps(shown, sort_keys=True, default=str)
    return f"{row.get('method')}-shown-{hashlib.sha1(text.encode()).hexdigest()[:12]}"


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isnan(value):
        return round(value, 6)
    return None if isinstance(value, float) else value


def _once_each(df: pd.DataFrame) -> pd.DataFrame:
    """One row per run id, then one per (config id, seed) (rows without them: one per content);
    the first in path order is kept, the others go to ``attrs["dropped"]`` as (file, file kept)."""
    content = pd.Series([json.dumps(r, sort_keys=True, default=str) for r in
                         df.drop(columns=["source"]).to_dict("records")], index=df.index)
    nothing = pd.Series(None, index=df.index, dtype=object)
    run, seed = df.get("run_id", nothing), df.get("seed", nothing)
    keys = (run.astype(str).where(run.notna(), content),
            (df["config_id"] + "|seed=" + seed.astype(str)).where(seed.notna(), content))
    dropped: list[tuple[str, str]] = []
    for key in keys:
        key = key.loc[df.index]
        first = df.groupby(key, sort=False)["source"].transform("first")
        dup = key.duplicated()
        dropped += list(zip(df.loc[dup, "source"], first[dup]))
        df = df[~dup]
    out = df.reset_index(drop=True)
    out.attrs["dropped"] = dropped
    return out


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


def _prepare(df: pd.DataFrame) -> pd.DataFrame:
    missing = {"method", "accuracy"} - set(df.columns)
    if missing:
        raise ValueError(f"results table lacks column(s) {sorted(missing)}")
    df = df.copy()
    if "config_id" not in df.columns or df["config_id"].isna().any():
        ids = [row_config_id({k: v for k, v in r.items() if not _missing(v)})
               for r in df.to_dict("records")]
        df["config_id"] = df["config_id"].fillna(pd.Series(ids, index=df.index)) \
            if "config_id" in df.columns else ids
    df["label"] = _label(df)
    if "target_density" not in df.columns:
        df["target_density"] = df["density"] if "density" in df.columns else 1.0
    df["target_density"] = df["target_density"].astype(float).round(6)
    for key in ("dataset", "model"):
        if key not in df.columns:
            df[key] = ""
    return df


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def seed_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Numeric summary: one line per configuration (``config_id``) with its dataset, model,
    label and target density, ``n_seeds`` and ``<metric>_mean`` / ``<metric>_std`` (sample std) /
    ``<metric>_se`` (std / √n) for each metric of :data:`METRICS` present in ``df``. Labels of
    configurations that would read alike get the settings that tell them apart."""
    df = _prepare(df)
    metrics = [m for m in METRICS if m in df.columns]
    grouped = df.groupby("config_id", sort=False, dropna=False)
    out = grouped[metrics].agg(["mean", "std"])
    out.columns = [f"{m}_{stat}" for m, stat in out.columns]
    n = grouped.size()
    for m in metrics:
        out[f"{m}_se"] = out[f"{m}_std"] / n.pow(0.5)
    out.insert(0, "n_seeds", n)
    for key in reversed(("method", *GROUP_KEYS)):
        out.insert(0, key, grouped[key].first())
    out = out.reset_index()
    out["label"] = _distinguish(out, df)
    order = {m: i for i, m in enumerate(NAMES)}
    out["_rank"] = out["method"].map(lambda m: order.get(m, len(order)))
    out = out.sort_values(["dataset", "model", "_rank", "label", "target_density"],
                          ascending=[True, True, True, True, False], kind="stable")
    return out.drop(columns="_rank").reset_index(drop=True)


def _distinguish(summary: pd.DataFrame, df: pd.DataFrame) -> list[str]:
    """Each configuration's label, with ``[key=value, ...]`` added where configurations of the
    same label, dataset, model and target density differ in other settings."""
    settings = {cid: _settings(rows) for cid, rows in df.groupby("config_id", sort=False)}
    labels = summary["label"].tolist()
    for _, peers in summary.groupby(["dataset", "model", "label", "target_density"],
                                    dropna=False, sort=False):
        ids = peers["config_id"].tolist()
        keys = sorted({k for a in ids for b in ids for k in set(settings[a]) | set(settings[b])
                       if settings[a].get(k) != settings[b].get(k)})
        for i, cid in zip(peers.index, ids):
            if len(ids) > 1:
                shown = ", ".join(f"{k}={settings[cid].get(k)}" for k in keys[:3])
                labels[i] = f"{labels[i]} [{shown or 'config ' + cid}]"
    return labels


def _settings(rows: pd.DataFrame) -> dict[str, Any]:
    """The settings of one configuration: its config (first row's), else its shown fields."""
    row = rows.iloc[0]
    text = row.get("config_json")
    if isinstance(text, str):
        return {k: v for k, v in json.loads(text).items() if k != "seed"}
    return {k: row.get(k) for k in LEGACY_KEYS if k in rows.columns}


def _pm(mean: float, se: float, scale: float, digits: int) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "—"
    text = f"{mean * scale:.{digits}f}"
    return text if se is None or math.isnan(se) else f"{text} ± {se * scale:.{digits}f}"


def paper_table(df: pd.DataFrame) -> pd.DataFrame:
    """The paper's table layout (strings, mean ± standard error over seeds): Method, Dataset,
    Target density, Density, Accuracy (%), NLL, ECE (15 bins), Train FLOPs / dense VI, Model size
    (MB), Seeds (one line per configuration: :func:`seed_summary`).

    Methods that reach a density of their own (em_mcmc, turbo_vbi, svd, weight_sharing) show
    "—" as target density; map and dense VI show 1.
    """
    s = seed_summary(df)

    def col(metric: str, scale: float, digits: int) -> list[str]:
        if f"{metric}_mean" not in s.columns:
            return ["—"] * len(s)
        return [_pm(m, se, scale, digits) for m, se in zip(s[f"{metric}_mean"], s[f"{metric}_se"])]

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
    parser.add_argument("--csv", help="also write the numeric summary (mean/std/se columns) "
                                      "here")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace a --csv file that is not a report summary")


def main(args: argparse.Namespace) -> int:
    if args.csv:
        _check_csv(Path(args.csv), args.overwrite)
    df = collect(args.path)
    summary = seed_summary(df)
    table = paper_table(df)
    print(to_markdown(table) if args.markdown else table.to_string(index=False))
    print(f"\n{grouping_note(df, summary)} From {args.path}. {CONVENTIONS}.")
    if args.csv:
        with atomic_path(args.csv) as tmp:
            summary.to_csv(tmp, index=False)
        print(f"summary: {args.csv}")
    return 0


def grouping_note(df: pd.DataFrame, summary: pd.DataFrame) -> str:
    """What ``report`` grouped: runs, configurations, and the rows it dropped as duplicates."""
    dropped = df.attrs.get("dropped", [])
    text = (f"{len(df)} runs in {len(summary)} configurations (grouped by config_id: the same "
            "settings, seeds averaged; each configuration and seed counted once).")
    if dropped:
        shown = "; ".join(f"{a} (same run as {b})" for a, b in dropped[:5])
        more = f"; and {len(dropped) - 5} more" if len(dropped) > 5 else ""
        text += f" Dropped {len(dropped)} duplicate row(s): {shown}{more}."
    return text


def _check_csv(path: Path, overwrite: bool) -> None:
    """The --csv path, before any work: writable, and new, a report summary, or --overwrite."""
    check_output_path(path, "file", what="--csv")
    if not path.exists() or overwrite:
        return
    try:
        header = pd.read_csv(path, nrows=0).columns
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError):
        header = pd.Index([])
    if not {"config_id", "n_seeds", "accuracy_mean"} <= set(header):
        raise FileExistsError(f"--csv {path} already exists and is not a report summary; choose "
                              "another path, or pass --overwrite to replace it")


def report_text(path: str | Path, markdown: bool = False) -> str:
    """The table ``report`` prints, as a string (for notebooks)."""
    table = paper_table(collect(path))
    return to_markdown(table) if markdown else table.to_string(index=False)

