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
"""

from __future__ import annotations

import codecs
import json
import math
import numbers
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepsc_tune.backend import METRICS, EpochCallback, EpochMetrics, FinetuneResult
from deepsc_tune.errors import ConfigError, FinetuneError
from deepsc_tune.processes import KILL_WAIT_S, describe_exit, start_group, stop_group

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
#: Environment variable naming the JSON-lines metrics file the child may append to.
METRICS_ENV = "DEEPSC_TUNE_METRICS"
#: Environment variable naming the run's folder (for programs that are not Hydra apps).
RUN_DIR_ENV = "DEEPSC_TUNE_RUN_DIR"
#: File names inside a run folder.
LOG_FILE = "log.txt"
METRICS_FILE = "metrics.jsonl"
#: Replaced by the run's folder in string values of overrides, settings and ``env``.
RUN_DIR_PLACEHOLDER = "{run_dir}"
#: Lines of the child's output quoted in a failure message.
TAIL_LINES = 10
#: DeepSC config keys whose values are paths. Relative ones are resolved against the folder
#: deepsc-tune was started in, because the child runs in the trial's folder (DeepSC itself would
#: resolve them against its own working directory).
PATH_KEYS = ("data_path", "data_path_eval", "csv_path", "pretrained_model_path")
#: DeepSC 2416d85 prints where it writes checkpoints, logs and plots (a hard-coded folder).
_OUTPUT_DIR_LINE = re.compile(r"^Output directory created:\s*(?P<path>\S.*)$")

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
#: DeepSC's per-epoch header (``CellTypeAnnotation.train``, printed by rank 0).
DEFAULT_EPOCH_REGEX = r"Epoch\s+(?P<epoch>\d+)\s+\[Finetune Cell Type Annotation\]"
#: DeepSC's evaluation line (``CellTypeAnnotation.evaluate``).
DEFAULT_METRICS_REGEX = (
    rf"Evaluation Loss:\s*(?P<val_loss>{_NUM}),\s*Error Rate:\s*(?:{_NUM}),\s*"
    rf"Accuracy:\s*(?P<val_accuracy>{_NUM}),\s*Precision:\s*(?:{_NUM}),\s*"
    rf"Recall:\s*(?:{_NUM}),\s*Macro F1:\s*(?P<val_macro_f1>{_NUM})"
)
_REGEX_KEYS = {"epoch": DEFAULT_EPOCH_REGEX, "metrics": DEFAULT_METRICS_REGEX}
# Optional numeric fields a metrics line or JSON object may carry, besides val_accuracy.
_OPTIONAL_FIELDS = ("val_macro_f1", "val_loss", "learning_rate", "train_loss", "seconds")

# Hydra's override grammar: a dotted key, optionally group paths (a/b) and @package.
_HYDRA_KEY = re.compile(r"^[A-Za-z_]\w*(?:[./]\w+)*(?:@[\w.:]*)?$")
# Characters Hydra accepts in an unquoted string (ID chars, / - + . $ % *), minus the
# backslash, whose escaping rules changed between Hydra versions.
_SAFE_STRING = re.compile(r"^[A-Za-z0-9_/\-+.$%*]+$")
# Strings Hydra would read as something other than a string (numbers, bools, null): quote them.
_NON_STRING = re.compile(r"^(?:[+-]?[\d_.]*\d[\d_.]*(?:[eE][+-]?\d+)?|[+-]?inf|[+-]?nan|true|false|null)$", re.I)
# PyYAML (YAML 1.1) reads 1e-5 as a string; such values are meant as numbers.
_YAML11_FLOAT = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)[eE][-+]?\d+$")

# Lines that explain a failure better than the last line of a traceback, first match wins.
_CAUSE_PATTERNS = (
    re.compile(r"Unknown lr_scheduler_type:.*"),
    re.compile(r"Could not override '[^']*'|Could not append to config|Key '[^']*' is not in struct"),
)
# The last Python exception line is the fallback cause ("RuntimeError: CUDA out of memory...").
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception)(?::|$)")

_POLL_S = 0.1  # how often the JSON file, the timeout and the child are checked
_EOF_WAIT_S = 2.0  # after the child exits, how long a leftover holding the pipe may linger
_MAX_SEGMENT = 1 << 20  # a "line" without newline longer than this is parsed as is


# ----------------------------------------------------------------------------- settings


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
            if not _HYDRA_KEY.match(key):
                bad(key, key, "a Hydra config key such as 'learning_rate' or 'model.num_bins'")
                continue
            try:
                fixed[key] = _resolve_path(key, _coerce_value(value))
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
                bad("command", d["command"], "a non-empty list of strings, e.g. [python, -m, src.deepsc.finetune.finetune]")

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
                    if not isinstance(name, str) or not _HYDRA_KEY.match(name):
                        bad(f"overrides.{key}", key, "a Hydra config key such as 'data_path' or '+new_key'")
                        continue
                    if name in fixed:
                        bad(f"overrides.{key}", value, f"each key once; '{name}' is also a fixed setting of {source}")
                        continue
                    if key != name:  # '+key' in overrides marks a key new to the config
                        new_keys.add(name)
                    try:
                        overrides[name] = _resolve_path(name, _coerce_value(value))
                    except ValueError as e:
                        bad(f"overrides.{key}", value, str(e))
                kw["overrides"] = overrides

        if d.get("new_keys") is not None:
            nk = d["new_keys"]
            if isinstance(nk, str):
                nk = [nk]
            if isinstance(nk, Sequence) and all(isinstance(k, str) and _HYDRA_KEY.match(k.lstrip("+")) for k in nk):
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
            if rdo is None or (isinstance(rdo, str) and _HYDRA_KEY.match(rdo)):
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
    if isinstance(value, str) and _YAML11_FLOAT.match(value.strip()):
        return float(value)
    return None


def _resolve_path(key: str, value: Any) -> Any:
    """A relative path under a :data:`PATH_KEYS` key, made absolute against the current folder.

    The child runs in the trial's folder, and DeepSC would otherwise read ``data/train.h5ad``
    relative to that (or to its checkout); users mean the folder they ran deepsc-tune in.
    """
    if key not in PATH_KEYS or not isinstance(value, str) or not value or RUN_DIR_PLACEHOLDER in value:
        return value
    path = Path(value).expanduser()
    return os.path.abspath(path)


def checkout_pythonpath(checkout: Path | str) -> list[str]:
    """What goes first on the child's ``PYTHONPATH``: the checkout and, if it has one, its
    ``src/`` (DeepSC imports both ``src.deepsc.*`` and ``deepsc.*``; its own scripts run
    ``PYTHONPATH=src torchrun ... -m deepsc.finetune.finetune``)."""
    checkout = Path(checkout).absolute()
    return [str(checkout)] + ([str(checkout / "src")] if (checkout / "src").is_dir() else [])


def _env_string(value: Any) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


def _coerce_value(value: Any) -> Any:
    """Check that ``value`` can be written as an override; read ``'1e-5'`` as a float."""
    if value is None or isinstance(value, (bool, numbers.Real)):
        return value
    if isinstance(value, str):
        return float(value) if _YAML11_FLOAT.match(value.strip()) else value
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) and re.match(r"^[A-Za-z_]\w*$", k) for k in value):
            raise ValueError("a mapping with identifier keys")
        return {k: _coerce_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_coerce_value(v) for v in value]
    raise ValueError("a number, string, true/false, null, or a list or mapping of them")


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


# ----------------------------------------------------------------------------- overrides


def format_value(value: Any) -> str:
    """Write ``value`` the way Hydra's override grammar reads it back as the same type.

    Floats use ``repr`` (shortest round-trip: ``0.0001``, ``3e-5``) with the exponent's
    leading zeros dropped, since older Hydra grammars reject ``3e-05``; bools are
    ``true``/``false``, ``None`` is ``null``, sequences ``[a,b]``, mappings ``{a:1}``. Strings
    Hydra would read as another type, or that hold characters outside its unquoted set, are
    single-quoted.

    Raises
    ------
    ValueError
        For values Hydra cannot represent.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return _format_float(float(value))
    if isinstance(value, str):
        if _SAFE_STRING.match(value) and not _NON_STRING.match(value):
            return value
        return _quote(value)
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    raise ValueError(f"cannot write {value!r} ({type(value).__name__}) as a Hydra override")


