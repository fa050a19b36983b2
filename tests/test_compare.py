"""compare: which runs a comparison makes, missing methods, and a tiny end-to-end run."""
from __future__ import annotations

import argparse
import importlib.util

import pandas as pd
import pytest

from ssvi_lite import compare
from ssvi_lite.compare import check_methods, compare_configs
from ssvi_lite.config import make_config


def test_density_targeting_methods_span_densities_the_others_run_once_per_seed():
    cfgs = compare_configs(make_config("kit"), ["em_mcmc", "ssvi", "map", "vi", "static",
                                                "posthoc", "svd"], [0.2, 0.1, 0.05], [0, 1])
    counts = pd.Series([c.method for c in cfgs]).value_counts().to_dict()
    assert counts == {"map": 2, "vi": 2, "ssvi": 6, "static": 6, "posthoc": 6, "em_mcmc": 2,
                      "svd": 2}
    assert {c.density for c in cfgs if c.method == "ssvi"} == {0.2, 0.1, 0.05}
    assert all(c.density == 1.0 for c in cfgs if c.method in ("map", "vi", "em_mcmc", "svd"))
    assert [c.method for c in cfgs][:2] == ["map", "map"]  # the kit's method order


def test_unknown_methods_get_a_clear_error() -> None:
    assert check_methods(["ssvi", "map", "ssvi"]) == ["map", "ssvi"]  # registry order, once each
    with pytest.raises(ValueError, match="unknown method.*bogus.*choose from"):
        check_methods(["bogus"])


def test_bad_axes_are_rejected() -> None:
    with pytest.raises(ValueError, match="density"):
        compare_configs(make_config("kit"), ["ssvi"], [], [0])
    with pytest.raises(ValueError, match="density=0"):
        compare_configs(make_config("kit"), ["ssvi"], [0.0], [0])


def test_the_default_folder_is_runs_compare_not_the_committed_table() -> None:
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    assert parser.parse_args([]).out == "runs/compare"
    assert parser.parse_args(["--out", "results/compare"]).out == "results/compare"  # on purpose
    args = parser.parse_args(["--cluster", "slurm", "--slurm-partition", "gpu"])
    assert (args.cluster, args.slurm_partition) == ("slurm", "gpu")  # the sweep's job options


def test_tiny_comparison_runs_resumes_and_draws(tmp_path, capsys) -> None:
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    have_plots = importlib.util.find_spec("ssvi_lite.plots") is not None
    argv = ["--methods", "ssvi", "vi", "--densities", "0.2", "--seeds", "1", "--epochs", "1",
            "--n-train", "64", "--hidden", "16", "--batch-size", "32", "--out", str(tmp_path),
            "--workers", "2", "--devices", "cpu"] + ([] if have_plots else ["--no-figures"])
    assert compare.main(parser.parse_args(argv)) == 0
    table = pd.read_csv(tmp_path / "results.csv")
    assert sorted(table["method"]) == ["ssvi", "vi"] and (table["status"] == "ok").all()
    assert table.set_index("method").loc["vi", "density"] == 1.0
    if have_plots:
        for name in ("accuracy_vs_density", "nll_vs_density", "ece_vs_density",
                     "accuracy_vs_flops"):
            assert (tmp_path / f"{name}.png").stat().st_size > 1000
    capsys.readouterr()
    assert compare.main(parser.parse_args(argv + ["--no-figures"])) == 0  # resume: nothing to do
    assert "2 already done, 0 to run" in capsys.readouterr().out


def test_figures_place_density_free_methods_at_the_density_they_reach(tmp_path) -> None:
    pytest.importorskip("ssvi_lite.plots")
    rows = [{"method": m, "seed": s, "density": d, "target_density": t, "accuracy": 0.9 - s / 100,
             "nll": 0.3, "ece": 0.02, "train_flops_ratio": r}
            for s in (0, 1) for m, d, t, r in (("vi", 1.0, 1.0, 1.0), ("ssvi", 0.1, 0.1, 0.105),
                                                ("ssvi", 0.05, 0.05, 0.055),
                                                ("svd", 0.37 + s / 100, 1.0, 1.0))]
    paths = compare.make_figures(pd.DataFrame(rows), tmp_path)
    assert [p.name for p in paths] == ["accuracy_vs_density.png", "nll_vs_density.png",
                                       "ece_vs_density.png", "accuracy_vs_flops.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
