"""Hydra overrides: how a run's settings are written on DeepSC's command line.

:func:`format_value` writes a value so that Hydra's override grammar reads it back as the same
type (``learning_rate=0.0001``, ``lr_scheduler_type=cosine``; a string that would read as a
number is quoted); :func:`build_argv` is a child's whole argument list. Here too: which values an
override may hold (:func:`coerce_value`), the run-folder placeholder, and the paths settings name
(:func:`resolve_path`, :func:`checkout_pythonpath`). Used by the ``command`` backend and by
``best --format hydra``. This module never imports Optuna.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from deepsc_tune.errors import ConfigError

if TYPE_CHECKING:
    from deepsc_tune.backends.command._settings import CommandSettings

#: Replaced by the run's folder in string values of overrides, settings and ``env``.
RUN_DIR_PLACEHOLDER = "{run_dir}"
#: DeepSC config keys whose values are paths. Relative ones are resolved against the folder
#: deepsc-tune was started in, because the child runs in the trial's folder (DeepSC itself would
#: resolve them against its own working directory).
PATH_KEYS = ("data_path", "data_path_eval", "csv_path", "pretrained_model_path")

#: Hydra's override grammar: a dotted key, optionally group paths (a/b) and @package.
HYDRA_KEY = re.compile(r"^[A-Za-z_]\w*(?:[./]\w+)*(?:@[\w.:]*)?$")
# Characters Hydra accepts in an unquoted string (ID chars, / - + . $ % *), minus the
# backslash, whose escaping rules changed between Hydra versions.
_SAFE_STRING = re.compile(r"^[A-Za-z0-9_/\-+.$%*]+$")
# Strings Hydra would read as something other than a string (numbers, bools, null): quote them.
_NON_STRING = re.compile(r"^(?:[+-]?[\d_.]*\d[\d_.]*(?:[eE][+-]?\d+)?|[+-]?inf|[+-]?nan|true|false|null)$", re.I)
#: PyYAML (YAML 1.1) reads 1e-5 as a string; such values are meant as numbers.
YAML11_FLOAT = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)[eE][-+]?\d+$")


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
        if not isinstance(key, str) or not HYDRA_KEY.match(key):
            raise ConfigError(f"finetune: cannot pass setting {key!r} to the command: not a Hydra config key")
        try:
            argv.append(format_override(key, substitute(value, run_dir), new=key in s.new_keys))
        except ValueError as e:
            raise ConfigError(f"finetune.{key}: {e}") from None
    if s.run_dir_override and s.run_dir_override not in merged:
        argv.append(format_override(s.run_dir_override, run_dir))
    return argv


def substitute(value: Any, run_dir: str) -> Any:
    if isinstance(value, str):
        return value.replace(RUN_DIR_PLACEHOLDER, run_dir)
    if isinstance(value, list):
        return [substitute(v, run_dir) for v in value]
    if isinstance(value, Mapping):
        return {k: substitute(v, run_dir) for k, v in value.items()}
    return value


def coerce_value(value: Any) -> Any:
    """Check that ``value`` can be written as an override; read ``'1e-5'`` as a float."""
    if value is None or isinstance(value, (bool, numbers.Real)):
        return value
    if isinstance(value, str):
        return float(value) if YAML11_FLOAT.match(value.strip()) else value
    if isinstance(value, Mapping):
        if not all(isinstance(k, str) and re.match(r"^[A-Za-z_]\w*$", k) for k in value):
            raise ValueError("a mapping with identifier keys")
        return {k: coerce_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [coerce_value(v) for v in value]
    raise ValueError("a number, string, true/false, null, or a list or mapping of them")


def resolve_path(key: str, value: Any) -> Any:
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


__all__ = [
    "HYDRA_KEY",
    "PATH_KEYS",
    "RUN_DIR_PLACEHOLDER",
    "YAML11_FLOAT",
    "build_argv",
    "checkout_pythonpath",
    "coerce_value",
    "format_override",
    "format_value",
    "resolve_path",
    "substitute",
]
