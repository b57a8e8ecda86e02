"""What every ``deepsc-tune`` command shares: exit codes, arguments and options, and the
one place that turns :class:`~deepsc_tune.errors.DeepscTuneError` into a red one-line message
and a non-zero exit code (:func:`user_errors`); loading a study or a backend for a command."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from deepsc_tune.errors import ConfigError, DeepscTuneError

EXIT_USAGE = 2  # bad search space or override
EXIT_ERROR = 1  # anything else the user can fix

NameArg = Annotated[
    str,
    typer.Argument(
        help="Search-space name (looked up in ./search_spaces/, then the installed ones) or path to a YAML file.",
        show_default=False,
    ),
]
OverridesArg = Annotated[
    Optional[list[str]],
    typer.Argument(
        help="Hydra-style overrides, values parsed as YAML: data.train=/x/train.h5ad "
        "finetune.epoch=5 study.n_trials=20; a bare key means finetune: learning_rate=3e-4.",
        show_default=False,
    ),
]
ResultsDirOpt = Annotated[Path, typer.Option("--results-dir", help="Folder for studies, caches and reports.")]
StorageOpt = Annotated[
    Optional[str],
    typer.Option(
        "--storage",
        envvar="DEEPSC_TUNE_STORAGE",
        help="Optuna RDB URL shared by all workers, e.g. postgresql://user:pw@host/db "
        "(or set DEEPSC_TUNE_STORAGE, which keeps the password out of `ps`). "
        "Default: sqlite:///RESULTS_DIR/STUDY/study.db. A database server's lost connection is "
        "retried for 60 s (DEEPSC_TUNE_DB_RETRY=SECONDS), then the command stops.",
        show_default=False,
    ),
]
StudyNameOpt = Annotated[
    Optional[str],
    typer.Option(
        "--study-name",
        help="Study name in the storage; its files are in RESULTS_DIR/STUDY. Default: the search space's name.",
        show_default=False,
    ),
]
StudyFolderOpt = Annotated[
    Optional[str],
    typer.Option(
        "--study-name",
        help="The study whose folder, RESULTS_DIR/STUDY, gets the files. Default: the search space's name.",
        show_default=False,
    ),
]


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the tool's own errors into a red message and an exit code, never a traceback."""
    try:
        yield
    except ConfigError as e:
        _fail(str(e), EXIT_USAGE)
    except DeepscTuneError as e:
        _fail(str(e), EXIT_ERROR)
    except OSError as e:  # the file system said no (read-only media, a file in the way, full disk)
        _fail(_os_error(e), EXIT_ERROR)
    except Exception as e:
        # A full disk met inside Optuna or SQLAlchemy (SQLite's "database or disk is full"):
        # one line naming the study file; anything else is a bug, with its traceback.
        from deepsc_tune.study import last_study_file
        from deepsc_tune.utils import disk_full

        full = None if isinstance(e, typer.Exit) else disk_full(e, last_study_file())
        if full is None:
            raise
        _fail(str(full), EXIT_ERROR)


#: Set by the console script (:func:`deepsc_tune.cli.entry`): this process ends with the
#: command, so a stopped command may leave SIGINT/SIGTERM ignored while it exits. Commands
#: invoked in-process (tests, a notebook) leave the handlers as they found them.
PROCESS_ENDS_WITH_COMMAND = False

#: How the one line after an interruption names its cause (see :mod:`deepsc_tune.utils._interrupts`).
_STOPPED_BY = {"SIGINT": "interrupted", "SIGTERM": "interrupted by SIGTERM", "stdout closed": "stdout was closed"}


