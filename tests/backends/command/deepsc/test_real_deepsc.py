"""deepsc-tune against DeepSC's real fine-tuner (commits 2416d85 and abcf2be), end to end.

The checkout in ``../shared/deepsc/DeepSC-<commit>`` is copied to a temporary folder and ONE
thing is changed there: ``Fabric(accelerator="cuda", ...)`` in the entry module
(``finetune.py`` at 2416d85, ``run_cta.py`` at abcf2be) becomes ``"cpu"``, because these
machines have no GPU (``tests/deepsc_setup.py``). Everything else is DeepSC's own code: its
Hydra config, its data loading (8 DataLoader workers per loader), its schedules, its printed
metrics and errors.
The model is a tiny random-init one (``load_pretrained_model=false``) on 300 + 100 cells of real
Baron pancreas data, 1-3 epochs a trial. The search (two workers), its checks and the re-run of
the winning command run at both commits; stopping (pruning, Ctrl-C) and DeepSC's own errors do
not depend on the commit and run at 2416d85 only, to keep the added time to a few minutes.

DeepSC runs in its own environment, as its users run it: ``scripts/deepsc-env.sh`` makes one and
``.ci/run`` exports its Python as ``DEEPSC_TUNE_TEST_DEEPSC_PYTHON``. Without it these tests are
skipped with that reason; in CI (``CI=true``) they fail instead.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from deepsc_setup import (
    BARON,
    CHECKOUTS,
    PYTHON_ENV,
    SHARED,
    copy_for_cpu,
    deepsc_loop_steps,
    tiny_space,
    write_data,
)
from guards import missing
from optuna.trial import TrialState
from paths import REPO

from deepsc_tune.backends.command.deepsc._output_folders import CLAIM_NAME

pytestmark = [pytest.mark.deepsc, pytest.mark.slow]

EVAL_LINE = re.compile(
    r"Evaluation Loss: (?P<loss>[\d.]+), Error Rate: [\d.]+, Accuracy: (?P<acc>[\d.]+), "
    r"Precision: [\d.]+, Recall: [\d.]+, Macro F1: (?P<f1>[\d.]+)"
)
#: Tests marked with this run at both commits; the others at 2416d85 (the same module-scoped
#: copy and split: pytest caches an indirect parameter by its value).
BOTH_COMMITS = pytest.mark.parametrize("commit", sorted(CHECKOUTS), indirect=True)
AT_2416D85 = pytest.mark.parametrize("commit", ["2416d85"], indirect=True)
#: Trials of the search, run by two workers: at abcf2be one round of two parallel trials, to keep
#: the added time to a few minutes (2416d85's third trial starts when a worker is free).
SEARCH_TRIALS = {"2416d85": 3, "abcf2be": 2}
COSINE_TRIAL = {"lr_scheduler_type": "cosine", "learning_rate": 0.001, "warmup_ratio": 0.1}
#: DeepSC 2416d85's hard-coded output folder (cell_type_annotation.py:70).
BASE_2416D85 = "/home/angli/DeepSC/results/cell_type_annotation/"
# What DeepSC prints for a finetune_mode it does not know (cell_type_annotation.py).
FINETUNE_MODE_ERROR = "ValueError: Unknown finetune_mode: everything. Must be one of: 'full', 'head_only'"


def _need(reason: str) -> None:
    missing(f"DeepSC tests: {reason}")


@pytest.fixture(scope="module")
def deepsc_python() -> str:
    python = os.environ.get(PYTHON_ENV, "").strip()
    if not python:
        _need(
            f"{PYTHON_ENV} is not set; `scripts/deepsc-env.sh VENV` makes DeepSC's environment and "
            ".ci/run exports VENV/bin/python"
        )
    if not all(c.is_dir() for c in CHECKOUTS.values()) or not BARON.is_file():
        _need(f"DeepSC's checkout or the Baron data are missing under {SHARED}")
    check = subprocess.run(
        [python, "-c", "import lightning, hydra, scanpy, seaborn, wandb"], capture_output=True, text=True
    )
    if check.returncode != 0:
        _need(f"{python} cannot import DeepSC's packages: {check.stderr.strip().splitlines()[-1:]}")
    return python


@pytest.fixture(scope="module")
def commit(request) -> str:
    """The DeepSC commit under test (:data:`BOTH_COMMITS`, :data:`AT_2416D85`)."""
    return request.param


@pytest.fixture(scope="module")
def deepsc(tmp_path_factory, deepsc_python, commit) -> Path:
    """A copy of DeepSC at ``commit`` with the accelerator changed to the CPU (the only change)."""
    return copy_for_cpu(tmp_path_factory.mktemp(f"deepsc-{commit}") / "DeepSC", commit)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    return write_data(tmp_path_factory.mktemp("deepsc-data"))


def write_space(folder: Path, deepsc: Path, python: str, data: dict[str, Path], **kw) -> Path:
    """``tiny_space`` written to ``folder``; ``commit=`` as the copy ``deepsc`` is."""
    space = tiny_space(deepsc, python, data, **kw)
    path = folder / f"{space['name']}.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, deepsc, deepsc_python, data, commit) -> tuple[Path, Path]:
    """A user's folder after ``validate`` and ``split``: (folder, search-space file)."""
    work = tmp_path_factory.mktemp(f"work-{commit}")
    # One cosine trial for certain, whatever the sampler draws: its warmup is checked in DeepSC.
    study = {"n_trials": SEARCH_TRIALS[commit], "enqueue": [COSINE_TRIAL]}
    space = write_space(work, deepsc, deepsc_python, data, commit=commit, study=study)
    # Before split, validate says what is missing and how to make it, in one line per problem.
    early = deepsc_tune("validate", str(space), cwd=work)
    assert early.returncode == 2 and "Traceback" not in early.stdout + early.stderr
    assert "split/train.h5ad" in early.stderr and "deepsc-tune split writes it" in early.stderr
    written = deepsc_tune("split", str(space), "--out", "split", cwd=work)
    assert written.returncode == 0, written.stdout + written.stderr
    assert re.search(r"data_path_eval: \S*split/val.h5ad", written.stdout), written.stdout
    ok = deepsc_tune("validate", str(space), cwd=work)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    if commit == "2416d85":  # where DeepSC writes
        assert f"{BASE_2416D85}<YYYYmmdd_HHMMSS>/" in ok.stdout
    else:
        assert "DeepSC abcf2be writes each trial's checkpoints, logs and plots into Hydra's run directory" in ok.stdout
    return work, space


