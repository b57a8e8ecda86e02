"""Ctrl-C, SIGTERM and a closed stdout stop a command that runs trials the same way."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import pytest

from deepsc_tune.utils._interrupts import (
    EXIT_STDOUT_CLOSED,
    EXIT_TERMINATED,
    Interrupted,
    exit_code,
    interrupt_reason,
    stop_requests,
)


def test_sigterm_and_sigint_raise_interrupted_with_their_exit_status():
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    for sig, code, reason in (
        (signal.SIGTERM, EXIT_TERMINATED, "interrupted (SIGTERM)"),
        (signal.SIGINT, 130, "interrupted"),
    ):
        with pytest.raises(KeyboardInterrupt) as caught:
            with stop_requests():
                os.kill(os.getpid(), sig)
                time.sleep(5)
        assert exit_code(caught.value) == code and interrupt_reason(caught.value) == reason
        # Not the process's owner: the handlers it found are back (an ignored SIGTERM would be
        # inherited by every child started later, which then could not be stopped).
        assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == previous
    assert exit_code(KeyboardInterrupt()) == 130 and interrupt_reason(KeyboardInterrupt()) == "interrupted"


def test_the_process_owner_ignores_later_signals_after_a_stop():
    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(KeyboardInterrupt):
            with stop_requests(process_ends=True):
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(5)
        # The command is ending: a second Ctrl-C must not cut that short.
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        with stop_requests(process_ends=True):
            pass
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN  # not stopped: as it found them
    finally:
        signal.signal(signal.SIGTERM, previous[0])
        signal.signal(signal.SIGINT, previous[1])


def test_handlers_are_restored_when_not_interrupted():
    previous = signal.getsignal(signal.SIGTERM)
    with stop_requests():
        pass
    assert signal.getsignal(signal.SIGTERM) is previous


def test_a_second_signal_while_the_first_is_handled_does_not_raise():
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(Interrupted):
            with stop_requests() as stops:
                try:
                    os.kill(os.getpid(), signal.SIGINT)
                    time.sleep(5)
                finally:
                    os.kill(os.getpid(), signal.SIGINT)  # recording the trial: not cut short
                    time.sleep(0.05)
        assert stops.count == 2 and stops.first == "SIGINT"
    finally:
        signal.signal(signal.SIGINT, previous)


class _ClosedPipe:
    encoding, errors = "utf-8", "strict"

    def write(self, text):
        raise BrokenPipeError(32, "Broken pipe")

    def flush(self):
        pass

    def fileno(self):
        raise OSError("no descriptor")

    def isatty(self):
        return False


def test_a_closed_stdout_is_an_interruption_once(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    with pytest.raises(Interrupted) as caught:
        with stop_requests():
            print("a trial line")
    assert exit_code(caught.value) == EXIT_STDOUT_CLOSED == 141
    assert interrupt_reason(caught.value) == "interrupted (stdout closed)"


def test_a_closed_stdout_seen_by_another_thread_interrupts_the_main_thread(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    previous = signal.getsignal(signal.SIGINT)
    try:
        with pytest.raises(Interrupted) as caught:
            with stop_requests():
                threading.Thread(target=lambda: print("relayed line")).start()
                time.sleep(5)
        assert caught.value.cause == "stdout closed"
    finally:
        signal.signal(signal.SIGINT, previous)


def test_counting_only(monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    with stop_requests(raising=False) as stops:
        print("one")
        print("two")  # dropped, no second request
        sys.stderr.write("")
    assert stops.count == 1 and stops.first == "stdout closed" and stops.exit_code == 141


def test_a_command_stopped_in_process_leaves_the_handlers_as_it_found_them():
    # The CLI's stop handling run in-process (a test, a notebook): afterwards SIGTERM still
    # kills a child started later. Before, the block left SIGTERM ignored for the whole
    # process, so a later child inherited it and outlived its SIGTERM (found in CI).
    import subprocess
    import sys

    import typer

    from deepsc_tune.cli._common import stops_end_the_command

    previous = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(typer.Exit) as ended:
        with stops_end_the_command(None):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert ended.value.exit_code == EXIT_TERMINATED
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == previous
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        child.terminate()
        assert child.wait(timeout=20) == -signal.SIGTERM
    finally:
        child.kill()
        child.wait()
