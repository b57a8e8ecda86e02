"""The ``command`` backend's settings: its ``finetune:`` block, checked and split in two.

:meth:`CommandSettings.from_dict` separates the keys that configure the backend
(:data:`COMMAND_KEYS`: program, checkout, environment, timeout, where metrics come from) from
the fixed DeepSC settings passed to the program as Hydra overrides, and reports every problem at
once, each naming ``finetune.<key>``, the value and what was expected. This module never imports
Optuna.
"""

from __future__ import annotations

import numbers
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsc_tune.errors import ConfigError
from deepsc_tune.hydra_overrides import (
    HYDRA_KEY,
    YAML11_FLOAT,
    coerce_value,
    resolve_path,
)
from deepsc_tune.metrics_parsing import DEFAULT_EPOCH_REGEX, DEFAULT_METRICS_REGEX

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
)
#: Where metrics are read from: DeepSC's stdout, the JSON-lines file, or both.
METRIC_SOURCES = ("deepsc", "json", "both")
#: DeepSC's fine-tuning entry point, as its users type it (run from a DeepSC checkout).
DEFAULT_COMMAND = ("python", "-m", "src.deepsc.finetune.finetune")
_REGEX_KEYS = {"epoch": DEFAULT_EPOCH_REGEX, "metrics": DEFAULT_METRICS_REGEX}


@dataclass
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
    """

    command: tuple[str, ...] = DEFAULT_COMMAND
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, Any] = field(default_factory=dict)
    new_keys: frozenset[str] = frozenset()
    timeout: float | None = None
    metrics: str = "both"
    epoch_regex: str = DEFAULT_EPOCH_REGEX
    metrics_regex: str = DEFAULT_METRICS_REGEX
    run_dir_override: str | None = "hydra.run.dir"
    grace_period: float = 10.0

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
            The settings and the fixed hyperparameters, DeepSC's names.

        Raises
        ------
        ConfigError
            Naming ``source.key``, the value and what was expected; all problems at once.
        """
        if d is None:
            d = {}
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a mapping of settings, got {d!r}")
        problems: list[str] = []
        kw: dict[str, Any] = {}
        fixed: dict[str, Any] = {}

        def bad(key: str, value: Any, expected: str) -> None:
            problems.append(f"{source}.{key}: expected {expected}, got {value!r}")

        new_keys: set[str] = set()
        for key, value in d.items():
            if not isinstance(key, str):
                bad(str(key), key, "a string key")
                continue
            if key in COMMAND_KEYS:
                continue
            if not HYDRA_KEY.match(key):
                bad(key, key, "a Hydra config key such as 'learning_rate' or 'model.num_bins'")
                continue
            try:
                fixed[key] = resolve_path(key, coerce_value(value))
            except ValueError as e:
                bad(key, value, str(e))

        backend = d.get("backend", "command")
        if backend != "command":
            bad("backend", backend, "'command'")

        if "command" in d:
            value = d["command"]
            if isinstance(value, str):
                value = shlex.split(value)
            if (
                isinstance(value, Sequence)
                and value
                and all(isinstance(a, (str, int, float)) and not isinstance(a, bool) for a in value)
            ):
                kw["command"] = tuple(str(a) for a in value)
            else:
                bad(
                    "command",
                    d["command"],
                    "a non-empty list of strings, e.g. [python, -m, src.deepsc.finetune.finetune]",
                )

        if d.get("cwd") is not None:
            if isinstance(d["cwd"], (str, os.PathLike)) and str(d["cwd"]):
                kw["cwd"] = Path(d["cwd"]).expanduser().absolute()
            else:
                bad("cwd", d["cwd"], "a directory path (the DeepSC checkout)")

        if d.get("env") is not None:
            env = d["env"]
            if isinstance(env, Mapping) and all(
                isinstance(k, str) and (v is None or isinstance(v, (str, int, float))) for k, v in env.items()
            ):
                # Booleans become 1/0 and null unsets nothing: env values are always strings.
                kw["env"] = {k: _env_string(v) for k, v in env.items() if v is not None}
            else:
                bad("env", env, "a mapping of variable names to strings")

        if d.get("overrides") is not None:
            ov = d["overrides"]
            if not isinstance(ov, Mapping):
                bad("overrides", ov, "a mapping of Hydra keys to values")
            else:
                overrides: dict[str, Any] = {}
                for key, value in ov.items():
                    name = key[1:] if isinstance(key, str) and key.startswith("+") else key
                    if not isinstance(name, str) or not HYDRA_KEY.match(name):
                        bad(f"overrides.{key}", key, "a Hydra config key such as 'data_path' or '+new_key'")
                        continue
                    if name in fixed:
                        bad(f"overrides.{key}", value, f"each key once; '{name}' is also a fixed setting of {source}")
                        continue
                    if key != name:  # '+key' in overrides marks a key new to the config
                        new_keys.add(name)
                    try:
                        overrides[name] = resolve_path(name, coerce_value(value))
                    except ValueError as e:
                        bad(f"overrides.{key}", value, str(e))
                kw["overrides"] = overrides

        if d.get("new_keys") is not None:
            nk = d["new_keys"]
            if isinstance(nk, str):
                nk = [nk]
            if isinstance(nk, Sequence) and all(isinstance(k, str) and HYDRA_KEY.match(k.lstrip("+")) for k in nk):
                new_keys.update(k.lstrip("+") for k in nk)
            else:
                bad("new_keys", d["new_keys"], "a list of Hydra keys new to the program's config")
        kw["new_keys"] = frozenset(new_keys)

        if d.get("timeout") is not None:
            t = _as_number(d["timeout"])
            if t is None or t <= 0:
                bad("timeout", d["timeout"], "a positive number of seconds per run, or null for no limit")
            else:
                kw["timeout"] = float(t)

        if "metrics" in d:
            if d["metrics"] in METRIC_SOURCES:
                kw["metrics"] = d["metrics"]
            else:
                bad("metrics", d["metrics"], "one of " + ", ".join(repr(s) for s in METRIC_SOURCES))

        if d.get("metric_regex") is not None:
            mr = d["metric_regex"]
            if not isinstance(mr, Mapping):
                bad("metric_regex", mr, "a mapping with 'epoch' and/or 'metrics' regular expressions")
            else:
                for key, pattern in mr.items():
                    if key not in _REGEX_KEYS:
                        bad(f"metric_regex.{key}", key, "'epoch' or 'metrics'")
                        continue
                    error = _check_regex(key, pattern)
                    if error:
                        bad(f"metric_regex.{key}", pattern, error)
                    else:
                        kw[f"{key}_regex"] = pattern

        if "run_dir_override" in d:
            rdo = d["run_dir_override"]
            if rdo is None or (isinstance(rdo, str) and HYDRA_KEY.match(rdo)):
                kw["run_dir_override"] = rdo
            else:
                bad("run_dir_override", rdo, "a Hydra key such as 'hydra.run.dir', or null")

        if d.get("grace_period") is not None:
            g = _as_number(d["grace_period"])
            if g is None or g < 0:
                bad("grace_period", d["grace_period"], "a number of seconds >= 0")
            else:
                kw["grace_period"] = float(g)

        if problems:
            if len(problems) == 1:
                raise ConfigError(problems[0])
            raise ConfigError(f"{source}: {len(problems)} problems:\n" + "\n".join(f"- {p}" for p in problems))
        return cls(**kw), fixed


def _as_number(value: Any) -> float | None:
    """``value`` as a float if it is a number (or a YAML-1.1 string like ``'1e3'``)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, str) and YAML11_FLOAT.match(value.strip()):
        return float(value)
    return None


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
