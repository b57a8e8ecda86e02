"""One study, one folder (study_folder.py): the paths of RESULTS_DIR/STUDY, a study kept as before
found where it is, and two studies of one search space in one results folder, every command on
each, the other's files byte-identical afterwards."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import sys
from pathlib import Path

import optuna
import pytest
from paths import FAKE_DEEPSC
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.study._file import study_names
from deepsc_tune.study._folder import StudyFolder, as_folder, command_args, find_databases

runner = CliRunner()
FAKE = FAKE_DEEPSC
A, B = "pbmc68k", "pbmc68k-lr"  # the space's own study, and the one lr-find's advice names
TINY = ["study.n_trials=2", "finetune.epoch=1"]
NOTE = "found in"  # the one line that says a study is kept as before


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def ok(*args: str):
    result = cli(*args)
    assert result.exit_code == 0, f"{args}: {result.output}"
    assert "Traceback" not in result.output
    return result


def settle() -> None:
    """Close the database connections the in-process commands left pooled, as their processes'
    exits would: SQLite then folds the write-ahead log into the file and removes -wal and -shm."""
    import gc

    from optuna.storages import RDBStorage

    gc.collect()
    for obj in gc.get_objects():
        if isinstance(obj, RDBStorage):
            obj.engine.dispose()


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file and folder under ``folder`` (relative path -> sha256 of the bytes, or 'dir'),
    once the connections of earlier commands are closed (:func:`settle`)."""
    settle()
    out = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        out[rel] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def load(db: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}")


# ----------------------------------------------------------------------------- the folder's paths


def test_paths_of_a_study_folder(tmp_path):
    folder = StudyFolder(tmp_path, B)
    assert folder.path == tmp_path / B
    assert folder.db == tmp_path / B / "study.db"
    assert folder.storage_url() == f"sqlite:///{tmp_path / B / 'study.db'}"
    assert folder.storage_url("postgresql://h/db") == "postgresql://h/db"
    assert folder.trial(7) == tmp_path / B / "trials" / "00007"
    assert folder.model == tmp_path / B / "model" and folder.models == [folder.model]
    assert folder.split == tmp_path / B / "split" and folder.finetune == tmp_path / B / "finetune"
    assert folder.report_html == tmp_path / B / "report.html"
    assert folder.lr_find_json == tmp_path / B / "lr_find.json"
    assert folder.record("ab" * 32) == tmp_path / B / f"search_space-{'ab' * 6}.json"
    assert folder.cache == tmp_path / "cache"
    assert folder.note is None
    assert as_folder(tmp_path / B) == folder and as_folder(folder) is folder and as_folder(None) is None


@pytest.mark.parametrize(
    ("name", "study", "space", "expected"),
    [
        ("pbmc68k", None, None, "pbmc68k"),
        ("pbmc68k", "pbmc68k", "pbmc68k", "pbmc68k"),
        ("pbmc68k", "pbmc68k-lr", "pbmc68k", "pbmc68k --study-name pbmc68k-lr"),
        ("spaces/x.yaml", "x", "x", "spaces/x.yaml"),
        ("spaces/x.yaml", "y", "x", "spaces/x.yaml --study-name y"),
    ],
)
def test_command_args_name_the_study(name, study, space, expected):
    assert command_args(name, study, space) == expected


def _old_db(results: Path, space: str, names: list[str]) -> Path:
    db = results / space / "study.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    for name in names:
        optuna.create_study(study_name=name, storage=f"sqlite:///{db}")
    return db


def test_find_a_study_kept_as_before_in_its_space_folder(tmp_path):
    db = _old_db(tmp_path, A, [A, B])
    folder = StudyFolder.find(tmp_path, B, space_name=A)
    assert folder.old == tmp_path / A and folder.db == db
    assert folder.path == tmp_path / B and folder.trials == tmp_path / B / "trials"  # new files: its own
    assert folder.models == [tmp_path / B / "model", tmp_path / A / "model"]
    assert folder.note.count("\n") == 0 and str(db) in folder.note and str(tmp_path / B) in folder.note
    # the space's own study, a study not in that database, and a study with its own folder: no old
    assert StudyFolder.find(tmp_path, A, space_name=A).old is None
    assert StudyFolder.find(tmp_path, "other", space_name=A).old is None
    _old_db(tmp_path, B, [B])
    assert StudyFolder.find(tmp_path, B, space_name=A) == StudyFolder(tmp_path, B)


