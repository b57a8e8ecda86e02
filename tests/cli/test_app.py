"""The command line: in-process with typer's CliRunner, and end to end in a subprocess where
process behaviour matters (signals, exit codes, resume after a kill)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from paths import GOLDEN, REPO
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.study._objective import read_trial_file
from deepsc_tune.study._trial_record import trial_result

runner = CliRunner()
# A small, fast pbmc68k study: 4 epochs, 6 trials.
SMALL = ["study.n_trials=6", "finetune.epoch=4"]


def cli(*args: str, cwd: Path | None = None):
    old = Path.cwd()
    if cwd is not None:
        os.chdir(cwd)
    try:
        return runner.invoke(app, list(args))
    finally:
        os.chdir(old)


def load(results: Path, name: str = "pbmc68k") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{results / name / 'study.db'}")


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> Path:
    """A finished 6-trial pbmc68k study; tests copy it before changing it."""
    results = tmp_path_factory.mktemp("results")
    result = cli("run", "pbmc68k", "--results-dir", str(results), *SMALL)
    assert result.exit_code == 0, result.output
    return results


@pytest.fixture
def results(small_study, tmp_path) -> Path:
    dest = tmp_path / "results"
    shutil.copytree(small_study, dest)
    return dest


def test_help_explains_commands():
    result = cli("--help")
    assert result.exit_code == 0
    for command in ("run", "finetune", "validate", "best", "status", "split"):
        assert command in result.output
    run_help = cli("run", "--help").output
    assert "resume" in run_help and "--storage" in run_help and "--results-dir" in run_help


INTERFACE = GOLDEN / "cli_interface.json"


def cli_interface() -> dict:
    """Every command in --help order, with its help text and each argument/option (names,
    default, help, envvar): what users and scripts rely on, independent of how rich draws it."""
    import typer

    group = typer.main.get_command(app)
    ctx = typer.Context(group, info_name="deepsc-tune")

    def params(command) -> list[dict]:
        return [
            {
                "name": p.name,
                "kind": p.param_type_name,
                "opts": [*p.opts, *p.secondary_opts],
                "required": p.required,
                "default": None if p.default is None else str(p.default),
                "help": getattr(p, "help", None),
                "hidden": getattr(p, "hidden", False),
                "envvar": p.envvar,
                "nargs": p.nargs,
            }
            for p in command.params
        ]

    commands = [group.commands[name] for name in group.list_commands(ctx)]
    return {
        "help": group.help,
        "options": params(group),
        "commands": [{"name": c.name, "help": c.help, "hidden": c.hidden, "params": params(c)} for c in commands],
    }


def test_cli_interface_is_unchanged():
    """A change to a command, option, default or help text is deliberate: regenerate the file with
    DEEPSC_TUNE_WRITE_CLI_INTERFACE=1 python -m pytest tests/cli/test_app.py -k interface, and review its diff."""
    import json

    current = cli_interface()
    if os.environ.get("DEEPSC_TUNE_WRITE_CLI_INTERFACE"):
        INTERFACE.write_text(json.dumps(current, indent=1) + "\n")
    assert current == json.loads(INTERFACE.read_text())


@pytest.mark.parametrize("command", [c["name"] for c in cli_interface()["commands"]])
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "120"})
    assert result.exit_code == 0, result.output
    assert f"Usage: deepsc-tune {command} " in result.output
    first_line = next(c for c in cli_interface()["commands"] if c["name"] == command)["help"].splitlines()[0]
    assert " ".join(first_line.split()) in " ".join(result.output.split())


def test_run_output_and_study(small_study):
    study = load(small_study)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    assert study.trials[0].params == {"lr_scheduler_type": "constant", "learning_rate": 1e-4}
    best = max((t for t in study.trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    assert 0.3 < best.value <= 1.0
    assert trial_result(best).test_accuracy is not None  # reported, from the held-out split
    assert read_trial_file(small_study / "pbmc68k" / "trials", best.number)["device"] == "cpu"


def test_rerun_with_target_met_runs_nothing(results):
    before = [(t.number, t.state, t.value) for t in load(results).trials]
    result = cli("run", "pbmc68k", "--results-dir", str(results), *SMALL)
    assert result.exit_code == 0, result.output
    assert "6/6 finished" in result.output
    assert [(t.number, t.state, t.value) for t in load(results).trials] == before


def test_best_formats(results):
    yaml_out = cli("best", "pbmc68k", "--results-dir", str(results)).output
    assert "lr_scheduler_type:" in yaml_out and "learning_rate:" in yaml_out
    hydra = cli("best", "pbmc68k", "--results-dir", str(results), "--format", "hydra").output
    line = hydra.strip().splitlines()[-1]
    assert line.startswith("python -m src.deepsc.finetune.finetune lr_scheduler_type=")
    assert "learning_rate=" in line and "epoch=4" in line
    import json

    data = json.loads(cli("best", "pbmc68k", "--results-dir", str(results), "--format", "json").output)
    study = load(results)
    assert data["trial"] == study.best_trial.number and data["value"] == pytest.approx(study.best_value)
    bad = cli("best", "pbmc68k", "--results-dir", str(results), "--format", "toml")
    assert bad.exit_code == 2 and "--format: unknown 'toml'" in bad.output


def test_status_table(results):
    out = cli("status", "pbmc68k", "--results-dir", str(results)).output
    assert "COMPLETE" in out and "enqueued=True" in out
    assert "lr_scheduler_type=constant learning_rate=0.0001" in out


def test_status_shows_test_metrics_for_the_chosen_configuration_only(results):
    from deepsc_tune.study._selection import select

    study = load(results)
    best = select(study.trials).best
    out = cli("status", "pbmc68k", "--results-dir", str(results)).output
    assert "test acc " not in out.splitlines()[0]  # no test column beside the candidates
    chosen = [line for line in out.splitlines() if line.startswith("chosen: trial")]
    assert chosen == [
        f"chosen: trial {best.number} (on validation); test accuracy {best.test_accuracy[0]:.4f}, "
        f"test macro-F1 {best.test_macro_f1[0]:.4f} (reported only, never used to choose)"
    ]
    every = cli("status", "pbmc68k", "--results-dir", str(results), "--all-test-metrics").output
    assert "test acc " in every.splitlines()[0]
    tested = [t for t in study.trials if trial_result(t).test_accuracy is not None]
    assert tested and all(f"{trial_result(t).test_accuracy:.4f}" in every for t in tested)


def test_changed_search_space_is_refused_and_study_untouched(results):
    before = len(load(results).trials)
    result = cli("run", "pbmc68k", "--results-dir", str(results), *SMALL, "finetune.dropout=0.5")
    assert result.exit_code == 2
    assert "different search space (changed: finetune.dropout)" in result.output
    assert "--study-name" in result.output
    assert len(load(results).trials) == before
    # a new name starts a separate study in the same database
    ok = cli(
        "run",
        "pbmc68k",
        "--results-dir",
        str(results),
        "--study-name",
        "pbmc68k-dropout",
        "study.n_trials=1",
        "finetune.epoch=2",
        "finetune.dropout=0.5",
    )
    assert ok.exit_code == 0, ok.output
    assert len(load(results).trials) == before
    # and the read-only commands find it by --study-name in the same database
    status = cli("status", "pbmc68k", "--results-dir", str(results), "--study-name", "pbmc68k-dropout")
    assert status.exit_code == 0, status.output
    assert "complete 1" in status.output or "pruned 1" in status.output


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("name: x\ndata: [unclosed\n", "malformed YAML"),
        (
            "name: x\ndata: {train: builtin:pbmc68k_reduced, label_key: bulk_labels}\n"
            "search: {lr_scheduler_type: {choices: [constant, linear]}}\n",
            "Unknown lr_scheduler_type: 'linear'. Must be one of: 'constant', 'cosine', 'cosine_restarts'",
        ),
        (
            "name: x\ndata: {train: nowhere/train.h5ad, label_key: cell_type}\n",
            "file not found: nowhere/train.h5ad (data.train",
        ),
        ("name: x\ndata: {train: builtin:pbmc68k_reduced, label_key: celltype}\n", "celltype"),
        (
            "name: x\ndata: {train: builtin:pbmc68k_reduced, label_key: bulk_labels}\n"
            "search: {learning_rate: {low: 1e-3, high: 1e-5, log: true}}\n",
            "search.learning_rate: low (0.001) must be below high",
        ),
    ],
)
def test_bad_input_is_one_clear_error_and_nothing_lost(results, tmp_path, content, message):
    bad = tmp_path / "x.yaml"
    bad.write_text(content)
    before = len(load(results).trials)
    result = cli("run", str(bad), "--results-dir", str(results))
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(load(results).trials) == before


def test_validate_lists_every_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\n"
        "data: {train: builtin:pbmc68k_reduced, label_key: bulk_labels, val_fraction: 2}\n"
        "finetune: {epoch: 3, colour: red}\n"
        "search:\n"
        "  learning_rate: {low: 0, high: 1e-3, log: true}\n"
        "  epoch: {low: 1, high: 4}\n"
        "  warmup_ratio: {low: 0.0, high: 0.1, when: {scheduler: cosine}}\n"
    )
    result = cli("validate", str(bad))
    assert result.exit_code == 2
    for expected in (
        "data.val_fraction",
        "finetune.colour",
        "search.learning_rate.low",
        "search.epoch: also fixed",
        "search.warmup_ratio.when: refers to 'scheduler'",
    ):
        assert expected in result.output
    ok = cli("validate", "pbmc68k")
    assert ok.exit_code == 0 and ok.output.count("ok:") == 1
    # The data files are checked too (not read): hpancreas's are not in the repository.
    missing = cli("validate", "pbmc68k", "hpancreas", cwd=tmp_path)
    assert missing.exit_code == 2 and missing.output.count("ok:") == 1
    assert "data.train" in missing.stderr and "demo_train.h5ad" in missing.stderr


def test_finetune_prints_deepsc_banner_and_epoch_lines(tmp_path):
    result = cli(
        "finetune",
        "pbmc68k",
        "--results-dir",
        str(tmp_path),
        "learning_rate=3e-4",
        "lr_scheduler_type=cosine",
        "warmup_ratio=0.1",
        "epoch=3",
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "Using COSINE ANNEALING with warmup:" in out and "  - Initial LR: 0.0003" in out
    assert "Epoch 3 [Finetune Cell Type Annotation]" in out
    assert "Evaluation Loss:" in out and "Macro F1:" in out
    assert "test (model of the best epoch): accuracy" in out
    constant = cli(
        "finetune", "pbmc68k", "--results-dir", str(tmp_path), "lr_scheduler_type=constant", "epoch=1"
    ).output
    assert "Using CONSTANT learning rate: 0.0001" in constant
    assert "No learning rate scheduling will be applied." in constant


def test_split_writes_files(tmp_path):
    result = cli("split", "pbmc68k", "--results-dir", str(tmp_path), "--out", str(tmp_path / "s"))
    assert result.exit_code == 0, result.output
    import anndata

    parts = {p: anndata.read_h5ad(tmp_path / "s" / f"{p}.h5ad") for p in ("train", "val", "test")}
    names = [set(a.obs_names) for a in parts.values()]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert sum(a.n_obs for a in parts.values()) == 700


def test_missing_study_is_a_clear_error(tmp_path):
    result = cli("best", "pbmc68k", "--results-dir", str(tmp_path))
    assert result.exit_code == 1 and "run `deepsc-tune run pbmc68k` first" in result.output


# ----------------------------------------------------------------------------- subprocess


def start_run(results: Path, *extra: str) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "deepsc_tune.cli",
        "run",
        "pbmc68k",
        "--results-dir",
        str(results),
        "--threads",
        "1",
        "-v",
        *extra,
    ]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def wait_for(proc: subprocess.Popen, needle: str, timeout: float = 120) -> list[str]:
    lines = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if needle in line:
            return lines
    proc.kill()
    raise AssertionError(f"never saw {needle!r}; output:\n{''.join(lines)}")


@pytest.mark.slow  # 30-55 s of real training and process supervision; CI runs it
def test_sigint_fails_running_trial_then_resume_completes(tmp_path):
    results = tmp_path / "results"
    args = ["study.n_trials=5", "finetune.epoch=10"]
    proc = start_run(results, *args)
    wait_for(proc, "trial   2 epoch   2 ")
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out
    assert "run the same command to resume" in out and "Traceback" not in out
    study = load(results)
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.number for t in interrupted] == [2]
    assert interrupted[0].user_attrs["fail_reason"] == "interrupted"
    done_before = {t.number: t.value for t in study.trials if t.state == TrialState.COMPLETE}
    # resume: the interrupted settings run again, and the study reaches its target
    proc = start_run(results, *args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    study = load(results)
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 2]
    assert retry and retry[0].params == interrupted[0].params
    for number, value in done_before.items():
        assert study.trials[number].value == value


@pytest.mark.slow  # 30-55 s of real training and process supervision; CI runs it
def test_sigkill_leaves_running_trial_which_resume_recovers(tmp_path):
    results = tmp_path / "results"
    args = ["study.n_trials=4", "finetune.epoch=10"]
    proc = start_run(results, *args)
    wait_for(proc, "trial   1 epoch   3 ")
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    study = load(results)
    running = [t for t in study.trials if t.state == TrialState.RUNNING]
    assert [t.number for t in running] == [1]
    proc = start_run(results, *args)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert "re-queued trials left running by a dead process: [1]" in out
    said = out.index("re-queued trials left running")
    assert "COMPLETE" not in out[:said] and "PRUNED" not in out[:said], "said before the trials that follow"
    study = load(results)
    dead = study.trials[1]
    assert dead.state == TrialState.FAIL and "died while the trial ran" in dead.user_attrs["fail_reason"]
    assert len([t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 4
    assert any(t.user_attrs.get("retry_of") == 1 for t in study.trials)
    assert study.trials[0].state == TrialState.COMPLETE


@pytest.mark.slow  # 30-55 s of real training and process supervision; CI runs it
def test_pruner_prunes_in_a_real_study(tmp_path):
    results = tmp_path / "results"
    # Median pruning from the 3rd trial: over a wide LR range some trials must fall behind.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "deepsc_tune.cli",
            "run",
            "pbmc68k",
            "--results-dir",
            str(results),
            "study.n_trials=10",
            "finetune.epoch=5",
            "study.pruner={type: median, n_startup_trials: 2, n_warmup_steps: 1}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    study = load(results)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, proc.stdout
    assert all(len(t.intermediate_values) < 5 for t in pruned)
    assert "PRUNED" in proc.stdout
