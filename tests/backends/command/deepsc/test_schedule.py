"""DeepSC's warmup in real steps (deepsc_tune/backends/command/deepsc/_schedule.py) and its chance level from the
labels of data_path_eval (deepsc_tune/backends/command/deepsc/_data.py), up to `validate`, `run`, `status` and
`best --format hydra` over the fake DeepSC (tests/fake_deepsc.py) in a checkout of its own.

The real steps are checked against a re-enactment of DeepSC's own training loop
(cell_type_annotation.py:751-764 and 440-449 at 2416d85 and abcf2be), not against the formula
under test; the warmup DeepSC will use is read from the ``Warmup steps:`` line the fake prints by
DeepSC's formula (cell_type_annotation.py:220-244) from the ratio it was given.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import anndata
import optuna
import pytest
import yaml
from deepsc_setup import deepsc_loop_steps, write_labels
from guards import missing
from paths import FAKE_DEEPSC, REPO
from typer.testing import CliRunner

from deepsc_tune.backends.command._finetuner import CommandFinetuner, CommandSettings
from deepsc_tune.backends.command.deepsc import _schedule as ds
from deepsc_tune.backends.command.deepsc._data import CellsError, deepsc_cells, deepsc_chance
from deepsc_tune.backends.command.deepsc._schedule import DEEPSC_WARMUP
from deepsc_tune.cli import app
from deepsc_tune.data._chance import CHANCE_ATTR
from deepsc_tune.errors import FinetuneError
from deepsc_tune.study._objective import read_trial_file

FAKE = FAKE_DEEPSC
MODULE = "src.deepsc.finetune.finetune"
runner = CliRunner()


# ----------------------------------------------------------------------------- arithmetic


@pytest.mark.parametrize("n_train", [1, 31, 32, 33, 300, 1000, 4097])
@pytest.mark.parametrize("batch_size, grad_acc", [(32, 1), (32, 20), (8, 3), (64, 2), (1, 7)])
def test_real_steps_are_deepscs_loop(n_train, batch_size, grad_acc):
    expected = deepsc_loop_steps(n_train, epoch=3, batch_size=batch_size, grad_acc=grad_acc)
    assert ds.real_steps(n_train, epoch=3, batch_size=batch_size, grad_acc=grad_acc) == expected


def test_planned_steps_are_deepscs_formula():
    # cell_type_annotation.py:220, whatever the data: 100,000 cells.
    assert ds.planned_steps(epoch=2, batch_size=32, grad_acc=1) == 2 * 3125
    assert ds.planned_steps(epoch=10, batch_size=32, grad_acc=20) == 10 * math.ceil(100000 / 640)


@pytest.mark.parametrize("planned", [1, 7, 1570, 6250, 31250, 1_000_003])
def test_deepsc_ratio_gives_exactly_the_warmup_steps(planned):
    for steps in sorted({1, 2, 3, 9, 20, 99, planned // 3 or 1, planned, 3 * planned}):
        r = ds.deepsc_warmup_ratio(steps, planned)
        assert math.ceil(planned * r) == steps, (steps, planned, r)  # DeepSC's float arithmetic
        assert len(repr(r)) <= 12  # a short decimal, as a user would write it


def test_plan_of_the_issue_run():
    # 1,000 cells, batch 32, grad_acc 1, 2 epochs: DeepSC plans 6,250 steps and runs 64.
    plan = ds.plan_warmup(0.138, n_train=1000, epoch=2, batch_size=32, grad_acc=1)
    assert (plan.real_steps, plan.planned_steps, plan.steps_per_epoch) == (64, 6250, 32)
    assert plan.warmup_steps == math.ceil(0.138 * 64) == 9
    assert math.ceil(6250 * plan.deepsc_ratio) == 9 and plan.restart_steps == 27
    assert plan.problem() is None
    text = plan.describe()
    assert "warmup 9 of 64 optimizer steps (0.281 epochs of 32 steps" in text and "peak at update 11" in text
    assert "restarts every 27 steps (0.844 epochs)" in text
    assert f"warmup_ratio={plan.deepsc_ratio!r}" in text and "6250" in text


def test_recorded_plan_and_ratio_read_this_version_and_studies_before():
    plan = ds.plan_warmup(0.138, n_train=1000, epoch=2, batch_size=32, grad_acc=1).record()
    new_attrs = {DEEPSC_WARMUP: plan["deepsc_ratio"]}  # the study keeps the ratio; trial.json the plan
    assert ds.recorded_ratio(new_attrs) == plan["deepsc_ratio"]
    assert ds.recorded_plan(new_attrs, {"warmup": plan}) == plan and ds.recorded_plan(new_attrs) is None
    old_attrs = {"deepsc_warmup": plan}  # studies before kept the whole plan as an attribute
    assert ds.recorded_ratio(old_attrs) == plan["deepsc_ratio"] and ds.recorded_plan(old_attrs) == plan
    assert ds.recorded_ratio({}) is None and ds.recorded_plan({}, {"warmup": "?"}) is None


def test_plan_problems():
    assert (
        "never steps the optimizer" in ds.plan_warmup(0.1, n_train=300, epoch=2, batch_size=32, grad_acc=20).problem()
    )
    # DeepSC's peak is the rate of update warmup + 2 (its own scheduler, test at the end).
    late = ds.plan_warmup(0.95, n_train=320, epoch=2, batch_size=32, grad_acc=1)
    assert (late.warmup_steps, late.real_steps) == (19, 20) and "do not finish" in late.problem()
    edge = ds.plan_warmup(ds.max_fraction(20), n_train=320, epoch=2, batch_size=32, grad_acc=1)
    assert edge.warmup_steps == 18 and edge.problem() is None


# ----------------------------------------------------------------------------- the files' labels


def test_cells_and_chance_from_the_labels_only(tmp_path, monkeypatch):
    train = write_labels(tmp_path / "train.h5ad", ["a"] * 50 + ["b"] * 30 + ["only_train"] * 7)
    val = write_labels(tmp_path / "val.h5ad", ["a"] * 6 + ["b"] * 14 + ["only_val"] * 5)
    monkeypatch.setattr(anndata, "read_h5ad", lambda *a, **k: pytest.fail("read the whole file"))
    values = {"data_path": str(train), "data_path_eval": str(val), "seperated_train_eval_dataset": True}
    cells = deepsc_cells(values)
    # DeepSC keeps the classes of both files (cell_type_annotation.py:327, 359-360).
    assert cells.classes == ("a", "b") and cells.n_train == 80 and cells.n_train_file == 87
    assert cells.eval_counts == (6, 14)
    levels = deepsc_chance(values)
    p = 14 / 20
    assert levels["val_accuracy"] == pytest.approx(p) and levels["n_cells"] == 20
    # DeepSC's macro-F1 averages over its classes (labels=arange(cell_type_count)).
    assert levels["val_macro_f1"] == pytest.approx((2 * p / (1 + p)) / 2)
    # Without the flag DeepSC holds out 20 % of data_path itself: no chance level to read.
    own = {"data_path": str(train), "seperated_train_eval_dataset": False}
    assert deepsc_cells(own).n_train == 87 - math.ceil(0.2 * 87) and deepsc_chance(own) is None


def test_unreadable_files_name_key_file_and_column(tmp_path):
    train = write_labels(tmp_path / "train.h5ad", ["a", "b"])
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    with pytest.raises(CellsError) as info:
        deepsc_cells({"data_path": str(bad)})
    assert info.value.key == "finetune.overrides.data_path" and str(bad) in str(info.value)
    with pytest.raises(CellsError, match=r"has no obs column 'cell_type'.*its columns: celltype"):
        deepsc_cells({"data_path": str(train), "obs_celltype_col": "cell_type"})


# ----------------------------------------------------------------------------- a checkout of the fake


@pytest.fixture
def fake_checkout(tmp_path) -> Path:
    """A checkout whose ``src/deepsc/finetune/finetune.py`` is the fake, with a config of the
    fake's defaults, so that deepsc-tune treats it as DeepSC (entry module, config, schedule)."""
    import fake_deepsc

    root = tmp_path / "DeepSC"
    (root / "src" / "deepsc" / "finetune").mkdir(parents=True)
    shutil.copy(FAKE, root / "src" / "deepsc" / "finetune" / "finetune.py")
    # finetune.py imports its trainer: without it the checkout is no working commit.
    (root / "src" / "deepsc" / "finetune" / "cell_type_annotation.py").write_text("# DeepSC's trainer\n")
    (root / "configs" / "finetune").mkdir(parents=True)
    config = {k: v for k, v in fake_deepsc.DEFAULTS.items() if not k.startswith("hydra.")}
    (root / "configs" / "finetune" / "finetune.yaml").write_text(yaml.safe_dump(config))
    return root


