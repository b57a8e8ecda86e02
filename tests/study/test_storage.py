"""storage.py: storage URLs, opening the study database, heartbeat settings."""

from __future__ import annotations

import optuna
import pytest

from deepsc_tune.errors import ConfigError, DeepscTuneError
from deepsc_tune.study._storage import (
    default_storage_url,
    heartbeat_settings,
    open_storage,
    redact,
    remember,
    storage_of,
    with_driver,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@db:5432/study", "postgresql+psycopg://u:pw@db:5432/study"),
        ("postgres://u@db/study", "postgresql+psycopg://u@db/study"),
        ("postgresql+psycopg2://u@db/study", "postgresql+psycopg2://u@db/study"),
        ("sqlite:///results/x/study.db", "sqlite:///results/x/study.db"),
    ],
)
def test_bare_postgresql_urls_use_the_installed_driver(url, expected, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "psycopg2" else real(name, *a))
    assert with_driver(url) == expected


def test_heartbeat_settings_from_environment(monkeypatch):
    monkeypatch.delenv("DEEPSC_TUNE_HEARTBEAT", raising=False)
    monkeypatch.delenv("DEEPSC_TUNE_GRACE", raising=False)
    assert heartbeat_settings() == (10, 30)
    monkeypatch.setenv("DEEPSC_TUNE_HEARTBEAT", "1")
    monkeypatch.setenv("DEEPSC_TUNE_GRACE", "3")
    assert heartbeat_settings() == (1, 3)
    monkeypatch.setenv("DEEPSC_TUNE_GRACE", "1")
    with pytest.raises(ConfigError, match="DEEPSC_TUNE_GRACE=1 must be longer"):
        heartbeat_settings()
    monkeypatch.setenv("DEEPSC_TUNE_HEARTBEAT", "0.5")
    with pytest.raises(ConfigError, match="DEEPSC_TUNE_HEARTBEAT='0.5'"):
        heartbeat_settings()


def test_storage_errors_are_clear(tmp_path):
    with pytest.raises(DeepscTuneError, match="--storage"):
        open_storage(f"sqlite:///{tmp_path}/no/such/dir/study.db")


def test_default_storage_url_creates_the_folder_or_says_why_not(tmp_path):
    assert default_storage_url("curve", tmp_path) == f"sqlite:///{tmp_path / 'curve' / 'study.db'}"
    assert (tmp_path / "curve").is_dir()
    (tmp_path / "file").write_text("")
    with pytest.raises(DeepscTuneError, match="--results-dir .*is a file, not a folder"):
        default_storage_url("curve", tmp_path / "file")


def test_redact_hides_the_password():
    assert redact("postgresql://user:secret@db:5432/study") == "postgresql://user:***@db:5432/study"
    assert redact("sqlite:///results/x/study.db") == "sqlite:///results/x/study.db"


def test_redact_shows_no_part_of_a_password_with_an_at_sign():
    # SQLAlchemy reads u:p@ss@host as password "p", host "ss@host": nothing before the last @.
    assert redact("postgresql+psycopg://u:p@ss@db:5432/x") == "postgresql+psycopg://***@db:5432/x"
    assert redact("postgresql://u:p%40ss@db/x") == "postgresql://u:***@db/x"
    assert redact("postgres:/u:secret@db/x") == "***@db/x"  # not a URL: nothing before the @
    assert redact("postgresql://u@db/x?password=secret&sslmode=require") == (
        "postgresql://u@db/x?password=***&sslmode=require"
    )


def test_scrub_hides_the_password_in_a_driver_message():
    from deepsc_tune.study._storage import scrub

    url = "postgresql://u:p%40ss@db/x"
    assert scrub("failed for p@ss and p%40ss", url) == "failed for *** and ***"
    assert scrub("password secret refused", "postgresql://u@db/x?password=secret") == "password *** refused"


def test_a_study_remembers_the_storage_it_was_opened_on(tmp_path):
    storage = open_storage(default_storage_url("curve", tmp_path), heartbeat=False)
    study = optuna.create_study(study_name="curve", storage=storage)
    assert storage_of(study) is None
    assert remember(study, storage) is study and storage_of(study) is storage


def test_a_study_file_deleted_or_replaced_under_a_writer_is_noticed(tmp_path):
    import os
    import shutil

    from deepsc_tune.study._file import StudyFileGone, check_study_file_unchanged

    url = f"sqlite:///{tmp_path / 'study.db'}"
    storage = open_storage(url)
    check_study_file_unchanged(storage)  # untouched: fine
    shutil.copy(tmp_path / "study.db", tmp_path / "copy.db")
    os.replace(tmp_path / "copy.db", tmp_path / "study.db")
    with pytest.raises(StudyFileGone, match="was replaced"):
        check_study_file_unchanged(storage)
    (tmp_path / "study.db").unlink()
    with pytest.raises(StudyFileGone, match="was deleted"):
        check_study_file_unchanged(storage)
    storage.engine.dispose()
