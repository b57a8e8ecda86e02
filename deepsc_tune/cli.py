"""The ``deepsc-tune`` command line: a thin shell over plain functions.

This is the only module that turns :class:`~deepsc_tune.errors.DeepscTuneError` into a red
one-line message and a non-zero exit code.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Optional

import typer

from deepsc_tune import __version__
from deepsc_tune.errors import ConfigError, DeepscTuneError
from deepsc_tune.processes import EXIT_INTERRUPTED

app = typer.Typer(
    name="deepsc-tune",
    help=(
        "Hyperparameter search for DeepSC cell-type fine-tuning, built on Optuna.\n\n"
        "Typical use: `deepsc-tune run pbmc68k` (search; run again to resume), "
        "`deepsc-tune report pbmc68k` (HTML report), `deepsc-tune best pbmc68k --format hydra` "
        "(the winning settings for DeepSC)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Markdown joins the docstrings' wrapped lines into paragraphs in --help.
    rich_markup_mode="markdown",
)

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
        "Default: sqlite:///RESULTS_DIR/NAME/study.db.",
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


# ----------------------------------------------------------------------------- commands


@app.command()
def run(
    name: NameArg,
    overrides: OverridesArg = None,
    results_dir: ResultsDirOpt = Path("results"),
    storage: StorageOpt = None,
    study_name: StudyNameOpt = None,
    device: Annotated[
        Optional[str],
        typer.Option(
            help="Built-in fine-tuner device: auto, cpu or cuda (mixed precision on CUDA).", show_default=False
        ),
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(
            help="Torch CPU threads per worker (default: torch's choice; with --workers N: cores // N).",
            show_default=False,
        ),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="One line per epoch.")] = False,
    workers: Annotated[
        Optional[int],
        typer.Option(
            "--workers",
            "-j",
            help="Worker processes on this machine, all on this study (default 1, or one per --gpus entry).",
            show_default=False,
        ),
    ] = None,
    gpus: Annotated[
        Optional[str],
        typer.Option(
            "--gpus",
            help="GPUs for the workers, e.g. 0,1,2,3: one each (CUDA_VISIBLE_DEVICES), handed out in turn.",
            show_default=False,
        ),
    ] = None,
    worker_id: Annotated[
        Optional[str],
        typer.Option(
            "--worker-id",
            help="Label for this worker's progress lines, e.g. "
            "$SLURM_ARRAY_TASK_ID when many machines share one --storage.",
            show_default=False,
        ),
    ] = None,
    parent_pid: Annotated[Optional[int], typer.Option("--parent-pid", hidden=True)] = None,
    timeout: Annotated[
        Optional[float],
        typer.Option(
            "--timeout",
            help="Time budget in seconds (default: study.timeout): no trial "
            "starts after it; the running one finishes. Run again to go on.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Run (or resume) the hyperparameter search for NAME.

    Trials run until the study holds study.n_trials finished (complete or pruned) trials. The
    study lives in RESULTS_DIR/NAME/study.db unless --storage names a shared database; running
    the same command again resumes it. Ctrl-C records the running trial as FAIL ("interrupted")
    and re-queues its settings.

    --workers N (or --gpus 0,1,...) runs N worker processes on this machine; the same command
    on other machines with one --storage postgresql://... joins the same study (docs/distributed.md).
    """
    from deepsc_tune.backends import get_backend
    from deepsc_tune.confirm import run_confirmation
    from deepsc_tune.progress import Progress
    from deepsc_tune.search_space import load_search_space
    from deepsc_tune.storage import open_storage
    from deepsc_tune.study import open_study, run_study, sampler_label
    from deepsc_tune.workers import parse_gpus, plan_workers, sigterm_as_interrupt, watch_parent

    _quiet_libraries()
    child = parent_pid is not None  # started by another `run --workers`: quiet, no summary
    prefix = f"[{worker_id}] " if worker_id else ""
    with user_errors():
        gpu_list = parse_gpus(gpus)
        plans = plan_workers(workers=workers, gpus=gpu_list, threads=threads)
        if len(plans) == 1 and not gpu_list:
            plans = []  # one worker without a GPU to pin: this process is the worker
        # check_deepsc: a key DeepSC would refuse stops here, not after a trial's start-up.
        space = load_search_space(name, overrides or [], check_deepsc=True)
        if not child:
            for note in space.notes:
                _echo(f"{prefix}note: {note}")
        budget = _time_budget(timeout, space.timeout)
        study_name = study_name or space.name
        url = _storage_url(space.name, results_dir, storage)
        opened = open_storage(url)  # a bad --storage is reported before the data are prepared
        defaults = {k: v for k, v in (("device", device), ("num_threads", threads)) if v is not None}
        data = None
        if plans:  # the workers train; here the data are only prepared (cached) for them
            data = _prepare(space, results_dir) if get_backend(space.backend).in_process else None
            fingerprint = data.fingerprint if data is not None else None
        else:
            finetuner, fingerprint = _make_finetuner(space, results_dir, defaults=defaults, echo=not child)
            data = getattr(finetuner, "data", None)
        study = open_study(
            space,
            storage=opened,
            study_name=study_name,
            data_fingerprint=fingerprint,
            worker=sampler_label(url, worker_id),
            record_dir=results_dir / space.name,
        )
        _record_chance_levels(study, data)
        if not child:
            _echo(
                f"{prefix}study '{study_name}' in {_short_url(url)}: {_describe_trials(study)}, "
                f"target {space.n_trials} finished; optimising {space.metric}"
            )
        if plans:
            _run_workers(
                plans,
                name=name,
                overrides=overrides or [],
                results_dir=results_dir,
                url=url,
                study_name=study_name,
                device=device,
                verbose=verbose,
                timeout=budget.seconds,
            )
            summary = _summarise(study, space, budget=budget)
        else:
            if child:
                watch_parent(parent_pid)
            progress = Progress(metric=space.metric, verbose=verbose, prefix=prefix)
            _keep_models(finetuner, space, study, results_dir / space.name)
            try:
                with sigterm_as_interrupt():
                    summary = run_study(
                        space,
                        finetuner,
                        study=study,
                        progress=progress,
                        trials_dir=results_dir / space.name / "trials",
                        stop=budget.spent,
                    )
                    confirmed = run_confirmation(
                        space,
                        finetuner,
                        study=study,
                        storage=opened,
                        progress=progress,
                        trials_dir=results_dir / space.name / "trials",
                    )
            except KeyboardInterrupt:
                if not child:  # the parent says it once for all its workers
                    typer.secho(
                        f"\n{prefix}interrupted: the running trial is recorded as FAIL (interrupted) "
                        f"and its settings re-queued; run the same command to resume.",
                        fg=typer.colors.YELLOW,
                        err=True,
                    )
                raise typer.Exit(EXIT_INTERRUPTED) from None
            if confirmed is not None and not child:
                _echo(
                    f"confirmation (study.confirm top {space.confirm['top']}, seeds "
                    f"{space.confirm['seeds']}): queued {confirmed.queued}, ran {len(confirmed.ran)} "
                    f"({len(confirmed.failed)} failed)"
                )
            if child:
                return
        _echo(f"study '{study_name}': {summary.finished}/{summary.target} finished trials")
        if summary.finished < summary.target and budget.spent():
            _echo(f"time budget of {budget.seconds:g} s spent: stopped between trials; run the same command to go on")
        _print_best(study, space.backend, fmt="yaml", folder=results_dir / space.name)
        _echo(f"next: deepsc-tune report {name}   (HTML report in {results_dir / space.name})")