def test_find_reads_another_folder_without_writing_beside_it(tmp_path):
    _old_db(tmp_path, A, [A])
    conn = sqlite3.connect(tmp_path / A / "study.db")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    before = tree_digest(tmp_path)
    assert StudyFolder.find(tmp_path, B, space_name=A).old is None
    assert study_names(tmp_path / A / "study.db") == [A]
    assert tree_digest(tmp_path) == before  # no -shm or -wal left beside another study's database
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "study.db").write_text("not a database")
    assert study_names(tmp_path / "junk" / "study.db") == []
    assert find_databases(tmp_path) == [tmp_path / "junk" / "study.db", tmp_path / A / "study.db"]


def test_find_reads_a_database_in_use_through_its_write_ahead_log(tmp_path):
    db = _old_db(tmp_path, A, [A])
    writer = sqlite3.connect(db)  # a run of the old layout still writing: its -wal and -shm exist
    try:
        writer.execute("PRAGMA journal_mode=WAL")
        optuna.create_study(study_name=B, storage=f"sqlite:///{db}")
        writer.execute("CREATE TABLE IF NOT EXISTS keep_open (x)")
        assert Path(f"{db}-wal").exists()
        assert sorted(study_names(db)) == [A, B]
        assert StudyFolder.find(tmp_path, B, space_name=A).old == tmp_path / A
    finally:
        writer.close()


def test_the_record_of_a_study_kept_as_before_is_read_from_the_old_folder(tmp_path):
    from deepsc_tune.study._space_record import read_record, record_path

    sha = "cd" * 32
    (tmp_path / A).mkdir()
    (tmp_path / A / f"search_space-{sha[:12]}.json").write_text(json.dumps({"config": {"name": A}}))
    folder = StudyFolder(tmp_path, B, old=tmp_path / A)
    assert read_record({"search_space_sha256": sha}, folder) == {"config": {"name": A}}
    assert read_record({"search_space_sha256": sha}, StudyFolder(tmp_path, B)) is None
    assert record_path(folder, sha) == tmp_path / B / f"search_space-{sha[:12]}.json"  # written: its own


# ----------------------------------------------------------------------------- hints name the study


def test_a_missing_study_names_its_run_command(tmp_path):
    missing = cli("status", A, "--results-dir", tmp_path, "--study-name", "nope")
    assert missing.exit_code == 1 and "Traceback" not in missing.output
    assert "run `deepsc-tune run pbmc68k --study-name nope` first" in missing.output
    assert str(tmp_path / "nope" / "study.db") in missing.output
    _old_db(tmp_path, "shared", ["other"])
    url = f"sqlite:///{tmp_path / 'shared' / 'study.db'}"
    elsewhere = cli("best", A, "--results-dir", tmp_path, "--storage", url, "--study-name", "nope")
    assert elsewhere.exit_code == 1 and "run `deepsc-tune run pbmc68k --study-name nope` first" in elsewhere.output


def test_the_reports_repeat_hint_names_the_study():
    from report_studies import add, const

    from deepsc_tune.results.report._files import build_report_data
    from deepsc_tune.results.report._page import render_report
    from deepsc_tune.study._trial_record import SEARCH_SPACE_NAME

    study = optuna.create_study(direction="maximize", study_name=B)
    study.set_user_attr(SEARCH_SPACE_NAME, A)
    add(study, optuna.trial.TrialState.COMPLETE, const(1e-4), [0.4, 0.6], epochs=2)
    page = render_report(build_report_data(study))
    assert "deepsc-tune repeat pbmc68k --study-name pbmc68k-lr --top 3" in page
    study.set_user_attr(SEARCH_SPACE_NAME, B)  # the space's own study
    assert "deepsc-tune repeat pbmc68k-lr --top 3" in render_report(build_report_data(study))


