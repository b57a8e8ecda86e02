"""The search space a study was made from, kept beside the study and referenced by its hash.

A study's user attributes stay short (what `optuna studies`, `optuna trials` and
optuna-dashboard print): the search-space hash, name, metric, dataset, description. The YAML text
and the effective configuration (overrides applied) go to ``RESULTS_DIR/STUDY/search_space-<first
12 hex digits of the hash>.json``, written by every ``deepsc-tune run`` that opens the study (so
each machine of a shared PostgreSQL study has its copy).

Why a file and not an Optuna artifact: Optuna's ``FileSystemArtifactStore`` is just as local to one
machine, its API is experimental, and a JSON file named by the hash is easy to read and to copy.

Studies written before this keep ``search_space_text`` and ``config`` as user attributes; every
reader here falls back to them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna

from deepsc_tune.config import SearchSpace, build_search_space
from deepsc_tune.errors import DeepscTuneError
from deepsc_tune.study._folder import StudyFolder, as_folder
from deepsc_tune.study._trial_record import SEARCH_SPACE_SHA256
from deepsc_tune.utils import write_text

#: Short study attributes a report needs without the configuration.
DESCRIPTION_CHARS = 200


def record_path(folder: StudyFolder | Path, sha256: str) -> Path:
    """``FOLDER/search_space-<sha[:12]>.json``: where the study folder's copy is written."""
    return as_folder(folder).record(sha256)


def summary_attrs(space: Any) -> dict[str, Any]:
    """The short study attributes describing the search space (no text, no configuration)."""
    config = space.config
    train = str((config.get("data") or {}).get("train") or "")
    dataset = train.split(":", 1)[1] if train.startswith("builtin:") else (Path(train).stem if train else "-")
    return {
        "dataset": dataset,
        "description": str(config.get("description") or "")[:DESCRIPTION_CHARS],
        "epoch": space.fixed.get("epoch"),
    }


def sqlite_folder(storage: Any) -> Path | None:
    """The folder of a SQLite study file (an RDB URL or storage), where its record goes by default."""
    url = storage if isinstance(storage, str) else getattr(storage, "url", "")
    if not str(url).startswith("sqlite:///"):
        return None
    path = str(url)[len("sqlite:///") :].split("?", 1)[0]
    return Path(path).parent if path and path != ":memory:" else None


def write_record(folder: StudyFolder | Path | None, space: Any) -> Path | None:
    """Write the search space's text and configuration beside the study, unless already there."""
    if folder is None:
        return None
    path = record_path(folder, space.sha256)
    if path.is_file():
        return path
    record = {
        "sha256": space.sha256,
        "name": space.name,
        "path": str(space.path) if space.path else None,
        "text": space.text,
        "config": json.loads(json.dumps(space.config, default=str)),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(record, indent=1) + "\n")
    return path


def read_record(study_attrs: Mapping[str, Any], folder: StudyFolder | Path | None) -> dict[str, Any] | None:
    """``{"text", "config", ...}`` of a study: its old user attributes, else the file beside it."""
    if isinstance(study_attrs.get("config"), dict):
        return {"config": study_attrs["config"], "text": study_attrs.get("search_space_text") or ""}
    sha = study_attrs.get("search_space_sha256")
    if folder is None or not sha:
        return None
    path = as_folder(folder).find_record(sha)
    try:
        record = json.loads(path.read_text()) if path is not None else None
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("config"), dict) else None


def config_value(study_attrs: Mapping[str, Any], key: str) -> Any:
    """``dataset`` / ``description`` / ``epoch`` of a study, new attributes or the old config."""
    if key in study_attrs:
        return study_attrs[key]
    config = study_attrs.get("config") or {}
    if key == "epoch":
        return (config.get("finetune") or {}).get("epoch")
    if key == "description":
        return config.get("description")
    if key == "dataset":
        train = str((config.get("data") or {}).get("train") or "")
        return train.split(":", 1)[1] if train.startswith("builtin:") else (Path(train).stem if train else "-")
    return None


def space_from_study(study: optuna.Study, *, record_dir: StudyFolder | Path | None = None) -> SearchSpace:
    """The search space the study was made from (as stored in it, overrides applied).

    Raises
    ------
    DeepscTuneError
        When the study holds no search space (not made by ``deepsc-tune run``).
    """
    record = read_record(study.user_attrs, record_dir)
    if record is None:
        sha = study.user_attrs.get(SEARCH_SPACE_SHA256)
        where = (
            f"; its search space is kept in {record_path(record_dir, sha)}, not on this machine: "
            "copy it from the machine that ran the search, or run `deepsc-tune run` once here"
            if sha and record_dir is not None
            else ""
        )
        raise DeepscTuneError(
            f"study '{study.study_name}' records no search space{where or ' (user attribute config)'}; "
            "only studies made by `deepsc-tune run` can be repeated"
        )
    return build_search_space(record["config"], text=record.get("text") or "")


def study_fixed(study: optuna.Study, record_dir: StudyFolder | Path | None = None) -> dict[str, Any]:
    """The fixed settings of the search space ``study`` was made from (its record in
    ``record_dir``); where that record is not on this machine, what the study itself says (its
    ``epoch``). With a trial's values they make its settings
    (:func:`~deepsc_tune.study._trial_record.trial_settings`)."""
    try:
        return dict(space_from_study(study, record_dir=record_dir).fixed)
    except DeepscTuneError:
        epoch = config_value(study.user_attrs, "epoch")
        return {"epoch": epoch} if epoch is not None else {}
