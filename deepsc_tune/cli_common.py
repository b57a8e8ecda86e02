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
        "Default: sqlite:///RESULTS_DIR/NAME/study.db. A database server's lost connection is "
        "retried for 60 s (DEEPSC_TUNE_DB_RETRY=SECONDS), then the command stops.",
        show_default=False,
    ),
]
StudyNameOpt = Annotated[
    Optional[str],
    typer.Option(
        "--study-name", help="Study name in the storage. Default: the search space's name.", show_default=False
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


#: How the one line after an interruption names its cause (see :mod:`deepsc_tune.interrupts`).
_STOPPED_BY = {"SIGINT": "interrupted", "SIGTERM": "interrupted by SIGTERM", "stdout closed": "stdout was closed"}


@contextlib.contextmanager
def stops_end_the_command(what: str | None, *, prefix: str = "") -> Iterator[None]:
    """Run trials: Ctrl-C, SIGTERM and a closed stdout stop the command, one way for all.

    The runner has then recorded the running trial as FAIL with the reason and re-queued its
    settings (:mod:`deepsc_tune.interrupts`); here one line goes to stderr, ``"interrupted:
    "`` + ``what`` (``None``: nothing, a worker whose parent speaks for it), and the exit status
    is 130 (SIGINT), 143 (SIGTERM) or 141 (stdout closed).
    """
    from deepsc_tune.interrupts import Interrupted, exit_code, stop_requests

    try:
        with stop_requests():
            yield
    except KeyboardInterrupt as e:
        if what is not None:
            cause = _STOPPED_BY[e.cause if isinstance(e, Interrupted) else "SIGINT"]
            typer.secho(f"\n{prefix}{cause}: {what}", fg=typer.colors.YELLOW, err=True)
        raise typer.Exit(exit_code(e)) from None


def _os_error(e: OSError) -> str:
    import errno

    what = {
        errno.EROFS: "read-only file system",
        errno.EACCES: "not writable (permission denied)",
        errno.ENOSPC: "no space left on the device",
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


def _storage_url(name: str, results_dir: Path, storage: str | None) -> str:
    from deepsc_tune.storage import default_storage_url

    return storage or default_storage_url(name, results_dir)


def _prepare(space, results_dir: Path, *, echo: bool = True):
    """Load and preprocess the data once (disk cache under RESULTS_DIR/cache)."""
    from deepsc_tune.data import prepare_data

    data = prepare_data(space.data_settings, cache_dir=results_dir / "cache", hint=space.source)
    if echo:
        n_test = 0 if data.X_test is None else len(data.X_test)
        _echo(
            f"data: {len(data.X_train)} train / {len(data.X_val)} val / {n_test} test cells, "
            f"{len(data.genes)} genes, {len(data.classes)} classes"
        )
        for note in data.notes:
            _echo(f"data: {note}")
        from deepsc_tune.data_split import validation_warning

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
    """The ``name:`` of a search space (its results folder), without validating the file."""
    from deepsc_tune.search_space import parse_yaml, resolve_search_space_path
    from deepsc_tune.yaml_file import read_yaml_text

    try:
        path = resolve_search_space_path(name)
        return str(parse_yaml(read_yaml_text(path), source=str(path)).get("name") or path.stem)
    except (DeepscTuneError, OSError):
        return Path(name).stem


def _load_study(name: str, results_dir: Path, storage: str | None, study_name: str | None):
    """Open an existing study for reading (the search-space file itself is not needed)."""
    from deepsc_tune.storage import open_storage
    from deepsc_tune.study import load_existing_study
    from deepsc_tune.trial_record import study_backend

    _quiet_libraries()
    folder = _space_name(name)
    study_name = study_name or folder
    db = results_dir / folder / "study.db"
    if storage is None and not db.is_file():
        raise DeepscTuneError(
            f"no study found at {db}; run `deepsc-tune run {name}` first (or give --results-dir / --storage)"
        )
    url = storage or f"sqlite:///{db}"
    study = load_existing_study(storage=open_storage(url, heartbeat=False), study_name=study_name)
    return study, study_backend(study.user_attrs)