def format_override(key: str, value: Any, *, new: bool = False) -> str:
    """One ``key=value`` argument (``+key=value`` when ``new``: a key new to the config)."""
    prefix = "+" if new and not key.startswith("+") else ""
    return f"{prefix}{key}={format_value(value)}"


def _format_float(x: float) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return re.sub(r"e([+-])0+(\d)", r"e\1\2", repr(x))


def _quote(s: str) -> str:
    # Hydra (>= 1.1) unescapes \' inside quotes and \\ only where backslashes precede a quote
    # or the closing quote, so only those backslashes are doubled.
    s = re.sub(r"(\\+)(?='|$)", lambda m: m.group(1) * 2, s)
    return "'" + s.replace("'", "\\'") + "'"


def _substitute(value: Any, run_dir: str) -> Any:
    if isinstance(value, str):
        return value.replace(RUN_DIR_PLACEHOLDER, run_dir)
    if isinstance(value, list):
        return [_substitute(v, run_dir) for v in value]
    if isinstance(value, Mapping):
        return {k: _substitute(v, run_dir) for k, v in value.items()}
    return value


# ----------------------------------------------------------------------------- metrics parsing


class _StdoutParser:
    """Turns lines of the child's output into :class:`EpochMetrics` (reader thread only)."""

    def __init__(self, epoch_regex: str, metrics_regex: str) -> None:
        self.epoch_rx = re.compile(epoch_regex)
        self.metrics_rx = re.compile(metrics_regex)
        self.pending: int | None = None
        self.last: int = 0

    def feed(self, line: str) -> EpochMetrics | None:
        m = self.metrics_rx.search(line)
        if m is None:
            h = self.epoch_rx.search(line)
            if h is not None:
                self.pending = int(h.group("epoch") if "epoch" in self.epoch_rx.groupindex else h.group(1))
            return None
        groups = m.groupdict()
        if groups.get("epoch") is not None:
            epoch = int(groups["epoch"])
        elif self.pending is not None:
            epoch = self.pending
        else:
            # A metrics line with no header: the next epoch after the last one seen.
            epoch = self.last + 1
        self.pending = None
        self.last = epoch
        values = {k: _to_float(groups.get(k)) for k in _OPTIONAL_FIELDS}
        accuracy = _to_float(groups.get("val_accuracy"))
        if accuracy is None:
            return None
        return EpochMetrics(epoch=epoch, val_accuracy=accuracy, **values)


