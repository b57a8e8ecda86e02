"""Parallel trials never share DeepSC's output folder (deepsc_tune/backends/command/deepsc/_output_folders.py).

DeepSC 2416d85 names its folder after the second it reaches setup_output_directory; here
tests/fake_deepsc.py does the same, copied into a fake checkout (DeepSC's real config and a
cell_type_annotation.py whose base_dir line points into the test's folder), so deepsc-tune
recognises it as 2416d85 and spaces its starts. tests/backends/command/deepsc/test_real_deepsc.py runs two workers on
DeepSC's real fine-tuner at both commits.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from paths import FAKE_DEEPSC, REPO

from deepsc_tune.backends.command._finetuner import CommandFinetuner, CommandSettings
from deepsc_tune.backends.command.deepsc._output_folders import (
    CLAIM_NAME,
    LOCK_NAME,
    StartSpacing,
    claim_output_dir,
    start_lock_path,
)
from deepsc_tune.errors import FinetuneError

FAKE = FAKE_DEEPSC
MODULE = ["-m", "src.deepsc.finetune.finetune"]


def fake_checkout(folder: Path, real: Path, base: Path) -> Path:
    """DeepSC's config (real, 2416d85) + the fake as its entry module + a trainer naming ``base``."""
    shutil.copytree(real / "configs", folder / "configs")
    code = folder / "src" / "deepsc" / "finetune"
    code.mkdir(parents=True)
    shutil.copy(FAKE, code / "finetune.py")
    (code / "cell_type_annotation.py").write_text(f'        base_dir = "{base}"\n')
    return folder


def write_tiny_h5ad(path: Path) -> None:
    import anndata
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(0)
    obs = pd.DataFrame({"celltype": ["a", "b"] * 20}, index=[f"c{i}" for i in range(40)])
    var = pd.DataFrame({"gene_name": [f"g{i}" for i in range(10)]}, index=[f"g{i}" for i in range(10)])
    anndata.AnnData(rng.random((40, 10)).astype("float32"), obs=obs, var=var).write_h5ad(path)


def test_claims(tmp_path):
    folder = tmp_path / "outs" / "20260101_120000"
    folder.mkdir(parents=True)
    first, second = tmp_path / "trials" / "00000", tmp_path / "trials" / "00001"
    assert claim_output_dir(str(folder), first) is None
    assert json.loads((folder / CLAIM_NAME).read_text())["run_dir"] == str(first)
    assert claim_output_dir(str(folder), first) is None  # the same run, again
    reason = claim_output_dir(str(folder), second)
    assert reason.startswith(f"DeepSC reported writing to {folder}, which {first} already uses")
    assert "\n" not in reason
    # Hydra's run directory (abcf2be) is the trial's own folder: nothing to claim.
    assert claim_output_dir(str(second / "checkpoints"), second) is None and not (second / CLAIM_NAME).exists()
    assert claim_output_dir(".", second) is None


def test_spacing_waits_for_the_holder_to_name_its_folder(tmp_path):
    path = tmp_path / "base" / LOCK_NAME
    notes: list[str] = []
    first = StartSpacing(path)
    first.acquire("trial folder A", note=notes.append)
    assert first.held and path.read_text() == "trial folder A"
    now = time.time()
    first.release_when(named_at=now, exited=False)
    assert first.held or int(time.time()) > int(now)  # same second: still held
    second = StartSpacing(path)
    taken = threading.Event()
    thread = threading.Thread(target=lambda: (second.acquire("trial folder B", note=notes.append), taken.set()))
    thread.start()
    assert not taken.wait(0.5)
    assert any(n.startswith("waiting for trial folder A to name its DeepSC output folder") for n in notes)
    time.sleep(max(0.0, int(now) + 1.05 - time.time()))
    first.release_when(named_at=now, exited=False)  # a later second: released
    assert not first.held and taken.wait(5)
    second.release_when(named_at=None, exited=True)  # the run ended without naming one
    assert not second.held
    thread.join(5)
    third = StartSpacing(path, max_hold=0.0)
    third.acquire("C", note=notes.append)
    time.sleep(0.01)
    third.release_when(named_at=None, exited=False)
    assert not third.held


def test_start_lock_only_for_timestamped_deepsc(tmp_path, checkout, checkout_abcf2be):
    python = sys.executable
    assert start_lock_path(checkout, [python, *MODULE]) == Path("/home/angli/DeepSC/results/cell_type_annotation") / (
        LOCK_NAME
    )
    assert start_lock_path(checkout_abcf2be, [python, "-m", "src.deepsc.finetune.run_cta"]) is None
    assert start_lock_path(checkout, [python, str(FAKE)]) is None
    assert start_lock_path(checkout_abcf2be, [python, *MODULE]) is None  # validate refuses that


