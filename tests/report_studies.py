"""Studies the report tests share: a real small search (run once per session) and synthetic ones.

The fixtures are registered in ``conftest.py``; the helpers (``add``, ``const``, ``cos``) are
imported by the tests (``tests/`` is on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.study._storage import open_storage

#: A real search small enough for a test: 8 trials of 4 epochs on scanpy's bundled PBMC data.
REAL_OVERRIDES = ["study.n_trials=8", "finetune.epoch=4", "finetune.hidden=[32]"]
REAL_EPOCHS = 4


def run_cli(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="session")
def real_results(tmp_path_factory) -> Path:
    """``deepsc-tune run pbmc68k`` (8 trials, 4 epochs), run once for the whole session."""
    results = tmp_path_factory.mktemp("real") / "results"
    result = run_cli("run", "pbmc68k", "--results-dir", str(results), "--threads", "1", *REAL_OVERRIDES)
    assert result.exit_code == 0, result.output
    return results


@pytest.fixture
def real_study(real_results):
    """The real study, opened read only as `deepsc-tune report` opens it."""
    storage = open_storage(f"sqlite:///{real_results / 'pbmc68k' / 'study.db'}", heartbeat=False)
    return optuna.load_study(study_name="pbmc68k", storage=storage)


@pytest.fixture
def real_copy(real_results, tmp_path) -> Path:
    """A results folder holding a copy of the real study (for tests that write files)."""
    folder = tmp_path / "results" / "pbmc68k"
    folder.mkdir(parents=True)
    copy_database(real_results / "pbmc68k" / "study.db", folder / "study.db")
    return tmp_path / "results"


def copy_database(source: Path, target: Path) -> None:
    """Copy a SQLite study with SQLite's backup (a WAL database's recent pages are in -wal)."""
    with contextlib.closing(sqlite3.connect(source)) as src, contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


DISTRIBUTIONS = {
    "lr_scheduler_type": CategoricalDistribution(["constant", "cosine"]),
    "learning_rate": FloatDistribution(1e-5, 1e-1, log=True),
    "warmup_ratio": FloatDistribution(0.0, 0.2),
}


def add(study, state, params, curve=(), *, value=None, epochs=None, **user_attrs):
    """Add a trial: ``curve`` are the per-epoch values, ``epochs`` its ``epoch`` setting."""
    if state == TrialState.COMPLETE and value is None:
        value = max(curve)
    if epochs is not None:
        user_attrs["settings"] = {**params, "epoch": epochs, "seed": user_attrs.get("seed", 0)}
    if curve and state != TrialState.WAITING:
        user_attrs.setdefault("epochs_run", len(curve))
    study.add_trial(
        optuna.trial.create_trial(
            state=state,
            value=value,
            params=params,
            distributions={k: DISTRIBUTIONS[k] for k in params},
            intermediate_values={i + 1: v for i, v in enumerate(curve)},
            user_attrs=user_attrs,
        )
    )
    return study.trials[-1]


def const(lr):
    return {"lr_scheduler_type": "constant", "learning_rate": lr}


def cos(lr, warmup=0.05):
    return {"lr_scheduler_type": "cosine", "learning_rate": lr, "warmup_ratio": warmup}


@pytest.fixture
def synthetic():
    """A study with known numbers: 2 schedulers, pruned, failed, enqueued and repeated trials."""
    study = optuna.create_study(direction="maximize", study_name="synthetic")
    C, P, F = TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL
    add(study, C, const(1e-4), [0.3, 0.5, 0.6, 0.7], epochs=4, enqueued=True)  # 0
    add(study, C, cos(1e-4, 0.03), [0.2, 0.4, 0.5, 0.55], epochs=4, enqueued=True)  # 1
    add(study, P, const(1e-3), [0.4, 0.45], epochs=4)  # 2: saves 2 epochs
    add(study, C, const(3e-3), [0.6, 0.8, 0.9, 0.85], epochs=4)  # 3: best constant 0.9
    add(study, P, cos(2e-3, 0.1), [0.5], epochs=4)  # 4: saves 3
    add(study, C, cos(5e-3, 0.02), [0.7, 0.8, 0.88, 0.86], epochs=4, seed=0, test_accuracy=0.83, test_macro_f1=0.7)  # 5
    add(study, F, cos(9e-2, 0.1), [0.1, 0.1, 0.1], epochs=4, fail_reason="training diverged: loss is NaN")  # 6
    add(study, C, cos(1e-2, 0.15), [0.6, 0.7, 0.75, 0.8], epochs=4)  # 7
    add(study, P, const(5e-5), [0.3, 0.35, 0.4], epochs=10)  # 8: saves 7
    # repeats of trial 5 with seeds 1 and 2; a third failed
    add(
        study,
        C,
        cos(5e-3, 0.02),
        [0.7, 0.8, 0.84, 0.84],
        epochs=4,
        repeat_of=5,
        repeat_seed=1,
        seed=1,
        test_accuracy=0.81,
    )  # 9
    add(
        study,
        C,
        cos(5e-3, 0.02),
        [0.6, 0.78, 0.8, 0.8],
        epochs=4,
        repeat_of=5,
        repeat_seed=2,
        seed=2,
        test_accuracy=0.80,
    )  # 10
    add(study, F, cos(5e-3, 0.02), [0.5], epochs=4, repeat_of=5, repeat_seed=3, fail_reason="interrupted")  # 11
    return study