@pytest.fixture
def files(tmp_path) -> dict[str, Path]:
    """700 training cells (3 classes, 20 of a class DeepSC drops), 100 validation cells."""
    return {
        "data_path": write_labels(tmp_path / "train.h5ad", ["a"] * 400 + ["b"] * 200 + ["c"] * 80 + ["x"] * 20),
        "data_path_eval": write_labels(tmp_path / "val.h5ad", ["a"] * 60 + ["b"] * 30 + ["c"] * 10),
        "csv_path": tmp_path / "map.csv",
    }


N_TRAIN = 680  # the cells of classes a, b, c


def block(checkout: Path, files: dict[str, Path], **fixed) -> dict:
    files["csv_path"].write_text("feature_name,id\n")
    return {
        "backend": "command",
        "command": [sys.executable, "-m", MODULE],
        "cwd": str(checkout),
        "new_keys": ["sleep"],
        "overrides": {
            **{k: str(v) for k, v in files.items()},
            "seperated_train_eval_dataset": True,
            "load_pretrained_model": False,
            "num_device": 1,
            "+sleep": 0.0,
        },
        "epoch": 2,
        "batch_size": 32,
        "grad_acc": 2,
        **fixed,
    }


def printed_warmup(log: Path) -> int:
    [steps] = re.findall(r"^  - Warmup steps: (\d+)$", log.read_text(), re.MULTILINE)
    return int(steps)