def deepsc_tune(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "deepsc_tune.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


def load(results: Path, name: str = "deepsc-tune-tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{results / name / 'study.db'}")


class ProcessWatch:
    """Samples /proc for processes whose environment names a run folder under ``root`` (a trial's
    DeepSC, its DataLoader workers and anything else they start inherit DEEPSC_TUNE_RUN_DIR)."""

    def __init__(self, root: Path) -> None:
        self.marker = f"DEEPSC_TUNE_RUN_DIR={root}".encode()
        self.most = 0
        self.seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def alive(self) -> set[int]:
        found = set()
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    env = f.read()
                with open(f"/proc/{name}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if self.marker in env and state not in (b"Z", b"X"):
                found.add(int(name))
        return found

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = self.alive()
            self.seen |= now
            self.most = max(self.most, len(now))
            time.sleep(0.1)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def trial_record(results: Path, number: int, name: str = "deepsc-tune-tiny") -> tuple[Path, dict]:
    """A trial's folder and its ``trial.json`` (every epoch's metrics, the backend's details)."""
    folder = results / name / "trials" / f"{number:05d}"
    return folder, json.loads((folder / "trial.json").read_text())


def log_epochs(log: Path) -> list[tuple[float, float, float]]:
    """(loss, accuracy, macro-F1) of every evaluation line DeepSC printed, in order."""
    return [(float(m["loss"]), float(m["acc"]), float(m["f1"])) for m in EVAL_LINE.finditer(log.read_text())]


@pytest.fixture(scope="module")
def search(prepared, deepsc):
    """A finished search on DeepSC (:data:`SEARCH_TRIALS`) with two workers, run as a user runs it."""
    work, space = prepared
    before = sorted(p.name for p in deepsc.iterdir())
    result = deepsc_tune("run", str(space), "--results-dir", "results", "--workers", "2", cwd=work)
    return work, space, result, before


@BOTH_COMMITS
def test_every_epoch_reaches_the_study(search, deepsc, commit):
    work, _, result, before = search
    assert result.returncode == 0, result.stdout + result.stderr
    study = load(work / "results")
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == SEARCH_TRIALS[commit]
    cosine: list[int] = []
    for t in finished:
        run_dir, record = trial_record(work / "results", t.number)
        log = run_dir / "log.txt"
        printed = log_epochs(log)
        assert printed, f"trial {t.number}: no evaluation line in {log}"
        # Exactly DeepSC's printed numbers, epoch by epoch, in the study and in the trial record.
        assert t.intermediate_values == {i + 1: f1 for i, (_, _, f1) in enumerate(printed)}
        assert [(h["val_loss"], h["val_accuracy"], h["val_macro_f1"]) for h in record["history"]] == printed
        if t.state == TrialState.COMPLETE:
            assert len(printed) == 2 and t.value == max(f1 for _, _, f1 in printed)
        # What DeepSC writes into its working directory stays with the trial; its checkpoint
        # folder (2416d85: hard-coded; abcf2be: Hydra's run directory) is named in the trial's
        # log and record.
        if commit == "2416d85":
            assert list(run_dir.glob("finetune_*.log")), f"DeepSC's log file is not in {run_dir}"
            assert record["program_output_dir"].startswith(BASE_2416D85)
        else:
            assert list(run_dir.glob("logs/finetune_*.log")), f"DeepSC's log file is not in {run_dir}/logs"
            assert Path(record["program_output_dir"]) == run_dir.resolve()
            saved = json.loads((run_dir / "checkpoints.json").read_text())["folder"]
            assert Path(saved) == run_dir.resolve() / "checkpoints"  # kept or removed there, in the trial
        assert "DeepSC writes this run's checkpoints" in log.read_text()
        if t.params.get("lr_scheduler_type") == "cosine":
            cosine.append(t.number)
            check_warmup(t, log.read_text(), record)
    assert cosine, "no cosine trial ran: the warmup was not checked against DeepSC"
    assert sorted(p.name for p in deepsc.iterdir()) == before, "DeepSC wrote into its checkout"


@BOTH_COMMITS
def test_parallel_trials_never_share_a_folder(search, commit):
    work, _, result, _ = search
    assert result.returncode == 0, result.stdout + result.stderr
    study = load(work / "results")
    assert [t.state for t in study.trials].count(TrialState.FAIL) == 0
    folders = {}
    for t in study.trials:
        run_dir, record = trial_record(work / "results", t.number)
        folders[t.number] = Path(record["program_output_dir"])
        if commit == "2416d85":  # the folder is claimed by this trial, and no other
            claim = json.loads((folders[t.number] / CLAIM_NAME).read_text())
            assert claim["run_dir"] == str(run_dir.resolve())
    assert len(set(folders.values())) == len(folders), folders
    if commit == "2416d85":
        # Two workers started together: one of them waited for the other's DeepSC to name its folder.
        logs = [(trial_record(work / "results", n)[0] / "log.txt").read_text() for n in folders]
        assert any("to name its DeepSC output folder" in log for log in logs)


@BOTH_COMMITS
def test_only_the_best_trials_checkpoints_stay(search):
    """keep_checkpoints: best (the default): of DeepSC's two full checkpoints per epoch, only the
    chosen trial's remain after the search; the files are those DeepSC printed it saved."""
    from deepsc_tune.backends.command.deepsc._checkpoints import recorded

    work, _, result, _ = search
    assert result.returncode == 0, result.stdout + result.stderr
    study = load(work / "results")
    best = study.best_trial.number
    for t in study.trials:
        run_dir, _ = trial_record(work / "results", t.number)
        files = recorded(run_dir)  # what DeepSC said it saved, and DeepSC's names in its folder
        assert json.loads((run_dir / "checkpoints.json").read_text())["folder"], t.number
        if t.number == best:
            assert files and all(p.exists() for p in files), files
        else:  # a pruned trial may have been stopped before its first save
            assert not any(p.exists() for p in files), (t.number, files)
    assert "DeepSC checkpoints kept:" in result.stdout


def check_warmup(t, log: str, record: dict) -> None:
    """DeepSC's own ``Warmup steps:`` line is the searched fraction of the optimizer steps its
    loop really takes over the cells it says it trains on (``train_loader:  N``)."""
    [n_train] = [int(n) for n in re.findall(r"^train_loader:\s+(\d+)$", log, re.MULTILINE)]
    [printed] = [int(n) for n in re.findall(r"^\s*- Warmup steps: (\d+)$", log, re.MULTILINE)]
    real = deepsc_loop_steps(n_train, epoch=2, batch_size=32, grad_acc=1)
    assert printed == math.ceil(t.params["warmup_ratio"] * real) == record["deepsc_warmup_steps"]
    assert record["warmup"]["n_train"] == n_train and record["warmup"]["real_steps"] == real
    assert t.user_attrs["deepsc_warmup_ratio"] == record["warmup"]["deepsc_ratio"]


@BOTH_COMMITS
def test_best_command_runs_again_in_deepsc(search, deepsc, commit):
    work, space, result, _ = search
    assert result.returncode == 0, result.stdout + result.stderr
    best = deepsc_tune("best", str(space), "--results-dir", "results", "--format", "hydra", cwd=work)
    assert best.returncode == 0, best.stderr
    command = best.stdout.strip()
    assert "\n" not in command and not command.startswith("#")
    assert best.stderr.startswith("# deepsc-tune best:")
    study = load(work / "results")
    trial = study.best_trial
    for key in {**trial.params, "seed": 0, "epoch": 2, "model.num_layers": 2}:
        assert re.search(rf"(?<![\w.]){re.escape(key)}=", command), f"{key} missing from {command}"
    if commit == "2416d85":
        assert "hydra.run.dir" not in command
    else:  # not its config's folder under another user's home: Hydra's default, in the checkout
        assert "'hydra.run.dir=outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}'" in command
    rerun = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=600,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-2000:]
    # Two epochs again. (Not the same numbers: DeepSC 2416d85 builds the model before it seeds,
    # so a random-init model differs between runs with one seed; docs/deepsc.md says so.)
    assert len(EVAL_LINE.findall(rerun.stdout + rerun.stderr)) == 2
    assert "Using CONSTANT" in rerun.stdout or "Using COSINE" in rerun.stdout
    if commit == "abcf2be":
        assert list(deepsc.glob("outputs/*/*/checkpoints/epoch_2.ckpt")), "the re-run wrote no checkpoint"


@AT_2416D85
def test_pruned_trial_stops_deepsc_and_its_workers(tmp_path, prepared, deepsc, deepsc_python, data):
    # Every trial is hopeless for a threshold of 1.01, so the first epoch prunes it.
    space = write_space(
        tmp_path,
        deepsc,
        deepsc_python,
        data,
        split_dir=prepared[0] / "split",
        fixed={"epoch": 3},
        study={"n_trials": 1, "pruner": {"type": "threshold", "lower": 1.01}},
    )
    with ProcessWatch(tmp_path / "results") as watch:
        result = deepsc_tune("run", str(space), "--results-dir", "results", cwd=tmp_path)
        left = watch.alive()
    assert result.returncode == 0, result.stdout + result.stderr
    trial = load(tmp_path / "results").trials[0]
    assert trial.state == TrialState.PRUNED
    assert sorted(trial.intermediate_values) == [1]
    # DeepSC and its 8 DataLoader workers ran under this trial, and nothing of it is left.
    assert watch.most >= 9, f"expected DeepSC + 8 DataLoader workers, saw at most {watch.most}"
    assert left == set(), f"processes of the pruned trial still running: {left}"
    run_dir, _ = trial_record(tmp_path / "results", trial.number)
    assert "stopped after epoch 1: stopping the process group" in (run_dir / "log.txt").read_text()


@AT_2416D85
def test_ctrl_c_while_workers_run_leaves_nothing(tmp_path, prepared, deepsc, deepsc_python, data):
    space = write_space(
        tmp_path,
        deepsc,
        deepsc_python,
        data,
        split_dir=prepared[0] / "split",
        study={"n_trials": 1},
        fixed={"epoch": 3},
    )
    with ProcessWatch(tmp_path / "results") as watch:
        proc = subprocess.Popen(
            [sys.executable, "-m", "deepsc_tune.cli", "run", str(space), "--results-dir", "results"],
            cwd=tmp_path,
            env=_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 300
        while len(watch.alive()) < 9 and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        running = len(watch.alive())
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
        left = watch.alive()
    assert running >= 9, f"DeepSC's workers never started ({running} processes): {output[-2000:]}"
    assert proc.returncode == 130, output
    assert left == set(), f"still running after Ctrl-C: {left}"
    trial = load(tmp_path / "results").trials[0]
    assert trial.state == TrialState.FAIL and trial.user_attrs["fail_reason"] == "interrupted"


@AT_2416D85
def test_setting_deepsc_rejects_fails_with_its_own_error(tmp_path, prepared, deepsc, deepsc_python, data):
    space = write_space(
        tmp_path,
        deepsc,
        deepsc_python,
        data,
        split_dir=prepared[0] / "split",
        study={"n_trials": 1},
        fixed={"finetune_mode": "everything"},
    )
    result = deepsc_tune("run", str(space), "--results-dir", "results", cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" not in result.stdout + result.stderr
    trial = load(tmp_path / "results").trials[0]
    assert trial.state == TrialState.FAIL
    reason = trial.user_attrs["fail_reason"]
    assert reason.splitlines()[0].endswith(FINETUNE_MODE_ERROR), reason
