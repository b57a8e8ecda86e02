"""The first minutes with the command line: commands that load no data import neither torch nor
scanpy; help without type tags after flags; clear errors for no studies and override typos."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from paths import REPO
from typer.testing import CliRunner

from deepsc_tune.cli import app

HEAVY = ("torch", "scanpy", "anndata", "sklearn", "plotly")
PROBE = f"""
import json, sys
from deepsc_tune.cli import app
try:
    app(sys.argv[1:], prog_name="deepsc-tune")
except SystemExit as e:
    code = e.code
print("MODULES " + json.dumps([m for m in {HEAVY!r} if m in sys.modules]), file=sys.stderr)
"""
runner = CliRunner()


def heavy_imports(*args: str, cwd: Path) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [sys.executable, "-c", PROBE, *args], check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES ")]
    assert line, proc.stderr
    return json.loads(line[-1].removeprefix("MODULES "))


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> Path:
    results = tmp_path_factory.mktemp("results")
    out = runner.invoke(app, ["run", "pbmc68k", "--results-dir", str(results), "study.n_trials=2", "finetune.epoch=1"])
    assert out.exit_code == 0, out.output
    return results


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["run", "--help"],
        ["list"],
        ["validate", "pbmc68k"],
        ["validate", "pbmc68k", "--set", "data.train=/nonexistent/x.h5ad"],
        ["status", "pbmc68k"],
        ["best", "pbmc68k"],
        ["report"],
        ["run", "pbmc68k", "data.train=/nonexistent/x.h5ad"],  # the first missing-file error
    ],
)
def test_commands_that_load_no_data_import_no_torch_or_scanpy(results, tmp_path, args):
    if args[0] in ("status", "best", "run"):
        args = [*args, "--results-dir", str(results)]
    if args == ["report"]:
        args = ["report", "--results-dir", str(tmp_path / "empty")]
    assert heavy_imports(*args, cwd=REPO) == []


def test_predict_and_run_still_import_torch(results):
    # The probe can see heavy imports: a command that trains must show torch.
    assert "torch" in heavy_imports("finetune", "pbmc68k", "finetune.epoch=1", "--results-dir", str(results), cwd=REPO)


def test_help_has_no_type_tags_after_flags_and_plain_usage():
    out = runner.invoke(app, ["run", "--help"], env={"COLUMNS": "120"}).output
    assert "<bool>" not in out and "{name}" not in out
    assert "Usage: deepsc-tune run [OPTIONS] NAME [OVERRIDES]..." in " ".join(out.split())
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "120"}).output
    assert "<bool>" not in top and "--version" in top


def test_report_without_studies_says_how_to_start_and_fails(tmp_path):
    result = runner.invoke(app, ["report", "--results-dir", str(tmp_path / "results")])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "deepsc-tune run pbmc68k" in errors[0]
    assert not (tmp_path / "results" / "index.html").exists()


def test_override_typo_is_blamed_on_the_command_line_with_a_suggestion(tmp_path):
    result = runner.invoke(app, ["run", "pbmc68k", "lerning_rate=1e-3", "--results-dir", str(tmp_path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "command-line override(s) for" in result.output
    assert (
        "finetune.lerning_rate: unknown key from the command line (lerning_rate=1e-3); did you mean 'learning_rate'"
    ) in result.output
    assert not (tmp_path / "pbmc68k").exists()  # nothing created
    typo = runner.invoke(app, ["validate", "pbmc68k", "--set", "study.n_trails=3"])
    assert typo.exit_code == 2 and "did you mean 'n_trials'" in typo.output
