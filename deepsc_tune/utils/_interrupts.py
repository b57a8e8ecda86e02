"""Stopping a command that runs trials: Ctrl-C, SIGTERM and a closed stdout, all one way.

Every command that runs trials (``run`` and its workers, ``study.confirm``, ``repeat``) runs them
inside :func:`stop_requests`. There the first SIGINT (Ctrl-C), SIGTERM (``kill``, SLURM's
``scancel``, a preemption) or write to a closed stdout (``| head``) raises :class:`Interrupted`,
a ``KeyboardInterrupt``: the objective records the running trial as FAIL with
:attr:`Interrupted.reason` (:mod:`deepsc_tune.study._objective`), the runner re-queues its settings
(:func:`~deepsc_tune.study._runner.run_one_trial`), and the CLI says so in one line and exits with
:attr:`Interrupted.exit_code`, 128 + the signal as a shell reports it: 130 (SIGINT), 143
(SIGTERM), 141 (SIGPIPE: stdout closed).

Later signals are only counted: a second Ctrl-C while the trial is being recorded cannot cut
that short, leave the trial RUNNING or print a traceback (the command backend's child still gets
SIGKILL after its ``grace_period``). Once a command has been interrupted, SIGINT and SIGTERM
stay ignored until the process ends. ``run --workers`` uses :func:`stop_requests` with ``raising=False``: it counts the
requests and stops its children itself (:mod:`deepsc_tune.study._workers`). This module never imports
Optuna or torch.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import TextIO

from deepsc_tune.utils._processes import EXIT_INTERRUPTED

#: Exit status after SIGTERM, and after stdout was closed (128 + SIGPIPE), as a shell reports them.
EXIT_TERMINATED = 128 + signal.SIGTERM
EXIT_STDOUT_CLOSED = 128 + signal.SIGPIPE
SIGINT, SIGTERM, STDOUT_CLOSED = "SIGINT", "SIGTERM", "stdout closed"
#: cause -> (exit status, the FAIL reason of the running trial)
CAUSES = {
    SIGINT: (EXIT_INTERRUPTED, "interrupted"),
    SIGTERM: (EXIT_TERMINATED, "interrupted (SIGTERM)"),
    STDOUT_CLOSED: (EXIT_STDOUT_CLOSED, "interrupted (stdout closed)"),
}


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop: ``cause`` is ``"SIGINT"``, ``"SIGTERM"`` or ``"stdout closed"``."""

    def __init__(self, cause: str = SIGINT) -> None:
        super().__init__(cause)
        self.cause = cause

    @property
    def exit_code(self) -> int:
        return CAUSES[self.cause][0]

    @property
    def reason(self) -> str:
        return CAUSES[self.cause][1]


def exit_code(e: BaseException) -> int:
    """The exit status for an interruption (a plain ``KeyboardInterrupt``: 130)."""
    return e.exit_code if isinstance(e, Interrupted) else EXIT_INTERRUPTED


def interrupt_reason(e: BaseException) -> str:
    """The FAIL reason of a trial stopped by ``e`` (a plain ``KeyboardInterrupt``: ``interrupted``)."""
    return e.reason if isinstance(e, Interrupted) else CAUSES[SIGINT][1]


class StopRequests:
    """The stop requests seen so far: how many, and the first one's cause."""

    def __init__(self, *, raising: bool) -> None:
        self.raising = raising
        self.count = 0
        self.first: str | None = None
        self._pending = False  # a request from another thread, to be raised in the main thread
        self._pipe_closed = False

    def request(self, cause: str) -> None:
        """Note a request; the first raises :class:`Interrupted` in the main thread (when raising)."""
        if cause == STDOUT_CLOSED:
            if self._pipe_closed:  # stdout and stderr into one closed pipe: one request
                return
            self._pipe_closed = True
        self.count += 1
        main = threading.current_thread() is threading.main_thread()
        if self.first is not None:
            if self._pending and main:
                self._pending = False
                raise Interrupted(self.first)
            return
        self.first = cause
        if not self.raising:
            return
        if main:
            raise Interrupted(cause)
        # A write from another thread: the main thread is the one running the trial.
        self._pending = True
        signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    @property
    def exit_code(self) -> int:
        return CAUSES[self.first or SIGINT][0]


@contextlib.contextmanager
def stop_requests(*, raising: bool = True, process_ends: bool = False) -> Iterator[StopRequests]:
    """SIGINT, SIGTERM and a closed stdout/stderr become stop requests in this block.

    ``raising``: the first request raises :class:`Interrupted` (in the main thread); otherwise
    requests are only counted for the caller to act on. Outside the main thread (signals live
    there) this does nothing but yield.

    On leaving, the previous handlers come back, with one exception: with ``process_ends``
    (the console script, which exits right after a stop) a stopped block leaves SIGINT and
    SIGTERM ignored, so a second Ctrl-C cannot cut the exit short, not even late in the
    interpreter's exit, which resets Python's own handlers to the default but leaves an ignored
    signal ignored. Only the process's owner may do that: an ignored signal is inherited by
    every child started later (a library caller's, a notebook's), which then cannot be stopped
    with SIGTERM.
    """
    stops = StopRequests(raising=raising)
    if threading.current_thread() is not threading.main_thread():
        yield stops
        return

    def handler(signum: int, frame: object) -> None:
        stops.request(SIGTERM if signum == signal.SIGTERM else SIGINT)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    streams = sys.stdout, sys.stderr
    sys.stdout = _Guarded(_unguarded(sys.stdout), stops)  # type: ignore[assignment]
    sys.stderr = _Guarded(_unguarded(sys.stderr), stops)  # type: ignore[assignment]
    try:
        yield stops
    finally:
        sys.stdout, sys.stderr = streams
        ignore = process_ends and stops.first is not None
        for s, h in previous.items():
            signal.signal(s, signal.SIG_IGN if ignore else h)


def _unguarded(stream: TextIO) -> TextIO:
    """The stream under an outer block's guard (one guard at a time reports a closed pipe)."""
    return stream._stream if isinstance(stream, _Guarded) else stream


class _Guarded(io.TextIOBase):
    """stdout or stderr: a closed pipe becomes a stop request, once; later writes are dropped."""

    def __init__(self, stream: TextIO, stops: StopRequests) -> None:
        self._stream = stream
        self._stops = stops
        self._broken = False

    def write(self, text: str) -> int:
        if not self._broken:
            try:
                self._stream.write(text)
                self._stream.flush()
            except (BrokenPipeError, ValueError):  # the reader went away (or closed the file)
                self._break()
                self._stops.request(STDOUT_CLOSED)
        return len(text)

    def _break(self) -> None:
        self._broken = True
        # What is still buffered would fail again when the interpreter exits: send it nowhere.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)

    def flush(self) -> None:
        if not self._broken:
            try:
                self._stream.flush()
            except (BrokenPipeError, ValueError):
                self._break()

    def fileno(self) -> int:
        return self._stream.fileno()

    def isatty(self) -> bool:
        # Asked at exit too, by whoever kept this object (colorama), when the stream is closed.
        try:
            return not self._broken and self._stream.isatty()
        except (ValueError, OSError):
            return False

    def writable(self) -> bool:
        return True

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "encoding", None) or "utf-8"

    @property
    def errors(self) -> str:  # type: ignore[override]
        return getattr(self._stream, "errors", None) or "strict"