def test_a_trial_warms_up_for_its_fraction_of_the_real_steps(fake_checkout, files, tmp_path):
    settings, fixed = CommandSettings.from_dict(block(fake_checkout, files))
    finetuner = CommandFinetuner(settings)
    real = deepsc_loop_steps(N_TRAIN, epoch=2, batch_size=32, grad_acc=2)  # 2 x (22 // 2) = 22
    for fraction in (0.05, 0.138, 0.5):
        params = {**fixed, "lr_scheduler_type": "cosine", "learning_rate": 1e-4, "warmup_ratio": fraction}
        run_dir = tmp_path / f"run-{fraction}"
        result = finetuner.run(params, run_dir=run_dir)
        # What DeepSC computed from the ratio it was given, as it prints it:
        assert printed_warmup(run_dir / "log.txt") == math.ceil(fraction * real)
        assert result.extra["deepsc_warmup_steps"] == math.ceil(fraction * real)
        assert result.extra["warnings"] == []
        passed = json.loads((run_dir / "config.json").read_text())["warmup_ratio"]
        assert passed == result.extra["warmup"]["deepsc_ratio"] and passed < fraction
        log = (run_dir / "log.txt").read_text()
        assert f"[deepsc-tune] warmup {math.ceil(fraction * real)} of {real} optimizer steps" in log


def test_a_warmup_that_cannot_finish_fails_before_deepsc_starts(fake_checkout, files, tmp_path):
    settings, fixed = CommandSettings.from_dict(block(fake_checkout, files))
    params = {**fixed, "lr_scheduler_type": "cosine", "learning_rate": 1e-4, "warmup_ratio": 1.0}
    with pytest.raises(FinetuneError, match=r"warmup_ratio 1.0 .*do not finish within the run's 22"):
        CommandFinetuner(settings).run(params, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "pid").exists()


