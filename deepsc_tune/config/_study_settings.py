"""The ``study`` block: metric, trial budget, sampler, pruner, configs to run first, confirmation.

:class:`StudySettings` is a pydantic model of the one schema (:mod:`deepsc_tune.utils._schema`).
``enqueue`` is checked against the searched parameters, given in the validation context as
``params`` (the search-space file model passes them); sampler and pruner arguments are checked
against the signature of the Optuna class they name.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Annotated, Any

import optuna
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, ValidationInfo, field_validator

from deepsc_tune.backends import METRICS
from deepsc_tune.config._tracking import check_tracking
from deepsc_tune.utils import STRICT, as_integer, expected, number, number_field, problem, raise_errors

SAMPLERS = {
    "tpe": "TPESampler",
    "random": "RandomSampler",
    "grid": "GridSampler",
    "gp": "GPSampler",
    "cmaes": "CmaEsSampler",
    "qmc": "QMCSampler",
    "bruteforce": "BruteForceSampler",
}
PRUNERS = {
    "hyperband": "HyperbandPruner",
    "successive_halving": "SuccessiveHalvingPruner",
    "median": "MedianPruner",
    "percentile": "PercentilePruner",
    "threshold": "ThresholdPruner",
    "wilcoxon": "WilcoxonPruner",
    "none": "NopPruner",
}

DEFAULT_STUDY = {
    "metric": "val_accuracy",
    "n_trials": 20,
    "sampler": {"type": "tpe", "seed": 0},
    # reduction_factor 4, not Optuna's 3: with 10 epochs, 3 puts the last rung at epoch 9, where
    # pruning saves one epoch and discards a nearly finished trial (docs/benchmark.md).
    "pruner": {"type": "hyperband", "min_resource": 1, "reduction_factor": 4},
    "enqueue": [],
    "max_failures": 3,
    # Off by default: see docs/benchmark.md ("Confirmation") for the evidence.
    "confirm": None,
    "timeout": None,  # seconds for one `deepsc-tune run`; it stops between trials
    "tracking": None,  # {mlflow: {...}} and/or {wandb: {...}}: one run per trial (config/_tracking.py)
}
#: Keys of the ``study`` block.
STUDY_KEYS = tuple(DEFAULT_STUDY)
#: Keys of ``study.confirm`` (re-run the ``top`` best configurations with ``seeds`` more seeds).
CONFIRM_KEYS = ("top", "seeds")


def _positive_integer(raw: Any) -> int:
    if raw is None:
        raise problem("missing; expected a positive integer")
    value = as_integer(raw)
    if value is None or value < 1:
        raise expected("a positive integer")
    return value


_POSITIVE = PlainValidator(_positive_integer)


def _metric(raw: Any) -> str:
    if raw not in METRICS:
        raise problem(f"unknown metric {raw!r}; expected one of {', '.join(METRICS)}")
    return raw


def _component(names: dict[str, str], module: Any) -> PlainValidator:
    """``{type: NAME, **kwargs}`` (or a bare ``NAME``) checked against the Optuna class's signature."""

    def check(raw: Any) -> dict[str, Any]:
        value = {"type": raw} if isinstance(raw, str) else raw
        if not isinstance(value, dict) or "type" not in value:
            raise expected("a mapping with 'type'")
        kind = value["type"]
        if kind not in names:
            raise_errors([(("type",), problem(f"unknown {kind!r}; expected one of {', '.join(names)}"), kind)])
        accepted = [p for p in inspect.signature(getattr(module, names[kind])).parameters if p != "self"]
        out: dict[str, Any] = {"type": kind}
        errors = []
        for key, arg in value.items():
            if key == "type":
                continue
            if key not in accepted:
                what = f"not an argument of optuna {names[kind]}; expected one of {', '.join(accepted) or '(none)'}"
                errors.append(((str(key),), problem(what), arg))
                continue
            n = number(arg) if isinstance(arg, str) else None
            out[key] = n if n is not None else arg
        raise_errors(errors)
        return out

    return PlainValidator(check)


def _confirm_mapping(raw: Any) -> Any:
    if raw is None or raw is False:
        return None
    if not isinstance(raw, (Mapping, ConfirmSettings)):
        raise expected("a mapping {top: K, seeds: N} or null")
    return raw


class ConfirmSettings(BaseModel):
    """``study.confirm``: re-run the ``top`` best configurations with ``seeds`` more seeds."""

    model_config = ConfigDict(**STRICT, validate_default=True)

    top: Annotated[int, _POSITIVE] = None
    seeds: Annotated[int, _POSITIVE] = None


class StudySettings(BaseModel):
    """The validated ``study`` block (missing keys take :data:`DEFAULT_STUDY`'s values)."""

    model_config = STRICT

    metric: Annotated[str, PlainValidator(_metric)] = DEFAULT_STUDY["metric"]
    n_trials: Annotated[int, _POSITIVE] = DEFAULT_STUDY["n_trials"]
    sampler: Annotated[dict[str, Any], _component(SAMPLERS, optuna.samplers)] = Field(
        default_factory=lambda: dict(DEFAULT_STUDY["sampler"])
    )
    pruner: Annotated[dict[str, Any], _component(PRUNERS, optuna.pruners)] = Field(
        default_factory=lambda: dict(DEFAULT_STUDY["pruner"])
    )
    enqueue: list[dict[str, Any]] = Field(default_factory=list)
    max_failures: Annotated[int, _POSITIVE] = DEFAULT_STUDY["max_failures"]
    confirm: Annotated[ConfirmSettings | None, BeforeValidator(_confirm_mapping)] = None
    timeout: Annotated[float | None, number_field("seconds > 0 or null", lambda x: x > 0, optional=True)] = None
    tracking: Annotated[dict[str, dict[str, Any]] | None, PlainValidator(check_tracking)] = None

    @field_validator("enqueue", mode="plain")
    @classmethod
    def _enqueue(cls, raw: Any, info: ValidationInfo) -> list[dict[str, Any]]:
        """Configs to run first: each a mapping of searched parameters to values in range."""
        from deepsc_tune.config._search_params import coerce_choice

        if raw is None:
            return []
        if not isinstance(raw, list):
            raise expected("a list of parameter mappings")
        params = (info.context or {}).get("params")
        errors = []
        clean: list[dict[str, Any]] = []
        for i, item in enumerate(raw):
            if not isinstance(item, dict):
                errors.append(((i,), expected("a mapping of searched parameters"), item))
                continue
            entry: dict[str, Any] = {}
            for key, value in item.items():
                value = coerce_choice(value)
                spec = None if params is None else params.get(key)
                if params is not None and spec is None:
                    what = f"not a searched parameter; expected one of {', '.join(params) or '(none)'}"
                    errors.append(((i, str(key)), problem(what), value))
                elif spec is not None and not spec.contains(value):
                    rng = spec.choices if spec.kind == "categorical" else f"[{spec.low}, {spec.high}]"
                    errors.append(((i, key), problem(f"{value!r} is outside the search range {rng}"), value))
                else:
                    entry[key] = value
            clean.append(entry)
        raise_errors(errors)
        return clean

    def confirm_dict(self) -> dict[str, int] | None:
        """``{"top": K, "seeds": N}``, or ``None`` (no confirmation)."""
        return None if self.confirm is None else {"top": self.confirm.top, "seeds": self.confirm.seeds}


__all__ = [
    "CONFIRM_KEYS",
    "DEFAULT_STUDY",
    "PRUNERS",
    "SAMPLERS",
    "STUDY_KEYS",
    "ConfirmSettings",
    "StudySettings",
]
