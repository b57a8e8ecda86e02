"""`validate` (and `run`) on both working DeepSC commits: 2416d85 (finetune) and abcf2be (run_cta).

Against DeepSC's real checkouts in ../shared/deepsc (read only; fixtures in conftest.py). Each
checkout's keys, defaults and files are its own: abcf2be evaluates on data_path_eval by default
(seperated_train_eval_dataset: True), its learning_rate is 3e-4 and its config hard-codes
hydra.run.dir under another user's home, which deepsc-tune overrides with the trial's folder.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml
from deepsc_setup import write_labels
from paths import GOLDEN
from typer.testing import CliRunner

from deepsc_tune.cli import app

runner = CliRunner()
MODULES = {"2416d85": "src.deepsc.finetune.finetune", "abcf2be": "src.deepsc.finetune.run_cta"}
FILES = {"data_path": "train.h5ad", "data_path_eval": "val.h5ad", "csv_path": "map.csv"}


@pytest.fixture(params=sorted(MODULES))
def commit(request, checkout, checkout_abcf2be) -> tuple[str, Path]:
    return request.param, {"2416d85": checkout, "abcf2be": checkout_abcf2be}[request.param]


def space(tmp_path: Path, checkout: Path, module: str, *, overrides: dict | None = None, **finetune) -> Path:
    inputs = {key: str(tmp_path / name) for key, name in FILES.items()}
    (tmp_path / "map.csv").write_text("")  # only its existence is checked
    # DeepSC's two files: their cells set the real optimizer steps of the warmup checks.
    write_labels(tmp_path / "train.h5ad", ["a", "b"] * 50)
    write_labels(tmp_path / "val.h5ad", ["a", "b", "b"] * 10)
    raw = {
        "name": "dsc",
        "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
        "finetune": {
            "backend": "command",
            "command": [sys.executable, "-m", module],
            "cwd": str(checkout),
            "epoch": 2,
            "batch_size": 10,
            "grad_acc": 1,
            "overrides": {
                "num_device": 1,
                "seperated_train_eval_dataset": True,
                "load_pretrained_model": False,
                **inputs,
                **(overrides or {}),
            },
            **finetune,
        },
        "search": {
            "lr_scheduler_type": {"choices": ["constant", "cosine"]},
            "learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True},
            "warmup_ratio": {"low": 0.01, "high": 0.2, "when": {"lr_scheduler_type": "cosine"}},
        },
        "study": {"n_trials": 2},
    }
    path = tmp_path / "dsc.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_validate_accepts_each_commit_with_its_own_entry_point(commit, tmp_path):
    name, checkout = commit
    result = runner.invoke(app, ["validate", str(space(tmp_path, checkout, MODULES[name]))])
    assert result.exit_code == 0, result.output
    if name == "abcf2be":
        assert "DeepSC abcf2be writes each trial's checkpoints, logs and plots into Hydra's run directory" in (
            result.output
        )
        assert "/home/angli" not in result.output.replace("the config's own /home/angli", "")
    else:
        assert "/home/angli/DeepSC/results/cell_type_annotation/<YYYYmmdd_HHMMSS>/" in result.output
        assert "starts them one at a time" in result.output


def test_validate_refuses_the_other_commits_entry_point_in_one_line(commit, tmp_path):
    name, checkout = commit
    other = MODULES["2416d85" if name == "abcf2be" else "abcf2be"]
    result = runner.invoke(app, ["validate", str(space(tmp_path, checkout, other))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.output.strip().splitlines()
    assert f"dsc.yaml: finetune.command: runs {other}, but" in line
    assert f"this checkout is DeepSC {name}" in line and f"[python, -m, {MODULES[name]}]" in line


def test_keys_are_checked_against_that_checkouts_config(checkout_abcf2be, tmp_path):
    # A key only abcf2be's model group lacks would be refused there; model.* keys are its own.
    path = space(tmp_path, checkout_abcf2be, MODULES["abcf2be"], **{"model.num_layer": 2, "learnig_rate": 1e-4})
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert f"({checkout_abcf2be}/configs/finetune/finetune.yaml)" in result.output
    assert "did you mean 'model.num_layers'?" in result.output and "did you mean 'learning_rate'?" in result.output


def test_abcf2be_evaluates_on_data_path_eval_by_default(checkout_abcf2be, checkout, tmp_path):
    # seperated_train_eval_dataset is True in abcf2be's config: an unset data_path_eval is its
    # authors' test file, which does not exist here; at 2416d85 (False) DeepSC splits its own.
    for name, folder in (("abcf2be", checkout_abcf2be), ("2416d85", checkout)):
        work = tmp_path / name
        work.mkdir()
        path = space(work, folder, MODULES[name])
        raw = yaml.safe_load(path.read_text())
        del raw["finetune"]["overrides"]["seperated_train_eval_dataset"]
        del raw["finetune"]["overrides"]["data_path_eval"]
        path.write_text(yaml.safe_dump(raw))
        result = runner.invoke(app, ["validate", str(path)])
        if name == "abcf2be":
            assert result.exit_code == 2, result.output
            assert "finetune.overrides.data_path_eval: not set, and DeepSC's default" in result.output
            assert "myeloid_test.h5ad" in result.output
        else:
            assert result.exit_code == 0, result.output


def test_abcf2be_without_the_trials_folder_is_refused_when_it_cannot_write(copy_abcf2be, tmp_path):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    config = copy_abcf2be / "configs/finetune/finetune.yaml"
    config.write_text(config.read_text().replace("dir: /home/angli/DeepSC", f"dir: {blocker}"))
    path = space(tmp_path, copy_abcf2be, MODULES["abcf2be"], run_dir_override=None)
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "finetune.run_dir_override: None: DeepSC abcf2be then writes to its config's hydra.run.dir" in (
        result.output
    )


# What DeepSC abcf2be printed (stdout and stderr as one stream) for a 2-epoch run of the tiny
# random-init model of tests/backends/command/deepsc/test_real_deepsc.py (its first trial): the same evaluation lines as
# 2416d85, and "Output directory: <Hydra's run directory>". Paths were shortened; the run
# directory is {run_dir}, filled in by the replay.
GOLDEN_ABCF2BE = GOLDEN / "deepsc_abcf2be_stdout.txt"


def test_real_abcf2be_output_golden(tmp_path):
    from deepsc_tune.backends.command._finetuner import CommandFinetuner, CommandSettings

    replay = (
        f"import os, sys; sys.stdout.buffer.write(open({str(GOLDEN_ABCF2BE)!r}, 'rb').read()"
        ".replace(b'{run_dir}', os.environ['DEEPSC_TUNE_RUN_DIR'].encode()))"
    )
    settings, _ = CommandSettings.from_dict(
        {"backend": "command", "command": [sys.executable, "-c", replay], "run_dir_override": None, "metrics": "deepsc"}
    )
    run_dir = tmp_path / "run"
    result = CommandFinetuner(settings).run({}, metric="val_macro_f1", run_dir=run_dir)
    got = [(m.epoch, m.val_loss, m.val_accuracy, m.val_macro_f1) for m in result.history]
    assert got == [(1, 1.3305, 0.26, 0.1641), (2, 1.2421, 0.44, 0.4467)]
    assert result.best_epoch == 2
    assert result.extra["program_output_dir"] == str(run_dir.resolve())
    log = (run_dir / "log.txt").read_text()
    assert "Using CONSTANT learning rate" in log or "Using COSINE ANNEALING" in log
    assert f"logs and plots to {run_dir.resolve()} (this trial's folder, Hydra's run directory)" in log