def _describe_trials(study) -> str:
    """``new study, 2 queued`` / ``5 finished, 1 failed, 2 queued`` (queued: not run yet)."""
    from optuna.trial import TrialState

    from deepsc_tune.trial_record import n_finished, state_counts

    counts = state_counts(study.get_trials(deepcopy=False))
    parts = [
        (n_finished(counts), "finished"),
        (counts[TrialState.FAIL], "failed"),
        (counts[TrialState.RUNNING], "running"),
        (counts[TrialState.WAITING], "queued"),
    ]
    text = ", ".join(f"{n} {what}" for n, what in parts if n)
    if not any(n for n, what in parts[:3]):
        return "new study" + (f", {text}" if text else "")
    return text


def _record_chance_levels(study, data) -> None:
    """Store the validation set's chance levels once, so trials that learned nothing get flagged."""
    from deepsc_tune.chance import CHANCE_ATTR, chance_levels

    if data is not None and CHANCE_ATTR not in study.user_attrs:
        study.set_user_attr(CHANCE_ATTR, chance_levels(data.y_val, data.classes))


def _keep_models(finetuner, space, study, folder: Path) -> None:
    """Let the built-in fine-tuner keep the best run's weights in FOLDER/model (tuned_model.py)."""
    from deepsc_tune.backends import get_backend

    if not get_backend(space.backend).in_process:
        return
    from optuna.trial import TrialState

    from deepsc_tune.tuned_model import MODEL_DIR, ModelKeeper

    completed = {t.number: t.value for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))}
    finetuner.keeper = ModelKeeper(
        folder / MODEL_DIR,
        study_name=study.study_name,
        metric=space.metric,
        data=finetuner.data,
        data_settings=space.data_settings.to_dict(),
        completed=completed,
    )


class _Budget:
    """The time budget of one `run` (``--timeout`` or ``study.timeout``), from its start."""

    def __init__(self, seconds: float | None) -> None:
        import time

        self.seconds = seconds
        self._clock = time.monotonic
        self._end = None if seconds is None else time.monotonic() + seconds

    def spent(self) -> bool:
        return self._end is not None and self._clock() >= self._end


