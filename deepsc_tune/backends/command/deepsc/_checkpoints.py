"""DeepSC's checkpoints, bounded: keep the chosen configuration's, remove the rest.

DeepSC saves two full checkpoints every epoch (model and optimizer state): ``epoch_N.ckpt``,
kept, and ``latest_checkpoint.ckpt``, overwritten; it prints each (``Saved checkpoint: PATH``,
``Saved latest checkpoint: PATH``) and deletes none. A 30-trial, 10-epoch search would leave 330.
The command backend records the paths DeepSC names in the trial's folder
(:data:`CHECKPOINTS_FILE`, written as they are printed, so failed and interrupted trials have
theirs too), and the study's :class:`~deepsc_tune.study._checkpoints.CheckpointKeeper` applies
``finetune.keep_checkpoints``:

``best`` (default)
    after every trial, the checkpoints of finished trials that are not the chosen configuration
    (:func:`deepsc_tune.study._selection.select`: its search trial and repeats, by the mean over seeds)
    are removed; a trial that was best and is beaten loses its files then;
``all``
    nothing is removed;
``none``
    every finished trial's checkpoints are removed.

Only files DeepSC named are removed, only when their name is DeepSC's (``epoch_N.ckpt``,
``latest_checkpoint.ckpt``) and they lie in the folder it reported; running and queued trials
are never touched. This module knows no study: it reads and records DeepSC's files.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from deepsc_tune.utils import write_text

#: Values of ``finetune.keep_checkpoints``.
KEEP_POLICIES = ("best", "all", "none")
DEFAULT_KEEP = "best"
#: The trial folder's record of the checkpoint files DeepSC wrote.
CHECKPOINTS_FILE = "checkpoints.json"
#: DeepSC's checkpoint file names; nothing else is ever removed.
CHECKPOINT_NAME = re.compile(r"^(?:epoch_(?P<epoch>\d+)|latest_checkpoint)\.ckpt$")
#: DeepSC's lines naming a checkpoint it saved, and the folder it saves them in.
SAVED_LINE = re.compile(r"^Saved (?:latest )?checkpoint:\s*(?P<path>\S.*?)\s*$")
FOLDER_LINE = re.compile(r"^-\s*Checkpoints:\s*(?P<path>/\S.*?)\s*$")


def saved_path(line: str) -> str | None:
    """The checkpoint path of one of DeepSC's ``Saved ... checkpoint:`` lines, else ``None``."""
    match = SAVED_LINE.match(line)
    return match.group("path") if match else None


def checkpoint_folder(line: str) -> str | None:
    """The folder of DeepSC's ``  - Checkpoints: DIR`` line (stripped), else ``None``."""
    match = FOLDER_LINE.match(line)
    return match.group("path") if match else None


def record_checkpoint(run_dir: Path, paths: Sequence[str], folder: str | None = None) -> None:
    """Write the trial's record: the checkpoint folder DeepSC reported and the files it said it
    saved (private name, then rename: whole or none)."""
    record = {"folder": folder, "files": list(dict.fromkeys(paths))}
    write_text(Path(run_dir) / CHECKPOINTS_FILE, json.dumps(record, indent=1))


def recorded(run_dir: Path) -> list[Path]:
    """The trial's checkpoint files, DeepSC's names only: those it said it saved, and those in the
    folder it reported (a run stopped while saving leaves a file it never announced)."""
    try:
        record = json.loads((Path(run_dir) / CHECKPOINTS_FILE).read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(record, dict):
        return []
    paths = [Path(p) for p in record.get("files") or [] if isinstance(p, str)]
    folder = record.get("folder")
    if isinstance(folder, str) and os.path.isabs(folder) and Path(folder).is_dir():
        paths += sorted(Path(folder).iterdir())
    return [p for p in dict.fromkeys(paths) if CHECKPOINT_NAME.match(p.name)]


def best_epoch_checkpoint(run_dir: Path, epoch: int | None) -> Path | None:
    """``epoch_<epoch>.ckpt`` among the files the trial recorded, when it is still on disk."""
    for path in recorded(run_dir):
        match = CHECKPOINT_NAME.match(path.name)
        if epoch is not None and match and match.group("epoch") == str(epoch) and path.is_file():
            return path
    return None


def disk_usage(run_dirs: Iterable[Path]) -> tuple[int, int]:
    """``(files, bytes)`` of the recorded checkpoints still on disk."""
    files = size = 0
    for run_dir in run_dirs:
        for path in recorded(run_dir):
            try:
                size += path.stat().st_size
                files += 1
            except OSError:
                continue
    return files, size


def format_bytes(n: int) -> str:
    """``1.2 GB``-style sizes (powers of 1000, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"  # pragma: no cover
