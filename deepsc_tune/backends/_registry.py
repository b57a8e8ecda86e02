"""The fine-tuner backends by name: each one's settings schema, checks and Finetuner.

``finetune.backend`` in a search-space file names an entry of :data:`BACKENDS`. The search-space
file model (:mod:`deepsc_tune.config._search_space`) validates the ``finetune:`` block with the entry's
``parse``; callers that need a backend's behaviour look it up here instead of comparing names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from deepsc_tune.backends.builtin import TRAIN_KEYS, TrainSettings
from deepsc_tune.backends.command import CommandSettings
from deepsc_tune.utils import line_errors, raise_errors, validate_python


class FinetuneBlock(NamedTuple):
    """A validated ``finetune:`` block: the backend's typed settings and the fixed settings
    every trial starts from (DeepSC's names)."""

    settings: Any
    fixed: dict[str, Any]


def _parse_builtin(block: Mapping[str, Any], fixed_so_far: dict[str, Any]) -> FinetuneBlock:
    fixed = {k: v for k, v in block.items() if k != "backend"}
    fixed_so_far.update(fixed)
    try:
        settings = validate_python(TrainSettings, fixed)
    except ValidationError as e:
        raise_errors(line_errors(e, model=TrainSettings))  # with the did-you-mean of unknown keys
        raise
    # The fixed settings with their types (PyYAML reads 1e-4 as the string '1e-4'): what trials
    # store and readers use is the validated value, never the text.
    typed = settings.to_dict()
    return FinetuneBlock(settings, {k: typed[k] for k in fixed})


def _parse_command(block: Mapping[str, Any], fixed_so_far: dict[str, Any]) -> FinetuneBlock:
    settings = validate_python(CommandSettings, block, context={"source": "finetune"})
    return FinetuneBlock(settings, dict(settings.fixed))


def _check_command(block: FinetuneBlock, params: Mapping[str, Any], enqueue: list[dict]) -> Any:
    from deepsc_tune.backends.command.deepsc import check_command_space

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


def _builtin_finetuner(settings: Any, data: Any, *, log: Any = None, defaults: Mapping[str, Any] | None = None) -> Any:
    from deepsc_tune.backends.builtin import BuiltinFinetuner  # torch: only when a run starts

    defaults = {k: v for k, v in (defaults or {}).items() if k != "cuda_visible_devices"}
    return BuiltinFinetuner(data, log=log, defaults=defaults)


def _command_finetuner(settings: Any, data: Any, *, log: Any = None, defaults: Mapping[str, Any] | None = None) -> Any:
    from deepsc_tune.backends.command import CommandFinetuner

    return CommandFinetuner(settings, cuda_visible_devices=(defaults or {}).get("cuda_visible_devices"))


def _builtin_files(settings: Any, data_settings: Any, *, hint: str | None = None) -> None:
    from deepsc_tune.data import check_inputs

    check_inputs(data_settings, hint=hint)


def _command_files(settings: Any, data_settings: Any, *, hint: str | None = None) -> None:
    _command_finetuner(settings, None)  # refuses a missing checkout (cwd) or program


@dataclass(frozen=True)
class Backend:
    """One backend: how its ``finetune:`` block is read and what else is checked before a run."""

    name: str
    #: Its schema of the ``finetune:`` block.
    settings: type
    #: ``(finetune: block, fixed_so_far) -> FinetuneBlock``; raises ``pydantic.ValidationError``
    #: with every problem, having put into ``fixed_so_far`` the fixed settings it could tell
    #: (a searched key repeated there is reported even when the block has other problems).
    parse: Callable[[Mapping[str, Any], dict[str, Any]], FinetuneBlock]
    #: Settings the ``search`` block may name; ``None``: any key (a command's own config).
    searchable: frozenset[str] | None = None
    #: Whether every trial's settings are valid ``settings`` (then the ends of every searched
    #: range are checked before a run).
    checks_values: bool = False
    #: Whether it trains in this process on the ``data:`` block (the built-in fine-tuner): the
    #: data are prepared here, the best weights kept, ``lr-find`` runs it, and its settings are
    #: translated to DeepSC's on export.
    in_process: bool = False
    #: Whether the ``finetune:`` block configures a program run per trial (DeepSC's fine-tuner):
    #: its split is written for DeepSC and its export is the whole command line.
    runs_program: bool = False
    #: ``(settings, data, log=, defaults=) -> Finetuner`` (``data``: ``PreparedData`` or ``None``).
    finetuner: Callable[..., Any] | None = None
    #: ``(settings, data_settings, hint=)``: the files a run needs exist (``validate``), without
    #: reading them; raises :class:`~deepsc_tune.errors.DeepscTuneError`.
    check_files: Callable[..., None] | None = None
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
        in_process=True,
        finetuner=_builtin_finetuner,
        check_files=_builtin_files,
    ),
    "command": Backend(
        "command",
        CommandSettings,
        _parse_command,
        runs_program=True,
        finetuner=_command_finetuner,
        check_files=_command_files,
        check_space=_check_command,
    ),
}
#: The backend of a file without ``finetune.backend``.
DEFAULT_BACKEND = "builtin"


def get_backend(name: str) -> Backend:
    """The backend called ``name`` (a study's stored ``backend`` attribute, say)."""
    return BACKENDS[name]


__all__ = ["BACKENDS", "DEFAULT_BACKEND", "Backend", "FinetuneBlock", "get_backend"]
