"""compare: which runs a comparison makes, missing methods, and a tiny end-to-end run."""
from __future__ import annotations

import argparse
import importlib.util
import json

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
    drawn = compare.at_mean_density(pd.DataFrame(rows))
    assert drawn.loc[drawn.method == "svd", "density"].tolist() == pytest.approx([0.375] * 2)
    assert drawn.loc[drawn.method == "ssvi", "density"].tolist() == [0.1, 0.05, 0.1, 0.05]
    paths = compare.make_figures(pd.DataFrame(rows), tmp_path)
    assert [p.name for p in paths] == ["accuracy_vs_density.png", "nll_vs_density.png",
                                       "ece_vs_density.png", "accuracy_vs_flops.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


# ----------------------------------------------------------------------------- equal tuning budget
def test_every_method_gets_the_same_number_of_settings_starting_at_its_untuned_one() -> None:
    from ssvi_lite.methods import REGISTRY

    assert set(compare.TUNING) == set(REGISTRY)
    assert {len(settings) for settings in compare.TUNING.values()} == {4}  # an equal budget
    for method, settings in compare.TUNING.items():
        base = make_config("kit", method=method)
        cfgs = [compare.apply_setting(base, s) for s in settings]
        assert len({c.to_dict().__repr__() for c in cfgs}) == 4, method  # four distinct runs
        assert cfgs[0] == base, (method, settings[0])  # the untuned run is one of the four


def test_selection_reads_validation_nll_only_and_skips_failed_settings() -> None:
    rows = []
    # setting 0: best test NLL, worse validation; setting 1: best validation (mean of 2 seeds);
    # setting 2: better on one seed but one of its trials failed; setting 3 ties setting 1
    # exactly (binary fractions): the earlier setting wins a tie
    for index, val, test, status in ((0, (0.30, 0.30), 0.1, "ok"), (1, (0.25, 0.125), 0.9, "ok"),
                                     (2, (0.05, float("nan")), 0.1, "failed"),
                                     (3, (0.1875, 0.1875), 0.9, "ok")):
        for seed, v in zip((100, 101), val):
            rows.append({"method": "ssvi", "target_density": 0.1, "seed": seed,
                         "setting_index": index, "setting": f"s{index}",
                         "status": "ok" if seed == 100 else status, "val_nll": v, "nll": test,
                         "val_accuracy": 0.9})
    rows.append({"method": "vi", "target_density": 1.0, "seed": 100, "setting_index": 0,
                 "setting": "s0", "status": "failed", "val_nll": float("nan")})
    picked = compare.select_settings(pd.DataFrame(rows))
    chosen = picked[picked["selected"]]
    assert set(chosen["setting_index"]) == {1} and len(chosen) == 2  # both seeds of the winner
    assert chosen["setting_val_nll"].iloc[0] == 0.1875
    assert picked.loc[picked["setting_index"] == 2, "setting_val_nll"].isna().all()
    assert not picked.loc[picked["method"] == "vi", "selected"].any()  # no winner, no crash


def test_tiny_tuned_comparison_selects_on_validation_records_the_winner_and_resumes(
        tmp_path, capsys) -> None:
    from ssvi_lite.report import collect

    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    argv = ["--methods", "vi", "ssvi", "--densities", "0.2", "--seeds", "0", "--epochs", "1",
            "--n-train", "64", "--hidden", "16", "--batch-size", "32", "--out", str(tmp_path),
            "--cluster", "debug", "--no-figures", "--tune", "--tune-seeds", "7"]
    assert compare.main(parser.parse_args(argv)) == 0
    trials = pd.read_csv(tmp_path / "tuning.csv")
    assert len(trials) == 8 and (trials["seed"] == 7).all() and (trials["status"] == "ok").all()
    table = pd.read_csv(tmp_path / "results.csv").set_index("method")
    assert sorted(table.index) == ["ssvi", "vi"] and (table["seed"] == 0).all()
    for method, cell in trials.groupby("method"):
        best = cell.loc[cell["val_nll"].idxmin()]
        assert cell["selected"].sum() == 1 and bool(best["selected"]), cell
        final = table.loc[method]
        assert final["setting"] == best["setting"] and final["tuning_trials"] == 4
        assert final["tuning_val_nll"] == pytest.approx(best["val_nll"])
        ran = json.loads((tmp_path / "runs" / f"{final['run_id']}.json").read_text())["config"]
        assert f"kl_scale={ran['kl_scale']:g}" in final["setting"]  # the winner is what ran
    assert {"val_nll", "val_accuracy", "val_ece"} <= set(table.columns)
    assert len(collect(tmp_path)) == 2  # report leaves the trials (tuning/) out
    assert len(collect(tmp_path / "tuning")) == 8
    out = capsys.readouterr().out
    assert "settings tried (mean validation NLL; * = selected)" in out
    assert compare.main(parser.parse_args(argv)) == 0  # resume: nothing to run
    assert capsys.readouterr().out.count("0 to run") == 2


def test_tuning_seeds_must_differ_from_the_reported_ones(tmp_path) -> None:
    with pytest.raises(ValueError, match="differ from the reported seeds"):
        compare.run_compare(make_config("kit"), ["vi"], [0.1], [0, 1], tmp_path, tune_seeds=[1])
    parser = argparse.ArgumentParser()
    compare.add_arguments(parser)
    with pytest.raises(ValueError, match="--tune-seeds needs --tune"):
        compare.main(parser.parse_args(["--tune-seeds", "5", "--out", str(tmp_path)]))
