"""DeepSC's checkpoints bounded by finetune.keep_checkpoints (deepsc_tune/backends/command/deepsc/_checkpoints.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from paths import FAKE_DEEPSC
from typer.testing import CliRunner

from deepsc_tune.backends.command.deepsc._checkpoints import (
    CHECKPOINTS_FILE,
    best_epoch_checkpoint,
    saved_path,
)
from deepsc_tune.cli import app
from deepsc_tune.study._checkpoints import CheckpointKeeper
from deepsc_tune.study._objective import trial_dir

FAKE = FAKE_DEEPSC
optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_deepscs_saved_lines_are_parsed():
    assert saved_path("Saved checkpoint: /r/ck/epoch_3.ckpt") == "/r/ck/epoch_3.ckpt"
    assert saved_path("Saved latest checkpoint: /r/ck/latest_checkpoint.ckpt") == "/r/ck/latest_checkpoint.ckpt"
    assert saved_path("Evaluation Loss: 0.1, Accuracy: 0.9") is None


def _study_with_files(tmp_path, states_values):
    """A study whose trials each have DeepSC-named checkpoints, a decoy in the same folder, and a
    recorded path whose name is not DeepSC's."""
    study = optuna.create_study(direction="maximize")
    dist = {"learning_rate": FloatDistribution(1e-9, 1e-1, log=True)}
    files = {}
    for number, (state, value) in enumerate(states_values):
        study.add_trial(
            create_trial(
                params={"learning_rate": 10 ** -(number + 2)},
                distributions=dist,
                value=value if state == TrialState.COMPLETE else None,
                state=state,
                intermediate_values={1: value or 0.1},
            )
        )
        run = trial_dir(tmp_path / "trials", number)
        ckpts = tmp_path / "outputs" / f"run{number}" / "checkpoints"
        ckpts.mkdir(parents=True)
        named = [ckpts / "epoch_1.ckpt", ckpts / "latest_checkpoint.ckpt", ckpts / "weights.pt"]
        for path in [*named, ckpts / "training_log.txt"]:
            path.write_text("x" * 100)
        run.mkdir(parents=True)
        (run / CHECKPOINTS_FILE).write_text(json.dumps({"folder": None, "files": [str(p) for p in named]}))
        files[number] = named
    return study, files


def test_best_keeps_only_the_chosen_configuration(tmp_path):
    C, P, F, R = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING
    study, files = _study_with_files(tmp_path, [(C, 0.7), (C, 0.9), (P, 0.3), (F, None), (R, None)])
    pruned = CheckpointKeeper(study, tmp_path / "trials", "best").prune()
    assert sorted(pruned.trials) == [0, 2, 3]  # beaten, pruned, failed; not the best, not the running one
    assert pruned.files == 6 and pruned.bytes == 600
    for number, (epoch1, latest, other) in files.items():
        kept = number in (1, 4)
        assert epoch1.exists() == kept and latest.exists() == kept, number
        assert other.exists()  # recorded but not one of DeepSC's names: never removed
        assert (epoch1.parent / "training_log.txt").exists()  # never named: never removed
    assert best_epoch_checkpoint(trial_dir(tmp_path / "trials", 1), 1) == files[1][0]
    assert CheckpointKeeper(study, tmp_path / "trials", "best").prune().files == 0  # idempotent


def test_a_file_never_announced_in_the_reported_folder_is_removed_too(tmp_path):
    """A run stopped while saving (pruned right after its evaluation line) leaves epoch_N.ckpt it
    never announced: it is in the folder DeepSC reported, with DeepSC's name, so it goes too."""
    C, P = TrialState.COMPLETE, TrialState.PRUNED
    study, files = _study_with_files(tmp_path, [(C, 0.9), (P, 0.2)])
    folder = files[1][0].parent
    (folder / "epoch_2.ckpt").write_text("half")
    (trial_dir(tmp_path / "trials", 1) / CHECKPOINTS_FILE).write_text(json.dumps({"folder": str(folder), "files": []}))
    CheckpointKeeper(study, tmp_path / "trials", "best").prune()
    assert sorted(p.name for p in folder.iterdir()) == ["training_log.txt", "weights.pt"]


def test_all_and_none(tmp_path):
    C = TrialState.COMPLETE
    study, files = _study_with_files(tmp_path, [(C, 0.7), (C, 0.9)])
    assert CheckpointKeeper(study, tmp_path / "trials", "all").prune().files == 0
    assert all(p.exists() for named in files.values() for p in named)
    assert CheckpointKeeper(study, tmp_path / "trials", "none").prune().files == 4
    assert not any(p.exists() for named in files.values() for p in named[:2])
    with pytest.raises(ValueError, match="keep_checkpoints: expected one of best, all, none"):
        CheckpointKeeper(study, tmp_path, "some")


def _space(tmp_path, **finetune) -> Path:
    space = {
        "name": "fake-ckpt",
        "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
        "finetune": {
            "backend": "command",
            "command": [sys.executable, str(FAKE)],
            "cwd": str(tmp_path),
            "new_keys": ["sleep"],
            "overrides": {"sleep": 0.0},
            "epoch": 3,
            **finetune,
        },
        "search": {"learning_rate": {"low": 1e-5, "high": 1e-2, "log": True}},
        "study": {"n_trials": 4, "sampler": {"type": "random", "seed": 0}, "pruner": {"type": "none"}},
    }
    path = tmp_path / "fake-ckpt.yaml"
    path.write_text(yaml.safe_dump(space))
    return path


def test_a_search_leaves_the_best_trials_checkpoints_only(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    path = _space(tmp_path)
    out = runner.invoke(app, ["run", str(path), "--results-dir", "results"])
    assert out.exit_code == 0, out.output
    study = optuna.load_study(study_name="fake-ckpt", storage="sqlite:///results/fake-ckpt/study.db")
    best = study.best_trial.number
    trials = Path("results/fake-ckpt/trials")
    for t in study.trials:
        ckpts = trial_dir(trials, t.number) / "checkpoints"
        names = sorted(p.name for p in ckpts.iterdir())
        expected = (
            ["epoch_1.ckpt", "epoch_2.ckpt", "epoch_3.ckpt", "latest_checkpoint.ckpt"] if t.number == best else []
        )
        assert names == expected, (t.number, best)
    assert "DeepSC checkpoints kept: 4 files" in out.output and "keep_checkpoints: best" in out.output
    status = runner.invoke(app, ["status", str(path), "--results-dir", "results"])
    assert status.exit_code == 0 and "DeepSC checkpoints: 4 files" in status.output
    shown = runner.invoke(app, ["best", str(path), "--results-dir", "results"])
    best_epoch = study.best_trial.user_attrs["best_epoch"]
    expected_file = (trial_dir(trials, best) / "checkpoints" / f"epoch_{best_epoch}.ckpt").resolve()
    assert shown.exit_code == 0 and f"tuned DeepSC model: {expected_file}" in shown.output


def test_keep_all_keeps_every_trials_checkpoints_and_the_setting_is_validated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    out = runner.invoke(app, ["run", str(_space(tmp_path, keep_checkpoints="all")), "--results-dir", "results"])
    assert out.exit_code == 0, out.output
    assert len(list(Path("results/fake-ckpt/trials").glob("*/checkpoints/epoch_3.ckpt"))) == 4
    bad = runner.invoke(app, ["validate", str(_space(tmp_path, keep_checkpoints="few"))])
    assert bad.exit_code != 0 and "finetune.keep_checkpoints" in bad.output and "'few'" in bad.output
    assert "Traceback" not in bad.output
