"""`deepsc-tune repeat`: the best configurations again with other seeds, as tagged extra trials."""

from __future__ import annotations

import optuna
import pytest
from fakes import CurveFinetuner
from optuna.trial import TrialState
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.config._search_space import build_search_space
from deepsc_tune.errors import ConfigError, DeepscTuneError
from deepsc_tune.results.report._data import stability_data
from deepsc_tune.study._objective import read_trial_file
from deepsc_tune.study._pruning import SparingPruner
from deepsc_tune.study._repeat import (
    check_same_data,
    enqueue_repeats,
    open_for_repeats,
    plan_repeats,
    run_repeats,
    top_trials,
    waiting_repeats,
)
from deepsc_tune.study._space_record import space_from_study
from deepsc_tune.study._storage import default_storage_url, open_storage
from deepsc_tune.study._study import open_study, run_study
from deepsc_tune.study._trial_record import count_states, search_trials, trial_settings

optuna.logging.set_verbosity(optuna.logging.ERROR)

CONFIG = {
    "name": "curve",
    "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
    "finetune": {"epoch": 3, "seed": 7},
    "search": {
        "lr_scheduler_type": {"choices": ["constant", "cosine"]},
        "learning_rate": {"low": 1e-5, "high": 1e-1, "log": True},
        "warmup_ratio": {"low": 0.0, "high": 0.2, "when": {"lr_scheduler_type": "cosine"}},
    },
    "study": {"n_trials": 5, "sampler": {"type": "tpe", "seed": 0}, "pruner": {"type": "none"}},
}


def seed_curve(fail_seeds=()) -> CurveFinetuner:
    """Peak 0.9 at 1e-3, shifted a little by the seed; a run with a seed of ``fail_seeds`` diverges."""
    return CurveFinetuner(
        top=0.9,
        seed_shift=0.01,
        test_gap=0.02,
        fail_when=lambda p: f"training diverged with seed {p['seed']}" if p["seed"] in fail_seeds else None,
    )


@pytest.fixture
def searched(tmp_path):
    """A finished 5-trial search (fake fine-tuner), and its storage URL."""
    space = build_search_space(CONFIG)
    url = default_storage_url("curve", tmp_path)
    study = open_study(space, storage=open_storage(url), study_name="curve")
    run_study(space, seed_curve(), study=study)
    return url


def test_repeats_are_tagged_seeded_and_not_search_trials(searched):
    study, space = open_for_repeats(storage=searched, study_name="curve")
    before = count_states(study)
    best = top_trials(study.get_trials(), top=2)
    plan = plan_repeats(study.get_trials(), top=2, seeds=3, fixed=space.fixed)
    assert [(p.repeat_of, p.seed) for p in plan] == [
        (best[0].number, 8),
        (best[0].number, 9),
        (best[0].number, 10),
        (best[1].number, 8),
        (best[1].number, 9),
        (best[1].number, 10),
    ]  # the search ran with seed 7
    enqueue_repeats(study, plan)
    assert len(waiting_repeats(study)) == 6
    finetuner = seed_curve()
    summary = run_repeats(study, space, finetuner)
    assert len(summary.repeats) == 6 and summary.search == [] and summary.failed == []
    assert [c["seed"] for c in finetuner.calls] == [8, 9, 10, 8, 9, 10]
    repeats = [t for t in study.get_trials() if "repeat_of" in t.user_attrs]
    assert len(repeats) == 6
    originals = {t.number: t for t in best}
    for t in repeats:
        original = originals[t.user_attrs["repeat_of"]]
        assert t.state == TrialState.COMPLETE
        assert t.params == original.params
        assert t.user_attrs["repeat_seed"] == trial_settings(t)["seed"] == finetuner.calls[repeats.index(t)]["seed"]
        assert "settings" not in t.user_attrs  # the full settings live in the trial's folder
        assert len(t.intermediate_values) == 3
    assert count_states(study) == before  # not counted as search trials
    assert len(search_trials(study)) == 5
    rows = stability_data(study.get_trials(), top=2, fixed=space.fixed)
    assert [len(r.runs) for r in rows] == [4, 4]
    assert [r.seed for r in rows[0].runs] == [7, 8, 9, 10]
    assert rows[0].seed_std is not None and rows[0].seed_std > 0


def test_repeat_is_idempotent_and_adds_only_missing_seeds(searched):
    study, space = open_for_repeats(storage=searched, study_name="curve")
    enqueue_repeats(study, plan_repeats(study.get_trials(), top=1, seeds=2, fixed=space.fixed))
    run_repeats(study, space, seed_curve())
    assert plan_repeats(study.get_trials(), top=1, seeds=2, fixed=space.fixed) == []
    assert run_repeats(study, space, seed_curve()).repeats == []
    more = plan_repeats(study.get_trials(), top=1, seeds=3, fixed=space.fixed)
    assert [p.seed for p in more] == [10]
    enqueue_repeats(study, more)
    assert plan_repeats(study.get_trials(), top=1, seeds=3, fixed=space.fixed) == []  # queued counts as done
    run_repeats(study, space, seed_curve())
    assert len([t for t in study.get_trials() if "repeat_of" in t.user_attrs]) == 3


