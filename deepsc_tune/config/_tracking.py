"""Experiment tracking: one MLflow or W&B run per trial (``study.tracking`` in the search space).

    study:
      tracking:
        mlflow: {tracking_uri: file:./mlruns}          # experiment named after the study
        wandb: {project: deepsc-tune, mode: offline}   # runs grouped by the study's name

Each trial gets one run: its parameters (``trial.params``), every epoch's metrics at
``step=epoch``, and at the end its state (``COMPLETE``/``PRUNED``/``FAIL``), value and fail reason.
Runs are grouped by study: the MLflow experiment (and W&B ``group``) is the study's name.

Why not optuna-integration's ``MLflowCallback`` / ``WeightsAndBiasesCallback``: they are study
callbacks, called once a trial has ended, and log the final value, parameters and user attributes
only, so the per-epoch curve (the point of watching a fine-tuning search) would be lost. Their
``track_in_mlflow`` / ``track_in_wandb`` decorators do open the trial's run around the objective,
but the MLflow one records the run id in the study storage under the trial's internal storage
id (one more write per trial, through Optuna's private API) and holds its lock for the whole trial; the W&B one uses the
process's global ``wandb.run`` and its callback then logs at ``step=trial.number``, behind the
epochs' steps, which W&B drops. Both would have to be wired into every ``study.optimize`` loop
(run, repeat, confirm) next to the objective. So
the objective, which already sees every epoch, the final state and the fail reason, calls a
:class:`Tracker` here, which logs through the libraries' own clients: ``mlflow.MlflowClient``
(no global active run to disturb) and ``wandb.init(reinit="create_new")``.

The libraries are optional (``pip install 'deepsc-tune[tracking]'``) and imported only when a
tracked trial starts; validation checks that they are installed without importing them. A
tracker that fails (server down) prints one warning and never fails the trial.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from collections.abc import Mapping
from typing import Any, Protocol

from deepsc_tune.utils import expected, problem, raise_errors, unknown_key

#: Trackers and the keys each accepts, with the expected type's description.
TRACKER_KEYS: dict[str, dict[str, str]] = {
    "mlflow": {
        "tracking_uri": "a URI string (e.g. file:./mlruns, http://host:5000)",
        "experiment": "a string (default: the study's name)",
        "tags": "a mapping of tag names to values",
    },
    "wandb": {
        "project": "a string (default: deepsc-tune)",
        "entity": "a string",
        "group": "a string (default: the study's name)",
        "mode": "one of online, offline, disabled",
        "dir": "a folder path string",
        "tags": "a list of strings",
    },
}
#: The Python package each tracker imports.
PACKAGES = {"mlflow": "mlflow", "wandb": "wandb"}
INSTALL_HINT = "pip install 'deepsc-tune[tracking]'"
WANDB_MODES = ("online", "offline", "disabled")
DEFAULT_WANDB_PROJECT = "deepsc-tune"


class TrialRun(Protocol):
    """One trial's run: every epoch, then the end state once."""

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None: ...

    def end(
        self,
        *,
        state: str,
        value: float | None,
        fail_reason: str | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> None: ...


class Tracker(Protocol):
    """What the objective calls at the start of a trial; a run per trial, so trials running in
    threads of one process keep apart."""

    def start_trial(
        self, *, study_name: str, number: int, params: Mapping[str, Any], attrs: Mapping[str, Any] | None = None
    ) -> TrialRun:
        """``params``: the trial's searched values; ``attrs``: what else tells the run apart
        (the seed, ``repeat_of``), tags in MLflow and ``config`` entries in W&B."""
        ...


class _NoRun:
    """A run that could not start (the warning is printed): nothing more is tried."""

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        pass

    def end(self, **kwargs: Any) -> None:
        pass


def check_tracking(value: Any) -> dict[str, dict[str, Any]] | None:
    """Validate ``study.tracking`` into ``{tracker: {key: value}}`` (``None`` when off).

    Raises every problem at once in the schema's format (:mod:`deepsc_tune.utils._schema`), located
    relative to ``study.tracking``; never imports the tracking libraries.
    """
    if value is None or value is False or value == {}:
        return None
    if not isinstance(value, dict):
        raise_errors([((), expected("a mapping such as {mlflow: {}} or {wandb: {}}"), value)])
    errors: list = []
    out: dict[str, dict[str, Any]] = {}
    for name, cfg in value.items():
        if name not in TRACKER_KEYS:
            errors.append(((str(name),), problem(f"unknown tracker; expected one of {', '.join(TRACKER_KEYS)}"), cfg))
            continue
        if cfg is None or cfg is True:
            cfg = {}
        if not isinstance(cfg, dict):
            errors.append(((name,), expected("a mapping of settings (or {})"), cfg))
            continue
        n_before = len(errors)
        for key, item in cfg.items():
            what = TRACKER_KEYS[name].get(key)
            if what is None:
                errors.append(((name, str(key)), unknown_key(tuple(TRACKER_KEYS[name])), item))
            elif not _has_type(name, key, item):
                errors.append(((name, key), expected(what), item))
        if importlib.util.find_spec(PACKAGES[name]) is None:
            errors.append(
                ((name,), problem(f"the {PACKAGES[name]} package is not installed; run: {INSTALL_HINT}"), cfg)
            )
        if len(errors) == n_before:
            out[name] = dict(cfg)
    raise_errors(errors)
    return out or None


def _has_type(tracker: str, key: str, value: Any) -> bool:
    if key == "tags":
        if tracker == "mlflow":
            return isinstance(value, dict)
        return isinstance(value, list) and all(isinstance(t, str) for t in value)
    if key == "mode":
        return value in WANDB_MODES
    return isinstance(value, str) and bool(value)


def build_tracker(config: Mapping[str, Mapping[str, Any]] | None) -> Tracker | None:
    """The tracker for a validated ``study.tracking`` (``None`` when tracking is off)."""
    if not config:
        return None
    makers = {"mlflow": MlflowTracker, "wandb": WandbTracker}
    trackers = [makers[name](**cfg) for name, cfg in config.items()]
    return trackers[0] if len(trackers) == 1 else _Trackers(trackers)


def _warn(tracker: str, what: str, error: BaseException) -> None:
    text = " ".join(str(error).split())
    text = text if len(text) <= 300 else text[:297] + "..."
    print(
        f"warning: {tracker} tracking: {what} failed ({type(error).__name__}: {text}); the trial goes on",
        file=sys.stderr,
    )


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Numeric metrics (no bools, no missing ones), as floats."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


class MlflowTracker:
    """One MLflow run per trial in the experiment named after the study."""

    def __init__(
        self, tracking_uri: str | None = None, experiment: str | None = None, tags: Mapping[str, Any] | None = None
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._client: Any = None
        self._experiments: dict[str, str] = {}
        # Trials in threads of one process share the client; the first creates the experiment.
        self._lock = threading.Lock()

    def start_trial(
        self, *, study_name: str, number: int, params: Mapping[str, Any], attrs: Mapping[str, Any] | None = None
    ) -> TrialRun:
        try:
            from mlflow import MlflowClient
            from mlflow.entities import Param

            name = self.experiment or study_name
            with self._lock:
                client = self._client = self._client or MlflowClient(tracking_uri=self.tracking_uri)
                if name not in self._experiments:
                    self._experiments[name] = self._experiment_id(client, name)
                experiment_id = self._experiments[name]
            tags = {
                **self.tags,
                "optuna.study": study_name,
                "optuna.trial_number": str(number),
                "state": "RUNNING",
                **{k: str(v) for k, v in (attrs or {}).items()},
            }
            run = client.create_run(experiment_id, run_name=str(number), tags=tags)
            client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        except Exception as e:  # noqa: BLE001 (tracking must never fail a trial)
            _warn("mlflow", "starting the trial's run", e)
            return _NoRun()
        return _MlflowRun(client, run.info.run_id)

    @staticmethod
    def _experiment_id(client: Any, name: str) -> str:
        found = client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        try:
            return client.create_experiment(name)
        except Exception:  # another worker created it first
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found.experiment_id


class _MlflowRun:
    def __init__(self, client: Any, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        try:
            from mlflow.entities import Metric

            stamp = _now_ms()
            values = [Metric(k, v, stamp, epoch) for k, v in _numbers(metrics).items() if k != "epoch"]
            self.client.log_batch(self.run_id, metrics=values)
        except Exception as e:  # noqa: BLE001 (tracking must never fail a trial)
            _warn("mlflow", f"logging epoch {epoch}", e)

    def end(
        self,
        *,
        state: str,
        value: float | None,
        fail_reason: str | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> None:
        run_id = self.run_id
        try:
            from mlflow.entities import Metric, RunTag

            stamp = _now_ms()
            finals = _numbers({**(summary or {}), "value": value})
            tags = [RunTag("state", state)]
            if fail_reason:
                tags.append(RunTag("fail_reason", fail_reason[:5000]))
            self.client.log_batch(run_id, metrics=[Metric(k, v, stamp, 0) for k, v in finals.items()], tags=tags)
            status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(state, "FAILED")
            self.client.set_terminated(run_id, status=status)
        except Exception as e:  # noqa: BLE001 (tracking must never fail a trial)
            _warn("mlflow", "ending the trial's run", e)


class WandbTracker:
    """One W&B run per trial, in ``project``, grouped by the study's name."""

    def __init__(
        self,
        project: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        mode: str | None = None,
        dir: str | None = None,
        tags: list[str] | None = None,
    ) -> None:
        self.project = project or DEFAULT_WANDB_PROJECT
        self.entity = entity
        self.group = group
        self.mode = mode
        self.dir = dir
        self.tags = list(tags or [])

    def start_trial(
        self, *, study_name: str, number: int, params: Mapping[str, Any], attrs: Mapping[str, Any] | None = None
    ) -> TrialRun:
        try:
            import wandb

            run = wandb.init(
                project=self.project,
                entity=self.entity,
                group=self.group or study_name,
                name=f"{study_name}-{number}",
                job_type="trial",
                config={**(attrs or {}), **params},
                tags=self.tags or None,
                mode=self.mode,
                dir=self.dir,
                reinit="create_new",
                settings=wandb.Settings(console="off", silent=True),
            )
            run.summary["optuna_study"] = study_name
            run.summary["optuna_trial_number"] = number
        except Exception as e:  # noqa: BLE001 (tracking must never fail a trial)
            _warn("wandb", "starting the trial's run", e)
            return _NoRun()
        return _WandbRun(run)


class _WandbRun:
    def __init__(self, run: Any) -> None:
        self.run = run

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        try:
            values = {k: v for k, v in _numbers(metrics).items() if k != "epoch"}
            self.run.log({**values, "epoch": epoch}, step=epoch)
        except Exception as e:  # noqa: BLE001 (tracking must never fail a trial)
            _warn("wandb", f"logging epoch {epoch}", e)

    def end(
        self,
        *,
        state: str,
        value: float | None,
        fail_reason: str | None = None,
        summary: Mapping[str, Any] | None = None,
    ) -> None:
        run = self.run
        try:
            finals: dict[str, Any] = {**_numbers(summary or {}), "state": state, "value": value}
            if fail_reason:
                finals["fail_reason"] = fail_reason[:5000]
            run.summary.update(finals)
            run.finish(exit_code=0 if state != "FAIL" else 1)
        except Exception as e:  # noqa: BLE001 (tracking must never fail a trial)
            _warn("wandb", "ending the trial's run", e)


class _Trackers:
    """Several trackers at once (``study.tracking`` with both ``mlflow`` and ``wandb``)."""

    def __init__(self, trackers: list[Tracker]) -> None:
        self.trackers = trackers

    def start_trial(self, **kwargs: Any) -> TrialRun:
        return _Runs([t.start_trial(**kwargs) for t in self.trackers])


class _Runs:
    def __init__(self, runs: list[TrialRun]) -> None:
        self.runs = runs

    def log_epoch(self, epoch: int, metrics: Mapping[str, Any]) -> None:
        for r in self.runs:
            r.log_epoch(epoch, metrics)

    def end(self, **kwargs: Any) -> None:
        for r in self.runs:
            r.end(**kwargs)


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
