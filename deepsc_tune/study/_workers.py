"""Several worker processes on one machine, all working on one study.

``deepsc-tune run NAME --workers N`` (or ``--gpus 0,1``) prepares the data and creates the study
once, then starts N copies of ``python -m deepsc_tune.cli run ... --worker-id wK`` as child
processes. Each child is an ordinary worker (:func:`deepsc_tune.study._study.run_study`): it asks the
shared storage for the next trial, so the study's target holds across all of them. This module
only plans the children (threads, GPUs), starts them, relays their lines into one display and
stops them together: Ctrl-C, SIGTERM or a closed stdout in the parent is forwarded once to every
child (SIGTERM as SIGTERM, the others as SIGINT), which records its running trial as FAIL
("interrupted") and re-queues it; the parent exits 130, 143 or 141 (:mod:`deepsc_tune.utils._interrupts`).

Children run in their own session so that a terminal's Ctrl-C reaches the parent only (a child
interrupted twice could not finish recording its trial); a child whose parent disappears
interrupts itself (:func:`watch_parent`). This module never imports Optuna or torch.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO

from deepsc_tune.errors import ConfigError
from deepsc_tune.utils import (
    CAUSES,
    SIGINT,
    SIGTERM,
    StopRequests,
    describe_exit,
    kill_group,
    signal_group,
    start_group,
    stop_requests,
)

#: Thread-pool variables set in each child, so numpy/BLAS follow the torch thread budget.
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class WorkerPlan:
    """One child process: its label, torch CPU threads and GPU (``CUDA_VISIBLE_DEVICES``)."""

    worker_id: str
    threads: int
    gpu: str | None = None

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The child's environment: ``base`` plus GPU and thread settings, unbuffered output."""
        env = dict(base)
        env["PYTHONUNBUFFERED"] = "1"
        for key in THREAD_ENV:
            env[key] = str(self.threads)
        if self.gpu is not None:
            # Set before the child imports torch: it then sees exactly this GPU, as cuda:0.
            env["CUDA_VISIBLE_DEVICES"] = self.gpu
        return env

    def describe(self) -> str:
        where = f"GPU {self.gpu}, " if self.gpu is not None else ""
        return f"{where}{self.threads} torch thread{'s' if self.threads != 1 else ''}"


