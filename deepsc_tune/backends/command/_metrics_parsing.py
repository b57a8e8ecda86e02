"""Epoch metrics from a fine-tuning program's output, read while it runs.

Two sources: the program's stdout, line by line (:class:`StdoutParser`; by default DeepSC's
``Epoch N [Finetune Cell Type Annotation]`` header and its ``Evaluation Loss: ..., Accuracy: ...,
Macro F1: ...`` line, both regular expressions configurable), and a JSON-lines file to which the
program appends one object per epoch (:class:`JsonLinesTail`), for programs that are not DeepSC.
This module never imports Optuna.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from deepsc_tune.backends._interface import EpochMetrics

_NUM = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)"
#: DeepSC's per-epoch header (``CellTypeAnnotation.train``, printed by rank 0).
DEFAULT_EPOCH_REGEX = r"Epoch\s+(?P<epoch>\d+)\s+\[Finetune Cell Type Annotation\]"
#: DeepSC's evaluation line (``CellTypeAnnotation.evaluate``).
DEFAULT_METRICS_REGEX = (
    rf"Evaluation Loss:\s*(?P<val_loss>{_NUM}),\s*Error Rate:\s*(?:{_NUM}),\s*"
    rf"Accuracy:\s*(?P<val_accuracy>{_NUM}),\s*Precision:\s*(?:{_NUM}),\s*"
    rf"Recall:\s*(?:{_NUM}),\s*Macro F1:\s*(?P<val_macro_f1>{_NUM})"
)
#: Optional numeric fields a metrics line or JSON object may carry, besides val_accuracy.
OPTIONAL_FIELDS = ("val_macro_f1", "val_loss", "learning_rate", "train_loss", "seconds")


class StdoutParser:
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
        values = {k: _to_float(groups.get(k)) for k in OPTIONAL_FIELDS}
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


class JsonLinesTail:
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
                found.append(parse_json_metrics(raw))
            except ValueError as e:
                warnings.append(f"{self.path.name} line {self.line_no} ignored: {e}")
        return found, warnings


def parse_json_metrics(raw: bytes) -> EpochMetrics:
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
    for name in ("val_accuracy", *OPTIONAL_FIELDS):
        v = obj.get(name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise ValueError(f"'{name}' must be a number, got {v!r}")
        values[name] = None if v is None else float(v)
    if values["val_accuracy"] is None:
        raise ValueError("'val_accuracy' is missing")
    return EpochMetrics(epoch=epoch, **values)  # type: ignore[arg-type]


__all__ = [
    "DEFAULT_EPOCH_REGEX",
    "DEFAULT_METRICS_REGEX",
    "OPTIONAL_FIELDS",
    "JsonLinesTail",
    "StdoutParser",
    "parse_json_metrics",
]
