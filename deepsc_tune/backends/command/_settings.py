"""The ``command`` backend's settings: its ``finetune:`` block, checked and split in two.

:class:`CommandSettings` (a pydantic dataclass of the one schema, :mod:`deepsc_tune.utils._schema`)
separates the keys that configure the backend (:data:`COMMAND_KEYS`: program, checkout,
environment, timeout, where metrics come from) from the fixed DeepSC settings passed to the
program as Hydra overrides (``fixed``), and reports every problem at once, each naming
``finetune.<key>``, the value and what was expected. This module never imports Optuna.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

from pydantic import PlainValidator, ValidationError, ValidationInfo, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs

from deepsc_tune.backends.command._hydra_overrides import HYDRA_KEY, coerce_value, resolve_path
from deepsc_tune.backends.command._metrics_parsing import DEFAULT_EPOCH_REGEX, DEFAULT_METRICS_REGEX
from deepsc_tune.backends.command.deepsc import DEFAULT_KEEP, KEEP_POLICIES
from deepsc_tune.utils import STRICT, expected, line_errors, number_field, one_of, raise_errors, validate

#: Keys of the ``finetune:`` block that configure this backend; every other key is a fixed
#: DeepSC setting passed to the command as an override.
COMMAND_KEYS = (
    "backend",
    "command",
    "cwd",
    "env",
    "overrides",
    "new_keys",
    "timeout",
    "metrics",
    "metric_regex",
    "run_dir_override",
    "grace_period",
    "keep_checkpoints",
)
#: Where metrics are read from: DeepSC's stdout, the JSON-lines file, or both.
METRIC_SOURCES = ("deepsc", "json", "both")
#: DeepSC's fine-tuning entry point, as its users type it (run from a DeepSC checkout).
DEFAULT_COMMAND = ("python", "-m", "src.deepsc.finetune.finetune")
_REGEX_KEYS = {"epoch": DEFAULT_EPOCH_REGEX, "metrics": DEFAULT_METRICS_REGEX}
_A_HYDRA_KEY = "a Hydra config key such as 'learning_rate' or 'model.num_bins'"
_GRACE_PERIOD = 10.0


def _command(raw: Any) -> tuple[str, ...]:
    value = shlex.split(raw) if isinstance(raw, str) else raw
    if (
        isinstance(value, Sequence)
        and value
        and all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in value)
    ):
        return tuple(str(a) for a in value)
    raise expected("a non-empty list of strings, e.g. [python, -m, src.deepsc.finetune.finetune]")


def _cwd(raw: Any) -> Path | None:
    if raw is None:
        return None
    if isinstance(raw, (str, os.PathLike)) and str(raw):
        return Path(raw).expanduser().absolute()
    raise expected("a directory path (the DeepSC checkout)")


def _env(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, Mapping) and all(
        isinstance(k, str) and (v is None or isinstance(v, (str, int, float))) for k, v in raw.items()
    ):
        # Booleans become 1/0 and null unsets nothing: env values are always strings.
        return {k: _env_string(v) for k, v in raw.items() if v is not None}
    raise expected("a mapping of variable names to strings")


def _overrides(raw: Any) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise expected("a mapping of Hydra keys to values")
    out: dict[str, Any] = {}
    errors = []
    for key, value in raw.items():
        name = key[1:] if isinstance(key, str) and key.startswith("+") else key  # '+key': new to the config
        if not isinstance(name, str) or not HYDRA_KEY.match(name):
            errors.append(((str(key),), expected("a Hydra config key such as 'data_path' or '+new_key'"), key))
            continue
        try:
            out[name] = resolve_path(name, coerce_value(value))
        except ValueError as e:
            errors.append(((key,), expected(str(e)), value))
    raise_errors(errors)
    return out


def _new_keys(raw: Any) -> frozenset[str]:
    if raw is None:
        return frozenset()
    keys = [raw] if isinstance(raw, str) else raw
    if isinstance(keys, Sequence) and all(isinstance(k, str) and HYDRA_KEY.match(k.lstrip("+")) for k in keys):
        return frozenset(k.lstrip("+") for k in keys)
    raise expected("a list of Hydra keys new to the program's config")


def _run_dir_override(raw: Any) -> str | None:
    if raw is None or (isinstance(raw, str) and HYDRA_KEY.match(raw)):
        return raw
    raise expected("a Hydra key such as 'hydra.run.dir', or null")


_SECONDS = number_field("a number of seconds >= 0", lambda x: x >= 0)


def _grace_period(raw: Any) -> float:
    return _GRACE_PERIOD if raw is None else _SECONDS.func(raw)


@dataclass(config=STRICT)
class CommandSettings:
    """How to run the fine-tuning command (the backend's keys of the ``finetune:`` block).

    Attributes
    ----------
    command
        Program and arguments before the overrides (default DeepSC's
        ``python -m src.deepsc.finetune.finetune``).
    cwd
        The program's checkout, e.g. DeepSC's (``None``: the current directory). It and its
        ``src/`` go first on the child's ``PYTHONPATH`` (DeepSC imports both ``deepsc.*`` and
        ``src.deepsc.*``) and a relative program path is found there; the child itself runs in
        the trial's folder, so files it writes into its working directory stay with the trial.
    env
        Extra environment variables for the child.
    overrides
        Overrides passed on every run that are not hyperparameters (data paths, checkpoints).
    new_keys
        Keys new to the program's Hydra config, passed as ``+key=value``.
    timeout
        Seconds a run may take before it is killed (``None``: no limit).
    metrics
        ``deepsc`` (stdout), ``json`` (``$DEEPSC_TUNE_METRICS``) or ``both``.
    epoch_regex, metrics_regex
        Regular expressions for the stdout header and metrics lines.
    run_dir_override
        Override key that receives the run folder (``None``: not passed).
    grace_period
        Seconds between SIGTERM and SIGKILL when a run is stopped.
    keep_checkpoints
        Whose DeepSC checkpoints stay on disk: ``best`` (the chosen configuration's), ``all``, ``none``.
    """

    YAML_KEYS = COMMAND_KEYS  # for the did-you-mean of an unknown key

    command: Annotated[tuple[str, ...], PlainValidator(_command)] = DEFAULT_COMMAND
    cwd: Annotated[Path | None, PlainValidator(_cwd)] = None
    env: Annotated[dict[str, str], PlainValidator(_env)] = dataclasses.field(default_factory=dict)
    overrides: Annotated[dict[str, Any], PlainValidator(_overrides)] = dataclasses.field(default_factory=dict)
    new_keys: Annotated[frozenset[str], PlainValidator(_new_keys)] = frozenset()
    timeout: Annotated[
        float | None,
        number_field("a positive number of seconds per run, or null for no limit", lambda x: x > 0, optional=True),
    ] = None
    metrics: Annotated[str, one_of(METRIC_SOURCES)] = "both"
    epoch_regex: str = DEFAULT_EPOCH_REGEX
    metrics_regex: str = DEFAULT_METRICS_REGEX
    run_dir_override: Annotated[str | None, PlainValidator(_run_dir_override)] = "hydra.run.dir"
    grace_period: Annotated[float, PlainValidator(_grace_period)] = _GRACE_PERIOD
    #: Which trials' DeepSC checkpoints stay on disk (:mod:`deepsc_tune.backends.command.deepsc._checkpoints`).
    keep_checkpoints: Annotated[str, one_of(KEEP_POLICIES, "one of " + ", ".join(KEEP_POLICIES))] = DEFAULT_KEEP
    #: The block's other keys: fixed DeepSC settings, passed to the program as overrides.
    fixed: dict[str, Any] = dataclasses.field(default_factory=dict)

    @model_validator(mode="wrap")
    @classmethod
    def _from_block(cls, data: Any, handler: Any, info: ValidationInfo) -> CommandSettings:
        """A ``finetune:`` block: the backend's keys to the fields, every other key to ``fixed``."""
        if not isinstance(data, Mapping):
            if isinstance(data, (ArgsKwargs, CommandSettings)):
                return handler(data)  # built directly, not from YAML
            raise expected("a mapping of settings")
        errors: list = []
        own: dict[str, Any] = {}
        fixed: dict[str, Any] = {}
        for key, value in data.items():
            if not isinstance(key, str):
                errors.append(((str(key),), expected("a string key"), key))
            elif key == "backend":
                if value != "command":
                    errors.append(((key,), expected("'command'"), value))
            elif key == "metric_regex":
                own.update(_regexes(value, errors))
            elif key in COMMAND_KEYS:
                own[key] = value
            elif not HYDRA_KEY.match(key):
                errors.append(((key,), expected(_A_HYDRA_KEY), key))
            else:
                try:
                    fixed[key] = resolve_path(key, coerce_value(value))
                except ValueError as e:
                    errors.append(((key,), expected(str(e)), value))
        raw_overrides = own.get("overrides")
        plus: set[str] = set()
        if isinstance(raw_overrides, Mapping):
            source = (info.context or {}).get("source", "finetune")
            for key, value in raw_overrides.items():
                name = key[1:] if isinstance(key, str) and key.startswith("+") else key
                if name in fixed:
                    what = f"each key once; '{name}' is also a fixed setting of {source}"
                    errors.append((("overrides", key), expected(what), value))
                elif name != key:
                    plus.add(name)
        try:
            settings = handler({**own, "fixed": fixed})
        except ValidationError as e:
            raise_errors(line_errors(e, model=cls) + errors)
            raise
        raise_errors(errors)
        settings.new_keys = frozenset(settings.new_keys | plus)
        return settings

    @classmethod
    def from_dict(
        cls, d: Mapping[str, Any] | None, *, source: str = "finetune"
    ) -> tuple[CommandSettings, dict[str, Any]]:
        """Validate a ``finetune:`` block; split it into settings and fixed hyperparameters.

        Parameters
        ----------
        d
            The block as read from YAML. Keys in :data:`COMMAND_KEYS` configure the backend;
            every other key is a fixed DeepSC setting (``epoch: 10``) passed as an override.
        source
            Prefix for error messages (``finetune`` -> ``finetune.timeout: ...``).

        Returns
        -------
        (CommandSettings, dict)
            The settings and the fixed hyperparameters (``settings.fixed``), DeepSC's names.

        Raises
        ------
        ConfigError
            Naming ``source.key``, the value and what was expected; all problems at once.
        """
        settings = validate(cls, {} if d is None else d, source=source, context={"source": source})
        return settings, dict(settings.fixed)


def _regexes(value: Any, errors: list) -> dict[str, str]:
    """``metric_regex: {epoch: ..., metrics: ...}`` as the fields ``epoch_regex``/``metrics_regex``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        errors.append(
            (("metric_regex",), expected("a mapping with 'epoch' and/or 'metrics' regular expressions"), value)
        )
        return {}
    out = {}
    for key, pattern in value.items():
        if key not in _REGEX_KEYS:
            errors.append((("metric_regex", str(key)), expected("'epoch' or 'metrics'"), key))
            continue
        error = _check_regex(key, pattern)
        if error:
            errors.append((("metric_regex", key), expected(error), pattern))
        else:
            out[f"{key}_regex"] = pattern
    return out


def _env_string(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _check_regex(key: str, pattern: Any) -> str | None:
    """What is wrong with a ``metric_regex`` entry, or ``None``."""
    if not isinstance(pattern, str):
        return "a regular expression string"
    try:
        rx = re.compile(pattern)
    except re.error as e:
        return f"a valid regular expression ({e})"
    if key == "epoch" and "epoch" not in rx.groupindex and rx.groups < 1:
        return "a regular expression with a group (?P<epoch>\\d+) for the epoch number"
    if key == "metrics" and "val_accuracy" not in rx.groupindex:
        return "a regular expression with a named group (?P<val_accuracy>...)"
    return None


__all__ = [
    "COMMAND_KEYS",
    "DEFAULT_COMMAND",
    "METRIC_SOURCES",
    "CommandSettings",
]
