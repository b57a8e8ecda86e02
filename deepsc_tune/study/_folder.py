"""One study, one folder: everything deepsc-tune keeps of a study lives in ``RESULTS_DIR/STUDY/``.

``STUDY`` is the study's name: the search space's ``name:`` unless ``--study-name`` gives
another, so two studies of one search space never write into each other's folder::

    RESULTS_DIR/STUDY/study.db                  the Optuna study (unless --storage names a database)
    RESULTS_DIR/STUDY/search_space-<sha12>.json the search space it was made from (study/_space_record.py)
    RESULTS_DIR/STUDY/trials/NNNNN/             each trial's run folder and trial.json
    RESULTS_DIR/STUDY/model/                    the best run's weights (backends/builtin/_tuned_model.py)
    RESULTS_DIR/STUDY/report.html, trials.csv, best.yaml
    RESULTS_DIR/STUDY/lr_find.html, lr_find.json
    RESULTS_DIR/STUDY/split/, finetune/         `deepsc-tune split` and `finetune`
    RESULTS_DIR/cache/                          prepared data, shared by all studies (keyed by content)

Before this, a study named other than its search space kept its database (and its trials and
model, overwriting those of the space's own study) in ``RESULTS_DIR/SPACE/``. Such a study is
still found: :meth:`StudyFolder.find` returns its folder with ``old`` set to that folder, its
database stays where it is, the search-space record and a model whose card names the study are
still read from there, and everything new is written to its own folder. Nothing is moved.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from deepsc_tune.backends.builtin import model_lock, read_card
from deepsc_tune.errors import DeepscTuneError

DB_FILE = "study.db"
TRIALS_DIR = "trials"
MODEL_DIR = "model"
SPLIT_DIR = "split"
FINETUNE_DIR = "finetune"
CACHE_DIR = "cache"
REPORT_HTML = "report.html"
TRIALS_CSV = "trials.csv"
BEST_YAML = "best.yaml"
LR_FIND_HTML = "lr_find.html"
LR_FIND_JSON = "lr_find.json"
INDEX_HTML = "index.html"


def trial_dir(trials: Path, number: int) -> Path:
    """A trial's run folder: ``TRIALS/NNNNN`` (its log, its ``trial.json``, the program's files)."""
    return Path(trials) / f"{number:05d}"


def record_name(sha256: str) -> str:
    """``search_space-<sha[:12]>.json``: the file of a search space, named by its hash."""
    return f"search_space-{sha256[:12]}.json"


def cache_dir(results_dir: Path) -> Path:
    """``RESULTS_DIR/cache``: prepared data, shared by every study (keyed by the data's content)."""
    return Path(results_dir) / CACHE_DIR


def find_databases(results_dir: Path) -> list[Path]:
    """``RESULTS_DIR/*/study.db``, sorted by folder name."""
    return sorted(Path(results_dir).glob(f"*/{DB_FILE}"))


def command_args(name: str, study_name: str | None, space_name: str | None = None) -> str:
    """What names a study on the command line: ``NAME``, or ``NAME --study-name STUDY`` when the
    study is not the search space's own (``space_name``, default ``NAME``)."""
    if not study_name or study_name == (space_name or name):
        return name
    return f"{name} --study-name {study_name}"


def as_folder(folder: StudyFolder | Path | str | None) -> StudyFolder | None:
    """A :class:`StudyFolder` for a library call given one, a path to the folder, or nothing."""
    if folder is None or isinstance(folder, StudyFolder):
        return folder
    return StudyFolder.at(Path(folder))


@dataclass(frozen=True)
class StudyFolder:
    """The folder of one study, ``results_dir / name``, and the paths of what it holds.

    Parameters
    ----------
    results_dir
        ``--results-dir``.
    name
        The study's name (the search space's name unless ``--study-name``).
    old
        For a study kept the way it was before each study had its own folder: the folder that
        holds its database (``RESULTS_DIR/SPACE``). ``None`` otherwise.
    """

    results_dir: Path
    name: str
    old: Path | None = None

    @classmethod
    def at(cls, path: Path) -> StudyFolder:
        """The study folder ``path`` (its parent is the results folder)."""
        path = Path(path)
        return cls(path.parent, path.name)

    @classmethod
    def find(cls, results_dir: Path, name: str, *, space_name: str | None = None) -> StudyFolder:
        """Study ``name``'s folder: its own, or (a study from before) the space's folder that
        holds its database, when its own has none."""
        from deepsc_tune.study._file import study_names

        folder = cls(Path(results_dir), name)
        if not space_name or space_name == name or folder.db.is_file():
            return folder
        old = Path(results_dir) / space_name
        if (old / DB_FILE).is_file() and name in study_names(old / DB_FILE):
            return cls(Path(results_dir), name, old=old)
        return folder

    @property
    def path(self) -> Path:
        return self.results_dir / self.name

    @property
    def db(self) -> Path:
        """The SQLite study file (in the old folder for a study from before)."""
        return (self.old if self.old is not None else self.path) / DB_FILE

    def storage_url(self, storage: str | None = None) -> str:
        """``--storage`` when given, else ``sqlite:///`` of :attr:`db`."""
        return storage or f"sqlite:///{self.db}"

    @property
    def trials(self) -> Path:
        return self.path / TRIALS_DIR

    def trial(self, number: int) -> Path:
        """A trial's run folder: ``trials/NNNNN`` (:func:`trial_dir`)."""
        return trial_dir(self.trials, number)

    @property
    def model(self) -> Path:
        return self.path / MODEL_DIR

    @property
    def models(self) -> list[Path]:
        """Where a kept model may be: its own folder, then (a study from before) the old one."""
        return [self.model] + ([self.old / MODEL_DIR] if self.old is not None else [])

    @property
    def split(self) -> Path:
        return self.path / SPLIT_DIR

    @property
    def finetune(self) -> Path:
        return self.path / FINETUNE_DIR

    @property
    def cache(self) -> Path:
        return cache_dir(self.results_dir)

    @property
    def report_html(self) -> Path:
        return self.path / REPORT_HTML

    @property
    def lr_find_json(self) -> Path:
        return self.path / LR_FIND_JSON

    def record(self, sha256: str) -> Path:
        """Where this study writes its search space's record."""
        return self.path / record_name(sha256)

    def find_record(self, sha256: str) -> Path | None:
        """The record of a search space: in its own folder, else (a study from before) the old one."""
        for folder in (self.path, self.old):
            if folder is not None and (folder / record_name(sha256)).is_file():
                return folder / record_name(sha256)
        return None

    @property
    def note(self) -> str | None:
        """One line for a study from before (``None`` for the others)."""
        if self.old is None:
            return None
        return (
            f"study '{self.name}' found in {self.db} (the layout from before each study had its own "
            f"folder); its database stays there, its new files go to {self.path}"
        )


__all__ = [
    "BEST_YAML",
    "DB_FILE",
    "INDEX_HTML",
    "LR_FIND_HTML",
    "LR_FIND_JSON",
    "MODEL_DIR",
    "REPORT_HTML",
    "TRIALS_CSV",
    "StudyFolder",
    "as_folder",
    "cache_dir",
    "command_args",
    "find_databases",
    "record_name",
    "trial_dir",
]


# The tuned model of a study (the built-in fine-tuner keeps it in the study's folder).


def rehome_model(folder: StudyFolder) -> Path | None:
    """Move another study's model out of ``folder.model`` into that study's own folder (where it
    is kept since each study has its own), so that this study's runs do not replace it. Returns
    where it went, or ``None`` when there was nothing to move (or that folder has a model)."""
    card = read_card(folder.model)
    other = card.get("study") if card is not None else None
    if not other or other == folder.name or not isinstance(other, str) or "/" in other:
        return None
    target = StudyFolder(folder.results_dir, other).model
    if target.exists():
        return None
    with model_lock(folder.model):
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(folder.model, target)
    return target


def study_model(folder: StudyFolder, *, space_name: str | None = None) -> Path:
    """The model folder of study ``folder.name``: its own (``RESULTS_DIR/STUDY/model``), else, for
    a study from before, the old folder's when its card names this study.

    Raises
    ------
    DeepscTuneError
        When the only model found is another study's (kept in a shared folder before each study
        had its own), instead of predicting with it.
    """
    others = []
    for path in folder.models:
        card = read_card(path)
        if card is None:
            continue
        if card.get("study") == folder.name:
            return path
        others.append((path, card.get("study")))
    if others:
        path, study = others[0]
        raise DeepscTuneError(
            f"the model in {path} is study '{study}'s, not study '{folder.name}'s (kept there before each "
            f"study had its own folder); predict with --study-name {study} to use it; this study's "
            f"next trials (`deepsc-tune run {command_args(space_name or 'NAME', folder.name, space_name)}`) keep its own in {folder.model}"
        )
    return folder.model