def test_failed_repeat_is_planned_again(searched):
    study, space = open_for_repeats(storage=searched, study_name="curve")
    enqueue_repeats(study, plan_repeats(study.get_trials(), top=1, seeds=2, fixed=space.fixed))
    summary = run_repeats(study, space, seed_curve(fail_seeds={9}))
    assert len(summary.failed) == 1
    failed = study.get_trials()[summary.failed[0]]
    assert failed.user_attrs["fail_reason"] == "training diverged with seed 9"
    assert [p.seed for p in plan_repeats(study.get_trials(), top=1, seeds=2, fixed=space.fixed)] == [9]


def test_repeats_are_never_pruned_but_queued_search_trials_are(searched):
    # The user's pruner prunes everything: the study's pruner still never lets it stop a repeat.
    prune_all = optuna.pruners.ThresholdPruner(lower=2.0)
    study, space = open_for_repeats(storage=searched, study_name="curve")
    assert isinstance(study.pruner, SparingPruner)
    study.pruner.wrapped = prune_all
    study.enqueue_trial({"lr_scheduler_type": "constant", "learning_rate": 1e-2})  # a search trial, first
    enqueue_repeats(study, plan_repeats(study.get_trials(), top=1, seeds=1, fixed=space.fixed))
    summary = run_repeats(study, space, seed_curve())
    assert len(summary.search) == 1 and len(summary.repeats) == 1
    trials = study.get_trials()
    assert trials[summary.search[0]].state == TrialState.PRUNED
    assert trials[summary.repeats[0]].state == TrialState.COMPLETE
    assert len(trials[summary.repeats[0]].intermediate_values) == 3


def test_plan_errors(tmp_path, searched):
    study = optuna.create_study(direction="maximize")
    with pytest.raises(DeepscTuneError, match="no completed search trial to repeat yet"):
        plan_repeats(study.get_trials(), top=1, seeds=1, fixed={})
    with pytest.raises(ConfigError, match="--top 0 --seeds 1"):
        plan_repeats(study.get_trials(), top=0, seeds=1, fixed={})
    with pytest.raises(DeepscTuneError, match="records no search space"):
        space_from_study(study)
    with pytest.raises(DeepscTuneError, match="no study 'nope'"):
        open_for_repeats(storage=searched, study_name="nope")


def test_same_configuration_is_repeated_once(searched):
    study, _ = open_for_repeats(storage=searched, study_name="curve")
    best = top_trials(study.get_trials(), top=1)[0]
    study.add_trial(
        optuna.trial.create_trial(
            state=TrialState.COMPLETE,
            value=best.value,
            params=best.params,
            distributions=best.distributions,
        )
    )
    chosen = top_trials(study.get_trials(), top=2)
    assert chosen[0].number == best.number and chosen[1].params != best.params


def test_space_from_study_and_data_check(searched):
    study, space = open_for_repeats(storage=searched, study_name="curve")
    assert space.sha256 == study.user_attrs["search_space_sha256"]
    assert type(study.pruner.wrapped) is type(space.build_pruner())  # the study's own pruner, sparing repeats
    study.set_user_attr("data_fingerprint", "a" * 40)
    check_same_data(study, "a" * 40)
    check_same_data(study, None)
    with pytest.raises(ConfigError, match="was run on different data"):
        check_same_data(study, "b" * 40)


def test_cli_repeat_on_real_data(tmp_path):
    """End to end on scanpy's PBMC data: 3 trials of 2 epochs, then 1 configuration x 2 seeds."""
    results = str(tmp_path / "results")
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "run",
            "pbmc68k",
            "--results-dir",
            results,
            "--threads",
            "1",
            "study.n_trials=3",
            "finetune.epoch=2",
            "finetune.hidden=[16]",
        ],
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        app, ["repeat", "pbmc68k", "--top", "1", "--seeds", "2", "--results-dir", results, "--threads", "1"]
    )
    assert result.exit_code == 0, result.output
    assert "ran 2 repeats (0 failed)" in result.output
    study = optuna.load_study(study_name="pbmc68k", storage=f"sqlite:///{tmp_path / 'results/pbmc68k/study.db'}")
    repeats = [t for t in study.get_trials() if "repeat_of" in t.user_attrs]
    trials = tmp_path / "results" / "pbmc68k" / "trials"
    assert [read_trial_file(trials, t.number)["settings"]["seed"] for t in repeats] == [1, 2]  # pbmc68k.yaml: seed 0
    assert all(t.state == TrialState.COMPLETE for t in repeats)
    assert len(search_trials(study)) == 3
    again = runner.invoke(app, ["repeat", "pbmc68k", "--top", "1", "--seeds", "2", "--results-dir", results])
    assert again.exit_code == 0 and "nothing to add" in again.output
    missing = runner.invoke(app, ["repeat", "nope", "--results-dir", results])
    assert missing.exit_code == 1 and "no study found" in missing.output
