"""The fine-tuner backends by name: each one's settings schema, checks and Finetuner.

``finetune.backend`` in a search-space file names an entry of :data:`BACKENDS`. The search-space
file model (:mod:`deepsc_tune.search_space`) validates the ``finetune:`` block with the entry's
``parse``; callers that need a backend's behaviour look it up here instead of comparing names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from deepsc_tune.command_settings import CommandSettings
from deepsc_tune.schema import line_errors, raise_errors, validate_python
from deepsc_tune.train_settings import TRAIN_KEYS, TrainSettings


class FinetuneBlock(NamedTuple):
    """A validated ``finetune:`` block: the backend's typed settings and the fixed settings
    every trial starts from (DeepSC's names)."""

    settings: Any
    fixed: dict[str, Any]


def _parse_builtin(block: Mapping[str, Any]) -> FinetuneBlock:
    fixed = {k: v for k, v in block.items() if k != "backend"}
    try:
        return FinetuneBlock(validate_python(TrainSettings, fixed), fixed)
    except ValidationError as e:
        raise_errors(line_errors(e, model=TrainSettings))  # with the did-you-mean of unknown keys
        raise


def _parse_command(block: Mapping[str, Any]) -> FinetuneBlock:
    settings = validate_python(CommandSettings, block, context={"source": "finetune"})
    return FinetuneBlock(settings, dict(settings.fixed))


def _check_command(block: FinetuneBlock, params: Mapping[str, Any], enqueue: list[dict]) -> Any:
    from deepsc_tune.deepsc import check_command_space

    s = block.settings
    return check_command_space(
        cwd=s.cwd or Path("."),
        command=s.command,
        overrides=s.overrides,
        fixed=block.fixed,
        new_keys=s.new_keys,
        search=params,
        enqueue=enqueue,
        run_dir_override=s.run_dir_override,
    )


@dataclass(frozen=True)
class Backend:
    """One backend: how its ``finetune:`` block is read and what else is checked before a run."""

    name: str
    #: Its schema of the ``finetune:`` block.
    settings: type
    #: ``finetune:`` block -> :class:`FinetuneBlock` (``pydantic.ValidationError`` otherwise).
    parse: Callable[[Mapping[str, Any]], FinetuneBlock]
    #: Settings the ``search`` block may name; ``None``: any key (a command's own config).
    searchable: frozenset[str] | None = None
    #: Whether every trial's settings are valid ``settings`` (then the ends of every searched
    #: range are checked before a run).
    checks_values: bool = False
    #: Whether the backend trains on the ``data:`` block itself (the built-in fine-tuner); the
    #: command backend's program reads its own files.
    prepares_data: bool = False
    #: What the backend's program would refuse, read from its checkout: ``(block, params,
    #: enqueue) -> deepsc.Findings``; ``None`` where nothing is checked.
    check_space: Callable[[FinetuneBlock, Mapping[str, Any], list[dict]], Any] | None = None

    def check(self, settings: Mapping[str, Any]) -> Any:
        """One trial's full settings, validated (``pydantic.ValidationError`` otherwise)."""
        return validate_python(self.settings, dict(settings))

    def param_types(self) -> dict[str, type]:
        """Declared ``int``/``float`` types of the numeric settings (for searched ranges)."""
        if not self.checks_values:
            return {}
        return {
            f.name: type(f.default)
            for f in fields(self.settings)
            if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)
        }


BACKENDS: dict[str, Backend] = {
    "builtin": Backend(
        "builtin",
        TrainSettings,
        _parse_builtin,
        searchable=frozenset(TRAIN_KEYS),
        checks_values=True,
        prepares_data=True,
    ),
    "command": Backend("command", CommandSettings, _parse_command, check_space=_check_command),
}
#: The backend of a file without ``finetune.backend``.
DEFAULT_BACKEND = "builtin"


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (a study's stored ``backend`` attribute, say)."""
    return BACKENDS[name]


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "FinetuneBlock", "get_backend"]