def _time_budget(option: float | None, configured: float | None) -> _Budget:
    if option is not None and not option > 0:
        raise ConfigError(f"--timeout: expected seconds > 0, got {option:g}")
    return _Budget(option if option is not None else configured)


def _run_workers(plans, *, name, overrides, results_dir, url, study_name, device, verbose, timeout=None) -> None:
    """Start the worker processes of `run --workers/--gpus` and wait for them (see workers.py)."""
    from deepsc_tune.workers import run_workers

    # The URL travels in the environment, so a database password never shows in `ps`.
    os.environ["DEEPSC_TUNE_STORAGE"] = url
    base = [
        sys.executable,
        "-m",
        "deepsc_tune.cli",
        "run",
        "--results-dir",
        str(results_dir),
        "--study-name",
        study_name,
        "--parent-pid",
        str(os.getpid()),
    ]
    if device:
        base += ["--device", device]
    if verbose:
        base.append("--verbose")
    if timeout is not None:
        base += ["--timeout", f"{timeout:g}"]

    def command(plan) -> list[str]:
        return [*base, "--worker-id", plan.worker_id, "--threads", str(plan.threads), "--", name, *overrides]

    where = f" on GPUs {','.join(sorted({p.gpu for p in plans}))}" if plans[0].gpu is not None else ""
    _echo(
        f"starting {len(plans)} worker{'s' if len(plans) > 1 else ''}{where}; Ctrl-C stops "
        f"{'them all' if len(plans) > 1 else 'it'}"
    )
    result = run_workers(plans, command, echo=_echo)
    if result.interrupted:
        typer.secho(
            "interrupted: each worker recorded its running trial as FAIL (interrupted) and "
            "re-queued its settings; run the same command to resume.",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED)


def _summarise(study, space, *, budget=None):
    """Counts after the workers stopped; an error when they stopped short of the target
    (unless the time budget stopped them)."""
    from deepsc_tune.study import RunSummary
    from deepsc_tune.trial_record import count_states, n_finished

    finished = n_finished(count_states(study))
    if finished < space.n_trials and not (budget is not None and budget.spent()):
        raise DeepscTuneError(
            f"the workers stopped with {finished}/{space.n_trials} finished trials "
            "(see their lines above); run the same command to go on"
        )
    return RunSummary(study=study, ran=0, recovered=[], finished=finished, target=space.n_trials)


def _short_url(url: str) -> str:
    from deepsc_tune.storage import redact

    return redact(url)


def _print_best(study, backend: str, *, fmt: str, folder: Path | None = None) -> None:
    """The chosen configuration (``folder``: the study's results folder, for a DeepSC study's
    search space and trial records)."""
    from deepsc_tune.export import best_notes, format_best
    from deepsc_tune.selection import select
    from deepsc_tune.trial_record import best_search_trial

    try:
        best_search_trial(study)  # the clear error when nothing has completed
    except DeepscTuneError as e:
        _echo(str(e))
        return
    selection = select(study.get_trials(deepcopy=False))  # by the mean over seeds
    trial = selection.best.trial
    if fmt == "hydra":
        # Only the command on stdout, so that `$(deepsc-tune best NAME --format hydra)` runs it.
        for line in best_notes(study, trial, backend=backend, selection=selection):
            typer.echo(f"# {line}", err=True)
    _echo(format_best(study, trial, fmt=fmt, backend=backend, selection=selection, folder=folder))


@app.command()
def finetune(
    name: NameArg,
    overrides: OverridesArg = None,
    results_dir: ResultsDirOpt = Path("results"),
) -> None:
    """Run one fine-tune with fixed settings, the way DeepSC users run theirs.

    Settings come from the file's finetune block and the overrides, e.g.
    `deepsc-tune finetune pbmc68k learning_rate=3e-4 lr_scheduler_type=cosine warmup_ratio=0.1`.
    Searched settings not given fall back to DeepSC's defaults. Prints DeepSC's start banner and
    one evaluation line per epoch, then the best epoch and the test metrics.
    """
    from deepsc_tune.search_space import load_search_space

    _quiet_libraries()
    with user_errors():
        space = load_search_space(name, overrides or [], fixed_only=True)
        finetuner, _ = _make_finetuner(space, results_dir, log=_echo)
        result = finetuner.run(dict(space.fixed), metric=space.metric, run_dir=results_dir / space.name / "finetune")
        best = result.best()
        if best is not None:
            _echo(
                f"best epoch {best.epoch}: val accuracy {best.val_accuracy:.4f}"
                + (f", val macro-F1 {best.val_macro_f1:.4f}" if best.val_macro_f1 is not None else "")
            )
        if result.test_accuracy is not None:
            _echo(
                f"test (model of the best epoch): accuracy {result.test_accuracy:.4f}, "
                f"macro-F1 {result.test_macro_f1:.4f}"
            )