@contextlib.contextmanager
def stops_end_the_command(what: str | None, *, prefix: str = "") -> Iterator[None]:
    """Run trials: Ctrl-C, SIGTERM and a closed stdout stop the command, one way for all.

    The runner has then recorded the running trial as FAIL with the reason and re-queued its
    settings (:mod:`deepsc_tune.utils._interrupts`); here one line goes to stderr, ``"interrupted:
    "`` + ``what`` (``None``: nothing, a worker whose parent speaks for it), and the exit status
    is 130 (SIGINT), 143 (SIGTERM) or 141 (stdout closed).
    """
    from deepsc_tune.utils import Interrupted, exit_code, stop_requests

    try:
        with stop_requests(process_ends=PROCESS_ENDS_WITH_COMMAND):
            yield
    except KeyboardInterrupt as e:
        if what is not None:
            cause = _STOPPED_BY[e.cause if isinstance(e, Interrupted) else "SIGINT"]
            typer.secho(f"\n{prefix}{cause}: {what}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(exit_code(e)) from None


def _os_error(e: OSError) -> str:
    import errno

    from deepsc_tune.utils import disk_full

    full = disk_full(e)
    if full is not None:
        return str(full)
    what = {
        errno.EROFS: "read-only file system",
        errno.EACCES: "not writable (permission denied)",
    }.get(e.errno or 0, e.strerror or str(e))
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{what}"


def _quiet_libraries() -> None:
    import optuna

    # Our own progress lines replace Optuna's per-trial log lines and failure tracebacks
    # (the reason of a failed trial is stored in the study and shown by `deepsc-tune status`).
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*is_categorical_dtype.*")
    logging.getLogger("anndata").setLevel(logging.ERROR)


def _echo(line: str) -> None:
    typer.echo(line)


def _storage_label(storage: str | None) -> str | None:
    """Where ``storage`` came from, for messages: ``--storage``, ``DEEPSC_TUNE_STORAGE`` (the
    option's value is the variable's) or ``None`` (not given: the default file under
    ``--results-dir``)."""
    import os

    if storage is None:
        return None
    return "DEEPSC_TUNE_STORAGE=" if os.environ.get("DEEPSC_TUNE_STORAGE") == storage else "--storage"


def _check_study_name(study_name: str | None) -> None:
    """``--study-name`` names a folder under ``--results-dir`` too: one plain folder name."""
    from deepsc_tune.config import folder_name_problem

    if study_name is not None and (why := folder_name_problem(study_name)):
        raise ConfigError(f"--study-name {study_name!r}: {why}")


def _check_device(space, device: str | None, overrides: list[str] | None = None) -> None:
    """The devices a command will train on, checked before anything is written: ``--device``,
    else ``finetune.device`` and any searched ``device`` (built-in fine-tuner only: a command
    backend's program chooses its own). Imports torch."""
    from deepsc_tune.backends import get_backend
    from deepsc_tune.backends.builtin import device_problem
    from deepsc_tune.config import override_paths

    if not get_backend(space.backend).in_process:
        return
    if device is not None:
        wanted = [("--device", device)]
    else:
        given = override_paths(overrides or [])
        file = f"{space.path}: " if space.path else ""

        def where(key: str) -> str:
            item = next((v for k, v in given.items() if k == key or k.startswith(f"{key}.")), None)
            return f"command-line override {item}: {key}" if item else f"{file}{key}"

        spec = space.params.get("device")
        searched = [(where("search.device"), c) for c in (spec.choices or ())] if spec is not None else []
        wanted = [(where("finetune.device"), space.fixed.get("device")), *searched]
    for what, value in wanted:
        why = None if value in (None, "auto") else device_problem(str(value))
        if why:
            raise ConfigError(f"{what} {value}: {why}")


def _study_folder(
    results_dir: Path, *, space_name: str, study_name: str | None, storage: str | None = None, echo: bool = True
):
    """The study's folder, RESULTS_DIR/STUDY (the space's name unless --study-name); a study kept
    as before in its search space's folder is found there and said so, once (on stderr, so that
    stdout stays what scripts read)."""
    from deepsc_tune.study import StudyFolder

    _check_study_name(study_name)
    name = study_name or space_name
    if storage is not None:  # the database is named; the files go to the study's own folder
        folder = StudyFolder(Path(results_dir), name)
    else:
        folder = StudyFolder.find(results_dir, name, space_name=space_name)
    if echo and folder.note:
        typer.secho(f"note: {folder.note}", fg=typer.colors.YELLOW, err=True)
    return folder


def _prepare(space, results_dir: Path, *, echo: bool = True):
    """Load and preprocess the data once (disk cache under RESULTS_DIR/cache)."""
    from deepsc_tune.data import prepare_data
    from deepsc_tune.study import cache_dir

    data = prepare_data(space.data_settings, cache_dir=cache_dir(results_dir), hint=space.source)
    if echo:
        n_test = 0 if data.X_test is None else len(data.X_test)
        _echo(
            f"data: {len(data.X_train)} train / {len(data.X_val)} val / {n_test} test cells, "
            f"{len(data.genes)} genes, {len(data.classes)} classes"
        )
        for note in data.notes:
            _echo(f"data: {note}")
        from deepsc_tune.data import validation_warning

        warning = validation_warning(data.y_val, data.classes)
        if warning:
            _echo(f"data: warning: {warning}")
    return data


def _make_finetuner(space, results_dir: Path, *, log=None, defaults=None, echo: bool = True):
    """The backend named by ``finetune.backend``, and the data fingerprint for the study."""
    from deepsc_tune.backends import get_backend

    backend = get_backend(space.backend)
    # A missing data file is reported before torch loads.
    data = _prepare(space, results_dir, echo=echo) if backend.in_process else None
    finetuner = backend.finetuner(space.settings, data, log=log, defaults=defaults)
    return finetuner, None if data is None else data.fingerprint


def _space_name(name: str) -> str:
    """The ``name:`` of a search space (its study's default name), without validating the file."""
    from deepsc_tune.config import parse_yaml, resolve_search_space_path
    from deepsc_tune.utils import read_yaml_text

    try:
        path = resolve_search_space_path(name)
        return str(parse_yaml(read_yaml_text(path), source=str(path)).get("name") or path.stem)
    except (DeepscTuneError, OSError):
        return Path(name).stem


def _load_study(name: str, results_dir: Path, storage: str | None, study_name: str | None):
    """Open an existing study for reading (the search-space file itself is not needed): the
    study, its backend and its :class:`~deepsc_tune.study._folder.StudyFolder`."""
    from deepsc_tune.study import command_args, load_existing_study, open_storage, study_backend

    _quiet_libraries()
    _check_study_name(study_name)
    space_name = _space_name(name)
    folder = _study_folder(results_dir, space_name=space_name, study_name=study_name, storage=storage)
    run_args = command_args(name, study_name, space_name)
    if storage is None and not folder.db.is_file():
        from deepsc_tune.study import find_databases, study_names

        there = sorted({n for db in find_databases(results_dir) for n in study_names(db)})
        raise DeepscTuneError(
            f"no study found at {folder.db} (no study '{folder.name}' under {results_dir}; studies there: "
            f"{', '.join(there) or '(none)'}); run `deepsc-tune run {run_args}` first (or give --results-dir / --storage)"
        )
    opened = open_storage(folder.storage_url(storage), heartbeat=False, label=_storage_label(storage))
    study = load_existing_study(storage=opened, study_name=folder.name, run_args=run_args)
    return study, study_backend(study.user_attrs), folder
