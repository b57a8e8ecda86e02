"""Settings of the built-in fine-tuner (YAML ``finetune:`` keys, DeepSC's names), validated.

Apart from :mod:`deepsc_tune.train` so that checking a search space (``deepsc-tune validate``)
needs neither torch nor scikit-learn.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from deepsc_tune.errors import ConfigError
from deepsc_tune.schedules import check_scheduler_type

MODELS = ("mlp", "transformer")
FINETUNE_MODES = ("full", "head_only")
LOSSES = ("standard", "balanced")

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


@dataclass
class TrainSettings:
    """Settings of one built-in fine-tune (YAML ``finetune:`` keys, DeepSC's names).

    ``grad_acc`` defaults to 1 here; DeepSC's default of 20 suits its large model (effective
    batch 640), not the small built-in models. ``hidden`` may be written as a list or as a
    string such as ``"256,128"`` (Optuna's categorical choices must be scalars); ``"none"`` or
    ``[]`` gives a linear model.
    """

    model: str = "mlp"
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.1
    seq_len: int = 256
    num_bin: int = 51
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    finetune_mode: str = "full"
    init_checkpoint: str | None = None
    learning_rate: float = 1e-4
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.03
    restart_decay: float = 0.9
    num_cycles: int | None = None
    epoch: int = 10
    batch_size: int = 32
    grad_acc: int = 1
    seed: int = 42
    weight_decay: float = 0.0
    loss: str = "standard"
    device: str = "auto"
    num_threads: int | None = None
    eval_batch_size: int = 1024

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "finetune") -> TrainSettings:
        """Validate and coerce a settings mapping (missing keys take their defaults).

        Numbers given as strings (PyYAML reads ``1e-4`` as text) are parsed; integral floats are
        accepted for integer keys. Every problem is reported at once: one line
        ``source.key: expected ..., got ...`` each.

        Raises
        ------
        ConfigError
            Unknown keys or invalid values.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a mapping of settings, got {d!r}")
        problems: list[str] = []
        values: dict[str, Any] = {}
        for key, raw in d.items():
            if key not in TRAIN_KEYS:
                problems.append(f"{source}.{key}: unknown key; expected one of {', '.join(TRAIN_KEYS)}")
                continue
            try:
                values[key] = _CHECKS[key](raw)
            except _Invalid as e:
                got = f", got {raw!r}" if e.show_value else ""
                problems.append(f"{source}.{key}: {e}{got}")
        if not problems:
            merged = {**asdict(cls()), **values}
            if merged["d_model"] % merged["n_heads"]:
                problems.append(
                    f"{source}.d_model: expected a multiple of n_heads ({merged['n_heads']}), got {merged['d_model']!r}"
                )
        if problems:
            if len(problems) == 1:
                raise ConfigError(problems[0])
            raise ConfigError(f"{len(problems)} problems in {source}:\n" + "\n".join(f"- {p}" for p in problems))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-friendly dict (``hidden`` as a list)."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


#: Every key :meth:`TrainSettings.from_dict` accepts (search-space validation uses it).
TRAIN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainSettings))


class _Invalid(ValueError):
    """A value failed its check; the message says what was expected."""

    def __init__(self, message: str, *, show_value: bool = True) -> None:
        super().__init__(message)
        self.show_value = show_value  # False when the message already quotes the value


def _number(raw: Any, *, integer: bool) -> int | float:
    if isinstance(raw, bool):
        raise _Invalid("expected a number")
    if isinstance(raw, str):
        try:
            raw = float(raw.strip())
        except ValueError:
            raise _Invalid("expected a number") from None
    if not isinstance(raw, (int, float)):
        raise _Invalid("expected a number")
    if integer:
        if isinstance(raw, float):
            if not raw.is_integer():
                raise _Invalid("expected an integer")
            raw = int(raw)
        return int(raw)
    value = float(raw)
    if not math.isfinite(value):
        raise _Invalid("expected a finite number")
    return value


