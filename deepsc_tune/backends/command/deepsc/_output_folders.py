"""Parallel trials never share DeepSC's output folder.

DeepSC 2416d85 writes each run's checkpoints, logs and plots to a hard-coded folder plus a
``%Y%m%d_%H%M%S`` timestamp taken some 30 s after it starts (imports, reading the data, building
the model), so two runs that reach that line in the same second share one folder and overwrite
each other's checkpoints. Two guards, both used by :class:`~deepsc_tune.backends.command._run.ChildRun`:

- **Spaced starts** (:class:`StartSpacing`): an exclusive ``flock`` on ``.deepsc-tune-start.lock``
  in DeepSC's own base folder is taken before a trial's DeepSC starts and held until it has
  printed the folder it writes to and the clock has moved into the next second (or it exited,
  or :data:`MAX_HOLD_S` passed). The next trial's DeepSC starts after that, so its timestamp is
  a later second. The lock lives where the clash would happen: every study, results folder and
  worker on the machine shares it (and machines that share that folder over NFS, which locks
  across machines).
- **Claimed folders** (:func:`claim_output_dir`): the folder DeepSC reports is marked with a
  ``.deepsc-tune-trial`` file created exclusively; a run that reports a folder another run has
  claimed is stopped and fails with the reason, naming that run's trial folder.

DeepSC abcf2be writes into Hydra's run directory, which deepsc-tune sets to each trial's own
folder: nothing to space there (:func:`start_lock_path` is ``None``). This module imports
nothing beyond the standard library and deepsc-tune's checkout readers.
"""

from __future__ import annotations

import json
import math
import os
import socket
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from deepsc_tune.backends.command.deepsc._checkout import timestamped_base
from deepsc_tune.backends.command.deepsc._commits import TIMESTAMPED, commit_of_module, detect_commit, entry_module

#: In DeepSC's base folder: held while a trial's DeepSC picks its timestamped folder.
LOCK_NAME = ".deepsc-tune-start.lock"
#: In a folder DeepSC reported: which trial writes there.
CLAIM_NAME = ".deepsc-tune-trial"
#: The longest a start holds the lock when DeepSC never names its folder (then claims decide).
MAX_HOLD_S = 300.0
_POLL_S = 0.1


def start_lock_path(cwd: Path | str | None, command: Sequence[str]) -> Path | None:
    """The start lock for runs of ``command`` in checkout ``cwd``: ``BASE/.deepsc-tune-start.lock``
    when it is DeepSC whose trainer writes under an absolute hard-coded ``BASE`` plus a timestamp
    (2416d85), else ``None`` (abcf2be, a relative base, any other program)."""
    commit = commit_of_module(entry_module(command))
    if commit is None or commit.outputs != TIMESTAMPED or cwd is None:
        return None
    if detect_commit(cwd) != commit:
        return None
    found = timestamped_base(cwd)
    if found is None or not os.path.isabs(found[0]):
        return None
    return Path(found[0]) / LOCK_NAME


class StartSpacing:
    """One run's hold on the start lock (``path``): :meth:`acquire` before the run starts,
    :meth:`release_when` as its output arrives. Without ``fcntl`` (Windows) or a lock file that
    cannot be made, it holds nothing and says why (claims still decide)."""

    def __init__(self, path: Path, *, max_hold: float = MAX_HOLD_S) -> None:
        self.path = Path(path)
        self.max_hold = max_hold
        self._fd: int | None = None
        self._since = 0.0

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self, holder: str, *, note: Callable[[str], None]) -> None:
        """Wait for the lock (polling, so Ctrl-C stops the wait), then write ``holder`` into it."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            note("no flock on this system: trial starts are not spaced (claimed folders still are)")
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            note(f"cannot open the start lock {self.path} ({e.strerror or e}): this start is not spaced")
            return
        waited = False
        began = time.monotonic()
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waited:
                        note(
                            f"waiting for {_holder(fd)} to name its DeepSC output folder ({self.path}): "
                            "DeepSC 2416d85 names it after the second it reaches that line, so trials start "
                            "one at a time"
                        )
                        waited = True
                    time.sleep(_POLL_S)
        except BaseException:
            os.close(fd)
            raise
        if waited:
            note(f"start lock taken after {time.monotonic() - began:.1f}s")
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)
        self._fd, self._since = fd, time.monotonic()

    def release_when(self, *, named_at: float | None, exited: bool) -> None:
        """Release once the run named its folder (``named_at``, wall-clock seconds) and the clock
        is in a later second, or the run exited without naming one, or it held the lock
        :attr:`max_hold` seconds."""
        if self._fd is None:
            return
        if named_at is not None:
            if math.floor(time.time()) > math.floor(named_at):
                self.release()
        elif exited or time.monotonic() - self._since > self.max_hold:
            self.release()

    def release(self, *, named_at: float | None = None) -> None:
        """Release now, or, when the run named its folder at ``named_at``, once the clock is in
        the next second (a run that ends within its folder's second must not free it early)."""
        if self._fd is not None and named_at is not None:
            time.sleep(max(0.0, math.floor(named_at) + 1 - time.time()))
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the descriptor drops its flock


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "another trial"


def claim_output_dir(folder: str, run_dir: Path) -> str | None:
    """Mark ``folder`` (as DeepSC printed it) as the run ``run_dir``'s; ``None`` if it is, else
    the reason it is not: another run claimed it first. A folder inside ``run_dir`` (abcf2be's
    Hydra run directory) needs no claim; one that cannot be marked is left unclaimed."""
    path = Path(os.path.normpath(run_dir / os.path.expanduser(folder)))
    if path == run_dir or run_dir in path.parents:
        return None
    marker = path / CLAIM_NAME
    record = {"run_dir": str(run_dir), "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}
    try:
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        try:
            other = json.loads(marker.read_text())
        except (OSError, ValueError):
            other = {}
        if other.get("run_dir") == str(run_dir):
            return None
        who = other.get("run_dir") or "another run"
        host = f" on {other['host']}" if other.get("host") and other.get("host") != record["host"] else ""
        return (
            f"DeepSC reported writing to {path}, which {who}{host} already uses (DeepSC 2416d85 names "
            "its folder after the second it reaches that line): stopped so that it does not overwrite "
            "that trial's checkpoints; re-run or enqueue this configuration again"
        )
    except OSError:
        return None  # not ours to mark (DeepSC's own error, if any, follows)
    with os.fdopen(fd, "w") as f:
        json.dump(record, f)
    return None


__all__ = ["CLAIM_NAME", "LOCK_NAME", "MAX_HOLD_S", "StartSpacing", "claim_output_dir", "start_lock_path"]