def test_a_folder_another_trial_uses_fails_the_later_trial(tmp_path):
    folder = tmp_path / "outs" / "20260101_120000"
    folder.mkdir(parents=True)
    assert claim_output_dir(str(folder), tmp_path / "trials" / "00000") is None
    # A program that names the same folder, then would run for a minute.
    script = f"import time; print('Output directory created: {folder}', flush=True); time.sleep(60)"
    settings, _ = CommandSettings.from_dict(
        {"backend": "command", "command": [sys.executable, "-c", script], "run_dir_override": None}
    )
    started = time.monotonic()
    with pytest.raises(FinetuneError) as info:
        CommandFinetuner(settings).run({}, run_dir=tmp_path / "trials" / "00001")
    assert time.monotonic() - started < 30  # stopped, not waited for
    first = str(info.value).splitlines()[0]
    assert first.startswith(f"fine-tuning command failed, DeepSC reported writing to {folder}, which ")
    assert f"{tmp_path / 'trials' / '00000'} already uses" in first
    log = (tmp_path / "trials" / "00001" / "log.txt").read_text()
    assert "stopping the process group" in log


def test_parallel_runs_of_a_timestamped_deepsc_get_their_own_folders(tmp_path, checkout):
    base = tmp_path / "outs"
    deepsc = fake_checkout(tmp_path / "DeepSC", checkout, base)
    settings, fixed = CommandSettings.from_dict(
        {"backend": "command", "command": [sys.executable, *MODULE], "cwd": str(deepsc), "epoch": 1}
    )
    finetuner = CommandFinetuner(settings)
    assert finetuner.start_lock == base / LOCK_NAME
    results: dict[int, object] = {}

    def run(k: int) -> None:
        results[k] = finetuner.run({**fixed, "learning_rate": 1e-4}, run_dir=tmp_path / "trials" / f"{k:05d}")

    threads = [threading.Thread(target=run, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    folders = [results[k].extra["program_output_dir"] for k in range(3)]
    assert len(set(folders)) == 3, folders  # three starts within a second or two, three folders
    for k, folder in enumerate(folders):
        claim = json.loads((Path(folder) / CLAIM_NAME).read_text())
        assert claim["run_dir"] == str(tmp_path / "trials" / f"{k:05d}")
    logs = [(tmp_path / "trials" / f"{k:05d}" / "log.txt").read_text() for k in range(3)]
    assert sum("to name its DeepSC output folder" in log for log in logs) >= 1  # someone waited


@pytest.mark.slow  # two worker processes and five fake DeepSC runs: ~20 s
def test_two_workers_on_one_machine_never_share_a_folder(tmp_path, checkout):
    base = tmp_path / "outs"
    deepsc = fake_checkout(tmp_path / "DeepSC", checkout, base)
    write_tiny_h5ad(tmp_path / "train.h5ad")  # the fake never reads them; the baseline does
    write_tiny_h5ad(tmp_path / "val.h5ad")
    (tmp_path / "map.csv").write_text("feature_name,id\n")
    space = {
        "name": "spaced",
        "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
        "finetune": {
            "backend": "command",
            "command": [sys.executable, *MODULE],
            "cwd": str(deepsc),
            "new_keys": ["sleep"],
            "overrides": {
                "data_path": str(tmp_path / "train.h5ad"),
                "data_path_eval": str(tmp_path / "val.h5ad"),
                "seperated_train_eval_dataset": True,
                "csv_path": str(tmp_path / "map.csv"),
                "load_pretrained_model": False,
                "num_device": 1,
                "sleep": 0.3,
            },
            "epoch": 2,
            "batch_size": 8,
            "grad_acc": 1,
        },
        "search": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}},
        "study": {"n_trials": 5, "metric": "val_macro_f1", "pruner": {"type": "none"}},
    }
    path = tmp_path / "spaced.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    run = subprocess.run(
        [sys.executable, "-m", "deepsc_tune.cli", "run", str(path), "--results-dir", "results", "--workers", "2"],
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "DeepSC checkpoints kept:" in run.stdout  # said once, by the parent, after both workers
    study = optuna.load_study(study_name="spaced", storage=f"sqlite:///{tmp_path / 'results/spaced/study.db'}")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
    folders = []
    for t in study.trials:
        record = json.loads((tmp_path / "results/spaced/trials" / f"{t.number:05d}" / "trial.json").read_text())
        folders.append(record["program_output_dir"])
    assert len(set(folders)) == 5 and all(Path(f).parent == base for f in folders)
