"""The ``command`` backend: DeepSC's own fine-tuner (or any program) run as a subprocess.

DeepSC is driven the way its users drive it::

    python -m src.deepsc.finetune.finetune lr_scheduler_type=cosine learning_rate=0.0001 ...

Each run gets the fixed ``finetune:`` settings merged with the trial's values as Hydra overrides,
plus ``hydra.run.dir=<run_dir>`` so that every trial writes into its own folder. Validation
metrics come from two sources, read while the child runs:

- DeepSC's stdout: ``Epoch N [Finetune Cell Type Annotation]`` followed by
  ``Evaluation Loss: ..., Accuracy: ..., Macro F1: ...`` (regular expressions configurable);
- a JSON-lines file named by ``$DEEPSC_TUNE_METRICS`` (``run_dir/metrics.jsonl``), one object per
  epoch, for any program that is not DeepSC.

Each epoch is handed to ``on_epoch`` as soon as it appears; when the callback returns ``True`` the
child's whole process group is terminated (SIGTERM, then SIGKILL after ``grace_period``).
Nothing started here outlives :meth:`CommandFinetuner.run`: not on pruning, a timeout, an error,
nor Ctrl-C. This module never imports Optuna.

The backend's parts: :mod:`~deepsc_tune.backends.command._settings` (the ``finetune:`` block),
:mod:`~deepsc_tune.backends.command._hydra_overrides` (the argument list), :mod:`~deepsc_tune.backends.command._metrics_parsing`
(epochs from stdout and the JSON-lines file), :mod:`~deepsc_tune.backends.command._run` (one run of the
child) on :mod:`~deepsc_tune.utils._processes` (its process group). Their public names are importable
from here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from deepsc_tune.backends._interface import METRICS, EpochCallback, FinetuneResult
from deepsc_tune.backends.command._hydra_overrides import (
    PATH_KEYS,
    RUN_DIR_PLACEHOLDER,
    build_argv,
    checkout_pythonpath,
    format_override,
    format_value,
)
from deepsc_tune.backends.command._metrics_parsing import DEFAULT_EPOCH_REGEX, DEFAULT_METRICS_REGEX
from deepsc_tune.backends.command._run import (
    LOG_FILE,
    METRICS_ENV,
    METRICS_FILE,
    RUN_DIR_ENV,
    ChildRun,
)
from deepsc_tune.backends.command._settings import (
    COMMAND_KEYS,
    DEFAULT_COMMAND,
    METRIC_SOURCES,
    CommandSettings,
)
from deepsc_tune.backends.command.deepsc import StartSpacing, WarmupPlan, run_plan, start_lock_path
from deepsc_tune.errors import ConfigError


class CommandFinetuner:
    """A :class:`~deepsc_tune.backends._interface.Finetuner` that runs a command per fine-tune.

    Parameters
    ----------
    settings
        From :meth:`CommandSettings.from_dict`.
    cuda_visible_devices
        GPU(s) for every run of this finetuner (``CUDA_VISIBLE_DEVICES`` in the child's
        environment); one GPU per trial when workers run in parallel. ``None`` leaves the
        environment's value.
    start_lock
        Lock file that spaces the starts of parallel runs (:mod:`deepsc_tune.backends.command.deepsc._output_folders`);
        by default DeepSC 2416d85's, in its hard-coded output folder, and none for other programs.

    Raises
    ------
    ConfigError
        If ``settings.cwd`` is not a directory or the program is not found, so that a wrong
        checkout path fails before any trial runs.
    """

    def __init__(
        self, settings: CommandSettings, *, cuda_visible_devices: str | None = None, start_lock: Path | None = None
    ) -> None:
        self.settings = settings
        self.cuda_visible_devices = None if cuda_visible_devices is None else str(cuda_visible_devices)
        #: A :class:`~deepsc_tune.backends.command.deepsc._checkpoints.CheckpointKeeper` (set by the caller that owns the study).
        self.checkpoint_keeper = None
        self._deepsc_config: dict[str, Any] | None = None
        cwd = settings.cwd
        if cwd is not None and not cwd.is_dir():
            raise ConfigError(f"finetune.cwd: no such directory {str(cwd)!r} (expected the DeepSC checkout)")
        program = settings.command[0]
        if os.sep in program or (os.altsep and os.altsep in program):
            found = (Path(cwd or ".") / program).exists()
        else:
            path = settings.env.get("PATH", os.environ.get("PATH"))
            found = shutil.which(program, path=path) is not None
        if not found:
            raise ConfigError(
                f"finetune.command: program {program!r} not found"
                + (" on PATH" if os.sep not in program else f" (relative to {cwd or Path.cwd()})")
                + "; give the full path of the Python that has DeepSC installed"
            )
        self.start_lock = start_lock if start_lock is not None else start_lock_path(cwd or Path.cwd(), settings.command)

    def warmup_plan(self, params: Mapping[str, Any]) -> WarmupPlan | None:
        """How a DeepSC cosine run's ``warmup_ratio`` (a fraction of its real optimizer steps) is
        passed to DeepSC, which plans for 100,000 cells (:mod:`deepsc_tune.backends.command.deepsc._schedule`);
        ``None`` for another program or schedule. Raises ``FinetuneError`` for a warmup that
        cannot run as meant, ``DataError`` for an unreadable ``data_path``."""
        from deepsc_tune.backends.command.deepsc import is_deepsc_command

        if not is_deepsc_command(self.settings.command):
            return None
        if self._deepsc_config is None:
            from deepsc_tune.backends.command.deepsc import load_config

            self._deepsc_config = load_config(self.settings.cwd)
        return run_plan(self.settings, params, self._deepsc_config)

    def trial_attrs(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """What the objective stores with a trial before it runs: the ``warmup_ratio`` DeepSC is
        passed, if it plans a warmup (the whole plan goes to the trial's ``trial.json``)."""
        from deepsc_tune.backends.command.deepsc import DEEPSC_WARMUP

        plan = self.warmup_plan(params)
        return {} if plan is None else {DEEPSC_WARMUP: plan.deepsc_ratio}

    def build_argv(self, params: Mapping[str, Any], *, run_dir: Path | str) -> list[str]:
        """The child's argument list (:func:`build_argv` with this finetuner's settings)."""
        return build_argv(self.settings, params, run_dir=run_dir)

    def build_env(self, run_dir: Path | str, *, cuda_visible_devices: str | None = None) -> dict[str, str]:
        """The child's environment: ours, ``settings.env``, then the variables the run needs."""
        run_dir = str(run_dir)
        env = dict(os.environ)
        env.update({k: v.replace(RUN_DIR_PLACEHOLDER, run_dir) for k, v in self.settings.env.items()})
        # Unbuffered output, or metric lines arrive in 4 KiB bursts and pruning comes late.
        env["PYTHONUNBUFFERED"] = "1"
        env[METRICS_ENV] = str(Path(run_dir) / METRICS_FILE)
        env[RUN_DIR_ENV] = run_dir
        # The child runs in the trial's folder; the checkout (and its src/, for DeepSC's
        # `deepsc.*` imports next to `src.deepsc.*`) must still import.
        paths = checkout_pythonpath(self.settings.cwd or Path.cwd())
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        gpu = cuda_visible_devices if cuda_visible_devices is not None else self.cuda_visible_devices
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(gpu)
        return env

    def run(
        self,
        params: Mapping[str, Any],
        *,
        metric: str = "val_accuracy",
        on_epoch: EpochCallback | None = None,
        run_dir: Path | None = None,
        cuda_visible_devices: str | None = None,
    ) -> FinetuneResult:
        """Run the command once with ``params`` and follow its metrics.

        Parameters
        ----------
        params
            Fixed settings merged with the trial's values (DeepSC's names).
        metric
            One of :data:`~deepsc_tune.backends._interface.METRICS`; selects ``best_epoch``.
        on_epoch
            Called with each epoch's metrics as soon as they appear; ``True`` stops the run.
        run_dir
            Folder for ``log.txt``, ``metrics.jsonl`` and the program's own files
            (``hydra.run.dir``); a new temporary folder if ``None``.
        cuda_visible_devices
            Overrides the finetuner's GPU for this run.

        Returns
        -------
        FinetuneResult
            ``history`` in epoch order, ``stopped=True`` if ``on_epoch`` asked to stop; no test
            metrics (the program's own "evaluation" set is not trusted as a test set).

        Raises
        ------
        FinetuneError
            On a non-zero exit, a timeout, or a run that printed no metric lines; the message
            holds the cause and the log's last lines.
        """
        if metric not in METRICS:
            raise ConfigError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
        if run_dir is None:
            run_dir = Path(tempfile.mkdtemp(prefix="deepsc-tune-run-"))
        run_dir = Path(run_dir).resolve()
        run_dir.mkdir(parents=True, exist_ok=True)
        gpu = cuda_visible_devices if cuda_visible_devices is not None else self.cuda_visible_devices
        plan = self.warmup_plan(params)
        notes = []
        if plan is not None:
            # The searched fraction of the real run, as the ratio DeepSC's 100,000-cell plan needs.
            params = {**params, "warmup_ratio": plan.deepsc_ratio}
            notes.append(plan.describe())
        argv = self.build_argv(params, run_dir=run_dir)
        env = self.build_env(run_dir, cuda_visible_devices=gpu)
        gpu = env.get("CUDA_VISIBLE_DEVICES") if gpu is None else gpu
        spacing = StartSpacing(self.start_lock) if self.start_lock is not None else None
        child = ChildRun(
            self.settings,
            argv=argv,
            env=env,
            run_dir=run_dir,
            on_epoch=on_epoch,
            notes=notes,
            warmup_steps=None if plan is None else plan.warmup_steps,
            spacing=spacing,
        )
        try:
            outcome = child.execute()
            result = child.result(outcome, metric=metric, device=f"cuda:{gpu}" if gpu else "subprocess")
        finally:
            if self.checkpoint_keeper is not None:  # finished trials that cannot be the best lose their checkpoints
                self.checkpoint_keeper.prune()
        if plan is not None:
            result.extra["warmup"] = plan.record()
        return result


__all__ = [
    "COMMAND_KEYS",
    "DEFAULT_COMMAND",
    "DEFAULT_EPOCH_REGEX",
    "DEFAULT_METRICS_REGEX",
    "LOG_FILE",
    "METRICS_ENV",
    "METRICS_FILE",
    "METRIC_SOURCES",
    "PATH_KEYS",
    "RUN_DIR_ENV",
    "RUN_DIR_PLACEHOLDER",
    "CommandFinetuner",
    "CommandSettings",
    "build_argv",
    "checkout_pythonpath",
    "format_override",
    "format_value",
]