@app.command()
def validate(
    files: Annotated[list[str], typer.Argument(help="Search-space names or YAML files.", show_default=False)],
    overrides: Annotated[
        Optional[list[str]], typer.Option("--set", help="An override to apply before checking (repeatable).")
    ] = None,
) -> None:
    """Check search-space files without loading data or running anything.

    Lists every problem with its key path (unknown keys, low >= high, log with low <= 0,
    numbers read as text, conditions on unknown parameters, keys both fixed and searched).
    For a command backend that runs DeepSC it also reads the checkout (finetune.cwd): the
    entry module, every key Hydra would refuse (with a did-you-mean), cosine with
    warmup_ratio <= 0 (a searched range is clipped, with a note), num_device other than 1,
    and where DeepSC writes its checkpoints (notes after "ok").
    """
    from deepsc_tune.search_space import load_search_space

    bad = 0
    for item in files:
        try:
            space = load_search_space(item, overrides or [], check_deepsc=True)
            from deepsc_tune.backends import get_backend

            # The files a run needs (data files; a command's checkout and program) must exist;
            # they are not read here.
            try:
                get_backend(space.backend).check_files(space.settings, space.data_settings, hint=space.source)
            except DeepscTuneError as e:
                raise ConfigError(f"{space.path}: {e}") from None
        except DeepscTuneError as e:
            typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
            bad += 1
            continue
        params = ", ".join(space.params) or "nothing"
        _echo(f"ok: {space.path}: searches {params}; {space.n_trials} trials on {space.metric}")
        for note in space.notes:
            _echo(f"  note: {note}")
    if bad:
        raise typer.Exit(EXIT_USAGE)


@app.command()
def best(
    name: NameArg,
    fmt: Annotated[
        str,
        typer.Option(
            "--format",
            "-f",
            help="yaml (settings block, with notes as comments), hydra (one shell command that "
            "re-runs the trial in DeepSC; notes on stderr) or json.",
        ),
    ] = "yaml",
    results_dir: ResultsDirOpt = Path("results"),
    storage: StorageOpt = None,
    study_name: StudyNameOpt = None,
) -> None:
    """Print the best configuration, ready to paste into DeepSC."""
    from deepsc_tune.export import FORMATS

    with user_errors():
        if fmt not in FORMATS:
            raise ConfigError(f"--format: unknown {fmt!r}; expected one of {', '.join(FORMATS)}")
        study, backend = _load_study(name, results_dir, storage, study_name)
        from deepsc_tune.trial_record import best_search_trial

        best_search_trial(study)  # no completed trial: the error, on stderr, exit 1
        _print_best(study, backend, fmt=fmt, folder=Path(results_dir) / _space_name(name))


def _space_name(name: str) -> str:
    """The ``name:`` of a search space (its results folder), without validating the file."""
    from deepsc_tune.search_space import (
        parse_yaml,
        read_yaml_text,
        resolve_search_space_path,
    )

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


@app.command()
def status(
    name: NameArg,
    results_dir: ResultsDirOpt = Path("results"),
    storage: StorageOpt = None,
    study_name: StudyNameOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="One JSON document (for scripts and dashboards) instead of the table.")
    ] = False,
) -> None:
    """Print a table of the study's trials (state, settings, metrics, reason for failures)."""
    from deepsc_tune.chance import chance_note, chance_trials
    from deepsc_tune.progress import format_params
    from deepsc_tune.trial_record import (
        ENQUEUED,
        REPEAT_OF,
        RETRY_OF,
        TEST_ACCURACY,
        failure_reason,
        last_reported,
        state_counts,
        study_metric,
    )

    with user_errors():
        study, _ = _load_study(name, results_dir, storage, study_name)
        trials = study.get_trials(deepcopy=False)
        metric = study_metric(study.user_attrs)
        if as_json:
            _echo(_status_json(study, trials, metric))
            return
        at_chance = set(chance_trials(study, trials))
        _echo(f"{'#':>4}  {'state':<8} {metric:>12} {'epochs':>6} {'test acc':>8}  settings / reason")
        for t in trials:
            u = t.user_attrs
            shown = t.value if t.value is not None else last_reported(t)
            value = f"{shown:.4f}" if shown is not None else "-"
            test = f"{u[TEST_ACCURACY]:.4f}" if u.get(TEST_ACCURACY) is not None else "-"
            tags = [f"{k}={u[k]}" for k in (ENQUEUED, REPEAT_OF, RETRY_OF) if k in u]
            if t.number in at_chance:
                tags.append("chance level")
            extra = f"  [{', '.join(tags)}]" if tags else ""
            _echo(
                f"{t.number:>4}  {t.state.name:<8} {value:>12} {len(t.intermediate_values):>6} {test:>8}  "
                f"{format_params(t.params)}{extra}"
            )
            reason = failure_reason(t)
            if reason:
                _echo(f"{'':>6}reason: {reason.splitlines()[0][:200]}")
        by_state = state_counts(trials)
        counts = {t.state.name: by_state[t.state] for t in trials}
        _echo(", ".join(f"{k.lower()} {v}" for k, v in sorted(counts.items())) or "no trials")
        note = chance_note(study, trials)
        if note:
            _echo(f"note: {note}")
        _echo_ranking(trials, metric)