def space_file(tmp_path: Path, checkout: Path, files: dict[str, Path], *, search=None, **fixed) -> Path:
    raw = {
        "name": "fake",
        "data": {"train": str(files["data_path"]), "label_key": "celltype"},
        "finetune": block(checkout, files, **fixed),
        "search": search
        or {
            "lr_scheduler_type": {"choices": ["cosine"]},
            "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
            "warmup_ratio": {"low": 0.0, "high": 1.5},
        },
        "study": {"metric": "val_macro_f1", "n_trials": 3, "sampler": {"type": "random", "seed": 0}},
    }
    path = tmp_path / "fake.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_validate_states_the_warmup_in_real_steps_and_clips_the_high_end(fake_checkout, files, tmp_path):
    result = runner.invoke(app, ["validate", str(space_file(tmp_path, fake_checkout, files))])
    assert result.exit_code == 0, result.output
    out = result.output
    assert "note: search.warmup_ratio: high end 1.5 clipped to 0.9091" in out  # 20/22: peak at update 22
    assert "note: search.warmup_ratio: low end 0 clipped to 0.04545" in out  # 1/22: one warmup step
    [line] = [line for line in out.splitlines() if "is a fraction of the real run (22 optimizer steps" in line]
    assert "680 training cells" in line and "warmup 1-20 steps" in line and "restarts every 3-60 steps" in line


