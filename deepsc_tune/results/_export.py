"""The best configuration, ready to paste back into DeepSC (YAML block, command line, JSON).

For a study of DeepSC's own fine-tuner (the ``command`` backend) the export is everything needed
to re-run the winning trial: the program, the checkout it runs from (on ``PYTHONPATH``), the
environment set in the search space, and every override the trial was run with (fixed, searched
and the seed), taken from the command line the trial really ran. For the built-in fine-tuner it
is the searched settings under DeepSC's names, with notes on what differs from DeepSC.

``format_best`` returns what goes to standard output (``hydra``: one shell command and nothing
else, so ``bash -c "$(deepsc-tune best NAME --format hydra)"`` runs it); ``best_notes`` the
lines that go to standard error.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.trial import FrozenTrial

from deepsc_tune.backends import get_backend
from deepsc_tune.backends.command import (
    DEFAULT_COMMAND,
    RUN_DIR_PLACEHOLDER,
    CommandSettings,
    build_argv,
    checkout_pythonpath,
    format_value,
)
from deepsc_tune.backends.command.deepsc import (
    HYDRA_RUN_DIR,
    commit_of_module,
    entry_module,
    recorded_plan,
    recorded_ratio,
)
from deepsc_tune.errors import DeepscTuneError
from deepsc_tune.study import (
    OLD_ARGV,
    Selection,
    StudyFolder,
    as_folder,
    pick_notes,
    pick_record,
    read_record,
    read_trial_file,
    select,
    study_fixed,
    study_metric,
    trial_result,
    trial_settings,
)

#: DeepSC's fine-tuning command, as its users type it.
DEEPSC_COMMAND = shlex.join(DEFAULT_COMMAND)
#: Where a re-run of DeepSC abcf2be writes (Hydra's default run directory, under the checkout).
RERUN_DIR = "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S}"
#: Settings that mean the same in DeepSC's config, exported with the searched ones.
DEEPSC_KEYS = ("lr_scheduler_type", "learning_rate", "warmup_ratio", "epoch", "batch_size", "grad_acc")
FORMATS = ("yaml", "hydra", "json")


def deepsc_settings(
    trial: FrozenTrial, *, backend: str = "builtin", fixed: Mapping[str, Any] | None = None
) -> tuple[dict[str, Any], list[str]]:
    """The trial's settings under DeepSC's names, and notes on what does not carry over
    (``fixed``: the search space's fixed settings, :func:`~deepsc_tune.study._space_record.study_fixed`).

    The built-in ``cosine`` is warmup + one cosine decay; DeepSC's ``cosine`` is warmup + warm
    restarts (``cosine_restarts`` here), so a built-in result names the shape it used.
    """
    builtin = get_backend(backend).in_process  # the built-in fine-tuner, not DeepSC itself
    settings = trial_settings(trial, fixed)
    keys = list(trial.params) + [k for k in DEEPSC_KEYS if k in settings and k not in trial.params]
    if builtin:
        keys = [k for k in keys if k in trial.params or k == "epoch"]
    else:
        keys += [k for k in settings if k not in keys]  # every fixed setting, the seed included
    out = {k: settings[k] for k in keys if k in settings}
    ratio = recorded_ratio(trial.user_attrs)
    if not builtin and "warmup_ratio" in out and ratio is not None:
        out["warmup_ratio"] = ratio  # DeepSC's value; the searched fraction is in settings
    notes: list[str] = []
    kind = out.get("lr_scheduler_type")
    if builtin and kind == "cosine_restarts":
        out["lr_scheduler_type"] = "cosine"
        notes.append("schedule: DeepSC's 'cosine' (warmup + warm restarts), tuned here as 'cosine_restarts'")
    elif builtin and kind == "cosine":
        notes.append(
            "schedule: tuned as warmup + one cosine decay; DeepSC's 'cosine' adds warm restarts "
            "(search 'cosine_restarts' to tune that exact shape)"
        )
    if out.get("lr_scheduler_type") == "constant":
        out.pop("warmup_ratio", None)
    if builtin:
        notes.append("tuned on deepsc-tune's built-in fine-tuner; batch size and epochs may need scaling for DeepSC")
    return out, notes


def deepsc_run(study: optuna.Study, trial: FrozenTrial, *, folder: StudyFolder | Path | None = None) -> dict[str, Any]:
    """How to run a ``command``-backend trial again: program, checkout, environment, overrides.

    ``folder`` is the study's folder (``RESULTS_DIR/STUDY``, study/_folder.py): it holds the search space
    (``study/_space_record.py``) and each trial's ``trials/NNNNN/trial.json``. The overrides are the
    trial's own command line (``argv`` in that file, relative paths already resolved) less the
    run-folder override (``hydra.run.dir``), so that the re-run writes where DeepSC writes by
    default; at abcf2be, whose config hard-codes ``hydra.run.dir`` under its authors' home, the
    override becomes Hydra's own default, :data:`RERUN_DIR` under the checkout. Where the file is not (a trial run on another machine) the command is rebuilt from
    the search space and the trial's settings, the same way the backend builds it.

    Raises
    ------
    DeepscTuneError
        If the study's search space is not found (a shared study opened on another machine).
    """
    folder = as_folder(folder)
    record = read_record(study.user_attrs, folder)
    if record is None:
        where = f" in {folder.path}" if folder is not None else ""
        raise DeepscTuneError(
            f"study '{study.study_name}': its search space is not found{where}; run `best` with the "
            "--results-dir of a machine that ran the study"
        )
    settings, fixed = CommandSettings.from_dict(record["config"].get("finetune") or {}, source="finetune")
    details = (read_trial_file(folder.trials, trial.number) or {}) if folder is not None else {}
    run_dir = str(folder.trial(trial.number)) if folder is not None else "."
    checkout = str(details.get("checkout") or settings.cwd or ".")
    argv = details.get("argv") or trial.user_attrs.get(OLD_ARGV)  # older studies kept it there
    if argv:
        program = list(argv[: len(settings.command)])
        args = list(argv[len(settings.command) :])
    else:
        merged = {**fixed, **trial_settings(trial)}
        ratio = recorded_ratio(trial.user_attrs)
        if ratio is not None:
            merged["warmup_ratio"] = ratio  # what DeepSC was given, not the fraction
        full = build_argv(settings, merged, run_dir=run_dir)
        program, args = full[: len(settings.command)], full[len(settings.command) :]
    if settings.run_dir_override:
        args = [a for a in args if not a.lstrip("+").startswith(settings.run_dir_override + "=")]
        commit = commit_of_module(entry_module(program))
        if commit is not None and commit.outputs == HYDRA_RUN_DIR and settings.run_dir_override == "hydra.run.dir":
            # abcf2be writes into Hydra's run directory, which its config hard-codes under its
            # authors' home: the re-run writes under the checkout, as Hydra apps do by default.
            args.append(f"hydra.run.dir={RERUN_DIR}")
    env = {k: v.replace(RUN_DIR_PLACEHOLDER, run_dir) for k, v in settings.env.items()}
    env = {"PYTHONPATH": ":".join([*checkout_pythonpath(checkout), "$PYTHONPATH"]), **env}
    return {"program": program, "cwd": checkout, "env": env, "overrides": args}


def deepsc_shell_command(run: dict[str, Any]) -> str:
    """One shell line: ``cd CHECKOUT && env VAR=... PROGRAM OVERRIDES...``."""
    env = " ".join(f"{k}={_shell_env_value(v)}" for k, v in run["env"].items())
    return f"cd {shlex.quote(run['cwd'])} && env {env} {shlex.join([*run['program'], *run['overrides']])}"


def _shell_env_value(value: str) -> str:
    # $PYTHONPATH must expand in the user's shell; everything else is quoted as is.
    if value.endswith(":$PYTHONPATH"):
        return shlex.quote(value[: -len(":$PYTHONPATH")]) + '"${PYTHONPATH:+:$PYTHONPATH}"'
    return shlex.quote(value)


def reference_notes(study: optuna.Study, selection: Selection, number: int, *, metric: str) -> list[str]:
    """Chance and the logistic-regression baseline, against configuration ``number`` (validation)."""
    from deepsc_tune.data import BASELINE_ATTR, CHANCE_ATTR, TOLERANCE, baseline_line

    config = next((c for c in selection.ranking if c.number == number), None)
    if config is None:
        return []
    notes = []
    levels = study.user_attrs.get(CHANCE_ATTR)
    if isinstance(levels, dict) and isinstance(levels.get(metric), (int, float)):
        level = float(levels[metric])
        verdict = "AT CHANCE: it learned nothing" if config.mean <= level + TOLERANCE else "above chance"
        notes.append(f"chance (always the majority class of the validation cells): {metric} {level:.4f}; {verdict}")
    line = baseline_line(study.user_attrs.get(BASELINE_ATTR), metric, config.values)
    if line is not None:
        notes.append(line)
    return notes


def best_notes(
    study: optuna.Study,
    trial: FrozenTrial,
    *,
    backend: str = "builtin",
    selection: Selection | None = None,
    folder: Path | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> list[str]:
    """What to know about the exported trial (printed to standard error, or as YAML comments).

    ``folder``: the study's results folder; for a DeepSC study the best epoch's checkpoint there
    (the tuned DeepSC model) is named. ``fixed``: the search space's fixed settings, when the
    caller has read them already (default: :func:`~deepsc_tune.study._space_record.study_fixed`).

    ``selection`` (default: :func:`deepsc_tune.study._selection.select` over the study's trials) adds
    the configuration's mean ± sd over seeds and whether it is ahead of the runner-up.
    """
    metric = study_metric(study.user_attrs)
    result = trial_result(trial)
    if selection is None:
        selection = select(study.get_trials(deepcopy=False))
    notes = [
        f"deepsc-tune best: study {study.study_name}, trial {trial.number}, "
        f"{metric} {trial.value:.4f} (best epoch {result.best_epoch} of {result.epochs_run})",
    ]
    notes += pick_notes(selection, trial.number, metric=metric)
    notes += reference_notes(study, selection, trial.number, metric=metric)
    if result.test_accuracy is not None:
        f1 = result.test_macro_f1
        notes.append(
            f"test accuracy {result.test_accuracy:.4f}"
            + (f" / macro-F1 {f1:.4f}" if f1 is not None else "")
            + " (reported only, never used for selection)"
        )
    fixed = study_fixed(study, folder) if fixed is None else fixed
    notes += deepsc_settings(trial, backend=backend, fixed=fixed)[1]
    folder = as_folder(folder)
    details = read_trial_file(folder.trials, trial.number) if folder is not None else None
    warmup = recorded_plan(trial.user_attrs, details)
    if warmup is not None:
        notes.append(
            f"warmup_ratio: searched as {warmup['fraction']:.4g} of the run's {warmup['real_steps']} real "
            f"optimizer steps ({warmup['warmup_steps']} warmup steps, restarts every {warmup['restart_steps']}); "
            f"the command passes DeepSC warmup_ratio={warmup['deepsc_ratio']!r}, which gives those steps in "
            f"its schedule planned for 100,000 cells ({warmup['planned_steps']} steps)"
        )
    if get_backend(backend).runs_program and folder is not None:
        from deepsc_tune.backends.command.deepsc import best_epoch_checkpoint

        ckpt = best_epoch_checkpoint(folder.trial(trial.number), result.best_epoch)
        if ckpt is not None:
            notes.append(f"tuned DeepSC model: {ckpt} (its best epoch's checkpoint, as DeepSC saved it)")
    if get_backend(backend).runs_program:
        notes.append(
            "the command re-runs this trial as it ran (same data files, validation file included); "
            "DeepSC writes its checkpoints to its own hard-coded, timestamped folder (2416d85) or, at "
            f"abcf2be, to {RERUN_DIR} under the checkout"
        )
    return notes


def format_best(
    study: optuna.Study,
    trial: FrozenTrial,
    *,
    fmt: str = "yaml",
    backend: str = "builtin",
    selection: Selection | None = None,
    folder: StudyFolder | Path | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> str:
    """Render the chosen trial as ``yaml``, ``hydra`` (one shell command) or ``json``
    (``fixed`` as in :func:`best_notes`).

    ``hydra`` holds the command only (the notes are :func:`best_notes`); ``yaml`` starts with
    the notes as comments; ``json`` has them under ``notes``. ``selection`` as in
    :func:`best_notes`; ``folder`` (the study's results folder) as in :func:`deepsc_run`.
    """
    if selection is None:
        selection = select(study.get_trials(deepcopy=False))
    fixed = study_fixed(study, folder) if fixed is None else fixed
    settings, _ = deepsc_settings(trial, backend=backend, fixed=fixed)
    notes = best_notes(study, trial, backend=backend, selection=selection, folder=folder, fixed=fixed)
    run = deepsc_run(study, trial, folder=folder) if get_backend(backend).runs_program else None
    result = trial_result(trial)
    if fmt == "json":
        return json.dumps(
            {
                "study": study.study_name,
                "trial": trial.number,
                "metric": study_metric(study.user_attrs),
                "value": trial.value,
                "deepsc": settings,
                "deepsc_run": run,
                "command": deepsc_shell_command(run) if run else None,
                "settings": trial_settings(trial, fixed),
                "best_epoch": result.best_epoch,
                "test_accuracy": result.test_accuracy,
                "test_macro_f1": result.test_macro_f1,
                **pick_record(selection, trial.number),
                "notes": notes,
            },
            indent=2,
        )
    if fmt == "hydra":
        if run is not None:
            return deepsc_shell_command(run)
        return f"{DEEPSC_COMMAND} " + " ".join(f"{k}={format_value(v)}" for k, v in settings.items())
    comments = "".join(f"# {line}\n" for line in notes)
    if run is not None:
        return comments + yaml.safe_dump(run, sort_keys=False, default_flow_style=False).rstrip()
    body = yaml.safe_dump(settings, sort_keys=False, default_flow_style=False)
    return comments + "# for DeepSC's configs/finetune/finetune.yaml\n" + body.rstrip()
