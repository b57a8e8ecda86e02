"""Trials that complete at chance level are flagged in `status` and the report (deepsc_tune.data._chance)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.data._chance import CHANCE_ATTR, chance_levels, chance_note, chance_trials
from deepsc_tune.results.report._files import build_report_data

optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_chance_levels_of_a_balanced_and_a_skewed_set():
    balanced = chance_levels(np.array([0, 1, 2] * 27), ["a", "b", "c"])
    assert balanced["val_accuracy"] == pytest.approx(1 / 3) and balanced["n_cells"] == 81
    skewed = chance_levels(np.array([0] * 90 + [1] * 10), ["a", "b"])
    assert skewed["val_accuracy"] == pytest.approx(0.9)
    assert skewed["val_macro_f1"] == pytest.approx((2 * 0.9 / 1.9) / 2)


def make_study(tmp_path, values, *, levels=True) -> optuna.Study:
    folder = tmp_path / "results" / "lr"
    folder.mkdir(parents=True)
    study = optuna.create_study(study_name="lr", storage=f"sqlite:///{folder / 'study.db'}", direction="maximize")
    study.set_user_attr("metric", "val_accuracy")
    if levels:
        study.set_user_attr(CHANCE_ATTR, chance_levels(np.array([0, 1, 2] * 27), ["a", "b", "c"]))
    dist = {"learning_rate": FloatDistribution(1e-5, 1e4, log=True)}
    for lr, value in values:
        study.add_trial(
            create_trial(params={"learning_rate": lr}, distributions=dist, value=value, intermediate_values={1: value})
        )
    study.add_trial(create_trial(params={"learning_rate": 1e3}, distributions=dist, state=TrialState.FAIL))
    return study


def test_status_and_report_flag_trials_at_chance(tmp_path):
    study = make_study(tmp_path, [(1e-3, 0.91), (1e3, 0.339), (1e2, 0.35), (1e-2, 0.40)])
    assert chance_trials(study) == [1, 2]
    result = CliRunner().invoke(app, ["status", "lr", "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()[:1].isdigit()}
    assert "chance level" in rows["1"] and "chance level" in rows["2"]
    assert "chance level" not in rows["0"] and "chance level" not in rows["3"]
    assert "2 trials completed at chance level" in result.stdout and "#1, #2" in result.stdout
    notes = build_report_data(study).notes
    assert any("completed at chance level" in n for n in notes), notes


def test_no_levels_no_flags(tmp_path):
    """DeepSC as a subprocess (no validation labels here) or an older study: nothing is flagged."""
    study = make_study(tmp_path, [(1e3, 0.339)], levels=False)
    assert chance_trials(study) == [] and chance_note(study) is None