@pytest.mark.parametrize(
    "fixed, key, expected",
    [
        ({"lr_scheduler_type": "cosine", "warmup_ratio": 1.0}, "finetune.warmup_ratio: 1.0", "do not finish"),
        ({"grad_acc": 40}, "finetune.grad_acc: 40 with batch_size 32", "never steps the optimizer"),
    ],
)
def test_validate_refuses_what_cannot_run_as_meant(fake_checkout, files, tmp_path, fixed, key, expected):
    search = {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}}
    result = runner.invoke(app, ["validate", str(space_file(tmp_path, fake_checkout, files, search=search, **fixed))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if key in line]
    assert expected in line


def test_validate_names_an_unreadable_training_file(fake_checkout, files, tmp_path):
    files["data_path"].write_text("")  # not an .h5ad: its cells cannot be counted
    result = runner.invoke(app, ["validate", str(space_file(tmp_path, fake_checkout, files))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = result.output.strip().splitlines()
    assert f"finetune.overrides.data_path: '{files['data_path']}' cannot be read as an .h5ad file" in line
    assert "expected the AnnData file DeepSC reads" in line


def test_validate_refuses_enqueued_and_listed_warmups_that_cannot_finish(fake_checkout, files, tmp_path):
    listed = {"lr_scheduler_type": {"choices": ["cosine"]}, "warmup_ratio": {"choices": [0.1, 0.95]}}
    result = runner.invoke(app, ["validate", str(space_file(tmp_path, fake_checkout, files, search=listed))])
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if "search.warmup_ratio.choices" in line]
    assert "fake.yaml: search.warmup_ratio.choices: 0.95 (680 training cells" in line and "<= 0.9091" in line

    ranged = {"lr_scheduler_type": {"choices": ["cosine"]}, "warmup_ratio": {"low": 0.01, "high": 0.99}}
    path = space_file(tmp_path, fake_checkout, files, search=ranged)
    raw = yaml.safe_load(path.read_text())
    raw["study"]["enqueue"] = [{"lr_scheduler_type": "cosine", "warmup_ratio": 0.5}, {"warmup_ratio": 0.99}]
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    result = runner.invoke(app, ["validate", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    [line] = [line for line in result.output.splitlines() if "study.enqueue" in line]
    assert "study.enqueue[1].warmup_ratio: cosine with warmup_ratio 0.99: 22 warmup steps do not finish" in line
    assert "study.enqueue[0]" not in result.output  # 0.5: 11 of 22 steps, the peak at update 13


def test_run_status_best_reproduce_the_warmup(fake_checkout, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = space_file(tmp_path, fake_checkout, files)
    results = tmp_path / "results"
    result = runner.invoke(app, ["run", str(path), "--results-dir", str(results)])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{results / 'fake' / 'study.db'}")
    # Chance from data_path_eval's labels: the majority class "a", 60 of 100 cells.
    levels = study.user_attrs[CHANCE_ATTR]
    assert levels["val_accuracy"] == pytest.approx(0.6) and levels["n_cells"] == 100
    real = deepsc_loop_steps(N_TRAIN, epoch=2, batch_size=32, grad_acc=2)
    for trial in study.trials:
        warmup = read_trial_file(results / "fake" / "trials", trial.number)["warmup"]  # the whole plan
        assert trial.user_attrs[DEEPSC_WARMUP] == warmup["deepsc_ratio"]  # the study keeps the ratio passed
        fraction = trial.params["warmup_ratio"]
        assert warmup["fraction"] == fraction and warmup["real_steps"] == real
        log = results / "fake" / "trials" / f"{trial.number:05d}" / "log.txt"
        assert printed_warmup(log) == math.ceil(fraction * real) == warmup["warmup_steps"]
    status = runner.invoke(app, ["status", str(path), "--results-dir", str(results)])
    assert status.exit_code == 0, status.output

    best = runner.invoke(app, ["best", str(path), "--results-dir", str(results), "--format", "hydra"])
    assert best.exit_code == 0, best.output
    command = best.stdout.strip()
    chosen = max((t for t in study.trials if t.value is not None), key=lambda t: t.value)
    ratio = chosen.user_attrs[DEEPSC_WARMUP]
    plan = read_trial_file(results / "fake" / "trials", chosen.number)["warmup"]
    fraction = chosen.params["warmup_ratio"]
    assert f"warmup_ratio={ratio!r}" in command
    assert (
        "chance (always the majority class of the validation cells): val_macro_f1" in best.stderr
        and "searched as" in best.stderr
    )
    # The printed command runs the trial again: the same warmup steps.
    rerun = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    [steps] = re.findall(r"^  - Warmup steps: (\d+)$", rerun.stdout, re.MULTILINE)
    assert int(steps) == plan["warmup_steps"]
    # Without the trial's record (a study run on another machine) the command is rebuilt from
    # the study: still DeepSC's ratio, not the searched fraction.
    (results / "fake" / "trials" / f"{chosen.number:05d}" / "trial.json").unlink()
    rebuilt = runner.invoke(app, ["best", str(path), "--results-dir", str(results), "--format", "hydra"])
    assert f"warmup_ratio={ratio!r}" in rebuilt.stdout and f"warmup_ratio={fraction!r}" not in rebuilt.stdout
    assert (
        json.loads(runner.invoke(app, ["best", str(path), "--results-dir", str(results), "--format", "json"]).stdout)[
            "deepsc"
        ]["warmup_ratio"]
        == ratio
    )


def test_status_and_best_flag_a_deepsc_trial_at_chance(fake_checkout, files, tmp_path, monkeypatch):
    # An evaluation file of 95 % one class: always predicting it scores macro-F1 0.487, and the
    # fake at learning rate 1e-2 (far from its 1e-4 optimum) scores 0.3725 after 2 epochs.
    write_labels(files["data_path_eval"], ["a"] * 95 + ["b"] * 5)
    monkeypatch.chdir(tmp_path)
    search = {"lr_scheduler_type": {"choices": ["constant"]}, "learning_rate": {"choices": [1e-2]}}
    path = space_file(tmp_path, fake_checkout, files, search=search)
    results = tmp_path / "results"
    assert runner.invoke(app, ["run", str(path), "--results-dir", str(results)]).exit_code == 0
    study = optuna.load_study(study_name="fake", storage=f"sqlite:///{results / 'fake' / 'study.db'}")
    p = 95 / 100
    assert study.user_attrs[CHANCE_ATTR]["val_macro_f1"] == pytest.approx((2 * p / (1 + p)) / 2, abs=1e-6)
    status = runner.invoke(app, ["status", str(path), "--results-dir", str(results)])
    assert status.exit_code == 0, status.output
    assert "[chance level]" in status.output and "completed at chance level (val_macro_f1" in status.output
    best = runner.invoke(app, ["best", str(path), "--results-dir", str(results)])
    assert "chance (always the majority class of the validation cells): val_macro_f1 0.4872" in best.output
    assert "AT CHANCE: it learned nothing" in best.output
    report = runner.invoke(app, ["report", str(path), "--results-dir", str(results)])
    assert report.exit_code == 0, report.output
    [page] = (results / "fake").glob("*.html")
    assert "completed at chance level (val_macro_f1 within 0.02 of 0.487" in page.read_text()


# ----------------------------------------------------------------------------- DeepSC's own scheduler

_STEPPING_PROBE = """
import json, sys, types
from types import SimpleNamespace
root, ratio, epoch, batch_size, grad_acc, steps = sys.argv[1], float(sys.argv[2]), *map(int, sys.argv[3:])
sys.path[:0] = [root, root + "/src"]
try:
    import wandb  # noqa: F401  (imported by DeepSC's utils, unused by its scheduler)
except ImportError:
    sys.modules["wandb"] = types.ModuleType("wandb")
import torch
from deepsc.finetune.cell_type_annotation import CellTypeAnnotation

args = SimpleNamespace(lr_scheduler_type="cosine", epoch=epoch, batch_size=batch_size, grad_acc=grad_acc,
                       warmup_ratio=ratio, learning_rate=1e-4)
optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
scheduler = CellTypeAnnotation.create_scheduler(
    SimpleNamespace(world_size=1, is_master=True, args=args), optimizer, args)
lrs = []
for _ in range(steps):  # the run's real optimizer steps: the rate each update used
    lrs.append(optimizer.param_groups[0]["lr"])
    optimizer.step()
    scheduler.step()
print("LRS " + json.dumps(lrs))
"""


@pytest.mark.slow  # one import of DeepSC's trainer per commit, ~10 s each
@pytest.mark.parametrize("commit", ["DeepSC-2416d85", "DeepSC-abcf2be"])
def test_deepscs_own_scheduler_reaches_the_peak_within_the_real_run(commit, tmp_path):
    """DeepSC's real create_scheduler, given the ratio deepsc-tune passes, warms up for the
    searched fraction of the real run, reaches the peak, and restarts 3 x warmup steps later."""
    pytest.importorskip("torch")
    root = REPO.parent / "shared" / "deepsc" / commit
    if not (root / "src" / "deepsc" / "finetune" / "cell_type_annotation.py").is_file():
        missing(f"DeepSC checkout not found: {root} (the shared folder beside the repository)")
    n_train, epoch, batch_size, grad_acc = 1000, 2, 32, 1
    real = deepsc_loop_steps(n_train, epoch=epoch, batch_size=batch_size, grad_acc=grad_acc)
    plan = ds.plan_warmup(0.138, n_train=n_train, epoch=epoch, batch_size=batch_size, grad_acc=grad_acc)
    assert (real, plan.warmup_steps) == (64, 9)
    probe = tmp_path / "probe.py"
    probe.write_text(_STEPPING_PROBE)
    args = [str(root), repr(plan.deepsc_ratio), str(epoch), str(batch_size), str(grad_acc), str(real)]
    done = subprocess.run([sys.executable, str(probe), *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"  - Warmup steps: {plan.warmup_steps}\n" in done.stdout
    assert f"  - Total steps: {plan.planned_steps}\n" in done.stdout
    [lrs] = [json.loads(line[4:]) for line in done.stdout.splitlines() if line.startswith("LRS ")]
    w = plan.warmup_steps
    assert lrs[0] == pytest.approx(1e-6)  # LinearLR's start factor 0.01
    assert all(a < b for a, b in zip(lrs[: w + 1], lrs[1 : w + 2]))  # rising through the warmup
    assert max(lrs) == lrs[w + 1] == pytest.approx(1e-4)  # the peak: update w + 2 (of 64)
    restart = w + 1 + plan.restart_steps  # T_0 = 3 x warmup after the peak, decayed by 0.9
    assert lrs[restart] == pytest.approx(0.9e-4) and lrs[restart - 1] < 0.1e-4
    assert plan.problem() is None and w + 2 <= real
    # DeepSC's own ratio, 0.138 of its 6,250 planned steps, is still warming up at the end.
    unchanged = subprocess.run(
        [sys.executable, str(probe), *args[:1], "0.138", *args[2:]], capture_output=True, text=True, timeout=300
    )
    [raw] = [json.loads(line[4:]) for line in unchanged.stdout.splitlines() if line.startswith("LRS ")]
    assert max(raw) < 0.1e-4  # under 10 % of the peak (8.2 %: 63 of its 863 warmup steps)