def _int_at_least(low: int, *, optional: bool = False) -> Callable[[Any], int | None]:
    def check(raw: Any) -> int | None:
        if optional and raw is None:
            return None
        try:
            value = int(_number(raw, integer=True))
        except _Invalid:
            raise _Invalid(f"expected an integer >= {low}" + (" or null" if optional else "")) from None
        if value < low:
            raise _Invalid(f"expected an integer >= {low}" + (" or null" if optional else ""))
        return value

    return check


def _float_in(
    low: float, high: float | None, *, low_open: bool = False, high_open: bool = False, what: str | None = None
) -> Callable[[Any], float]:
    lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
    expected = what or (
        f"a number in {lo}{low}, {high}{hi}" if high is not None else f"a number {'>' if low_open else '>='} {low}"
    )

    def check(raw: Any) -> float:
        try:
            value = float(_number(raw, integer=False))
        except _Invalid:
            raise _Invalid(f"expected {expected}") from None
        ok = (value > low if low_open else value >= low) and (
            high is None or (value < high if high_open else value <= high)
        )
        if not ok:
            raise _Invalid(f"expected {expected}")
        return value

    return check


def _choice(options: Sequence[str]) -> Callable[[Any], str]:
    def check(raw: Any) -> str:
        if raw not in options:
            raise _Invalid("expected one of " + ", ".join(repr(o) for o in options))
        return raw

    return check


def _scheduler_type(raw: Any) -> str:
    try:
        return check_scheduler_type(raw)
    except ConfigError as e:
        # DeepSC's own message, which users know and search for; it already quotes the value.
        raise _Invalid(str(e), show_value=False) from None


def _hidden(raw: Any) -> tuple[int, ...]:
    expected = "expected a list of positive layer widths such as [256, 128] or '256,128'"
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "[]")):
        return ()
    if isinstance(raw, str):
        parts = [p for p in re.split(r"[\s,x\-\[\]]+", raw.strip()) if p]
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        parts = [raw]
    elif isinstance(raw, (list, tuple)):
        parts = list(raw)
    else:
        raise _Invalid(expected)
    try:
        widths = tuple(int(_number(p, integer=True)) for p in parts)
    except _Invalid:
        raise _Invalid(expected) from None
    if any(w < 1 for w in widths):
        raise _Invalid(expected)
    return widths


def _optional_path(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise _Invalid("expected a path to a torch state dict or null")
    return raw


def _device(raw: Any) -> str:
    if not isinstance(raw, str) or not _DEVICE_RE.match(raw):
        raise _Invalid("expected 'auto', 'cpu', 'cuda' or 'cuda:N'")
    return raw


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "model": _choice(MODELS),
    "hidden": _hidden,
    "dropout": _float_in(0.0, 1.0, high_open=True),
    "seq_len": _int_at_least(1),
    "num_bin": _int_at_least(3),
    "d_model": _int_at_least(1),
    "n_layers": _int_at_least(1),
    "n_heads": _int_at_least(1),
    "finetune_mode": _choice(FINETUNE_MODES),
    "init_checkpoint": _optional_path,
    "learning_rate": _float_in(0.0, None, low_open=True, what="a positive number such as 1e-4"),
    "lr_scheduler_type": _scheduler_type,
    "warmup_ratio": _float_in(0.0, 1.0),
    "restart_decay": _float_in(0.0, 1.0, low_open=True),
    "num_cycles": _int_at_least(1, optional=True),
    "epoch": _int_at_least(1),
    "batch_size": _int_at_least(1),
    "grad_acc": _int_at_least(1),
    "seed": _int_at_least(0),
    "weight_decay": _float_in(0.0, None),
    "loss": _choice(LOSSES),
    "device": _device,
    "num_threads": _int_at_least(1, optional=True),
    "eval_batch_size": _int_at_least(1),
}
assert set(_CHECKS) == set(TRAIN_KEYS), "every setting needs a check"