def _echo_ranking(trials, metric: str, *, top: int = 5) -> None:
    """`status`: the best configurations by their mean over seeds, once any has repeats."""
    from deepsc_tune.progress import format_params
    from deepsc_tune.selection import format_mean_sd, format_reported, select

    selection = select(trials)
    if not any(c.confirmed for c in selection.ranking):
        return
    _echo(f"\nranking by mean {metric} over seeds (search trial + repeats):")
    for c in selection.ranking[:top]:
        test = format_reported(c.test_accuracy) or "-"
        _echo(f"{c.number:>4}  {format_mean_sd(c):<26} test acc {test:<16} {format_params(c.params)}")
    if selection.leader_test is not None:
        _echo(f"trial {selection.best.number}: {selection.leader_test.reason}")


def _status_json(study, trials, metric: str) -> str:
    """``status --json``: the study, its counts and every trial, as one JSON document."""
    import json

    from deepsc_tune import trial_record as tr
    from deepsc_tune.trial_record import failure_reason, state_counts

    keys = (
        tr.TEST_ACCURACY,
        tr.TEST_MACRO_F1,
        tr.BEST_EPOCH,
        tr.EPOCHS_RUN,
        tr.DURATION_S,
        tr.SEED,
        tr.ENQUEUED,
        tr.REPEAT_OF,
        tr.RETRY_OF,
        tr.DEVICE,
    )
    rows = []
    for t in trials:
        u = t.user_attrs
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": t.params,
                "intermediate_values": {str(k): v for k, v in sorted(t.intermediate_values.items())},
                **{k: u[k] for k in keys if k in u},
                "fail_reason": failure_reason(t),
                "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
                "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
            }
        )
    by_state = state_counts(trials)
    counts = {t.state.name: by_state[t.state] for t in trials}  # in the order states first occur
    doc = {
        "study": study.study_name,
        "metric": metric,
        "direction": "maximize",
        "n_trials_target": study.user_attrs.get(tr.N_TRIALS),
        "counts": counts,
        "trials": rows,
    }
    return json.dumps(doc, default=str)


