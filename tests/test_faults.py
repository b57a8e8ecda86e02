"""Bad input and faults, table-driven: YAML, data, storage, file system, signals, concurrency.

Every case runs the real command line against a copy of one small finished study and checks
the project's rule for bad input: the exit code, one line on stderr that names the file, key or
value, no traceback, and the study's trials (numbers, states, params, values) exactly as before.
A few cases are not errors (read-only commands on read-only media): they must just work.

The study is prepared once per module (a tiny synthetic dataset, 1 epoch, 2 trials) and copied
per case, so the whole table runs in seconds.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import anndata as ad
import numpy as np
import optuna
import pandas as pd
import pytest
import scipy.sparse as sp
from paths import REPO
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.utils._processes import group_alive

optuna.logging.set_verbosity(optuna.logging.ERROR)

NAME = "tiny"
SPACE = f"""\
name: {NAME}
description: tiny synthetic study for the fault battery
data:
  train: data/train.h5ad
  label_key: cell_type
  val_fraction: 0.3
  test_fraction: 0.2
  min_cells_per_class: 2
finetune:
  model: mlp
  hidden: [8]
  epoch: 1
  batch_size: 16
  seed: 0
search:
  learning_rate: {{low: 1.0e-4, high: 1.0e-1, log: true}}
  lr_scheduler_type: {{choices: [constant, cosine]}}
study:
  n_trials: 2
  sampler: {{type: tpe, seed: 0}}
  pruner: {{type: none}}