def _to_float(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None


class _JsonLinesTail:
    """Reads complete new lines of the JSON-lines metrics file on each call (main thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""
        self.line_no = 0

    def read(self, *, final: bool = False) -> tuple[list[EpochMetrics], list[str]]:
        try:
            with open(self.path, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                if size < self.offset:  # the child truncated or rewrote the file
                    self.offset, self.partial = 0, b""
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            data = b""
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        # A line without its newline may still be being written, unless the child is done.
        self.partial = b"" if final else lines.pop()
        found: list[EpochMetrics] = []
        warnings: list[str] = []
        for raw in lines:
            self.line_no += 1
            if not raw.strip():
                continue
            try:
                found.append(_parse_json_metrics(raw))
            except ValueError as e:
                warnings.append(f"{self.path.name} line {self.line_no} ignored: {e}")
        return found, warnings


def _parse_json_metrics(raw: bytes) -> EpochMetrics:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    if not isinstance(obj, dict):
        raise ValueError("expected a JSON object")
    epoch = obj.get("epoch")
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
        raise ValueError(f"'epoch' must be an integer >= 0, got {epoch!r}")
    values: dict[str, float | None] = {}
    for name in ("val_accuracy", *_OPTIONAL_FIELDS):
        v = obj.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"'{name}' must be a number, got {v!r}")
        values[name] = None if v is None else float(v)
    if values["val_accuracy"] is None:
        raise ValueError("'val_accuracy' is missing")
    return EpochMetrics(epoch=epoch, **values)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the backend


def build_argv(settings: CommandSettings, params: Mapping[str, Any], *, run_dir: Path | str) -> list[str]:
    """The child's argument list: command, overrides, ``params``, then the run folder.

    ``params`` (fixed settings merged with the trial's values) win over ``overrides``
    holding the same key. ``{run_dir}`` in string values becomes the run folder.

    Raises
    ------
    ConfigError
        If a key is not a Hydra key or a value cannot be written as an override.
    """
    s = settings
    run_dir = str(run_dir)
    merged: dict[str, Any] = dict(s.overrides)
    for key, value in params.items():
        if key not in merged and s.run_dir_override and key == s.run_dir_override:
            continue  # the run folder is ours to choose
        merged[key] = value
    argv = list(s.command)
    if os.sep in argv[0] and not Path(argv[0]).is_absolute():
        # The child runs in the trial's folder: a relative program is the checkout's.
        argv[0] = str(Path(s.cwd or Path.cwd()) / argv[0])
    for key, value in merged.items():
        if not isinstance(key, str) or not _HYDRA_KEY.match(key):
            raise ConfigError(f"finetune: cannot pass setting {key!r} to the command: not a Hydra config key")
        try:
            argv.append(format_override(key, _substitute(value, run_dir), new=key in s.new_keys))
        except ValueError as e:
            raise ConfigError(f"finetune.{key}: {e}") from None
    if s.run_dir_override and s.run_dir_override not in merged:
        argv.append(format_override(s.run_dir_override, run_dir))
    return argv


class CommandFinetuner:
    """A :class:`~deepsc_tune.backend.Finetuner` that runs a command per fine-tune.

    Parameters
    ----------
    settings
        From :meth:`CommandSettings.from_dict`.
    cuda_visible_devices
        GPU(s) for every run of this finetuner (``CUDA_VISIBLE_DEVICES`` in the child's
        environment); one GPU per trial when workers run in parallel. ``None`` leaves the
        environment's value.

    Raises
    ------
    ConfigError
        If ``settings.cwd`` is not a directory or the program is not found, so that a wrong
        checkout path fails before any trial runs.
    """

    def __init__(self, settings: CommandSettings, *, cuda_visible_devices: str | None = None) -> None:
        self.settings = settings
        self.cuda_visible_devices = None if cuda_visible_devices is None else str(cuda_visible_devices)
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
            One of :data:`~deepsc_tune.backend.METRICS`; selects ``best_epoch``.
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
        argv = self.build_argv(params, run_dir=run_dir)
        env = self.build_env(run_dir, cuda_visible_devices=gpu)
        gpu = env.get("CUDA_VISIBLE_DEVICES") if gpu is None else gpu
        child = _ChildRun(self.settings, argv=argv, env=env, run_dir=run_dir, on_epoch=on_epoch)
        outcome = child.execute()
        return child.result(outcome, metric=metric, device=f"cuda:{gpu}" if gpu else "subprocess")


class _ChildRun:
    """One child process: start it, stream its output, follow metrics, stop it, clean up."""

    def __init__(
        self,
        settings: CommandSettings,
        *,
        argv: list[str],
        env: dict[str, str],
        run_dir: Path,
        on_epoch: EpochCallback | None,
    ) -> None:
        self.settings = settings
        self.argv = argv
        self.env = env
        self.run_dir = run_dir
        self.on_epoch = on_epoch
        self.log_path = run_dir / LOG_FILE
        self.metrics_path = run_dir / METRICS_FILE
        self.events: queue.Queue[EpochMetrics | None] = queue.Queue()  # None marks EOF
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.cause: str | None = None
        self.last_exception: str | None = None
        self.output_dir: str | None = None  # where DeepSC says it writes checkpoints
        self.history: list[EpochMetrics] = []
        self.counts = {"stdout": 0, "json": 0}
        self.base: dict[str, int] = {}
        self.warnings: list[str] = []
        self.log_lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        self.start = time.monotonic()
        self.last_report = self.start

    # -- lifecycle

    def execute(self) -> str:
        """Run to the end; ``finished``, ``pruned`` or ``timeout``. Always leaves nothing running."""
        s = self.settings
        use_stdout = s.metrics in ("deepsc", "both")
        # A stale file from an earlier attempt in the same folder must not be read as this run's.
        self.metrics_path.write_bytes(b"")
        tail = _JsonLinesTail(self.metrics_path) if s.metrics in ("json", "both") else None
        parser = _StdoutParser(s.epoch_regex, s.metrics_regex) if use_stdout else None
        self.log = open(self.log_path, "wb")
        try:
            self._note(f"command: {shlex.join(self.argv)}")
            self._note(f"checkout: {s.cwd or Path.cwd()} (on PYTHONPATH); working directory: {self.run_dir}")
            self.start = self.last_report = time.monotonic()
            try:
                # In its own process group, so that stopping it reaches DataLoader workers,
                # DDP ranks and anything else it spawned.
                self.proc = start_group(
                    self.argv,
                    # The trial's folder: what the program writes into "." (DeepSC's
                    # finetune_<timestamp>.log) stays with the trial, not in the checkout.
                    cwd=self.run_dir,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            except OSError as e:
                raise FinetuneError(
                    f"cannot start {self.argv[0]!r} (finetune.command) in {self.run_dir}: {e.strerror or e}"
                ) from None
            reader = threading.Thread(target=self._pump, args=(parser,), name="deepsc-tune-output", daemon=True)
            reader.start()
            try:
                outcome = self._follow(tail)
                if outcome == "timeout":
                    self._note(f"timed out after {s.timeout:g}s: stopping the process group")
                elif outcome == "pruned":
                    self._note(f"stopped after epoch {self.history[-1].epoch}: stopping the process group")
            except BaseException as e:
                # Ctrl-C or a callback that raised: stop the child before the exception moves on.
                self._note(f"interrupted ({type(e).__name__}): stopping the process group")
                raise
            finally:
                self._stop_group()
                reader.join(timeout=KILL_WAIT_S)
            return outcome
        finally:
            with self.log_lock:
                self.log.close()

    def _follow(self, tail: _JsonLinesTail | None) -> str:
        timeout = self.settings.timeout
        deadline = None if timeout is None else self.start + timeout
        assert self.proc is not None
        eof = False
        exited_at: float | None = None
        while True:
            try:
                item = self.events.get(timeout=_POLL_S)
            except queue.Empty:
                item = False  # nothing new
            if item is None:
                eof = True
            elif item is not False and self._report(item, "stdout"):
                return "pruned"
            if tail is not None and self._read_json(tail, final=False):
                return "pruned"
            if self.proc.poll() is not None:
                if eof:
                    # EOF is queued after the last line, so every stdout epoch has been seen.
                    if tail is not None and self._read_json(tail, final=True):
                        return "pruned"
                    return "finished"
                exited_at = exited_at or time.monotonic()
                waited = time.monotonic() - exited_at
                if waited > 2 * _EOF_WAIT_S:
                    # Held open by a process outside the group (it called setsid): the run is over.
                    if tail is not None and self._read_json(tail, final=True):
                        return "pruned"
                    return "finished"
                if waited > _EOF_WAIT_S:
                    # The child is gone but something it started still holds the pipe open.
                    self._stop_group()
            if deadline is not None and time.monotonic() > deadline:
                return "timeout"

    def _read_json(self, tail: _JsonLinesTail, *, final: bool) -> bool:
        found, warnings = tail.read(final=final)
        for w in warnings:
            self.warnings.append(w)
            self._note(w)
        return any(self._report(m, "json") for m in found)

    def _report(self, m: EpochMetrics, source: str) -> bool:
        """Record an epoch (once, whichever source has it first); ``True`` means stop."""
        # Programs that count epochs from 0 are shifted so that epochs count from 1 here.
        base = self.base.setdefault(source, 1 if m.epoch == 0 else 0)
        m.epoch += base
        if any(h.epoch == m.epoch for h in self.history):
            return False
        now = time.monotonic()
        if m.seconds is None:
            m.seconds = round(now - self.last_report, 3)
        self.last_report = now
        self.history.append(m)
        self.counts[source] += 1
        return bool(self.on_epoch(m)) if self.on_epoch is not None else False

    # -- output

    def _pump(self, parser: _StdoutParser | None) -> None:
        """Reader thread: copy output to the log as it arrives, parse it line by line."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                with self.log_lock:
                    if not self.log.closed:
                        self.log.write(chunk)
                        self.log.flush()
                # Progress bars (tqdm) redraw with \r: treat each redraw as a line of its own.
                parts = re.split(r"\r\n|\r|\n", pending + decoder.decode(chunk))
                pending = parts.pop()
                if len(pending) > _MAX_SEGMENT:
                    parts.append(pending)
                    pending = ""
                for part in parts:
                    self._line(part, parser)
            pending += decoder.decode(b"", final=True)
            if pending:
                self._line(pending, parser)
        finally:
            self.proc.stdout.close()
            self.events.put(None)

    def _line(self, line: str, parser: _StdoutParser | None) -> None:
        line = line.rstrip()
        if not line.strip():
            return
        self.tail.append(line)
        line = line.strip()
        if self.cause is None and any(p.search(line) for p in _CAUSE_PATTERNS):
            self.cause = line
        if _EXCEPTION_LINE.match(line):
            self.last_exception = line
        out = _OUTPUT_DIR_LINE.match(line)
        if out and self.output_dir is None:
            self.output_dir = out.group("path")
            self._note(
                f"DeepSC writes this run's checkpoints (two full ones per epoch), logs and plots to "
                f"{self.output_dir} (hard-coded in DeepSC, not in this folder; see docs/deepsc.md)"
            )
        if parser is not None:
            m = parser.feed(line)
            if m is not None:
                self.events.put(m)

    def _note(self, text: str) -> None:
        """A line of our own in the log, marked so it is not mistaken for the child's."""
        with self.log_lock:
            if not self.log.closed:
                self.log.write(f"[deepsc-tune] {text}\n".encode())
                self.log.flush()

    # -- stopping

    def _stop_group(self) -> None:
        """SIGTERM the child's process group, SIGKILL it after the grace period, reap the child."""
        if self.proc is None:
            return
        grace = self.settings.grace_period
        stop_group(
            self.proc,
            grace=grace,
            on_kill=lambda: self._note(f"still running {grace:g}s after SIGTERM: sending SIGKILL"),
        )

    # -- result

    def result(self, outcome: str, *, metric: str, device: str) -> FinetuneResult:
        assert self.proc is not None
        rc = self.proc.returncode
        n = len(self.history)
        if outcome == "timeout":
            raise self._failure(
                f"timed out after {self.settings.timeout:g}s (finetune.timeout) with {n} epoch(s) reported"
            )
        if outcome == "finished":
            if rc != 0:
                raise self._failure(_exit_cause(rc))
            if not self.history:
                raise self._failure(
                    "finished (exit status 0) but printed no metric lines: expected DeepSC's "
                    "'Epoch N [Finetune Cell Type Annotation]' and 'Evaluation Loss: ...' lines "
                    f"(finetune.metric_regex) or JSON lines in ${METRICS_ENV} (finetune.metrics: {self.settings.metrics})"
                )
        history = sorted(self.history, key=lambda m: m.epoch)
        best = _best_epoch(history, metric)
        if best is None and outcome == "finished":
            raise self._failure(f"finished, but no epoch reported {metric}; choose a metric the program reports")
        return FinetuneResult(
            history=history,
            best_epoch=best,
            stopped=outcome == "pruned",
            device=device,
            extra={
                "argv": self.argv,
                "returncode": rc,
                "run_dir": str(self.run_dir),
                "log": str(self.log_path),
                "duration_s": round(time.monotonic() - self.start, 3),
                "metric_sources": dict(self.counts),
                "program_output_dir": self.output_dir,
                "checkout": str(Path(self.settings.cwd or Path.cwd()).absolute()),
                "warnings": list(self.warnings),
            },
        )

    def _failure(self, headline: str) -> FinetuneError:
        cause = self.cause or self.last_exception
        if cause:
            headline = f"{headline}: {cause}"
            hydra_key = re.search(r"Could not override '([^']*)'", cause)
            if hydra_key:
                headline += f" (if '{hydra_key.group(1)}' is new to the program's config, list it in finetune.new_keys)"
        lines = [
            f"fine-tuning command failed, {headline}",
            f"  command: {shlex.join(self.argv)}",
            f"  last lines of {self.log_path}:",
        ]
        lines += [f"    {line}" for line in self.tail] or ["    (no output)"]
        return FinetuneError("\n".join(lines))


def _exit_cause(rc: int) -> str:
    """A failed run's exit for its error message: ``exit status 1``, ``killed by SIGKILL ...``."""
    if rc < 0:
        # The kernel's OOM killer ends a process with SIGKILL.
        hint = " (out of memory?)" if -rc == signal.SIGKILL else ""
        return f"{describe_exit(rc)}{hint} (exit status {rc})"
    return f"exit status {rc}"


def _best_epoch(history: list[EpochMetrics], metric: str) -> int | None:
    best: tuple[float, int] | None = None
    for m in history:
        v = m.metric(metric)
        if v is None or math.isnan(v):
            continue
        if best is None or v > best[0]:  # ties keep the earlier epoch
            best = (v, m.epoch)
    return None if best is None else best[1]


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
    "CommandFinetuner",
    "CommandSettings",
    "build_argv",
    "checkout_pythonpath",
    "format_override",
    "format_value",
]