@app.command()
def split(
    name: NameArg,
    overrides: OverridesArg = None,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Folder for train.h5ad / val.h5ad / test.h5ad. Default: RESULTS_DIR/NAME/split.",
            show_default=False,
        ),
    ] = None,
    results_dir: ResultsDirOpt = Path("results"),
    for_: Annotated[
        Optional[str],
        typer.Option(
            "--for",
            help="deepsc: files DeepSC's fine-tuner reads as they are "
            "(log1p CP10k, var gene_name, label column obs_celltype_col); original: the "
            "input's own values. Default: deepsc when finetune runs DeepSC, else original.",
            show_default=False,
        ),
    ] = None,
    gene_map: Annotated[
        Optional[Path],
        typer.Option(
            "--gene-map",
            help="DeepSC's gene map (CSV feature_name,id); default: "
            "finetune.overrides.csv_path. Reports how many genes DeepSC will see.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write the data block's train / validation / test split as .h5ad files.

    The cells are exactly those the built-in fine-tuner uses. With --for deepsc (the default
    when finetune.backend is command and runs DeepSC) the files are what DeepSC's fine-tuner
    reads as they are: X = log1p of counts per 10k from raw counts (log-normalised data kept as
    they are; DeepSC bins each cell's values itself), all genes with var gene_name, the label
    column named as obs_celltype_col (default celltype). With a gene map (csv_path or
    --gene-map) it says how many genes DeepSC will see and refuses a map that matches none.
    It prints the overrides to paste: data_path = train, data_path_eval = the VALIDATION file
    (DeepSC evaluates on it), seperated_train_eval_dataset = true. Keep test.h5ad out of the
    study. With --for original the files keep the input's values and columns.
    """
    from deepsc_tune.backends import get_backend
    from deepsc_tune.deepsc_split import write_split
    from deepsc_tune.search_space import load_search_space

    _quiet_libraries()
    with user_errors():
        if for_ not in (None, "deepsc", "original"):
            raise ConfigError(f"--for: unknown {for_!r}; expected deepsc or original")
        space = load_search_space(name, overrides or [])
        settings = space.data_settings
        folder = out or results_dir / space.name / "split"
        if for_ is None:
            from deepsc_tune.deepsc_checkout import is_deepsc_command

            runs_deepsc = get_backend(space.backend).runs_program and is_deepsc_command(space.settings.command)
            for_ = "deepsc" if runs_deepsc else "original"
        if for_ == "original":
            paths = write_split(settings, folder, cache_dir=results_dir / "cache", hint=space.source)
            for part, path in paths.items():
                _echo(f"{part}: {path}")
            return
        _split_for_deepsc(space, settings, folder, gene_map=gene_map)


def _split_for_deepsc(space, settings, folder: Path, *, gene_map: Path | None) -> None:
    from deepsc_tune.backends import get_backend
    from deepsc_tune.deepsc_split import deepsc_options, write_deepsc_split
    from deepsc_tune.search_space import dump_settings

    options = deepsc_options(space.config.get("finetune") if get_backend(space.backend).runs_program else None)
    if gene_map is not None:
        options["gene_map"] = gene_map
    result = write_deepsc_split(settings, folder, hint=space.source, **options)
    _echo(f"train: {result.paths['train']}")
    _echo(f"val: {result.paths['val']}   (DeepSC's data_path_eval: the study selects on it)")
    if "test" in result.paths:
        _echo(
            f"test: {result.paths['test']}   (keep it out of the study: evaluate the chosen "
            "configuration on it once, at the end)"
        )
    _echo(f"{result.n_genes} genes (all; var[{result.gene_col!r}]), labels in obs[{result.label_col!r}]")
    for note in result.notes:
        _echo(f"note: {note}")
    _echo("paste into finetune.overrides:")
    for line in dump_settings(result.overrides).splitlines():
        _echo(f"  {line}")


@app.command(name="list")
def list_spaces() -> None:
    """List the search spaces found in ./search_spaces/ and installed with the package."""
    from deepsc_tune.search_space import list_search_spaces, parse_yaml, read_yaml_text

    for name, path in list_search_spaces().items():
        try:
            description = parse_yaml(read_yaml_text(path), source=str(path)).get("description", "")
        except DeepscTuneError:
            description = "(invalid file: run `deepsc-tune validate`)"
        _echo(f"{name:<14} {description}  [{path}]")


ReportNameArg = Annotated[
    Optional[str],
    typer.Argument(
        help="Study to report on (its search-space name). Without it: every study under "
        "RESULTS_DIR and RESULTS_DIR/index.html.",
        show_default=False,
    ),
]


@app.command()
def report(
    name: ReportNameArg = None,
    results_dir: ResultsDirOpt = Path("results"),
    storage: StorageOpt = None,
    study_name: StudyNameOpt = None,
    top: Annotated[int, typer.Option("--top", help="Configurations in the stability section.")] = 5,
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out",
            help="Folder for the report files (e.g. when the study is on read-only media). Default: RESULTS_DIR/NAME.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Write the HTML report of NAME: RESULTS_DIR/NAME/report.html, trials.csv and best.yaml.

    The page is self-contained (opens offline): the learning-rate frontier per scheduler type,
    learning curves, optimisation history, parameter importances, the summary with DeepSC's
    override line, and stability over the last epochs and across seeds (`deepsc-tune repeat`).
    Read only: safe while a search is still running. Without NAME, writes the report of every
    study under RESULTS_DIR and an index.html linking them.
    """
    from deepsc_tune.report import write_index, write_report

    _quiet_libraries()
    with user_errors():
        if name is None:
            if storage is not None or study_name is not None or out is not None:
                raise ConfigError(
                    "--storage / --study-name / --out need a NAME (the index scans RESULTS_DIR/*/study.db)"
                )
            if not any(Path(results_dir).glob("*/study.db")):
                raise DeepscTuneError(
                    f"no studies under {results_dir} (no {results_dir}/NAME/study.db); start one with "
                    "`deepsc-tune run pbmc68k` (the demo, no download) or give --results-dir"
                )
            index = write_index(results_dir, top=top)
            for files in index.reports:
                _echo(f"report: {files.html}" + (f"  (note: {files.notes[0]})" if files.notes else ""))
            for where, why in index.errors:
                typer.secho(f"skipped {where}: {why}", fg=typer.colors.YELLOW, err=True)
            _echo(f"index: {index.html} ({len(index.rows)} studies)")
            return
        study, backend = _load_study(name, results_dir, storage, study_name)
        try:
            files = write_report(
                study,
                folder=out or results_dir / study.study_name,
                backend=backend,
                top=top,
                record_dir=results_dir / _space_name(name),
            )
        except OSError as e:
            raise DeepscTuneError(f"{_os_error(e)}; give --out FOLDER to write the report elsewhere") from None
        _echo(f"report: {files.html}")
        _echo(f"trials: {files.csv}" + (f"   best: {files.best_yaml}" if files.best_yaml else ""))
        for note in files.notes:
            _echo(f"note: {note}")


@app.command()
def repeat(
    name: NameArg,
    top: Annotated[int, typer.Option("--top", "-k", help="How many of the best configurations.")] = 3,
    seeds: Annotated[int, typer.Option("--seeds", "-n", help="Further seeds for each of them.")] = 2,
    results_dir: ResultsDirOpt = Path("results"),
    storage: StorageOpt = None,
    study_name: StudyNameOpt = None,
    device: Annotated[
        Optional[str],
        typer.Option(help="Built-in fine-tuner device: auto, cpu or cuda.", show_default=False),
    ] = None,
    threads: Annotated[
        Optional[int], typer.Option(help="Torch CPU threads (default: torch's choice).", show_default=False)
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="One line per epoch.")] = False,
) -> None:
    """Re-run the TOP best configurations of NAME with SEEDS further seeds each.

    The runs are extra trials of the same study, tagged repeat_of (the original trial) and
    repeat_seed: never counted as search trials, never pruned; `best`, `export`, `status` and
    `report` then rank configurations by their mean over seeds (study.confirm does this after a run). A configuration that ran with seed s gets seeds s+1 ... s+SEEDS.
    Running the command again only adds what is missing (a larger --seeds, failed repeats).
    """
    from deepsc_tune.progress import Progress
    from deepsc_tune.repeat import (
        check_same_data,
        enqueue_repeats,
        open_for_repeats,
        plan_repeats,
        run_repeats,
        waiting_repeats,
    )

    _quiet_libraries()
    with user_errors():
        study, _ = _load_study(name, results_dir, storage, study_name)  # exists, with a clear error
        url = storage or f"sqlite:///{results_dir / study.study_name / 'study.db'}"
        study, space = open_for_repeats(
            storage=url, study_name=study.study_name, record_dir=results_dir / study.study_name
        )
        plan = plan_repeats(study.get_trials(deepcopy=False), top=top, seeds=seeds)
        if not plan and not waiting_repeats(study):
            _echo(f"nothing to add: the {top} best configurations already have {seeds} further seeds")
            return
        defaults = {k: v for k, v in (("device", device), ("num_threads", threads)) if v is not None}
        finetuner, fingerprint = _make_finetuner(space, results_dir, defaults=defaults)
        check_same_data(study, fingerprint)
        _keep_models(finetuner, space, study, results_dir / study.study_name)
        enqueue_repeats(study, plan)
        for item in plan:
            _echo(f"queued: trial {item.repeat_of} with seed {item.seed}")
        try:
            summary = run_repeats(
                study,
                space,
                finetuner,
                progress=Progress(metric=space.metric, verbose=verbose),
                trials_dir=results_dir / study.study_name / "trials",
            )
        except KeyboardInterrupt:
            typer.secho(
                "\ninterrupted: the running repeat is recorded as FAIL (interrupted); "
                "run the same command to finish the rest.",
                fg=typer.colors.YELLOW,
                err=True,
            )
            raise typer.Exit(EXIT_INTERRUPTED) from None
        _echo(
            f"ran {len(summary.repeats)} repeats ({len(summary.failed)} failed)"
            + (f" and {len(summary.search)} queued search trials" if summary.search else "")
        )
        _echo(f"next: deepsc-tune report {name}   (stability across seeds)")


@app.command()
def predict(
    name: NameArg,
    query: Annotated[Path, typer.Argument(help="The .h5ad file of cells to annotate (read only).", show_default=False)],
    out: Annotated[
        Optional[Path],
        typer.Option(
            "--out", "-o", help="The new .h5ad file. Default: QUERY.predicted.h5ad beside QUERY.", show_default=False
        ),
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out file.")] = False,
    results_dir: ResultsDirOpt = Path("results"),
) -> None:
    """Annotate QUERY's cells with the tuned model of NAME (RESULTS_DIR/NAME/model).

    The model is the best trial's best epoch, kept by `deepsc-tune run` (built-in fine-tuner).
    QUERY is normalised as the training cells were and its genes matched by name (missing ones
    are 0, and counted). Writes a new file with obs deepsc_tune_label and
    deepsc_tune_probability, obsm deepsc_tune_probabilities (cells x classes, in the order of
    uns['deepsc_tune']['classes']); QUERY itself is
    never changed. When QUERY has the training label column, prints the accuracy on it.
    """
    from deepsc_tune.tuned_model import model_dir, predict_file

    _quiet_libraries()
    with user_errors():
        if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
            raise ConfigError(f"--device: expected auto, cpu, cuda or cuda:N, got {device!r}")
        folder = model_dir(results_dir, _space_name(name))
        result = predict_file(folder, query, out=out, device=device, overwrite=overwrite, name=name)
        card = result.card
        _echo(
            f"model: trial {card['trial']} of study '{card['study']}', epoch {card['best_epoch']}, "
            f"{card['metric']} {card['value']:.4f}"
            + (f", test accuracy {card['test_accuracy']:.4f}" if card.get("test_accuracy") is not None else "")
        )
        for note in result.notes:
            _echo(f"query: {note}")
        if result.n_missing:
            typer.secho(
                f"warning: {result.n_missing} of the model's {result.n_genes} genes are missing "
                "from the query (set to 0)",
                fg=typer.colors.YELLOW,
                err=True,
            )
        if result.accuracy is not None:
            unknown = (
                f"; {result.n_unknown} cells of classes the model does not know left out" if result.n_unknown else ""
            )
            _echo(
                f"accuracy against obs[{card['data'].get('label_key')!r}]: {result.accuracy:.4f} "
                f"on {result.n_scored} cells{unknown}"
            )
        _echo(f"wrote {result.out} ({result.n_cells} cells): obs deepsc_tune_label, deepsc_tune_probability")


@app.command(name="lr-find")
def lr_find(
    name: NameArg,
    overrides: OverridesArg = None,
    min_lr: Annotated[float, typer.Option("--min-lr", help="First learning rate.")] = 1e-6,
    max_lr: Annotated[
        float, typer.Option("--max-lr", help="Last learning rate (if the loss has not diverged before).")
    ] = 1.0,
    steps: Annotated[int, typer.Option("--steps", help="Optimizer steps (one batch each).")] = 100,
    device: Annotated[Optional[str], typer.Option(help="auto, cpu or cuda.", show_default=False)] = None,
    results_dir: ResultsDirOpt = Path("results"),
) -> None:
    """The usage guide's LR range test in one short pass, on the built-in fine-tuner.

    Raises the learning rate exponentially from --min-lr to --max-lr over --steps batches of
    training cells, plots the training loss against it (RESULTS_DIR/NAME/lr_find.html) and
    suggests a learning_rate range for the search space, as overrides for `deepsc-tune run`.
    """
    from deepsc_tune.lr_find import check_bounds, override_line, run_lr_find, write_lr_find
    from deepsc_tune.search_space import load_search_space

    _quiet_libraries()
    with user_errors():
        check_bounds(min_lr, max_lr, steps)
        space = load_search_space(name, overrides or [], fixed_only=True)
        from deepsc_tune.backends import get_backend

        if not get_backend(space.backend).in_process:
            raise ConfigError(
                f"{space.path}: finetune.backend: lr-find runs the built-in fine-tuner, got {space.backend!r}"
            )
        data = _prepare(space, results_dir)
        from deepsc_tune.train_settings import TrainSettings

        settings = TrainSettings.from_dict({**dict(space.fixed), **({"device": device} if device else {})})
        result = run_lr_find(data, settings, min_lr=min_lr, max_lr=max_lr, steps=steps)
        html, _ = write_lr_find(result, results_dir / space.name, name=space.name, settings=settings.to_dict())
        _echo(
            f"lr-find: {len(result.learning_rates)} steps from {min_lr:g} to {result.learning_rates[-1]:.3g}"
            + (" (stopped: the loss diverged)" if result.stopped_early else "")
        )
        if result.note:
            _echo(f"note: {result.note}")
        if result.low is not None:
            _echo(f"steepest descent at {result.steepest_lr:.3g}, lowest loss at {result.min_loss_lr:.3g}")
            _echo(f"suggested learning_rate: {{low: {result.low:.3g}, high: {result.high:.3g}, log: true}}")
            _echo(f"use it (a new study): deepsc-tune run {name} --study-name {space.name}-lr {override_line(result)}")
        _echo(f"plot: {html}")


def version_callback(value: bool) -> None:
    if value:
        typer.echo(f"deepsc-tune {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Hyperparameter search for DeepSC cell-type fine-tuning, built on Optuna."""


# ----------------------------------------------------------------------------- help layout


def _flags_without_type(params):
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # a flag takes no value: nothing to show after it
    return params


class _HelpGroup(typer.core.TyperGroup):
    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))


class _HelpCommand(typer.core.TyperCommand):
    """Help without type tags after flags (``--verbose <bool>``) and with plain usage lines.

    typer marks required arguments ``{name}`` in usage lines; ``NAME`` / ``[NAME]`` is what the
    docstrings say and what users know from other tools.
    """

    def get_params(self, ctx):
        return _flags_without_type(super().get_params(ctx))

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if param.param_type_name == "argument":
                name = (param.metavar or param.name or "").upper()
                name = name if param.required else f"[{name}]"
                pieces.append(name + ("..." if param.nargs != 1 else ""))
        return pieces


for _info in app.registered_commands:
    if _info.cls in (None, typer.core.TyperCommand):
        _info.cls = _HelpCommand
if not isinstance(app.info.cls, type):  # typer's default placeholder: nobody chose a class
    app.info.cls = _HelpGroup


if __name__ == "__main__":  # pragma: no cover
    app()