# ----------------------------------------------------------------------------- two studies, one results folder


def test_two_runs_in_one_results_folder_keep_apart(tmp_path):
    """The fast version of the tests below: the search and the read-only commands only."""
    results, r = tmp_path / "results", ["--results-dir", tmp_path / "results"]
    one = ["study.n_trials=1", "finetune.epoch=1"]
    ok("run", A, *r, *one)
    before = tree_digest(results / A)
    run = ok("run", A, *r, "--study-name", B, *one)
    for command in ("status", "best", "report"):
        ok(command, A, *r, "--study-name", B)
    assert tree_digest(results / A) == before
    assert "next: deepsc-tune report pbmc68k --study-name pbmc68k-lr" in run.output
    folder = StudyFolder(results, B)
    assert study_names(folder.db) == [B] and study_names(results / A / "study.db") == [A]
    assert (folder.trial(0) / "trial.json").is_file() and folder.report_html.is_file()
    assert json.loads((folder.model / "model.json").read_text())["study"] == B


def every_command(results: Path, study: str, tmp: Path, *, first: bool) -> dict[str, str]:
    """Every command on one study of the pbmc68k space; returns what `predict` and `run` printed."""
    r = ["--results-dir", results]
    s = [] if study == A else ["--study-name", study]
    trials = TINY if first else ["study.n_trials=3", "finetune.epoch=1"]  # a second run adds a trial
    run = ok("run", A, *r, *s, *trials)
    ok("status", A, *r, *s)
    status = json.loads(ok("status", A, *r, *s, "--json").stdout)
    assert status["study"] == study
    assert json.loads(ok("best", A, *r, *s, "--format", "json").stdout)["study"] == study
    ok("best", A, *r, *s)
    ok("report", A, *r, *s)
    ok("repeat", A, *r, *s, "--top", "1", "--seeds", "1")
    ok("lr-find", A, *r, *s, "--steps", "10", "epoch=1")
    ok("split", A, *r, *s)
    ok("finetune", A, *r, *s, "epoch=1")
    query = StudyFolder(results, study).split / "test.h5ad"
    predicted = ok("predict", A, query, *r, *s, "--out", tmp / f"{study}.h5ad", "--overwrite", "--device", "cpu")
    return {"run": run.output, "predict": predicted.output}


@pytest.fixture(scope="module")
def two_studies(tmp_path_factory):
    """pbmc68k and pbmc68k-lr in one results folder; every command on each, in turn."""
    tmp = tmp_path_factory.mktemp("two")
    results = tmp / "results"
    outputs, untouched = {}, {}
    outputs[A] = every_command(results, A, tmp, first=True)
    before = settled_digest(results / A)
    outputs[B] = every_command(results, B, tmp, first=True)
    untouched[A] = (before, settled_digest(results / A))
    before = settled_digest(results / B)
    outputs[A] = every_command(results, A, tmp, first=False)
    untouched[B] = (before, settled_digest(results / B))
    return results, tmp, outputs, untouched


def settled_digest(folder: Path) -> dict[str, str]:
    """The folder's digest once the commands run before have let go of their databases.

    The commands run in this process (CliRunner); a study's SQLite connections live until the
    garbage collector frees its storage, and the last one to close folds the write-ahead log
    into study.db (its bytes change, -wal and -shm go), which a separate process does as it
    exits. Collecting first makes that happen before the digest, not at a random later moment
    during the other study's commands."""
    import gc

    gc.collect()
    return tree_digest(folder)


@pytest.mark.slow  # every command on two studies, about a minute
@pytest.mark.parametrize("study", [A, B])
def test_every_command_on_one_study_leaves_the_other_byte_identical(two_studies, study):
    _, _, _, untouched = two_studies
    before, after = untouched[study]
    assert {"study.db", "trials/00000/trial.json", "model/model.json", "report.html", "lr_find.json"} <= set(before)
    assert "split/test.h5ad" in before  # (the built-in finetune writes no files of its own)
    assert after == before


