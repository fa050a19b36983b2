"""report: collecting JSON results rows and the paper-style summary table."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssvi_lite.report import add_arguments, collect, main, paper_table, seed_summary, to_markdown


def _row(method: str, density: float, seed: int, accuracy: float, **extra) -> dict:
    return {"method": method, "dataset": "mnist5k", "model": "mlp", "density": density,
            "target_density": density, "removal": "snr_abs", "addition": "grad",
            "accuracy": accuracy, "nll": 1.0 - accuracy, "ece": 0.01 * (seed + 1),
            "brier": 0.1, "train_flops_ratio": density, "train_flops": 1e9 * density,
            "model_size_bytes": 2_000_000 * density, "wall_time_s": 1.0, "seed": seed, **extra}


@pytest.fixture
def results_dir(tmp_path):
    runs = tmp_path / "sweep" / "runs"
    runs.mkdir(parents=True)
    accs = {("vi", 1.0): [0.93, 0.95, 0.94], ("ssvi", 0.1): [0.90, 0.92, 0.91]}
    for (method, d), values in accs.items():
        for seed, acc in enumerate(values):
            row = {"run_id": f"{method}-{seed}", "status": "ok", **_row(method, d, seed, acc),
                   "config": {"hidden": [32]}}
            (runs / f"{method}-{seed}.json").write_text(json.dumps(row))
    # a list file (demo --json), a sweep config, a broken file and a duplicate run id
    (tmp_path / "demo.json").write_text(json.dumps([_row("map", 1.0, 0, 0.96),
                                                    _row("static", 0.1, 0, 0.85)]))
    (tmp_path / "sweep" / "configs").mkdir()
    (tmp_path / "sweep" / "configs" / "x.json").write_text(json.dumps({"method": "ssvi"}))
    (tmp_path / "broken.json").write_text("{not json")
    dup = {"run_id": "vi-0", "status": "ok", **_row("vi", 1.0, 0, 0.93)}
    (tmp_path / "copy_of_vi0.json").write_text(json.dumps(dup))
    return tmp_path


def test_collect_reads_nested_folders_lists_and_skips_non_results(results_dir) -> None:
    df = collect(results_dir)
    assert len(df) == 8  # 6 sweep rows + 2 demo rows; config, broken file, duplicate ignored
    assert sorted(df["method"].value_counts().items()) == [("map", 1), ("ssvi", 3),
                                                           ("static", 1), ("vi", 3)]
    assert "config" not in df.columns and df["source"].str.endswith(".json").all()


def test_collect_errors_name_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        collect(tmp_path / "nowhere")
    (tmp_path / "a.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="no run results"):
        collect(tmp_path)


def test_summary_matches_numpy_mean_and_sample_std(results_dir) -> None:
    s = seed_summary(collect(results_dir))
    ssvi = s[s["method"] == "ssvi"].iloc[0]
    assert ssvi["label"] == "ssvi (snr_abs)" and ssvi["n_seeds"] == 3
    assert ssvi["accuracy_mean"] == pytest.approx(np.mean([0.90, 0.92, 0.91]))
    assert ssvi["accuracy_std"] == pytest.approx(np.std([0.90, 0.92, 0.91], ddof=1))
    assert ssvi["ece_std"] == pytest.approx(np.std([0.01, 0.02, 0.03], ddof=1))
    # methods in the kit's order (map, vi, ssvi, static), densities descending within a method
    assert s["method"].tolist() == ["map", "vi", "ssvi", "static"]


def test_paper_table_formats_mean_pm_se_and_single_seed_without_se(results_dir) -> None:
    table = paper_table(collect(results_dir))
    by = table.set_index("Method")
    assert by.loc["ssvi (snr_abs)", "Accuracy (%)"] == "91.00 ± 0.58"  # 1.00 / √3
    assert by.loc["ssvi (snr_abs)", "Model size (MB)"] == "0.200 ± 0.000"
    assert by.loc["map", "Accuracy (%)"] == "96.00"  # one seed: no ± part
    assert by.loc["vi", "Target density"] == "1" and by.loc["vi", "Seeds"] == 3
    assert list(table.columns) == ["Method", "Dataset", "Target density", "Density",
                                   "Accuracy (%)", "NLL", "ECE (15 bins)",
                                   "Train FLOPs / dense VI", "Model size (MB)", "Seeds"]


def test_removal_variants_and_density_free_methods_get_their_own_rows() -> None:
    rows = [_row("ssvi", 0.1, 0, 0.9), _row("ssvi", 0.1, 0, 0.8, removal="magnitude"),
            _row("em_mcmc", 0.37, 0, 0.9, target_density=1.0),
            _row("em_mcmc", 0.35, 1, 0.92, target_density=1.0)]
    table = paper_table(pd.DataFrame(rows)).set_index("Method")
    assert set(table.index) == {"ssvi (snr_abs)", "ssvi (magnitude)", "em_mcmc"}
    assert table.loc["em_mcmc", "Target density"] == "—"
    se = np.std([0.37, 0.35], ddof=1) / np.sqrt(2)
    assert table.loc["em_mcmc", "Density"] == f"0.360 ± {se:.3f}"


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1, allow_nan=False), min_size=2, max_size=6))
def test_summary_mean_std_property(accs: list[float]) -> None:
    df = pd.DataFrame([_row("vi", 1.0, i, a) for i, a in enumerate(accs)])
    s = seed_summary(df).iloc[0]
    assert s["accuracy_mean"] == pytest.approx(np.mean(accs), abs=1e-12)
    assert s["accuracy_std"] == pytest.approx(np.std(accs, ddof=1), abs=1e-12)


def test_markdown_has_header_rule_and_one_line_per_row() -> None:
    text = to_markdown(pd.DataFrame({"a": [1, 22], "bb": ["x", "y"]}))
    lines = text.splitlines()
    assert lines[0] == "| a  | bb |" and lines[1] == "|----|----|" and len(lines) == 4


def test_cli_prints_table_and_writes_csv(results_dir, tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "table.csv"
    assert main(parser.parse_args([str(results_dir), "--csv", str(out), "--markdown"])) == 0
    text = capsys.readouterr().out
    assert "| ssvi (snr_abs)" in text and "15 equal-width bins" in text
    csv = pd.read_csv(out)
    assert {"accuracy_mean", "accuracy_std", "n_seeds"} <= set(csv.columns) and len(csv) == 4


def test_collect_leaves_compare_tuning_trials_out_unless_asked(results_dir) -> None:
    trials = results_dir / "sweep" / "tuning" / "runs"
    trials.mkdir(parents=True)
    row = {"run_id": "vi-trial", "status": "ok", **_row("vi", 1.0, 100, 0.5)}
    (trials / "vi-trial.json").write_text(json.dumps(row))
    assert "vi-trial" not in set(collect(results_dir)["run_id"].dropna())  # selection runs
    assert list(collect(results_dir / "sweep" / "tuning")["run_id"]) == ["vi-trial"]
