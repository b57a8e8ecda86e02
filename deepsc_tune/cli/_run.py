"""``deepsc-tune run`` (the search, alone or with worker processes) and ``deepsc-tune repeat``
(further seeds for the best configurations)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from deepsc_tune.cli._common import (
    _STOPPED_BY,
    NameArg,
    OverridesArg,
    ResultsDirOpt,
    StorageOpt,
    StudyNameOpt,
    _check_device,
    _check_study_name,
    _echo,
    _load_study,
    _make_finetuner,
    _prepare,
    _quiet_libraries,
    _space_name,
    _storage_label,
    _study_folder,
    stops_end_the_command,
    user_errors,
)
from deepsc_tune.cli._results import _print_best
from deepsc_tune.errors import ConfigError, DeepscTuneError


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
    study lives in RESULTS_DIR/STUDY/study.db unless --storage names a shared database; running
    the same command again resumes it. Ctrl-C, SIGTERM or a closed stdout records the running
    trial as FAIL ("interrupted") and re-queues its settings (exit status 130, 143, 141).

    --workers N (or --gpus 0,1,...) runs N worker processes on this machine; the same command
    on other machines with one --storage postgresql://... joins the same study (docs/distributed.md).
    """
    from deepsc_tune.backends import get_backend
    from deepsc_tune.cli._progress import Progress
    from deepsc_tune.config import load_search_space
    from deepsc_tune.study import (
        command_args,
        folder_storage_url,
        open_storage,
        open_study,
        parse_gpus,
        plan_workers,
        record_references,
        run_search,
        sampler_label,
        watch_parent,
    )

    _quiet_libraries()
    child = parent_pid is not None  # started by another `run --workers`: quiet, no summary
    prefix = f"[{worker_id}] " if worker_id else ""
    # A worker's parent says it once for all its workers.
    with user_errors(), stops_end_the_command(None if child else INTERRUPTED, prefix=prefix):
        _check_study_name(study_name)
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
        _check_device(space, device, overrides)  # before the study is opened: a refused run writes nothing
        folder = _study_folder(
            results_dir, space_name=space.name, study_name=study_name, storage=storage, echo=not child
        )
        study_name = folder.name
        url = folder_storage_url(folder, storage)
        opened = open_storage(
            url, label=_storage_label(storage)
        )  # a bad --storage is reported before the data are prepared
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
            record_dir=folder,
        )
        for line in record_references(study, space, data, folder.cache):
            if not child:
                _echo(line)
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
            if get_backend(space.backend).runs_program:  # after the workers' last trials, said once
                from deepsc_tune.study import CheckpointKeeper, prune_checkpoints

                _echo(prune_checkpoints(CheckpointKeeper(study, folder.trials, space.settings.keep_checkpoints)))
            summary = _summarise(study, space, budget=budget)
        else:
            if child:
                watch_parent(parent_pid)
            progress = Progress(metric=space.metric, verbose=verbose, prefix=prefix)
            summary = run_search(
                space,
                finetuner,
                study=study,
                folder=folder,
                storage=opened,
                progress=progress,
                stop=budget.spent,
                say=lambda line: _echo(line) if not child or line.startswith("note:") else None,
            ).summary
            if child:
                return
        _echo(f"study '{study_name}': {summary.finished}/{summary.target} finished trials")
        if summary.finished < summary.target and budget.spent():
            _echo(f"time budget of {budget.seconds:g} s spent: stopped between trials; run the same command to go on")
        _print_best(study, space.backend, fmt="yaml", folder=folder)
        _echo(f"next: deepsc-tune report {command_args(name, study_name, space.name)}   (HTML report in {folder.path})")


#: The one line after Ctrl-C, SIGTERM or a closed stdout, after "interrupted: " (cli/_common.py).
INTERRUPTED = (
    "the running trial (if any) is recorded as FAIL (interrupted) and its settings re-queued; "
    "run the same command to resume."
)


def _describe_trials(study) -> str:
    """``new study, 2 queued`` / ``5 finished, 1 failed, 2 queued`` (queued: not run yet)."""
    from optuna.trial import TrialState

    from deepsc_tune.study import n_finished, state_counts

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
    """Start the worker processes of `run --workers/--gpus` and wait for them (see study/_workers.py)."""
    from deepsc_tune.study import run_workers

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
            f"{_STOPPED_BY.get(result.cause, 'interrupted')}: each worker recorded its running trial "
            "as FAIL (interrupted) and re-queued its settings; run the same command to resume.",
            fg=typer.colors.YELLOW,
            err=True,
        )
        raise typer.Exit(result.exit_code)


def _summarise(study, space, *, budget=None):
    """Counts after the workers stopped; an error when they stopped short of the target
    (unless the time budget stopped them)."""
    from deepsc_tune.study import RunSummary, check_study_file_unchanged, count_states, n_finished, storage_of

    check_study_file_unchanged(storage_of(study))  # the workers check it too, between trials
    finished = n_finished(count_states(study))
    if finished < space.n_trials and not (budget is not None and budget.spent()):
        raise DeepscTuneError(
            f"the workers stopped with {finished}/{space.n_trials} finished trials "
            "(see their lines above); run the same command to go on"
        )
    return RunSummary(study=study, ran=0, recovered=[], finished=finished, target=space.n_trials)


def _short_url(url: str) -> str:
    from deepsc_tune.study import redact

    return redact(url)


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
    from deepsc_tune.cli._progress import Progress
    from deepsc_tune.study import (
        attach_keepers,
        check_same_data,
        command_args,
        enqueue_repeats,
        open_for_repeats,
        plan_repeats,
        prune_checkpoints,
        recover_dead_repeats,
        run_repeats,
        waiting_repeats,
    )

    _quiet_libraries()
    what = "the running repeat (if any) is recorded as FAIL (interrupted) and re-queued; run the same command to finish the rest."
    with user_errors(), stops_end_the_command(what):
        study, _, folder = _load_study(name, results_dir, storage, study_name)  # exists, with a clear error
        study, space = open_for_repeats(
            storage=folder.storage_url(storage), study_name=study.study_name, record_dir=folder
        )
        _check_device(space, device)  # before any repeat is queued
        recovered = recover_dead_repeats(study)  # before planning: a killed repeat is not under way
        if recovered:
            _echo(f"re-queued trials left running by a dead process: {recovered}")
        plan = plan_repeats(study.get_trials(deepcopy=False), top=top, seeds=seeds, fixed=space.fixed)
        if not plan and not waiting_repeats(study):
            _echo(f"nothing to add: the {top} best configurations already have {seeds} further seeds")
            return
        defaults = {k: v for k, v in (("device", device), ("num_threads", threads)) if v is not None}
        finetuner, fingerprint = _make_finetuner(space, results_dir, defaults=defaults)
        check_same_data(study, fingerprint)
        for line in attach_keepers(finetuner, space, study, folder):
            _echo(line)
        enqueue_repeats(study, plan)
        for item in plan:
            _echo(f"queued: trial {item.repeat_of} with seed {item.seed}")
        summary = run_repeats(
            study,
            space,
            finetuner,
            progress=Progress(metric=space.metric, verbose=verbose),
            trials_dir=folder.trials,
        )
        kept = prune_checkpoints(getattr(finetuner, "checkpoint_keeper", None))
        if kept is not None:
            _echo(kept)
        _echo(
            f"ran {len(summary.repeats)} repeats ({len(summary.failed)} failed)"
            + (f" and {len(summary.search)} queued search trials" if summary.search else "")
        )
        _echo(
            f"next: deepsc-tune report {command_args(name, study_name, _space_name(name))}   (stability across seeds)"
        )
