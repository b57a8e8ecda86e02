"""Settings of the built-in fine-tuner (YAML ``finetune:`` keys, DeepSC's names), validated.

Apart from :mod:`deepsc_tune.backends.builtin._train` so that checking a search space (``deepsc-tune validate``)
needs neither torch nor scikit-learn.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import asdict, fields
from typing import Annotated, Any

from pydantic import PlainValidator, model_validator
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs

from deepsc_tune.backends.builtin._schedules import check_scheduler_type
from deepsc_tune.errors import ConfigError
from deepsc_tune.utils import (
    STRICT,
    as_integer,
    expected,
    integer_field,
    number_field,
    one_of,
    problem,
    raise_errors,
    validate,
)

MODELS = ("mlp", "transformer")
FINETUNE_MODES = ("full", "head_only")
LOSSES = ("standard", "balanced")

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?|mps)$")


def _scheduler_type(raw: Any) -> str:
    try:
        return check_scheduler_type(raw)
    except ConfigError as e:
        # DeepSC's own message, which users know and search for; it already quotes the value.
        raise problem(str(e)) from None


def _hidden(raw: Any) -> tuple[int, ...]:
    what = "a list of positive layer widths such as [256, 128] or '256,128'"
    if raw is None or (isinstance(raw, str) and raw.strip().lower() in ("", "none", "[]")):
        return ()
    if isinstance(raw, str):
        parts = [p for p in re.split(r"[\s,x\-\[\]]+", raw.strip()) if p]
    elif isinstance(raw, (int, float)) and not isinstance(raw, bool):
        parts = [raw]
    elif isinstance(raw, (list, tuple)):
        parts = list(raw)
    else:
        raise expected(what)
    widths = [as_integer(p) for p in parts]
    if any(w is None or w < 1 for w in widths):
        raise expected(what)
    return tuple(widths)


def _optional_path(raw: Any) -> str | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.strip():
        raise expected("a path to a torch state dict or null")
    return raw


def _device(raw: Any) -> str:
    if not isinstance(raw, str) or not _DEVICE_RE.match(raw):
        raise expected("'auto', 'cpu', 'cuda' or 'cuda:N'")
    return raw


def device_problem(device: str) -> str | None:
    """Why ``device`` cannot train here (``None``: it can): a name torch does not know, or
    CUDA/MPS that this machine does not have. Imports torch."""
    if not isinstance(device, str) or not _DEVICE_RE.match(device):
        return "expected auto, cpu, cuda or cuda:N"
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            return f"CUDA is not available on this machine (torch {torch.__version__}); use auto or cpu"
        index = int(device.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            return f"this machine has {torch.cuda.device_count()} CUDA device(s) (numbered from 0)"
    if device == "mps" and not torch.backends.mps.is_available():
        return "MPS is not available on this machine; use auto or cpu"
    return None


_AT_LEAST_1 = integer_field("an integer >= 1", 1)


@dataclass(config=STRICT)
class TrainSettings:
    """Settings of one built-in fine-tune (YAML ``finetune:`` keys, DeepSC's names).

    A pydantic dataclass of the one schema (:mod:`deepsc_tune.utils._schema`). ``grad_acc`` defaults
    to 1 here; DeepSC's default of 20 suits its large model (effective batch 640), not the
    small built-in models. ``hidden`` may be written as a list or as a string such as
    ``"256,128"`` (Optuna's categorical choices must be scalars); ``"none"`` or ``[]`` gives a
    linear model. Numbers given as strings (PyYAML reads ``1e-4`` as text) are parsed;
    integral floats are accepted for integer keys.
    """

    model: Annotated[str, one_of(MODELS)] = "mlp"
    hidden: Annotated[tuple[int, ...], PlainValidator(_hidden)] = (256, 128)
    dropout: Annotated[float, number_field("a number in [0.0, 1.0)", lambda x: 0 <= x < 1)] = 0.1
    seq_len: Annotated[int, _AT_LEAST_1] = 256
    num_bin: Annotated[int, integer_field("an integer >= 3", 3)] = 51
    d_model: Annotated[int, _AT_LEAST_1] = 64
    n_layers: Annotated[int, _AT_LEAST_1] = 2
    n_heads: Annotated[int, _AT_LEAST_1] = 4
    finetune_mode: Annotated[str, one_of(FINETUNE_MODES)] = "full"
    init_checkpoint: Annotated[str | None, PlainValidator(_optional_path)] = None
    learning_rate: Annotated[float, number_field("a positive number such as 1e-4", lambda x: x > 0)] = 1e-4
    lr_scheduler_type: Annotated[str, PlainValidator(_scheduler_type)] = "cosine"
    warmup_ratio: Annotated[float, number_field("a number in [0.0, 1.0]", lambda x: 0 <= x <= 1)] = 0.03
    restart_decay: Annotated[float, number_field("a number in (0.0, 1.0]", lambda x: 0 < x <= 1)] = 0.9
    num_cycles: Annotated[int | None, integer_field("an integer >= 1 or null", 1, optional=True)] = None
    epoch: Annotated[int, _AT_LEAST_1] = 10
    batch_size: Annotated[int, _AT_LEAST_1] = 32
    grad_acc: Annotated[int, _AT_LEAST_1] = 1
    seed: Annotated[int, integer_field("an integer >= 0", 0)] = 42
    weight_decay: Annotated[float, number_field("a number >= 0.0", lambda x: x >= 0)] = 0.0
    loss: Annotated[str, one_of(LOSSES)] = "standard"
    device: Annotated[str, PlainValidator(_device)] = "auto"
    num_threads: Annotated[int | None, integer_field("an integer >= 1 or null", 1, optional=True)] = None
    eval_batch_size: Annotated[int, _AT_LEAST_1] = 1024

    @model_validator(mode="before")
    @classmethod
    def _a_mapping(cls, data: Any) -> Any:
        if not isinstance(data, (Mapping, ArgsKwargs, TrainSettings)):
            raise expected("a mapping of settings")
        return data

    @model_validator(mode="after")
    def _heads_divide_width(self) -> TrainSettings:
        if self.d_model % self.n_heads:
            raise_errors([(("d_model",), expected(f"a multiple of n_heads ({self.n_heads})"), self.d_model)])
        return self

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "finetune") -> TrainSettings:
        """Validate and coerce a settings mapping (missing keys take their defaults).

        Raises
        ------
        ConfigError
            Unknown keys or invalid values, every problem at once, each ``source.key: ...``.
        """
        return validate(cls, d, source=source)

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-friendly dict (``hidden`` as a list)."""
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


#: Every key :meth:`TrainSettings.from_dict` accepts (search-space validation uses it).
TRAIN_KEYS: tuple[str, ...] = tuple(f.name for f in fields(TrainSettings))
