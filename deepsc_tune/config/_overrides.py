"""Command-line overrides of a search-space file: applied, and blamed for what they cause.

``key.path=value`` items, values parsed as YAML (with the file's limits,
:func:`~deepsc_tune.utils._yaml_file.load_value`); a bare key (``learning_rate=3e-4``) means the
``finetune`` block. :func:`blame_overrides` says which of a file's problems an override caused,
so that an error names the override, not the file.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from deepsc_tune.errors import ConfigError
from deepsc_tune.utils import UNKNOWN_KEY, Problem, load_value

#: Top-level keys of a search-space file.
TOP_KEYS = ("name", "description", "source", "data", "finetune", "search", "study")


def apply_overrides(config: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``config`` with ``a.b.c=value`` items applied (values parsed as YAML)."""
    out = copy.deepcopy(config)
    for item in overrides:
        key, sep, value_text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override '{item}': expected key=value, e.g. finetune.epoch=5 or learning_rate=3e-4")
        try:
            value = load_value(value_text, source=f"override '{key}=...'") if value_text.strip() else None
        except yaml.YAMLError:
            value = value_text
        parts = key.split(".")
        if parts[0] not in TOP_KEYS:
            parts = ["finetune", *parts]
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override '{item}': {'.'.join(parts[: i + 1])} is {child!r}, not a mapping")
            node = child
        node[parts[-1]] = value
    return out


def override_paths(overrides: Sequence[str]) -> dict[str, str]:
    """``{full key path: override item}``, bare keys meaning ``finetune.``, as applied."""
    paths = {}
    for item in overrides:
        parts = item.partition("=")[0].strip().split(".")
        if parts[0] not in TOP_KEYS:
            parts = ["finetune", *parts]
        paths[".".join(parts)] = item
    return paths


def blame_overrides(
    problems: Sequence[Problem], overrides: Sequence[str], raw: Mapping[str, Any] | None = None
) -> tuple[list[Problem], int]:
    """Say which problems an override on the command line caused; return them and how many.

    An override causes a problem at its own key, and at a key above it that the file does not
    have (``foo.bar=1`` makes ``finetune.foo``, unknown) or that it changed
    (``search.learning_rate.low=0.5``: the range ``search.learning_rate`` is wrong).
    """
    cli = override_paths(overrides)
    out, blamed = [], 0
    for p in problems:
        item = cli.get(p.key)
        if item is None:
            below = [v for k, v in cli.items() if k.startswith(f"{p.key}.")]
            if below and (p.message != UNKNOWN_KEY or not _has_key(raw or {}, p.key)):
                item = below[0]
        out.append(p if item is None else p.blamed_on(item))
        blamed += item is not None
    return out, blamed


def _has_key(config: Mapping[str, Any], dotted: str) -> bool:
    node: Any = config
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True