@pytest.mark.slow  # every command on two studies, about a minute
def test_each_study_keeps_its_own_files(two_studies):
    results, _, outputs, _ = two_studies
    for study in (A, B):
        folder = StudyFolder(results, study)
        assert study_names(folder.db) == [study]  # its own database, one study in it
        trials = load(folder.db, study).get_trials()
        assert sorted(p.name for p in folder.trials.iterdir()) == [f"{t.number:05d}" for t in trials]
        assert json.loads((folder.model / "model.json").read_text())["study"] == study
        assert len(list(folder.path.glob("search_space-*.json"))) == 1
        assert f"<title>{study}: deepsc-tune report</title>" in folder.report_html.read_text()
    assert not (results / A / B).exists()  # no report of one study inside the other's folder
    assert "next: deepsc-tune report pbmc68k --study-name pbmc68k-lr" in outputs[B]["run"]
    assert f"HTML report in {results / B}" in outputs[B]["run"]
    assert "next: deepsc-tune report pbmc68k " in outputs[A]["run"] and "--study-name" not in outputs[A]["run"]


@pytest.mark.slow  # every command on two studies, about a minute
@pytest.mark.parametrize("study", [A, B])
def test_predict_names_and_uses_the_studys_own_model(two_studies, study):
    import anndata

    results, tmp, outputs, _ = two_studies
    card = json.loads((StudyFolder(results, study).model / "model.json").read_text())
    assert card["study"] == study
    assert f"model: trial {card['trial']} of study '{study}'" in outputs[study]["predict"]
    assert anndata.read_h5ad(tmp / f"{study}.h5ad").uns["deepsc_tune"]["study"] == study


@pytest.mark.slow  # every command on two studies, about a minute
def test_the_index_reports_each_study_in_its_own_folder(two_studies, tmp_path):
    results, _, _, _ = two_studies
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    index = ok("report", "--results-dir", copy)
    assert f"report: {copy / A / 'report.html'}" in index.output
    assert f"report: {copy / B / 'report.html'}" in index.output
    assert NOTE not in index.output and not (copy / A / B).exists()


# ----------------------------------------------------------------------------- a study kept as before


@pytest.fixture
def old_layout(two_studies, tmp_path) -> Path:
    """Study pbmc68k-lr as the old layout kept it: its database, trials, model and search space
    in results/pbmc68k/ (here the only study there), nothing in results/pbmc68k-lr/."""
    results, _, _, _ = two_studies
    old = tmp_path / "results"
    shutil.copytree(results / B, old / A)
    shutil.copytree(results / "cache", old / "cache")
    for name in ("report.html", "trials.csv", "best.yaml", "lr_find.html", "lr_find.json"):
        (old / A / name).unlink(missing_ok=True)
    return old


@pytest.mark.slow  # every command on two studies, about a minute
def test_a_study_kept_as_before_is_found_and_said_so_once(old_layout, tmp_path):
    r, s = ["--results-dir", old_layout], ["--study-name", B]
    db = old_layout / A / "study.db"
    before = load(db, B).get_trials()
    for args in (("status",), ("status", "--json"), ("best",), ("best", "--format", "hydra"), ("report",)):
        result = ok(args[0], A, *r, *s, *args[1:])
        assert result.stderr.count(NOTE) == 1, (args, result.stderr)
        assert str(db) in result.stderr and NOTE not in result.stdout  # stdout stays what scripts read
    assert (old_layout / B / "report.html").is_file()  # the report: in its own folder
    repeat = ok("repeat", A, *r, *s, "--top", "1", "--seeds", "2")  # was: "cannot open the study database"
    assert repeat.stderr.count(NOTE) == 1
    assert "next: deepsc-tune report pbmc68k --study-name pbmc68k-lr" in repeat.output
    after = load(db, B).get_trials()
    assert len(after) == len(before) + 1  # the repeat went into the study where it is
    assert (old_layout / B / "trials" / f"{after[-1].number:05d}" / "trial.json").is_file()
    assert not (old_layout / A / "trials" / f"{after[-1].number:05d}").exists()
    assert not (old_layout / B / "study.db").exists()  # nothing moved, no second database


