"""Child processes in their own process group: start, signal, wait for, stop, say how they ended.

deepsc-tune supervises children in two places, both through this module: the ``command``
backend's run of DeepSC (:mod:`deepsc_tune.backends.command._finetuner`) and the local workers of
``run --workers/--gpus`` (:mod:`deepsc_tune.study._workers`). Every child starts in a new session, so
its process group's id is its pid. That has two uses: a terminal's Ctrl-C reaches deepsc-tune
only (a child interrupted twice could not finish recording its trial), which then stops its
children in order; and signalling the group reaches whatever the child spawned (DataLoader
workers, DDP ranks), so nothing outlives a stopped run.

This module also reads ``/proc`` (Linux) for the whole package: which processes of a group still
run, and a process's start time (to tell a live worker from a reused pid). Without ``/proc``
(macOS) the kernel is asked instead. It never imports Optuna or torch.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from typing import Any

#: Exit status of a process stopped by Ctrl-C (the CLI's, a worker's).
EXIT_INTERRUPTED = 130
#: After SIGKILL, how long :func:`stop_group` waits for the group to disappear.
KILL_WAIT_S = 5.0
_POLL_S = 0.05


def start_group(argv: Sequence[str], **popen: Any) -> subprocess.Popen[Any]:
    """Start ``argv`` in a new session (its own process group); ``popen`` goes to ``Popen``.

    Raises
    ------
    OSError
        When the program cannot be started (the caller names the setting that chose it).
    """
    return subprocess.Popen(list(argv), start_new_session=True, **popen)


def signal_group(pgid: int, sig: int) -> None:
    """Send ``sig`` to every process of group ``pgid``; a group already gone is no error."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid: int) -> bool:
    """Whether a process of group ``pgid`` still runs (zombies do not count)."""
    try:
        names = os.listdir("/proc")
    except OSError:
        # No /proc (macOS): ask the kernel, which also counts zombies.
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for name in names:
        if not name.isdigit():
            continue
        fields = _stat_fields(name)
        # Fields after "(comm)": state, ppid, pgrp, ...
        if fields is not None and len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def wait_group(proc: subprocess.Popen[Any], seconds: float) -> bool:
    """Reap ``proc`` and wait up to ``seconds`` for its group to be gone; ``True`` if it is."""
    deadline = time.monotonic() + seconds
    while True:
        proc.poll()
        if proc.returncode is not None and not group_alive(proc.pid):
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def stop_group(
    proc: subprocess.Popen[Any],
    *,
    grace: float,
    on_kill: Callable[[], None] | None = None,
    kill_wait: float = KILL_WAIT_S,
) -> None:
    """SIGTERM the group of ``proc``, SIGKILL it after ``grace`` seconds, reap ``proc``.

    Parameters
    ----------
    proc
        A child started by :func:`start_group` (its pid is its group's id).
    grace
        Seconds the group has to exit after SIGTERM.
    on_kill
        Called before SIGKILL is sent (to note it in a log).
    kill_wait
        Seconds to wait for the group to disappear after SIGKILL.

    An exception while waiting (a second Ctrl-C during the grace period) kills the group and
    reaps ``proc`` before it moves on, so the group is never left running.
    """
    pgid = proc.pid
    if proc.poll() is not None and not group_alive(pgid):
        return
    signal_group(pgid, signal.SIGTERM)
    try:
        if wait_group(proc, grace):
            return
        if on_kill is not None:
            on_kill()
        signal_group(pgid, signal.SIGKILL)
        wait_group(proc, kill_wait)
    except BaseException:
        signal_group(pgid, signal.SIGKILL)
        proc.wait()
        raise


def kill_group(proc: subprocess.Popen[Any]) -> int:
    """SIGKILL the group of ``proc`` if any of it still runs; reap ``proc``; its exit status."""
    if proc.poll() is None or group_alive(proc.pid):
        signal_group(proc.pid, signal.SIGKILL)
    return proc.wait()


def describe_exit(code: int) -> str:
    """``0`` -> ``"finished"``, ``-9`` -> ``"killed by SIGKILL"``, ``130`` -> ``"interrupted"``.

    ``code`` is a ``Popen.returncode``: negative for a process ended by a signal.
    """
    if code == 0:
        return "finished"
    if code == EXIT_INTERRUPTED:
        return "interrupted"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"stopped with exit code {code}"


def process_start_time(pid: int) -> str | None:
    """Start time of process ``pid`` (clock ticks since boot, Linux ``/proc``), or ``None``.

    With the pid it identifies a process: a pid reused after a worker died has another start time.
    """
    fields = _stat_fields(pid)
    # Field 22 of stat, the 20th after "(comm)".
    return fields[19] if fields is not None and len(fields) > 19 else None


def _stat_fields(pid: int | str) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after ``(comm)``: state, ppid, pgrp, ...; ``None`` if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may itself hold spaces or ')': the fields start after the last ')'.
    return stat[stat.rfind(b")") + 2 :].decode("ascii", "replace").split()


__all__ = [
    "EXIT_INTERRUPTED",
    "KILL_WAIT_S",
    "describe_exit",
    "group_alive",
    "kill_group",
    "process_start_time",
    "signal_group",
    "start_group",
    "stop_group",
    "wait_group",
]
