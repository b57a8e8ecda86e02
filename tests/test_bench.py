"""bench/compare.py: the grid / random / default comparison keeps working (quick mode in CI)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
from paths import REPO

SCRIPT = REPO / "bench" / "compare.py"


def _load_compare():
    spec = importlib.util.spec_from_file_location("bench_compare", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_compare"] = module
    spec.loader.exec_module(module)
    return module


compare = _load_compare()


def _trial(number, state, curve, epochs=None):
    return {"number": number, "state": state, "curve": curve, "epochs": len(curve) if epochs is None else epochs}


@pytest.mark.parametrize(
    "trials, target, complete_only, expected",
    [
        # reached in the second epoch of the first trial
        ([_trial(0, "COMPLETE", [0.5, 0.9, 0.8])], 0.9, True, 2),
        # a pruned trial's curve counts only when complete_only is off; its epochs always count
        ([_trial(0, "PRUNED", [0.95]), _trial(1, "COMPLETE", [0.1, 0.92])], 0.9, True, 3),
        ([_trial(0, "PRUNED", [0.95]), _trial(1, "COMPLETE", [0.1, 0.92])], 0.9, False, 1),
        # trials are taken in number order, not list order
        ([_trial(1, "COMPLETE", [0.95]), _trial(0, "COMPLETE", [0.1, 0.2])], 0.9, True, 3),
        ([_trial(0, "COMPLETE", [0.5, 0.6])], 0.9, True, None),
    ],
)
def test_epochs_to_reach(trials, target, complete_only, expected):
    assert compare.epochs_to_reach(trials, target, complete_only=complete_only) == expected


@pytest.mark.parametrize(
    "values, expected",
    [
        ([10, 20, 30], 20),
        ([10, None, 30], 30),
        ([10, None, None], None),
        ([10, 20], 15),
        ([10, None], None),
        ([], None),
    ],
)
def test_median_counts_misses_as_worst(values, expected):
    assert compare._median_with_misses(values) == expected


def test_grid_is_the_usage_guides():
    space = compare.strategy_space(compare.BENCHMARKS["pbmc68k"], "grid", seed=3)
    assert space.params["learning_rate"].choices == compare.GRID_LEARNING_RATES
    assert space.params["lr_scheduler_type"].choices == ("constant", "cosine")
    assert "warmup_ratio" not in space.params and space.fixed["warmup_ratio"] == 0.03
    assert space.n_trials == 8 and space.pruner_config["type"] == "none"
    assert space.fixed["seed"] == 3  # the YAML's seed 0 + the benchmark seed


def test_default_is_the_shipped_study_with_another_seed():
    shipped = compare.strategy_space(compare.BENCHMARKS["pbmc68k"], "default", seed=0)
    other = compare.strategy_space(compare.BENCHMARKS["pbmc68k"], "default", seed=2)
    assert other.sampler_config == {**shipped.sampler_config, "seed": 2}
    assert other.pruner_config == shipped.pruner_config and other.enqueue == shipped.enqueue
    random = compare.strategy_space(compare.BENCHMARKS["pbmc68k"], "random", seed=2)
    assert random.sampler_config["type"] == "random" and random.pruner_config["type"] == "none"
    assert random.enqueue == [] and random.n_trials == shipped.n_trials


@pytest.mark.slow
def test_quick_run_writes_sane_results(tmp_path):
    out = tmp_path / "compare.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--out", str(out), "--cache-dir", str(tmp_path / "cache")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["complete"] and result["meta"]["quick"]
    assert "| pbmc68k | default |" in out.with_suffix(".md").read_text()

    lr = result["baselines"]["pbmc68k"]
    assert 0.6 < lr["test_accuracy"] <= 1 and 0 < lr["test_macro_f1"] <= 1

    runs = result["runs"]
    assert sorted((r["strategy"], r["seed"]) for r in runs) == sorted(
        (s, seed) for s in compare.STRATEGIES for seed in (0, 1)
    )
    for r in runs:
        assert 0 <= r["best_value"] <= 1
        assert 0 <= r["test_accuracy"] <= 1 and 0 <= r["test_macro_f1"] <= 1
        assert r["total_epochs"] == sum(t["epochs"] for t in r["trials"]) > 0
        assert r["best_value"] == max(t["value"] for t in r["trials"] if t["state"] == "COMPLETE")
        if r["strategy"] == "grid":
            assert len(r["trials"]) == 8 and r["states"]["COMPLETE"] == 8
            assert r["total_epochs"] == 8 * r["epoch"]
            assert r["epochs_to_reach_grid_best"] <= r["total_epochs"]  # it reaches its own best
        else:
            assert r["grid_best_value"] == next(
                g["best_value"] for g in runs if g["strategy"] == "grid" and g["seed"] == r["seed"]
            )
        if r["strategy"] == "default":
            assert [t["enqueued"] for t in r["trials"][:2]] == [True, True]
            assert r["states"]["PRUNED"] + r["states"]["COMPLETE"] == r["n_trials"]
        if r["strategy"] == "random":
            assert r["states"]["PRUNED"] == 0 and not any(t["enqueued"] for t in r["trials"])

    summary = result["summary"]["pbmc68k"]
    assert set(summary["strategies"]) == set(compare.STRATEGIES)
    assert set(summary["targets"]) >= {"reach_within_half_grid_epochs", "test_macro_f1_at_least_grid"}
    assert summary["strategies"]["default"]["best_value"]["n"] == 2

    # --confirm (quick: K=2, N=2): the default search's pick replayed with and without confirmation
    assert result["meta"]["confirm"] == [2, 2]
    for r in runs:
        if r["strategy"] != "default":
            assert r["confirmation"] is None
            continue
        conf = r["confirmation"]
        repeats = conf["repeats"]
        assert repeats and all(rep["state"] == "COMPLETE" for rep in repeats)
        assert len({(rep["repeat_of"], rep["repeat_seed"]) for rep in repeats}) == len(repeats) <= 4
        by_variant = {(v["rule"], v["top"], v["seeds"]): v for v in conf["variants"]}
        plain = by_variant[("best_epoch", 0, 0)]
        # no confirmation: the search's own pick, as before
        assert (plain["number"], plain["n"], plain["extra_epochs"]) == (r["selected"]["number"], 1, 0)
        assert plain["test_macro_f1"] == r["test_macro_f1"]
        full = by_variant[("best_epoch", 2, 2)]
        assert full["extra_epochs"] == sum(rep["epochs"] for rep in repeats)
        assert full["n"] == 3 and full["val_fresh"] is None  # every seed was used: nothing held out
        assert by_variant[("best_epoch", 2, 1)]["val_fresh"] is not None
    sel = {(v["rule"], v["top"], v["seeds"]): v for v in summary["selection"]}
    assert (
        sel[("best_epoch", 0, 0)]["test_macro_f1"]["mean"] == summary["strategies"]["default"]["test_macro_f1"]["mean"]
    )
    assert "## Selection with and without confirmation" in out.with_suffix(".md").read_text()