@pytest.mark.slow  # every command on two studies, about a minute
def test_predict_finds_a_study_kept_as_before_and_refuses_another_studys_model(old_layout, tmp_path):
    r = ["--results-dir", old_layout]
    query = old_layout / A / "split" / "test.h5ad"
    kept = ok("predict", A, query, *r, "--study-name", B, "--out", tmp_path / "b.h5ad", "--device", "cpu")
    assert f"of study '{B}'" in kept.output and kept.stderr.count(NOTE) == 1
    other = cli("predict", A, query, *r, "--out", tmp_path / "a.h5ad", "--device", "cpu")
    assert other.exit_code == 1 and "Traceback" not in other.output
    assert f"is study '{B}'s, not study '{A}'s" in other.output and f"--study-name {B}" in other.output
    assert not (tmp_path / "a.h5ad").exists()
    # the space's own study starts: the other study's model moves to its own folder, not replaced
    card = (old_layout / A / "model" / "model.json").read_text()
    ok("run", A, *r, *TINY)
    assert (old_layout / B / "model" / "model.json").read_text() == card
    assert json.loads((old_layout / A / "model" / "model.json").read_text())["study"] == A
    assert sorted(study_names(old_layout / A / "study.db")) == [A, B]


@pytest.mark.slow  # every command on two studies, about a minute
def test_a_run_resumes_a_study_kept_as_before(old_layout):
    r, s = ["--results-dir", old_layout], ["--study-name", B]
    before = len(load(old_layout / A / "study.db", B).get_trials())
    run = ok("run", A, *r, *s, "study.n_trials=4", "finetune.epoch=1")
    assert run.stderr.count(NOTE) == 1
    assert len(load(old_layout / A / "study.db", B).get_trials()) > before
    assert not (old_layout / B / "study.db").exists()
    assert len(list((old_layout / B).glob("search_space-*.json"))) == 1  # its own copy from now on


# ----------------------------------------------------------------------------- DeepSC: best --format hydra


def _command_space(tmp_path: Path) -> Path:
    space = tmp_path / "fake.yaml"
    space.write_text(
        f"""name: fake
data: {{train: builtin:pbmc68k_reduced, label_key: bulk_labels}}
finetune:
  backend: command
  command: [{json.dumps(sys.executable)}, {json.dumps(str(FAKE))}]
  cwd: {json.dumps(str(tmp_path))}
  new_keys: [sleep, num_workers]
  overrides: {{sleep: 0.0, num_workers: 0}}
  epoch: 2
search:
  learning_rate: {{low: 1.0e-5, high: 1.0e-3, log: true}}
study: {{n_trials: 2, sampler: {{type: tpe, seed: 0}}}}
"""
    )
    return space


def test_best_hydra_rebuilds_the_command_from_the_right_studys_trial_file(tmp_path):
    space, results = _command_space(tmp_path), tmp_path / "results"
    r = ["--results-dir", results]
    ok("run", space, *r)
    ok("run", space, *r, "--study-name", "fake-2", "finetune.epoch=3")
    for study, epochs in (("fake", "epoch=2"), ("fake-2", "epoch=3")):
        folder = StudyFolder(results, study)
        best = load(folder.db, study).best_trial.number
        record = folder.trial(best) / "trial.json"
        details = json.loads(record.read_text())
        assert any(a == epochs for a in details["argv"])
        details["argv"] = [*details["argv"], f"+marker={study}"]  # only this file knows it
        record.write_text(json.dumps(details))
    for study in ("fake", "fake-2"):
        s = [] if study == "fake" else ["--study-name", study]
        hydra = ok("best", space, *r, *s, "--format", "hydra").stdout.split()
        other = "fake-2" if study == "fake" else "fake"
        assert f"+marker={study}" in hydra and f"+marker={other}" not in hydra