"""
runner = CliRunner()


# ----------------------------------------------------------------------------- helpers


def write_h5ad(path: Path, X: np.ndarray, labels: list[str] | None = None) -> Path:
    """A small .h5ad with sparse X and a ``cell_type`` column."""
    n, g = X.shape
    labels = labels if labels is not None else [("A", "B", "C")[i % 3] for i in range(n)]
    obs = pd.DataFrame({"cell_type": pd.Categorical(labels)}, index=[f"c{i}" for i in range(n)])
    var = pd.DataFrame(index=[f"G{j}" for j in range(g)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=obs, var=var).write_h5ad(path)
    return path


def counts(n: int = 90, g: int = 30, seed: int = 0) -> np.ndarray:
    """Counts whose class shows in the first genes, so a 1-epoch MLP learns something."""
    x = np.random.default_rng(seed).poisson(2.0, size=(n, g)).astype(np.float32)
    for i in range(n):
        x[i, (i % 3) * 3 : (i % 3) * 3 + 3] += 8
    return x


def snapshot(results: Path) -> object:
    """Every study's trials as (number, state, params, value), from every study folder's
    database (``RESULTS/STUDY/study.db``), or a file's hash where it is unreadable.

    Read through Optuna's public API; a file Optuna cannot read (a damaged database) is
    compared byte for byte instead.
    """
    dbs = sorted(results.glob("*/study.db"))
    if not dbs:
        return None
    out: dict[object, object] = {}
    for db in dbs:
        url = f"sqlite:///file:{db}?mode=ro&uri=true"  # read-only: the snapshot itself never writes
        try:
            storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
            try:
                for summary in optuna.get_all_study_summaries(storage):
                    study = optuna.load_study(study_name=summary.study_name, storage=storage)
                    out[summary.study_name] = [(t.number, t.state.name, t.params, t.value) for t in study.trials]
            finally:
                storage.engine.dispose()
        except Exception:  # noqa: BLE001 - a damaged file: compare its bytes
            out[("bytes", db.parent.name)] = hashlib.sha256(db.read_bytes()).hexdigest()
    return out


@contextlib.contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """``folder`` on read-only media: a read-only bind mount of it over itself.

    This is the real thing for the code (EROFS from the kernel), not a permission bit that
    root would ignore. Needs mount rights (root with CAP_SYS_ADMIN); without them the case is
    skipped with that reason.
    """
    done = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot simulate read-only media (mount --bind needs root): {done.stderr.strip()}")
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], check=True, capture_output=True)
        yield
    finally:
        # Lazy: the in-process command may still hold the database open in a connection pool.
        subprocess.run(["umount", "-l", str(folder)], check=True, capture_output=True)


def fill(folder: Path) -> None:
    """Write ``folder/.filler`` until the device holding it is full."""
    fd = os.open(folder / ".filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        for chunk in (65536, 4096, 512):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)


def _idle_sqlite_files(where: str, names: list[str]) -> list[str]:
    return [n for n in names if n.endswith("-shm") or (n.endswith("-wal") and not os.path.getsize(Path(where, n)))]


@contextlib.contextmanager
def full_disk(folder: Path, size: str = "4m", *, filled: bool = True) -> Iterator[None]:
    """``folder`` on a small tmpfs, filled up: the real thing for the code (ENOSPC, SQLite's
    "database or disk is full"). Its content is copied in and back out. Needs mount rights
    (root with CAP_SYS_ADMIN); without them the case is skipped with that reason."""
    stash = folder.with_name(f"{folder.name}.stash")
    folder.rename(stash)
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        folder.rmdir()
        stash.rename(folder)
        pytest.skip(f"cannot simulate a full disk (mount -t tmpfs needs root): {done.stderr.strip()}")
    try:
        # Without the -shm file (and an empty -wal) that the snapshot's read-only open left,
        # as SQLite leaves a database nobody has open: SQLite must create it on the full disk.
        shutil.copytree(stash, folder, dirs_exist_ok=True, ignore=_idle_sqlite_files)
        if filled:
            fill(folder)
        yield
    finally:
        (folder / ".filler").unlink(missing_ok=True)
        shutil.rmtree(stash)
        shutil.copytree(folder, stash)
        subprocess.run(["umount", "-l", str(folder)], check=True, capture_output=True)
        folder.rmdir()
        stash.rename(folder)


def cli(args: list[str], cwd: Path, env: dict[str, str] | None = None):
    old = Path.cwd()
    os.chdir(cwd)
    try:
        return runner.invoke(app, args, env=env)
    finally:
        os.chdir(old)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """A folder with data/, tiny.yaml and results/tiny/study.db holding 2 finished trials."""
    base = tmp_path_factory.mktemp("faults")
    (base / "data").mkdir()
    write_h5ad(base / "data" / "train.h5ad", counts())
    (base / f"{NAME}.yaml").write_text(SPACE)
    result = cli(["run", f"{NAME}.yaml", "--results-dir", "results"], base)
    assert result.exit_code == 0, result.output
    # Fold the write-ahead log into the file, so that each copy is one self-contained file.
    with contextlib.closing(sqlite3.connect(base / "results" / NAME / "study.db")) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    for suffix in ("-wal", "-shm"):  # as SQLite leaves a study nobody has open (the log is empty)
        (base / "results" / NAME / f"study.db{suffix}").unlink(missing_ok=True)
    trials = snapshot(base / "results")[NAME]
    assert [t[1] for t in trials] == ["COMPLETE", "COMPLETE"], trials
    assert "new study, target 2 finished" in result.stdout  # nothing queued in this space
    assert "validation set has only" in result.stdout  # 22 validation cells: warned
    return base


@pytest.fixture
def case_dir(prepared, tmp_path) -> Path:
    dest = tmp_path / "case"
    shutil.copytree(prepared, dest)
    return dest


# ----------------------------------------------------------------------------- the table


@dataclass
class Case:
    """One bad input or fault: ``setup`` changes the copied folder, then ``args`` run there."""

    id: str
    args: list[str]
    code: int
    says: list[str]  # substrings of the one-line message (or of stdout when code is 0)
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    read_only: str | None = None  # a folder to put on read-only media during the command
    full_disk: str | None = None  # a folder to put on a full disk during the command
    hidden: list[str] = field(default_factory=list)  # must not appear anywhere (passwords)
    absent: list[str] = field(default_factory=list)  # paths (globs, from the case folder) left behind by nobody
    skip: Callable[[], str | None] | None = None  # a reason to skip the case on this machine
    quiet: bool = False  # exit 0 with nothing on stderr and no warning raised


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def space_with(extra: str = "", replace: tuple[str, str] | None = None) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        text = SPACE
        if replace:
            assert replace[0] in text
            text = text.replace(*replace)
        (d / "bad.yaml").write_text(text + extra)

    return setup


def anchor_bomb(indent: str) -> str:
    """Billion laughs: nine levels of nine aliases, 387 million strings once expanded."""
    lines = [f"{indent}a0: &a0 [{', '.join(['lol'] * 9)}]"]
    lines += [f"{indent}a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    return "\n".join(lines) + "\n"


TAGS_BOMB = f"  tracking:\n    mlflow:\n      tags:\n{anchor_bomb('        ')}"
INLINE_BOMB = (
    "[&a [1,2,3,4,5,6,7,8,9,10], "
    + ", ".join(f"&{b} [{','.join([f'*{a}'] * 10)}]" for a, b in zip("abcde", "bcdef"))
    + ", [*f,*f]]"
)


def write(rel: str, content: bytes | str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        path = d / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)

    return setup


def data_file(make: Callable[[], tuple[np.ndarray, list[str] | None]]) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        X, labels = make()
        write_h5ad(d / "data" / "bad.h5ad", X, labels)

    return setup


def negative() -> tuple[np.ndarray, None]:
    x = counts()
    x[:, :5] -= 20
    return x, None


def corrupt_middle(d: Path) -> None:
    db = d / "results" / NAME / "study.db"
    data = bytearray(db.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 4096] = b"\xde\xad\xbe\xef" * 1024
    db.write_bytes(bytes(data))


def study_without_completed_trial(d: Path) -> None:
    (d / "results" / "empty").mkdir(parents=True)  # its own folder, as `run --study-name empty` makes
    storage = optuna.storages.RDBStorage(f"sqlite:///{d / 'results' / 'empty' / 'study.db'}")
    study = optuna.create_study(study_name="empty", storage=storage)
    study.enqueue_trial({"learning_rate": 1e-3})
    storage.engine.dispose()


def truncate(rel: str, size: int) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        path = d / rel
        path.write_bytes(path.read_bytes()[:size])

    return setup


def some_zero_cells() -> tuple[np.ndarray, None]:
    x = counts()
    x[:5] = 0
    return x, None


def fresh_results(d: Path) -> None:
    shutil.rmtree(d / "results")
    (d / "results").mkdir()


RUN = ["run", f"{NAME}.yaml", "--results-dir", "results"]
BAD = ["run", "bad.yaml", "--results-dir", "results"]
DATA = "data.train=data/bad.h5ad"
PREDICT = ["predict", f"{NAME}.yaml", "data/train.h5ad", "--results-dir", "results"]
NO_OUTPUT = ["data/*.predicted.h5ad", "data/.*tmp*", ".*tmp*"]  # nothing written, no temporary file left

CASES = [
    # --- the search-space file
    Case(
        "yaml-duplicate-top-key",
        BAD,
        2,
        ["bad.yaml", "duplicate key 'study'", "line 18", "line 22"],
        space_with("study: {n_trials: 3}\n"),
    ),
    Case(
        "yaml-duplicate-nested-key",
        BAD,
        2,
        ["bad.yaml", "duplicate key 'learning_rate'", "line 16", "line 17"],
        space_with(replace=("  learning_rate:", "  learning_rate: {low: 1.0e-3, high: 1.0e-2}\n  learning_rate:")),
    ),
    Case(
        "yaml-not-utf8",
        BAD,
        2,
        ["bad.yaml", "not UTF-8", "line 2"],
        write("bad.yaml", SPACE.replace("tiny synthetic", "caf\xe9").encode("latin-1")),
    ),
    # An anchor bomb is refused while the YAML is read, before it takes all memory.
    Case(
        "yaml-anchor-bomb-in-tracking-tags",
        BAD,
        2,
        ["bad.yaml", "aliases", "expand to more than 100000 values"],
        space_with(replace=("  pruner: {type: none}\n", "  pruner: {type: none}\n" + TAGS_BOMB)),
    ),
    Case(
        "yaml-anchor-bomb-validate",
        ["validate", "bad.yaml"],
        2,
        ["bad.yaml", "aliases", "expand to more than 100000 values"],
        space_with(
            replace=("description: tiny synthetic study for the fault battery\n", "description:\n" + anchor_bomb("  "))
        ),
    ),
    Case(
        "yaml-recursive-alias",
        ["validate", "bad.yaml"],
        2,
        ["bad.yaml", "alias", "line 17"],
        space_with(
            replace=("  lr_scheduler_type: {choices: [constant, cosine]}", "  lr_scheduler_type: &c {choices: [*c]}")
        ),
    ),
    Case("override-anchor-bomb", [*RUN, f"description={INLINE_BOMB}"], 2, ["override 'description=...'", "aliases"]),
    Case("yaml-malformed", BAD, 2, ["bad.yaml", "malformed YAML", "line"], space_with("search: [unclosed\n")),
    Case("yaml-empty", BAD, 2, ["bad.yaml", "empty"], write("bad.yaml", "")),
    Case("yaml-a-list", BAD, 2, ["bad.yaml", "expected a mapping", "list"], write("bad.yaml", "- a\n- b\n")),
    Case("yaml-unknown-top-key", BAD, 2, ["bad.yaml", "colour"], space_with("colour: red\n")),
    Case(
        "yaml-unknown-search-key",
        BAD,
        2,
        ["search.learning_rte"],
        space_with(
            replace=(
                "  lr_scheduler_type: {choices",
                "  learning_rte: {low: 1, high: 2}\n  lr_scheduler_type: {choices",
            )
        ),
    ),
    Case(
        "yaml-low-not-below-high",
        [*RUN, "search.learning_rate.low=0.5", "search.learning_rate.high=0.1"],
        2,
        ["search.learning_rate", "0.5"],
    ),
    Case("yaml-log-with-zero-low", [*RUN, "search.learning_rate.low=0"], 2, ["search.learning_rate", "log"]),
    Case("yaml-n-trials-zero", [*RUN, "study.n_trials=0"], 2, ["study.n_trials", "0"]),
    Case("yaml-n-trials-text", [*RUN, "study.n_trials=many"], 2, ["study.n_trials", "many"]),
    Case("yaml-unknown-sampler", [*RUN, "study.sampler.type=magic"], 2, ["study.sampler", "magic"]),
    Case("override-without-equals", [*RUN, "finetune.epoch"], 2, ["finetune.epoch", "key=value"]),
    Case("override-unknown-key", [*RUN, "finetune.colour=red"], 2, ["finetune.colour"]),
    # An unknown key made by an override is the override's, not the file's.
    Case("override-unknown-nested-key", [*RUN, "foo.bar=1"], 2, ["command-line override", "foo.bar=1"]),
    Case("override-unknown-search-key", [*RUN, "search.foo.low=1"], 2, ["command-line override", "search.foo.low=1"]),
    # A study's name is its folder under --results-dir: one plain folder name, nothing written.
    Case(
        "name-parent-folder",
        BAD,
        2,
        ["bad.yaml", "name", "'..'", "folder name"],
        space_with(replace=(f"name: {NAME}", "name: ..")),
        absent=["study.db", "results/study.db", "results/model", "results/trials"],
    ),
    Case("name-hidden", BAD, 2, ["bad.yaml", "name", "'.x'"], space_with(replace=(f"name: {NAME}", "name: .x"))),
    Case(
        "name-empty",
        BAD,
        2,
        ["bad.yaml", "name", "no name key for the file's own name"],
        space_with(replace=(f"name: {NAME}", 'name: ""')),
    ),
    Case("study-name-parent-folder", [*RUN, "--study-name", "../x"], 2, ["--study-name", "'../x'", "folder name"]),
    Case("study-name-empty", [*RUN, "--study-name", ""], 2, ["--study-name", "''"]),
    Case(
        "study-name-path-status",
        ["status", f"{NAME}.yaml", "--results-dir", "results", "--study-name", "a/b"],
        2,
        ["--study-name", "'a/b'"],
    ),
    Case(
        "repeat-study-name-backslash",
        ["repeat", f"{NAME}.yaml", "--results-dir", "results", "--study-name", "a\\b"],
        2,
        ["--study-name"],
    ),
    Case("space-file-missing", ["run", "nope.yaml", "--results-dir", "results"], 2, ["nope.yaml"]),
    Case("space-is-a-folder", ["run", "data", "--results-dir", "results"], 2, ["data"]),
    Case(
        "space-changed-on-existing-study",
        [*RUN, "finetune.hidden=[16]"],
        2,
        ["different search space", "finetune.hidden", "--study-name"],
    ),
    Case(
        "validate-missing-data-file",
        ["validate", "bad.yaml"],
        2,
        ["bad.yaml", "data.train", "missing.h5ad"],
        space_with(replace=("train: data/train.h5ad", "train: data/missing.h5ad")),
    ),
    Case(
        "validate-not-utf8",
        ["validate", "bad.yaml"],
        2,
        ["bad.yaml", "not UTF-8"],
        write("bad.yaml", SPACE.replace("tiny synthetic", "caf\xe9").encode("latin-1")),
    ),
    # --- data
    Case("data-file-missing", [*RUN, "data.train=data/nothing.h5ad"], 1, ["data.train", "nothing.h5ad"]),
    Case("data-not-h5ad", [*RUN, DATA], 1, ["bad.h5ad", "data.train"], write("data/bad.h5ad", b"not hdf5" * 100)),
    Case("data-label-key-missing", [*RUN, "data.label_key=kind"], 1, ["data.label_key", "kind"]),
    Case("data-negative-values", [*RUN, DATA, "data.n_top_genes=10"], 1, ["bad.h5ad", "negative"], data_file(negative)),
    Case(
        "data-negative-values-log1p",
        [*RUN, DATA, "data.normalize=log1p"],
        1,
        ["data.normalize", "negative"],
        data_file(negative),
    ),
    Case("data-all-zero", [*RUN, DATA], 1, ["bad.h5ad", "all zero"], data_file(lambda: (np.zeros((90, 30)), None))),
    Case("data-zero-genes", [*RUN, DATA], 1, ["bad.h5ad", "0 genes"], data_file(lambda: (np.zeros((90, 0)), None))),
    Case(
        "data-nan",
        [*RUN, DATA],
        1,
        ["bad.h5ad", "NaN"],
        data_file(lambda: (np.where(counts() > 4, np.nan, counts()), None)),
    ),
    Case("data-one-class", [*RUN, DATA], 1, ["bad.h5ad", "class"], data_file(lambda: (counts(), ["A"] * 90))),
    Case("data-val-fraction-out-of-range", [*RUN, "data.val_fraction=1.5"], 2, ["data.val_fraction", "1.5"]),
    Case(
        "data-some-all-zero-cells",
        ["finetune", f"{NAME}.yaml", DATA, "--results-dir", "results"],
        0,
        ["data: normalisation", "cells have all-zero counts"],
        data_file(some_zero_cells),
        quiet=True,
    ),
    # --- predict: the kept model and the query
    Case(
        "predict-truncated-weights",
        PREDICT,
        1,
        [f"results/{NAME}/model/weights.pt", "cannot read the model's weights", "restore"],
        truncate(f"results/{NAME}/model/weights.pt", 1000),
        absent=NO_OUTPUT,
    ),
    Case(
        "predict-corrupt-model-json",
        PREDICT,
        1,
        [f"results/{NAME}/model/model.json", "not valid JSON", "line"],
        truncate(f"results/{NAME}/model/model.json", 300),
        absent=NO_OUTPUT,
    ),
    Case(
        "predict-zero-cells",
        ["predict", f"{NAME}.yaml", "data/bad.h5ad", "--results-dir", "results"],
        1,
        ["bad.h5ad", "0 cells"],
        data_file(lambda: (np.zeros((0, 30)), [])),
        absent=NO_OUTPUT,
    ),
    Case(
        "predict-query-is-a-folder",
        ["predict", f"{NAME}.yaml", "data", "--results-dir", "results"],
        1,
        ["query: data is a folder"],
        absent=NO_OUTPUT,
    ),
    Case(
        "predict-out-is-a-folder",
        [*PREDICT, "--out", "out.h5ad", "--overwrite"],
        2,
        ["--out", "out.h5ad is a folder"],
        write("out.h5ad/keep", "x"),
        absent=[*NO_OUTPUT, ".out.h5ad*"],
    ),
    Case(
        "predict-out-is-a-folder-without-suffix",
        [*PREDICT, "--out", "data"],
        2,
        ["--out", "data is a folder"],
        absent=NO_OUTPUT,
    ),
    Case(
        "predict-some-all-zero-cells",
        ["predict", f"{NAME}.yaml", "data/bad.h5ad", "--results-dir", "results"],
        0,
        ["5 of 90 cells have all-zero counts", "wrote data/bad.predicted.h5ad"],
        data_file(some_zero_cells),
        quiet=True,
    ),
    # --- storage
    Case("storage-unknown-scheme", [*RUN, "--storage", "nosuchdb://x/y"], 1, ["--storage", "nosuchdb://"]),
    Case(
        "storage-postgres-unreachable",
        [*RUN, "--storage", "postgresql+psycopg://u:s3cret@127.0.0.1:1/db"],
        1,
        ["--storage", "127.0.0.1:1", "cannot open"],
        hidden=["s3cret"],
    ),
    Case(
        "storage-password-with-at",
        [*RUN, "--storage", "postgresql+psycopg://u:Xq7@Zr9@127.0.0.1:1/db"],
        2,
        ["--storage", "127.0.0.1:1/db", "'@'", "%40"],
        hidden=["Xq7", "Zr9"],
    ),
    Case(
        "storage-password-in-query",
        [*RUN, "--storage", "postgresql+psycopg://u@127.0.0.1:1/db?password=Xq7Zr9"],
        1,
        ["--storage", "127.0.0.1:1/db", "password=***", "cannot open"],
        hidden=["Xq7", "Zr9"],
    ),
    Case(
        "storage-unparsable-with-password",
        [*RUN, "--storage", "postgres:/u:Xq7Zr9@127.0.0.1/db"],
        1,
        ["--storage", "127.0.0.1/db", "cannot open"],
        hidden=["Xq7", "Zr9"],
    ),
    Case(
        "storage-env-garbage",
        RUN,
        1,
        ["DEEPSC_TUNE_STORAGE=garbage", "cannot open"],
        env={"DEEPSC_TUNE_STORAGE": "garbage"},
        hidden=["--storage"],
    ),
    Case(
        "storage-env-garbage-status",
        ["status", f"{NAME}.yaml", "--results-dir", "results"],
        1,
        ["DEEPSC_TUNE_STORAGE=", "cannot open"],
        env={"DEEPSC_TUNE_STORAGE": "mysql+nosuchdriver://u:Xq7Zr9@h/db"},
        hidden=["--storage", "Xq7", "Zr9"],
    ),
    Case(
        "storage-sqlite-folder-missing",
        [*RUN, "--storage", "sqlite:////nonexistent/dir/x.db"],
        1,
        ["--storage", "/nonexistent/dir/x.db"],
    ),
    Case("db-damaged-in-the-middle-run", RUN, 1, ["study.db", "damaged", "untouched", "--results-dir"], corrupt_middle),
    Case(
        "db-damaged-in-the-middle-status",
        ["status", f"{NAME}.yaml", "--results-dir", "results"],
        1,
        ["study.db", "damaged"],
        corrupt_middle,
    ),
    Case("db-not-a-database", RUN, 1, ["study.db", "damaged"], write(f"results/{NAME}/study.db", "hello\n" * 500)),
    Case("status-no-study", ["status", f"{NAME}.yaml", "--results-dir", "elsewhere"], 1, ["no study", "elsewhere"]),
    Case(
        "status-unknown-study-name",
        ["status", f"{NAME}.yaml", "--results-dir", "results", "--study-name", "x"],
        1,
        ["no study 'x'", NAME],
    ),
    Case(
        "best-without-completed-trial",
        ["best", f"{NAME}.yaml", "--results-dir", "results", "--study-name", "empty"],
        1,
        ["'empty'", "no completed trial"],
        study_without_completed_trial,
    ),
    Case(
        "best-unknown-format",
        ["best", f"{NAME}.yaml", "--results-dir", "results", "--format", "xml"],
        2,
        ["--format", "xml"],
    ),
    # --- devices: refused before the study is opened (it held 2 trials and got 5 before)
    Case(
        "device-cuda-without-gpu",
        [*RUN, "study.n_trials=5", "--device", "cuda"],
        2,
        ["--device cuda", "CUDA is not available"],
        skip=lambda: "this machine has CUDA" if cuda_available() else None,
    ),
    Case("device-cuda-index-absent", [*RUN, "study.n_trials=5", "--device", "cuda:99"], 2, ["--device cuda:99"]),
    Case("device-unknown-name", [*RUN, "study.n_trials=5", "--device", "gpu"], 2, ["--device gpu", "expected"]),
    Case(
        "device-in-override",
        [*RUN, "study.n_trials=5", "finetune.device=cuda:99"],
        2,
        ["command-line override finetune.device=cuda:99"],
    ),
    Case(
        "device-in-file",
        [*BAD, "study.n_trials=5"],
        2,
        ["bad.yaml", "finetune.device cuda:99"],
        space_with(replace=("  seed: 0\n", "  seed: 0\n  device: cuda:99\n")),
    ),
    Case(
        "device-repeat",
        ["repeat", f"{NAME}.yaml", "--results-dir", "results", "--device", "cuda:99"],
        2,
        ["--device cuda:99"],
    ),
    Case("device-finetune", ["finetune", f"{NAME}.yaml", "device=cuda:99"], 2, ["device=cuda:99"]),
    Case("device-lr-find", ["lr-find", f"{NAME}.yaml", "--device", "cuda:99"], 2, ["--device cuda:99"]),
    Case(
        "device-predict",
        ["predict", f"{NAME}.yaml", "data/train.h5ad", "--device", "cuda:99"],
        2,
        ["--device cuda:99"],
        absent=["data/*.predicted.h5ad"],
    ),
    Case("heartbeat-not-a-number", RUN, 2, ["DEEPSC_TUNE_HEARTBEAT", "abc"], env={"DEEPSC_TUNE_HEARTBEAT": "abc"}),
    Case("db-retry-not-a-number", RUN, 2, ["DEEPSC_TUNE_DB_RETRY", "soon"], env={"DEEPSC_TUNE_DB_RETRY": "soon"}),
    Case("workers-zero", [*RUN, "--workers", "0"], 2, ["--workers 0"]),
    Case("gpus-empty-entry", [*RUN, "--gpus", "0,,1"], 2, ["--gpus", "0,,1"]),
    # --- file system
    Case(
        "results-dir-is-a-file",
        ["run", f"{NAME}.yaml", "--results-dir", "afile"],
        1,
        ["afile", "not a folder"],
        write("afile", "x"),
    ),
    Case(
        "results-name-is-a-file",
        ["run", f"{NAME}.yaml", "--results-dir", "other"],
        1,
        [f"other/{NAME}", "not a folder"],
        write(f"other/{NAME}", "x"),
    ),
    Case(
        "results-dir-read-only",
        ["run", f"{NAME}.yaml", "--results-dir", "results"],
        1,
        ["results", "read-only"],
        fresh_results,
        read_only="results",
    ),
    Case("run-existing-study-read-only", RUN, 1, ["study.db", "read-only", "status"], read_only="results"),
    Case(
        "status-on-read-only-media",
        ["status", f"{NAME}.yaml", "--results-dir", "results"],
        0,
        ["complete 2"],
        read_only="results",
    ),
    Case(
        "best-on-read-only-media",
        ["best", f"{NAME}.yaml", "--results-dir", "results"],
        0,
        ["learning_rate"],
        read_only="results",
    ),
    Case(
        "report-on-read-only-media",
        ["report", f"{NAME}.yaml", "--results-dir", "results"],
        1,
        ["report.html", "read-only", "--out"],
        read_only="results",
    ),
    Case(
        "report-on-read-only-media-with-out",
        ["report", f"{NAME}.yaml", "--results-dir", "results", "--out", "elsewhere"],
        0,
        ["elsewhere/report.html"],
        read_only="results",
    ),
    # --- a full disk: said as such (never "damaged"), naming the path; nothing stored changes
    Case(
        "disk-full-run-existing-study",
        [*RUN, "study.n_trials=3"],
        1,
        [f"results/{NAME}/study.db", "the disk is full"],
        full_disk="results",
        hidden=["damaged"],
    ),
    Case(
        "disk-full-new-study-in-existing-file",
        [*RUN, "--study-name", "other"],
        1,
        ["results/other/study.db", "the disk is full"],  # a study of its own: its own folder
        full_disk="results",
        hidden=["damaged"],
    ),
    Case(
        "disk-full-new-results-dir",
        ["run", f"{NAME}.yaml", "--results-dir", "results/new"],
        1,
        ["results/new", "the disk is full"],
        full_disk="results",
    ),
    Case(
        "disk-full-status-still-reads",
        ["status", f"{NAME}.yaml", "--results-dir", "results"],
        0,
        ["complete 2"],
        full_disk="results",
    ),
    Case(
        "disk-full-repeat",
        ["repeat", f"{NAME}.yaml", "--results-dir", "results", "--top", "1", "--seeds", "1"],
        1,
        [f"results/{NAME}/study.db", "the disk is full"],
        full_disk="results",
        hidden=["damaged"],
    ),
    Case(
        "disk-full-report",
        ["report", f"{NAME}.yaml", "--results-dir", "results"],
        1,
        [f"results/{NAME}/report.html", "the disk is full", "--out"],
        full_disk="results",
        absent=[f"results/{NAME}/.report.html*"],
    ),
    Case(
        "disk-full-new-data-cache",  # the study elsewhere, the data cache on the full disk
        [*RUN, DATA, "--storage", "sqlite:///side.db"],
        1,
        ["results/cache/data-", "the disk is full"],
        data_file(lambda: (counts(seed=1), None)),
        full_disk="results",
        absent=["results/cache/.*tmp"],
    ),
    Case(
        "disk-full-predict-output",
        [*PREDICT, "--out", "results/o.h5ad"],
        1,
        ["results/o.h5ad", "the disk is full", "not written", "another --out"],
        full_disk="results",
        absent=["results/o.h5ad", "results/.o.h5ad*"],
    ),
]


def test_the_table_is_big_enough():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_fault(case: Case, case_dir: Path):
    if case.skip and (why := case.skip()):
        pytest.skip(why)
    if case.setup:
        case.setup(case_dir)
    before = snapshot(case_dir / "results")
    with (
        read_only(case_dir / case.read_only) if case.read_only else contextlib.nullcontext(),
        full_disk(case_dir / case.full_disk) if case.full_disk else contextlib.nullcontext(),
        warnings.catch_warnings(record=True) as raised,
    ):
        warnings.simplefilter("always")
        result = cli(case.args, case_dir, env=case.env or None)
    after = snapshot(case_dir / "results")
    everything = result.output
    assert "Traceback" not in everything, everything
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == case.code, everything
    assert before == after, "the stored trials changed"
    for secret in case.hidden:
        assert secret not in everything
    for pattern in case.absent:
        assert not list(case_dir.glob(pattern)), f"{pattern} left behind"
    if case.id.startswith("storage-"):
        assert "data:" not in result.stdout, "a bad --storage must fail before the data are prepared"
    if case.code == 0:
        for text in case.says:
            assert text in result.stdout, result.stdout
        if case.quiet:
            assert not result.stderr.strip(), result.stderr
            assert not [w for w in raised if not issubclass(w.category, DeprecationWarning)], [str(w) for w in raised]
        return
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in case.says:
        assert text in lines[0], lines[0]


# ----------------------------------------------------------------------------- signals, concurrency


def start(case: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "deepsc_tune.cli", *args]
    return subprocess.Popen(
        cmd,
        cwd=case,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO), **(env or {})},
        start_new_session=True,
    )


def wait_for_epoch(proc: subprocess.Popen, timeout: float = 120, ready: Callable[[list[str]], bool] | None = None):
    """Read stdout until a trial is training (a verbose epoch line, or ``ready`` says so); the
    lines read. Kills the process if that never comes."""
    ready = ready or (lambda lines: " epoch " in lines[-1])
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if ready(lines):
                return lines
    finally:
        timer.cancel()
    raise AssertionError(f"never trained; stderr:\n{proc.stderr.read()}")


def finished(study_trials: list) -> list:
    return [t for t in study_trials if t[1] in ("COMPLETE", "PRUNED")]


#: A separate study in the same file, so the prepared study's trials show they were not touched.
LONG = [
    "run",
    f"{NAME}.yaml",
    "--results-dir",
    "results",
    "--study-name",
    "long",
    "-v",
    "finetune.epoch=3000",
    "study.n_trials=3",
]
#: Trials short enough to end soon after a fault (the study file is checked between trials).
SHORT = [*LONG[:-2], "finetune.epoch=30", "study.n_trials=3"]
#: The `run` of a study for `repeat`: one search trial.
SEARCHED = [*SHORT[:-1], "study.n_trials=1"]
WORKERS = [*LONG, "--workers", "2"]
REPEAT = [
    "repeat",
    f"{NAME}.yaml",
    "--results-dir",
    "results",
    "--study-name",
    "long",
    "-v",
    "--top",
    "1",
    "--seeds",
    "2",
]


def searched(d: Path) -> None:
    """A study 'long' with one finished search trial of 30 epochs (for `repeat`)."""
    result = cli(SEARCHED, d)
    assert result.exit_code == 0, result.output


@dataclass
class Live:
    """A fault while a command runs: ``act`` is done once a trial trains (its first epoch line).

    Checked as for :class:`Case` (exit code, one line on stderr, no traceback, the prepared
    study's trials as before) and: the states of study ``long`` afterwards (``states``; ``None``:
    the study file is gone and was not made again), no process of the command left. ``resume``:
    the states after the same command again, which recovers what was left RUNNING or queued.
    """

    id: str
    args: list[str]
    act: Callable[[Live, subprocess.Popen, Path], None]
    code: int
    says: list[str]  # substrings of the one line on stderr (of stdout when code is 0)
    states: list[str] | Callable[[list[str]], bool] | None
    setup: Callable[[Path], None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    ready: Callable[[list[str]], bool] | None = None
    postgres: bool = False
    resume: list[str] | None = None  # the states after the same command again
    proxy: object = None  # the DatabaseProxy of a postgres case, while it runs
    pids: list[int] = field(default_factory=list)  # worker processes seen
    lines: list[str] = field(default_factory=list)  # stdout read while waiting


def send(*sigs: int, pause: float = 0.3) -> Callable[[Live, subprocess.Popen, Path], None]:
    def act(live: Live, proc: subprocess.Popen, d: Path) -> None:
        for k, sig in enumerate(sigs):
            if k:
                time.sleep(pause)
            proc.send_signal(sig)

    return act


def close_stdout(live: Live, proc: subprocess.Popen, d: Path) -> None:
    proc.stdout.close()  # `| head` exits


def delete_study_file(live: Live, proc: subprocess.Popen, d: Path) -> None:
    (d / "results" / "long" / "study.db").unlink()  # the running study's own folder


def delete_results(live: Live, proc: subprocess.Popen, d: Path) -> None:
    shutil.rmtree(d / "results")


def replace_study_file(live: Live, proc: subprocess.Popen, d: Path) -> None:
    """Another copy moved over it (a restore from backup, a sync tool): a new inode."""
    db = d / "results" / "long" / "study.db"  # the running study's own folder
    shutil.copy(d / "prepared.db", d / "results" / "x.db")
    os.replace(d / "results" / "x.db", db)
    for extra in ("-wal", "-shm"):
        Path(f"{db}{extra}").unlink(missing_ok=True)


def keep_prepared_copy(d: Path) -> None:
    shutil.copy(d / "results" / NAME / "study.db", d / "prepared.db")


def suspend_first_worker(live: Live, proc: subprocess.Popen, d: Path) -> None:
    """SLURM's suspend (SIGSTOP) of worker w1 mid-trial, then SIGCONT once w2, with nothing left
    to start, has declared w1's trial dead (no heartbeat for DEEPSC_TUNE_GRACE=3 s) and runs
    its retry."""
    os.kill(live.pids[0], signal.SIGSTOP)
    try:
        live.lines += wait_for_epoch(proc, timeout=240, ready=lambda lines: "[w2]   trial   2 epoch" in lines[-1])
    finally:
        os.kill(live.pids[0], signal.SIGCONT)


def stop_database(live: Live, proc: subprocess.Popen, d: Path) -> None:
    live.proxy.stop()


def restart_database(live: Live, proc: subprocess.Popen, d: Path) -> None:
    live.proxy.stop()
    time.sleep(2)
    live.proxy.start()


def both_workers_train(lines: list[str]) -> bool:
    text = "".join(lines)
    return all(f"[w{k}]   trial" in text for k in (1, 2))


SUSPEND_ENV = {"DEEPSC_TUNE_HEARTBEAT": "1", "DEEPSC_TUNE_GRACE": "3"}
STOPPED = "run the same command to resume"
SLOW = pytest.mark.slow
LIVE = [
    # --- preemption and suspension: SIGTERM 143, SIGINT 130, a closed stdout 141 (128 + SIGPIPE)
    pytest.param(
        Live("run-SIGTERM", LONG, send(signal.SIGTERM), 143, ["interrupted by SIGTERM", STOPPED], ["FAIL", "WAITING"])
    ),
    pytest.param(
        Live("run-SIGINT", LONG, send(signal.SIGINT), 130, ["interrupted:", STOPPED], ["FAIL", "WAITING"]), marks=SLOW
    ),
    pytest.param(
        Live(
            "run-SIGINT-twice",
            LONG,
            send(signal.SIGINT, signal.SIGINT),
            130,
            ["interrupted:", STOPPED],
            ["FAIL", "WAITING"],
        ),
        marks=SLOW,
    ),
    pytest.param(
        Live("run-stdout-closed", LONG, close_stdout, 141, ["stdout was closed", STOPPED], ["FAIL", "WAITING"]),
        marks=SLOW,
    ),
    pytest.param(
        Live(
            "confirm-SIGTERM",
            [*SHORT[:-2], "finetune.epoch=60", "study.n_trials=1", "study.confirm={top: 1, seeds: 1}"],
            send(signal.SIGTERM),
            143,
            ["interrupted by SIGTERM", STOPPED],
            ["COMPLETE", "FAIL", "WAITING"],  # the search trial, the interrupted repeat, its retry
            ready=lambda lines: "trial   1 epoch" in lines[-1],  # the confirmation's repeat trains
        ),
        marks=SLOW,
    ),
    pytest.param(
        Live(
            "repeat-SIGTERM",
            REPEAT,
            send(signal.SIGTERM),
            143,
            ["interrupted by SIGTERM", "run the same command to finish the rest"],
            ["COMPLETE", "FAIL", "WAITING", "WAITING"],
            setup=searched,
            resume=["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"],  # both seeds done, the retry included
        ),
        marks=SLOW,
    ),
    pytest.param(
        Live(
            "repeat-stdout-closed",
            REPEAT,
            close_stdout,
            141,
            ["stdout was closed", "run the same command to finish the rest"],
            ["COMPLETE", "FAIL", "WAITING", "WAITING"],
            setup=searched,
        ),
        marks=SLOW,
    ),
    pytest.param(
        Live(
            "workers-SIGTERM",
            WORKERS,
            send(signal.SIGTERM),
            143,
            ["interrupted by SIGTERM", "each worker recorded"],
            ["FAIL", "FAIL", "WAITING", "WAITING"],
            ready=both_workers_train,
        ),
        marks=SLOW,
    ),
    pytest.param(
        Live(
            "workers-stdout-closed",
            WORKERS,
            close_stdout,
            141,
            ["stdout was closed", "each worker recorded"],
            ["FAIL", "FAIL", "WAITING", "WAITING"],
            ready=both_workers_train,
        ),
        marks=SLOW,
    ),
    pytest.param(
        Live(
            "worker-suspended-then-continued",
            [*LONG[:-2], "finetune.epoch=100", "study.n_trials=2", "--workers", "2"],
            suspend_first_worker,
            0,
            ["declared dead by another worker", "2/2 finished trials"],
            # w1's trial failed by w2, w2's own, w2's retry of w1's (w1's may be number 0 or 1)
            lambda states: sorted(states) == ["COMPLETE", "COMPLETE", "FAIL"],
            env=SUSPEND_ENV,
            ready=lambda lines: "[w1]   trial" in lines[-1],
        ),
        marks=SLOW,
    ),
    # --- the study file deleted or replaced under a running search
    pytest.param(
        Live("run-study-db-deleted", SHORT, delete_study_file, 1, ["study.db", "was deleted", "stopped"], None)
    ),
    pytest.param(
        Live("run-results-dir-deleted", SHORT, delete_results, 1, ["study.db", "was deleted", "folder"], None),
        marks=SLOW,
    ),
    pytest.param(
        Live(
            "run-study-db-replaced",
            SHORT,
            replace_study_file,
            1,
            ["study.db", "was replaced", "stopped"],
            [],  # the file now in its place has no study 'long', and nothing was written to it
            setup=keep_prepared_copy,
        ),
        marks=SLOW,
    ),
    # --- the database server goes away (a proxy in front of the test server stops)
    pytest.param(
        Live(
            "postgres-stopped",
            [*SHORT[:-2], "finetune.epoch=20", "study.n_trials=2", "--storage", "{db}"],
            stop_database,
            1,
            ["lost the connection", "within 3 s", "DEEPSC_TUNE_DB_RETRY", "recovers it", "***"],
            ["RUNNING"],
            env={"DEEPSC_TUNE_DB_RETRY": "3"},
            postgres=True,
            resume=["FAIL", "COMPLETE", "COMPLETE"],  # recovered, its retry, the second trial
        ),
        marks=[SLOW, pytest.mark.postgres],
    ),
    pytest.param(
        Live(
            "postgres-restarted",
            [*SHORT[:-2], "finetune.epoch=20", "study.n_trials=2", "--storage", "{db}"],
            restart_database,
            0,
            ["2/2 finished trials"],
            ["COMPLETE", "COMPLETE"],
            env={"DEEPSC_TUNE_DB_RETRY": "30"},
            postgres=True,
        ),
        marks=[SLOW, pytest.mark.postgres],
    ),
]


def finished_states(states: list[str]) -> list[str]:
    return [s for s in states if s in ("COMPLETE", "PRUNED")]


def study_states(live: Live, results: Path, url: str | None, name: str) -> list[str] | None:
    if url is None:
        trials = snapshot(results)
        return None if trials is None else [t[1] for t in trials.get(name, [])]
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True, skip_table_creation=True)
    try:
        return [t.state.name for t in optuna.load_study(study_name=name, storage=storage).trials]
    finally:
        storage.engine.dispose()


def test_the_live_table_covers_every_command():
    ids = [p.values[0].id for p in LIVE]
    assert len(set(ids)) == len(ids)
    for prefix in ("run-SIG", "run-stdout", "repeat-SIG", "repeat-stdout", "workers-SIG", "workers-stdout", "confirm-"):
        assert any(i.startswith(prefix) for i in ids), prefix


@pytest.mark.parametrize("live", LIVE, ids=[p.values[0].id for p in LIVE])
def test_fault_while_running(live: Live, case_dir: Path, request):
    """Faults while a command runs trials: signals, a closed stdout, a suspended worker, the
    study file deleted or replaced, the database server stopped or restarted."""
    url = name = None
    args = list(live.args)
    if live.postgres:
        from db_proxy import DatabaseProxy

        url, name = request.getfixturevalue("postgres_study")
        live.proxy = DatabaseProxy(url)
        args = [a.replace("{db}", live.proxy.url) for a in args]
        args[args.index("long")] = name
    name = name or "long"
    if live.setup:
        live.setup(case_dir)
    before = snapshot(case_dir / "results")
    proc = start(case_dir, *args, env=live.env)
    try:
        live.lines = wait_for_epoch(proc, timeout=240, ready=live.ready)
        live.pids = [int(line.split("pid ")[1].split(",")[0]) for line in live.lines if "] started: pid " in line]
        live.act(live, proc, case_dir)
        if proc.stdout.closed:
            err, out = proc.stderr.read(), ""
            proc.wait(timeout=120)
        else:
            out, err = proc.communicate(timeout=300)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # nothing outlives a failed test
    everything = "".join(live.lines) + out + err
    assert "Traceback" not in everything, everything
    assert proc.returncode == live.code, everything
    for pid in [proc.pid, *live.pids]:
        assert not group_alive(pid), f"process group {pid} still runs"
    after = snapshot(case_dir / "results")
    if live.states is None:  # the running study's file (or the whole folder) was deleted
        assert after is None or "long" not in after, "the deleted study file was made again"
        assert after is None or after[NAME] == before[NAME], "the prepared study's trials changed"
    else:
        assert after[NAME] == before[NAME], "the prepared study's trials changed"
        states = study_states(live, case_dir / "results", url, name)
        # On failure, the states and everything the command printed (each worker's last words).
        assert live.states(states) if callable(live.states) else states == live.states, (states, everything)
    if live.code == 0:
        assert not err.strip(), err
        for text in live.says:
            assert text in everything, everything
    else:
        lines = [line for line in err.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith(("error: ", "interrupted", "stdout")), err
        for text in live.says:
            assert text in lines[0], lines[0]
    if live.resume:
        if live.proxy is not None:
            live.proxy.start()
        again = start(case_dir, *args, env=live.env)
        out, err = again.communicate(timeout=300)
        assert again.returncode == 0 and "Traceback" not in out + err, out + err
        if "RUNNING" in live.states:
            assert "re-queued trials left running by a dead process: [0]" in out, out
        assert study_states(live, case_dir / "results", url, name) == live.resume
    if live.proxy is not None:
        live.proxy.stop()


@pytest.mark.slow
def test_sigkill_then_resume_reaches_exactly_the_target(case_dir: Path):
    """A SIGKILL leaves a RUNNING trial; the same command again fails and re-queues it and
    stops at exactly n_trials finished, numbers unique, the finished trials untouched."""
    args = [*LONG[:-2], "finetune.epoch=30", "study.n_trials=3"]
    proc = start(case_dir, *args)
    wait_for_epoch(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    killed = snapshot(case_dir / "results")["long"]
    assert killed[-1][1] == "RUNNING", killed
    again = start(case_dir, *args)
    out, err = again.communicate(timeout=240)
    assert again.returncode == 0 and "Traceback" not in out + err, err
    assert f"re-queued trials left running by a dead process: [{killed[-1][0]}]" in out
    after = snapshot(case_dir / "results")["long"]
    assert after[: len(killed) - 1] == killed[:-1]  # what had finished is untouched
    assert [t[0] for t in after] == list(range(len(after)))
    assert len(finished(after)) == 3 and not [t for t in after if t[1] == "RUNNING"]
    assert after[killed[-1][0]][1] == "FAIL"
    # The retry runs the killed trial's settings again (by design); nothing else repeats.
    settings = [tuple(sorted(t[2].items())) for t in finished(after)]
    assert len(set(settings)) == len(settings), settings


@pytest.mark.slow
def test_repeat_sigkill_then_resume_completes_the_repeats(case_dir: Path):
    """`repeat` killed outright leaves its repeat RUNNING; the same command again fails and
    re-queues it (as `run` does) and completes every requested seed, nothing twice."""
    searched(case_dir)
    proc = start(case_dir, *REPEAT)
    wait_for_epoch(proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=30)
    killed = snapshot(case_dir / "results")["long"]
    assert [t[1] for t in killed] == ["COMPLETE", "RUNNING", "WAITING"], killed
    again = start(case_dir, *REPEAT)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "Traceback" not in out + err, out + err
    assert "re-queued trials left running by a dead process: [1]" in out, out
    storage = optuna.storages.RDBStorage(f"sqlite:///{case_dir / 'results' / 'long' / 'study.db'}")
    try:
        trials = optuna.load_study(study_name="long", storage=storage).trials
    finally:
        storage.engine.dispose()
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE", "COMPLETE"]
    seeds = sorted(t.user_attrs["repeat_seed"] for t in trials if t.state.name == "COMPLETE" and t.number)
    assert seeds == [1, 2], seeds  # finetune.seed 0: seeds 1 and 2, each once


def test_raised_target_proposes_new_settings(case_dir: Path):
    """`study.n_trials` raised from 2 to 5 on the prepared study: the new trials explore."""
    before = snapshot(case_dir / "results")[NAME]
    result = cli([*RUN, "study.n_trials=5"], case_dir)
    assert result.exit_code == 0, result.output
    after = snapshot(case_dir / "results")[NAME]
    assert after[:2] == before and len(finished(after)) == 5
    old = {tuple(sorted(t[2].items())) for t in before}
    new = [tuple(sorted(t[2].items())) for t in after[2:]]
    assert not old & set(new) and len(set(new)) == len(new), (old, new)


def test_same_command_from_scratch_is_reproducible(prepared: Path, tmp_path: Path):
    params = []
    for where in ("a", "b"):
        case = tmp_path / where
        shutil.copytree(prepared, case)
        shutil.rmtree(case / "results")
        result = cli([*RUN, "study.n_trials=4"], case)
        assert result.exit_code == 0, result.output
        params.append([t[2] for t in snapshot(case / "results")[NAME]])
    assert params[0] == params[1] and len(params[0]) == 4


@pytest.mark.slow
def test_two_processes_started_together_on_one_sqlite_study(prepared: Path, tmp_path: Path):
    """Two `run` commands at once (no --worker-id) on a new SQLite study: exactly n_trials
    finished, unique numbers, no setting proposed twice."""
    case = tmp_path / "two"
    shutil.copytree(prepared, case)
    shutil.rmtree(case / "results")
    args = [*RUN, "study.n_trials=8", "finetune.epoch=3"]
    procs = [start(case, *args) for _ in range(2)]
    outs = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in out + err, err
    trials = snapshot(case / "results")[NAME]
    assert [t[0] for t in trials] == list(range(len(trials)))
    assert len(finished(trials)) == 8 and len(trials) == 8
    settings = [tuple(sorted(t[2].items())) for t in trials]
    assert len(set(settings)) == len(settings), settings


def _open_at_once(url: str, barrier, results) -> None:
    from deepsc_tune.study._storage import open_storage

    barrier.wait()
    try:
        open_storage(url).engine.dispose()
        results.put("ok")
    except Exception as e:  # noqa: BLE001 - reported by the test
        results.put(str(e))


def test_four_processes_open_a_new_sqlite_file_at_once(tmp_path: Path):
    """Optuna creates its tables on open; four processes at once on a new file raced there
    ("table alembic_version already exists") before the opening was serialised."""
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    for k in range(3):  # the race is not hit every time: a few fresh files
        url = f"sqlite:///{tmp_path / f'new{k}.db'}"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_at_once, args=(url, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        assert [results.get(timeout=5) for _ in procs] == ["ok"] * 4


# ----------------------------------------------------------------------------- a disk that fills up


MID = [*RUN, "--study-name", "mid", "finetune.epoch=3", "study.n_trials=2"]


def one_line(result, *texts: str) -> str:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for text in texts:
        assert text in lines[0], lines[0]
    return lines[0]


def test_disk_fills_up_during_a_trial(case_dir: Path, monkeypatch):
    """The disk fills up after the first epoch of a trial (real ENOSPC on a tmpfs): one line
    naming the study file, exit 1, the other study untouched; the trial is left for the next
    run, which re-queues it and reaches the target once there is room again."""
    from deepsc_tune.cli import _progress as progress

    results = case_dir / "results"
    before = snapshot(results)
    epoch = progress.Progress.epoch

    def fill_at_first_epoch(self, number, m):
        if not (results / ".filler").exists():
            fill(results)
            time.sleep(2.5)  # a heartbeat (every second here) meets the full disk in its thread
        return epoch(self, number, m)

    thread_errors: list[BaseException] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: thread_errors.append(args.exc_value))
    monkeypatch.setattr(progress.Progress, "epoch", fill_at_first_epoch)
    fast_heartbeats = {"DEEPSC_TUNE_HEARTBEAT": "1", "DEEPSC_TUNE_GRACE": "2"}
    with full_disk(results, filled=False):
        result = cli(MID, case_dir, env=fast_heartbeats)
    assert result.exit_code == 1, result.output
    one_line(result, "results/mid/study.db", "the disk is full", "trial 0 was stopped", "run the same command")
    assert not thread_errors, thread_errors  # no traceback from the heartbeat thread either
    after = snapshot(results)
    assert after[NAME] == before[NAME]
    assert not finished(after["mid"]), after["mid"]
    monkeypatch.setattr(progress.Progress, "epoch", epoch)
    # Here the "dead" worker is this test process, so its trial is found by its stopped
    # heartbeat, after a short grace period (a real run's next process re-queues it at once).
    again = cli(MID, case_dir, env=fast_heartbeats)
    assert again.exit_code == 0 and "Traceback" not in again.output, again.output
    resumed = snapshot(results)
    assert resumed[NAME] == before[NAME] and len(finished(resumed["mid"])) == 2, resumed["mid"]


def test_disk_full_while_the_model_is_kept(case_dir: Path, monkeypatch):
    """ENOSPC while the best run's weights are written (the kept model's write site): one line
    naming the file, the kept model and the other study untouched, no temporary folder left,
    the trial's settings re-queued."""
    import errno

    import torch

    results = case_dir / "results"
    before = snapshot(results)
    model = {p.name: p.read_bytes() for p in (results / NAME / "model").iterdir()}

    def no_space(obj, path, *args, **kwargs):
        Path(path).write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(torch, "save", no_space)
    result = cli(MID, case_dir)
    assert result.exit_code == 1, result.output
    one_line(result, "results/mid/model.tmp-", "weights.pt", "the disk is full", "re-queued")
    after = snapshot(results)
    assert after[NAME] == before[NAME]
    assert [t[1] for t in after["mid"]] == ["FAIL", "WAITING"], after["mid"]
    assert {p.name: p.read_bytes() for p in (results / NAME / "model").iterdir()} == model
    assert not list((results / NAME).glob("model.*")), list((results / NAME).iterdir())
