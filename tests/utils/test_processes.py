"""Process groups (``deepsc_tune/utils/_processes.py``) on real subprocesses.

Each test starts a small Python child that starts a grandchild in its group, so "the group is
stopped" is checked on a process the child itself did not reap.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deepsc_tune.utils import _processes as processes
from deepsc_tune.utils._processes import (
    EXIT_INTERRUPTED,
    describe_exit,
    group_alive,
    kill_group,
    process_start_time,
    start_group,
    stop_group,
)

pytestmark = pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs Linux /proc to check the children")

# A child that starts a grandchild (same group), writes its pid, then sleeps; with "ignore" it
# and the grandchild ignore SIGTERM.
CHILD = r"""
import os, signal, subprocess, sys, time
if sys.argv[1] == "ignore":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
grand = subprocess.Popen([sys.executable, "-c",
    "import signal, sys, time; "
    "signal.signal(signal.SIGTERM, signal.SIG_IGN) if sys.argv[1] == 'ignore' else None; "
    "time.sleep(60)", sys.argv[1]])
with open(sys.argv[2], "w") as f:
    f.write(str(grand.pid))
time.sleep(60)
"""


def running(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.fixture
def family(tmp_path):
    """Start the child (``mode``: ``term`` or ``ignore``); yields (proc, grandchild pid)."""
    started = []

    def start(mode: str):
        pid_file = tmp_path / f"grand-{len(started)}.pid"
        proc = start_group(
            [sys.executable, "-c", CHILD, mode, str(pid_file)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        started.append(proc)
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_file.exists(), "the child did not start its grandchild"
        return proc, int(pid_file.read_text())

    yield start
    for proc in started:  # nothing of a failed test may keep running
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def test_child_leads_its_own_group(family):
    proc, grand = family("term")
    assert os.getpgid(proc.pid) == proc.pid != os.getpgid(0)
    assert os.getpgid(grand) == proc.pid
    assert group_alive(proc.pid)


def test_stop_group_terminates_child_and_grandchild_within_grace(family):
    proc, grand = family("term")
    kills = []
    stop_group(proc, grace=10, on_kill=lambda: kills.append(1))
    assert proc.returncode == -signal.SIGTERM
    assert kills == [], "SIGKILL sent although the group stopped on SIGTERM"
    assert not running(grand)
    assert not group_alive(proc.pid)


def test_stop_group_kills_what_ignores_sigterm_after_grace(family):
    proc, grand = family("ignore")
    kills = []
    stop_group(proc, grace=0.5, on_kill=lambda: kills.append(1))
    assert kills == [1]
    assert proc.returncode == -signal.SIGKILL
    assert not running(grand)
    assert not group_alive(proc.pid)


def test_second_ctrl_c_during_grace_still_kills_the_group(family):
    proc, grand = family("ignore")

    def interrupted_again() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stop_group(proc, grace=0.5, on_kill=interrupted_again)
    assert proc.returncode == -signal.SIGKILL  # reaped
    deadline = time.monotonic() + 5
    while running(grand) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(grand)


def test_stop_group_on_a_finished_group_sends_nothing(tmp_path):
    proc = start_group([sys.executable, "-c", "pass"])
    proc.wait()
    kills = []
    stop_group(proc, grace=0, on_kill=lambda: kills.append(1))
    assert proc.returncode == 0 and kills == []


def test_kill_group_reaps_and_returns_the_exit_status(family):
    proc, grand = family("ignore")
    assert kill_group(proc) == -signal.SIGKILL
    deadline = time.monotonic() + 5
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not running(grand)


def test_group_alive_without_proc_asks_the_kernel(family, monkeypatch):
    proc, _ = family("term")
    real_listdir = os.listdir

    def no_proc(path="."):
        if str(path) == "/proc":
            raise FileNotFoundError(path)
        return real_listdir(path)

    monkeypatch.setattr(processes.os, "listdir", no_proc)
    assert group_alive(proc.pid)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    deadline = time.monotonic() + 5
    while group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not group_alive(proc.pid)


def test_process_start_time_tells_processes_apart():
    mine = process_start_time(os.getpid())
    assert mine is not None and mine.isdigit()
    assert process_start_time(os.getpid()) == mine
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.3)"])
    theirs = process_start_time(proc.pid)
    assert theirs is not None and int(theirs) >= int(mine)
    proc.wait()
    assert process_start_time(proc.pid) is None  # reaped: gone


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (0, "finished"),
        (EXIT_INTERRUPTED, "interrupted"),
        (-signal.SIGKILL, "killed by SIGKILL"),
        (-signal.SIGTERM, "killed by SIGTERM"),
        (-99, "killed by signal 99"),
        (1, "stopped with exit code 1"),
    ],
)
def test_describe_exit(code, expected):
    assert describe_exit(code) == expected
