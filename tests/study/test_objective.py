"""The trial function: FixedTrial for deterministic units, and a study over the fake DeepSC CLI."""

from __future__ import annotations

import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from paths import FAKE_DEEPSC

from deepsc_tune.backends._interface import EpochMetrics, FinetuneResult
from deepsc_tune.backends.command._finetuner import CommandFinetuner, CommandSettings
from deepsc_tune.config._search_space import build_search_space
from deepsc_tune.errors import DeepscTuneError
from deepsc_tune.study._objective import build_objective, read_trial_file
from deepsc_tune.study._pruning import SparingPruner
from deepsc_tune.study._storage import open_storage
from deepsc_tune.study._study import open_study, run_study

optuna.logging.set_verbosity(optuna.logging.ERROR)
FAKE = FAKE_DEEPSC

SEARCH = {
    "lr_scheduler_type": {"choices": ["constant", "cosine"]},
    "learning_rate": {"low": 1e-6, "high": 1e-2, "log": True},
    "warmup_ratio": {"low": 0.0, "high": 0.2, "when": {"lr_scheduler_type": "cosine"}},
}


class Recorder:
    def __init__(self, values=(0.5, 0.7, 0.6)):
        self.values = values
        self.params = None

    def run(self, params, *, metric="val_accuracy", on_epoch=None, run_dir=None):
        self.params = dict(params)
        history = []
        for epoch, v in enumerate(self.values, start=1):
            history.append(EpochMetrics(epoch=epoch, val_accuracy=v, val_macro_f1=v / 2))
            if on_epoch and on_epoch(history[-1]):
                break
        best = max(history, key=lambda m: m.metric(metric))
        return FinetuneResult(history, best_epoch=best.epoch, test_accuracy=0.1)


def builtin_space(**study):
    return build_search_space(
        {
            "name": "unit",
            "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
            "finetune": {"epoch": 3, "batch_size": 16},
            "search": SEARCH,
            "study": study,
        }
    )


def test_fixed_trial_maps_params_onto_settings_and_returns_best_validation():
    space = builtin_space()
    ft = Recorder()
    objective = build_objective(space, ft)
    trial = optuna.trial.FixedTrial({"lr_scheduler_type": "cosine", "learning_rate": 3e-4, "warmup_ratio": 0.05})
    value = objective(trial)
    assert value == 0.7  # best epoch, not the last one (0.6); test accuracy never returned
    assert ft.params == {
        "epoch": 3,
        "batch_size": 16,
        "lr_scheduler_type": "cosine",
        "learning_rate": 3e-4,
        "warmup_ratio": 0.05,
    }


def test_metric_choice_is_used():
    space = builtin_space(metric="val_macro_f1")
    value = build_objective(space, Recorder())(
        optuna.trial.FixedTrial({"lr_scheduler_type": "constant", "learning_rate": 1e-4})
    )
    assert value == pytest.approx(0.35)


def test_user_attrs_and_reason_recorded_on_failure(tmp_path):
    class Failing(Recorder):
        def run(self, params, **kw):
            raise DeepscTuneError("training diverged: loss is NaN at epoch 2 (learning_rate=0.01)")

    study = optuna.create_study(direction="maximize")
    objective = build_objective(builtin_space(), Failing(), trials_dir=tmp_path)
    study.optimize(objective, n_trials=1, catch=(Exception,))
    t = study.trials[0]
    assert t.state == TrialState.FAIL
    assert t.user_attrs["fail_reason"].startswith("training diverged")
    # The full settings, failed or not, in the trial's folder (the study keeps its params only).
    assert read_trial_file(tmp_path, 0)["settings"] == {**builtin_space().fixed, **t.params}
    assert "settings" not in t.user_attrs


def test_no_prune_after_last_epoch():
    class AlwaysPrune(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return True

    # The study's pruner (what open_study gives every study) around one that always says prune.
    one_epoch = build_search_space({**builtin_space().config, "finetune": {"epoch": 1}})
    study = optuna.create_study(direction="maximize", pruner=SparingPruner(AlwaysPrune(), lambda t: None))
    ft = Recorder(values=(0.5, 0.6, 0.7))
    study.optimize(build_objective(builtin_space(), ft), n_trials=1)
    t = study.trials[0]
    assert t.state == TrialState.PRUNED and sorted(t.intermediate_values) == [1]
    study.pruner = SparingPruner(AlwaysPrune(), lambda t: one_epoch.settings_for(t.params)["epoch"])
    study.optimize(build_objective(one_epoch, Recorder(values=(0.5,))), n_trials=1)
    assert study.trials[1].state == TrialState.COMPLETE


# ----------------------------------------------------------------------------- DeepSC subprocess


def command_space(tmp_path, **study):
    return build_search_space(
        {
            "name": "fake-deepsc",
            "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
            "finetune": {
                "backend": "command",
                "command": [sys.executable, str(FAKE)],
                "cwd": str(tmp_path),
                "new_keys": ["sleep", "spawn_child"],
                "overrides": {"sleep": 0.05, "spawn_child": True},
                "grace_period": 2,
                "epoch": 5,
            },
            "search": SEARCH,
            "study": {
                "n_trials": 8,
                "sampler": {"type": "tpe", "seed": 0},
                "pruner": {"type": "median", "n_startup_trials": 2, "n_warmup_steps": 1},
                **study,
            },
        }
    )


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_study_over_deepsc_subprocess_prunes_and_leaves_no_process(tmp_path):
    space = command_space(tmp_path)
    settings, _ = CommandSettings.from_dict(space.config["finetune"])
    study = open_study(space, storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="fake")
    trials_dir = tmp_path / "trials"
    run_study(space, CommandFinetuner(settings), study=study, trials_dir=trials_dir)
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 8
    assert TrialState.PRUNED in states
    for t in study.trials:
        folder = trials_dir / f"{t.number:05d}"
        assert (folder / "log.txt").is_file()
        # every epoch DeepSC printed was parsed and reported to the trial
        details = read_trial_file(trials_dir, t.number)
        assert sorted(t.intermediate_values) == [h["epoch"] for h in details["history"]]
        assert sorted(t.intermediate_values) == list(range(1, len(t.intermediate_values) + 1))
        for pidfile in ("pid", "grandchild.pid"):
            pid = int((folder / pidfile).read_text())
            assert not alive(pid), f"trial {t.number}: {pidfile} {pid} still running"
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert all(len(t.intermediate_values) < 5 for t in pruned)
    best = study.best_trial
    assert best.params["learning_rate"] == pytest.approx(1e-4, rel=3)  # the fake peaks at 1e-4


def test_deepsc_unknown_scheduler_is_a_failed_trial_with_its_message(tmp_path):
    space = command_space(tmp_path, max_failures=1)
    raw = {**space.config}
    raw["search"] = {
        "lr_scheduler_type": {"choices": ["linear"]},
        "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
    }
    space = build_search_space(raw)
    settings, _ = CommandSettings.from_dict(space.config["finetune"])
    study = open_study(space, storage=open_storage(f"sqlite:///{tmp_path}/s.db"), study_name="fake")
    with pytest.raises(DeepscTuneError, match="1 failed trials in a row"):
        run_study(space, CommandFinetuner(settings), study=study, trials_dir=tmp_path / "trials")
    reason = study.trials[0].user_attrs["fail_reason"]
    assert "Unknown lr_scheduler_type: 'linear'. Must be one of: 'constant', 'cosine'" in reason