def available_cpus() -> int:
    """CPU cores this process may use (its affinity mask, e.g. a SLURM allocation)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return max(1, os.cpu_count() or 1)


def parse_gpus(text: str | None) -> list[str]:
    """``"0,1"`` -> ``["0", "1"]``; GPU UUIDs (``GPU-...``, ``MIG-...``) are accepted too.

    Raises
    ------
    ConfigError
        On an empty list or an empty or blank-containing entry.
    """
    if text is None:
        return []
    gpus = [g.strip() for g in text.split(",")]
    if not gpus or any(not g or " " in g for g in gpus):
        raise ConfigError(f"--gpus {text!r}: expected a comma-separated list of GPU indices, e.g. 0,1,2,3")
    return gpus


def plan_workers(
    *,
    workers: int | None,
    gpus: Sequence[str] = (),
    threads: int | None = None,
    cpus: int | None = None,
) -> list[WorkerPlan]:
    """Plan the child processes of ``run --workers/--gpus``.

    Parameters
    ----------
    workers
        How many; ``None`` means one per GPU (or one without GPUs).
    gpus
        GPU indices, handed out in turn (``--workers 4 --gpus 0,1``: two workers per GPU).
    threads
        Torch CPU threads per worker; ``None`` shares the cores: ``max(1, cpus // workers)``.
    cpus
        Cores to share (default :func:`available_cpus`).

    Raises
    ------
    ConfigError
        When ``workers`` or ``threads`` is below 1.
    """
    n = workers if workers is not None else max(1, len(gpus))
    if n < 1:
        raise ConfigError(f"--workers {n}: expected at least 1")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads {threads}: expected at least 1")
    per_worker = threads if threads is not None else max(1, (cpus or available_cpus()) // n)
    return [
        WorkerPlan(
            worker_id=f"w{k + 1}",
            threads=per_worker,
            gpu=gpus[k % len(gpus)] if gpus else None,
        )
        for k in range(n)
    ]


@dataclass
class WorkersResult:
    """How the children of :func:`run_workers` ended (exit status by worker id)."""

    exit_codes: dict[str, int]
    interrupted: bool = False
    pids: dict[str, int] = field(default_factory=dict)
    #: What stopped them (:mod:`deepsc_tune.utils._interrupts`: ``"SIGINT"``, ``"SIGTERM"``, ``"stdout closed"``).
    cause: str | None = None

    @property
    def exit_code(self) -> int:
        """The parent's exit status after an interruption: 130, 143 or 141."""
        return CAUSES[self.cause or SIGINT][0]

    def failed(self) -> dict[str, int]:
        """Workers that neither finished nor stopped on request."""
        ok = (0, *(code for code, _ in CAUSES.values())) if self.interrupted else (0,)
        return {w: c for w, c in self.exit_codes.items() if c not in ok}


class _Relay:
    """Copies the children's lines to our stdout/stderr, whole lines, one at a time."""

    def __init__(self, out: TextIO, err: TextIO) -> None:
        self.out, self.err = out, err
        self.lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def write(self, line: str, *, stream: TextIO) -> None:
        with self.lock:
            stream.write(line if line.endswith("\n") else line + "\n")
            stream.flush()

    def follow(self, pipe: TextIO, *, prefix: str, stream: TextIO) -> None:
        def copy() -> None:
            with pipe:
                for line in pipe:
                    # A worker prefixes its own progress lines; anything else (errors,
                    # tracebacks) gets the prefix here.
                    self.write(line if line.startswith(prefix) else prefix + line, stream=stream)

        thread = threading.Thread(target=copy, daemon=True)
        thread.start()
        self.threads.append(thread)


def run_workers(
    plans: Sequence[WorkerPlan],
    command: Callable[[WorkerPlan], list[str]],
    *,
    echo: Callable[[str], None] = print,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    poll_seconds: float = 0.2,
) -> WorkersResult:
    """Start one child per plan, relay their output, wait for all; stop all on Ctrl-C.

    Parameters
    ----------
    plans
        From :func:`plan_workers`.
    command
        The child's argv for a plan (``python -m deepsc_tune.cli run ... --worker-id wK``).
    echo
        Where the parent's own lines go (start, stop, how each worker ended).

    The first Ctrl-C, SIGTERM or write to a closed stdout is forwarded to every child still
    running (SIGTERM as SIGTERM, the others as SIGINT); each
    records its running trial as FAIL ("interrupted"), re-queues its parameters and exits. A
    second one kills them (SIGKILL); their trials are then recovered as FAIL and re-queued by
    the next run on this machine (dead process) or by any worker after the heartbeat grace.
    A child that dies on its own is reported; the others carry on and take over its trial.
    """
    with stop_requests(raising=False) as stops:
        # Inside: a closed stdout is then a stop request like Ctrl-C.
        out, err = stdout or sys.stdout, stderr or sys.stderr
        return _run_workers(plans, command, stops, echo=echo, out=out, err=err, poll_seconds=poll_seconds)


def _run_workers(
    plans: Sequence[WorkerPlan],
    command: Callable[[WorkerPlan], list[str]],
    stops: StopRequests,
    *,
    echo: Callable[[str], None],
    out: TextIO,
    err: TextIO,
    poll_seconds: float,
) -> WorkersResult:
    relay = _Relay(out, err)

    def say(line: str) -> None:
        with relay.lock:
            echo(line)

    procs: dict[str, subprocess.Popen[str]] = {}
    codes: dict[str, int] = {}
    stops_seen = 0
    try:
        for plan in plans:
            if stops.count:
                break
            proc = start_group(
                command(plan),
                env=plan.env(os.environ),
                text=True,
                bufsize=1,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            procs[plan.worker_id] = proc
            prefix = f"[{plan.worker_id}] "
            relay.follow(proc.stdout, prefix=prefix, stream=out)  # type: ignore[arg-type]
            relay.follow(proc.stderr, prefix=prefix, stream=err)  # type: ignore[arg-type]
            say(f"{prefix}started: pid {proc.pid}, {plan.describe()}")
        while len(codes) < len(procs):
            if stops.count > stops_seen:
                stops_seen = stops.count
                _forward_stop(procs, codes, hard=stops_seen > 1, cause=stops.first, echo=say)
            for worker_id, proc in procs.items():
                if worker_id in codes or proc.poll() is None:
                    continue
                codes[worker_id] = proc.returncode
                if proc.returncode != 0 and not stops_seen:
                    say(f"[{worker_id}] worker {describe_exit(proc.returncode)}; the other workers take over its trial")
            time.sleep(poll_seconds)
    finally:
        # Whatever happened here, no child (nor anything it spawned) outlives the parent's wait.
        for worker_id, proc in procs.items():
            codes[worker_id] = kill_group(proc)
        for thread in relay.threads:
            thread.join(timeout=5)
    return WorkersResult(
        exit_codes={w: codes[w] for w in procs},
        interrupted=stops_seen > 0,
        pids={w: p.pid for w, p in procs.items()},
        cause=stops.first,
    )


def _forward_stop(
    procs: Mapping[str, subprocess.Popen[str]],
    codes: Mapping[str, int],
    *,
    hard: bool,
    cause: str | None,
    echo: Callable[[str], None],
) -> None:
    running = [(w, p) for w, p in procs.items() if w not in codes and p.poll() is None]
    if hard:
        echo(f"killing {len(running)} worker(s): their trials are recovered (FAIL, re-queued) by the next run")
    else:
        echo(
            f"stopping {len(running)} worker(s): each records its running trial as FAIL "
            "(interrupted) and re-queues it; Ctrl-C again to kill them now"
        )
    for _, proc in running:
        if hard:
            # The whole group: the worker's DataLoader processes must not outlive it.
            signal_group(proc.pid, signal.SIGKILL)
        else:
            # The worker alone: it stops its own children in order once its trial is recorded.
            # SIGTERM stays SIGTERM (its trial's reason says so); Ctrl-C and a closed stdout: SIGINT.
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM if cause == SIGTERM else signal.SIGINT)


def watch_parent(parent_pid: int, *, interval: float = 1.0) -> threading.Thread:
    """In a child: interrupt this process (SIGINT) once ``parent_pid`` is gone.

    A parent killed outright cannot forward Ctrl-C; its children then stop the same way, so
    their trials are recorded and re-queued instead of left RUNNING. Two signs: the parent is
    no longer ours (checked every ``interval`` s), or writing a line to it fails (its end of
    the pipe closed), which :func:`~deepsc_tune.utils._interrupts.stop_requests` turns into an
    interruption as for any command whose stdout was closed.
    """

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGINT)

    thread = threading.Thread(target=watch, name="deepsc-tune-watch-parent", daemon=True)
    thread.start()
    return thread
