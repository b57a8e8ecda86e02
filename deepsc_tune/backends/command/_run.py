"""One run of the ``command`` backend's child: start, stream, follow metrics, stop, explain.

:class:`ChildRun` starts the program in its own process group (:mod:`deepsc_tune.utils._processes`) in
the run's folder, copies its output to ``log.txt`` as it arrives, hands each epoch's metrics (from
stdout and the JSON-lines file, :mod:`deepsc_tune.backends.command._metrics_parsing`) to ``on_epoch`` at once, and
stops the whole group when asked, on a timeout, an error or Ctrl-C. A failed run becomes a
:class:`~deepsc_tune.errors.FinetuneError` that names its cause (DeepSC's own error line, else
the last exception) and quotes the log's last lines. This module never imports Optuna.
"""

from __future__ import annotations

import codecs
import math
import os
import queue
import re
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from pathlib import Path

from deepsc_tune.backends._interface import EpochCallback, EpochMetrics, FinetuneResult
from deepsc_tune.backends.command._metrics_parsing import JsonLinesTail, StdoutParser
from deepsc_tune.backends.command._settings import CommandSettings
from deepsc_tune.backends.command.deepsc import (
    StartSpacing,
    checkpoint_folder,
    claim_output_dir,
    record_checkpoint,
    saved_path,
)
from deepsc_tune.errors import FinetuneError
from deepsc_tune.utils import KILL_WAIT_S, describe_exit, start_group, stop_group

#: Environment variable naming the JSON-lines metrics file the child may append to.
METRICS_ENV = "DEEPSC_TUNE_METRICS"
#: Environment variable naming the run's folder (for programs that are not Hydra apps).
RUN_DIR_ENV = "DEEPSC_TUNE_RUN_DIR"
#: File names inside a run folder.
LOG_FILE = "log.txt"
METRICS_FILE = "metrics.jsonl"
#: Lines of the child's output quoted in a failure message.
TAIL_LINES = 10
#: Where DeepSC writes checkpoints, logs and plots: 2416d85 prints "Output directory created: F"
#: (a hard-coded folder + timestamp), abcf2be "Output directory: F" (Hydra's run directory).
_OUTPUT_DIR_LINE = re.compile(r"^Output directory(?: created)?:\s*(?P<path>\S.*)$")
#: DeepSC's cosine banner (cell_type_annotation.py:244): the warmup steps it computed.
_WARMUP_LINE = re.compile(r"^-\s*Warmup steps:\s*(?P<steps>\d+)\s*$")

# Lines that explain a failure better than the last line of a traceback, first match wins.
_CAUSE_PATTERNS = (
    re.compile(r"Unknown lr_scheduler_type:.*"),
    re.compile(r"Could not override '[^']*'|Could not append to config|Key '[^']*' is not in struct"),
)
# The last Python exception line is the fallback cause ("RuntimeError: CUDA out of memory...").
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Za-z_]\w*(?:Error|Exception)(?::|$)")

_POLL_S = 0.1  # how often the JSON file, the timeout and the child are checked
_EOF_WAIT_S = 2.0  # after the child exits, how long a leftover holding the pipe may linger
_MAX_SEGMENT = 1 << 20  # a "line" without newline longer than this is parsed as is


class ChildRun:
    """One child process: start it, stream its output, follow metrics, stop it, clean up."""

    def __init__(
        self,
        settings: CommandSettings,
        *,
        argv: list[str],
        env: dict[str, str],
        run_dir: Path,
        on_epoch: EpochCallback | None,
        notes: list[str] | tuple[str, ...] = (),
        warmup_steps: int | None = None,
        spacing: StartSpacing | None = None,
    ) -> None:
        self.settings = settings
        self.notes = list(notes)  # lines of our own for the top of the log (the warmup plan)
        self.warmup_steps = warmup_steps  # what DeepSC's "Warmup steps:" line must say
        self.printed_warmup: int | None = None
        self.spacing = spacing  # DeepSC 2416d85: held until it names its timestamped folder
        self.argv = argv
        self.env = env
        self.run_dir = run_dir
        self.on_epoch = on_epoch
        self.log_path = run_dir / LOG_FILE
        self.metrics_path = run_dir / METRICS_FILE
        self.events: queue.Queue[EpochMetrics | None] = queue.Queue()  # None marks EOF
        self.tail: deque[str] = deque(maxlen=TAIL_LINES)
        self.cause: str | None = None
        self.last_exception: str | None = None
        self.output_dir: str | None = None  # where DeepSC says it writes checkpoints
        self.named_at: float | None = None  # when it said so (wall clock)
        self.clash: str | None = None  # why that folder is another run's
        self.checkpoints: list[str] = []  # the checkpoint files DeepSC said it saved
        self.checkpoint_dir: str | None = None  # and the folder it said it saves them in
        self.history: list[EpochMetrics] = []
        self.counts = {"stdout": 0, "json": 0}
        self.base: dict[str, int] = {}
        self.warnings: list[str] = []
        self.log_lock = threading.Lock()
        self._log_mid_line = False  # the child's last chunk in the log ended inside a line
        self.proc: subprocess.Popen[bytes] | None = None
        self.start = time.monotonic()
        self.last_report = self.start

    # -- lifecycle

    def execute(self) -> str:
        """Run to the end; ``finished``, ``pruned`` or ``timeout``. Always leaves nothing running."""
        s = self.settings
        use_stdout = s.metrics in ("deepsc", "both")
        # A stale file from an earlier attempt in the same folder must not be read as this run's.
        self.metrics_path.write_bytes(b"")
        tail = JsonLinesTail(self.metrics_path) if s.metrics in ("json", "both") else None
        parser = StdoutParser(s.epoch_regex, s.metrics_regex) if use_stdout else None
        self.log = open(self.log_path, "wb")
        try:
            self._note(f"command: {shlex.join(self.argv)}")
            self._note(f"checkout: {s.cwd or Path.cwd()} (on PYTHONPATH); working directory: {self.run_dir}")
            for note in self.notes:
                self._note(note)
            if self.spacing is not None:
                self.spacing.acquire(f"trial folder {self.run_dir} (pid {os.getpid()})", note=self._note)
            self.start = self.last_report = time.monotonic()
            try:
                # In its own process group, so that stopping it reaches DataLoader workers,
                # DDP ranks and anything else it spawned.
                self.proc = start_group(
                    self.argv,
                    # The trial's folder: what the program writes into "." (DeepSC's
                    # finetune_<timestamp>.log) stays with the trial, not in the checkout.
                    cwd=self.run_dir,
                    env=self.env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                )
            except OSError as e:
                raise FinetuneError(
                    f"cannot start {self.argv[0]!r} (finetune.command) in {self.run_dir}: {e.strerror or e}"
                ) from None
            reader = threading.Thread(target=self._pump, args=(parser,), name="deepsc-tune-output", daemon=True)
            reader.start()
            try:
                outcome = self._follow(tail)
                if outcome == "timeout":
                    self._note(f"timed out after {s.timeout:g}s: stopping the process group")
                elif outcome == "pruned":
                    self._note(f"stopped after epoch {self.history[-1].epoch}: stopping the process group")
            except BaseException as e:
                # Ctrl-C or a callback that raised: stop the child before the exception moves on.
                self._note(f"interrupted ({type(e).__name__}): stopping the process group")
                raise
            finally:
                self._stop_group()
                reader.join(timeout=KILL_WAIT_S)
            return outcome
        finally:
            if self.spacing is not None:
                self.spacing.release(named_at=self.named_at)
            with self.log_lock:
                self.log.close()

    def _follow(self, tail: JsonLinesTail | None) -> str:
        timeout = self.settings.timeout
        deadline = None if timeout is None else self.start + timeout
        assert self.proc is not None
        eof = False
        exited_at: float | None = None
        while True:
            try:
                item = self.events.get(timeout=_POLL_S)
            except queue.Empty:
                item = False  # nothing new
            if item is None:
                eof = True
            elif item is not False and self._report(item, "stdout"):
                return "pruned"
            if tail is not None and self._read_json(tail, final=False):
                return "pruned"
            if self.clash is not None:
                self._note(f"{self.clash}: stopping the process group")
                return "clash"
            if self.spacing is not None:
                self.spacing.release_when(named_at=self.named_at, exited=self.proc.poll() is not None)
            if self.proc.poll() is not None:
                if eof:
                    # EOF is queued after the last line, so every stdout epoch has been seen.
                    if tail is not None and self._read_json(tail, final=True):
                        return "pruned"
                    return "finished"
                exited_at = exited_at or time.monotonic()
                waited = time.monotonic() - exited_at
                if waited > 2 * _EOF_WAIT_S:
                    # Held open by a process outside the group (it called setsid): the run is over.
                    if tail is not None and self._read_json(tail, final=True):
                        return "pruned"
                    return "finished"
                if waited > _EOF_WAIT_S:
                    # The child is gone but something it started still holds the pipe open.
                    self._stop_group()
            if deadline is not None and time.monotonic() > deadline:
                return "timeout"

    def _read_json(self, tail: JsonLinesTail, *, final: bool) -> bool:
        found, warnings = tail.read(final=final)
        for w in warnings:
            self.warnings.append(w)
            self._note(w)
        return any(self._report(m, "json") for m in found)

    def _report(self, m: EpochMetrics, source: str) -> bool:
        """Record an epoch (once, whichever source has it first); ``True`` means stop."""
        # Programs that count epochs from 0 are shifted so that epochs count from 1 here.
        base = self.base.setdefault(source, 1 if m.epoch == 0 else 0)
        m.epoch += base
        if any(h.epoch == m.epoch for h in self.history):
            return False
        now = time.monotonic()
        if m.seconds is None:
            m.seconds = round(now - self.last_report, 3)
        self.last_report = now
        self.history.append(m)
        self.counts[source] += 1
        return bool(self.on_epoch(m)) if self.on_epoch is not None else False

    # -- output

    def _pump(self, parser: StdoutParser | None) -> None:
        """Reader thread: copy output to the log as it arrives, parse it line by line."""
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        pending = ""
        try:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                with self.log_lock:
                    if not self.log.closed:
                        self.log.write(chunk)
                        self.log.flush()
                        self._log_mid_line = not chunk.endswith((b"\n", b"\r"))
                # Progress bars (tqdm) redraw with \r: treat each redraw as a line of its own.
                parts = re.split(r"\r\n|\r|\n", pending + decoder.decode(chunk))
                pending = parts.pop()
                if len(pending) > _MAX_SEGMENT:
                    parts.append(pending)
                    pending = ""
                for part in parts:
                    self._line(part, parser)
            pending += decoder.decode(b"", final=True)
            if pending:
                self._line(pending, parser)
        finally:
            self.proc.stdout.close()
            self.events.put(None)

    def _line(self, line: str, parser: StdoutParser | None) -> None:
        line = line.rstrip()
        if not line.strip():
            return
        self.tail.append(line)
        line = line.strip()
        if self.cause is None and any(p.search(line) for p in _CAUSE_PATTERNS):
            self.cause = line
        if _EXCEPTION_LINE.match(line):
            self.last_exception = line
        out = _OUTPUT_DIR_LINE.match(line)
        if out and self.output_dir is None:
            self.output_dir = out.group("path")
            self.clash = claim_output_dir(self.output_dir, self.run_dir)
            self.named_at = time.time()
            if _inside(self.output_dir, self.run_dir):
                where = "this trial's folder, Hydra's run directory"
            else:
                where = "hard-coded in DeepSC, not in this folder; see docs/deepsc.md"
            self._note(
                f"DeepSC writes this run's checkpoints (two full ones per epoch), logs and plots to "
                f"{self.output_dir} ({where})"
            )
        saved, folder = saved_path(line), checkpoint_folder(line)
        if (saved is not None and saved not in self.checkpoints) or (folder and self.checkpoint_dir is None):
            if saved is not None:
                self.checkpoints.append(saved)
            self.checkpoint_dir = self.checkpoint_dir or folder
            try:  # as they are printed: a trial that fails later still has its files recorded
                record_checkpoint(self.run_dir, self.checkpoints, self.checkpoint_dir)
            except OSError:
                pass
        warmup = _WARMUP_LINE.match(line)
        if warmup and self.printed_warmup is None:
            self.printed_warmup = int(warmup.group("steps"))
            if self.warmup_steps is not None and self.printed_warmup != self.warmup_steps:
                warning = (
                    f"DeepSC printed Warmup steps: {self.printed_warmup}, but deepsc-tune planned "
                    f"{self.warmup_steps} (docs/deepsc.md, 'Warmup in real steps')"
                )
                self.warnings.append(warning)
                self._note(warning)
        if parser is not None:
            m = parser.feed(line)
            if m is not None:
                self.events.put(m)

    def _note(self, text: str) -> None:
        """A line of our own in the log, marked so it is not mistaken for the child's, on a line of
        its own: a note written while the child is half-way through a line starts a new one, so
        the child's line stays whole (the rest of it follows on the next line)."""
        with self.log_lock:
            if not self.log.closed:
                start = b"\n" if self._log_mid_line else b""
                self.log.write(start + f"[deepsc-tune] {text}\n".encode())
                self.log.flush()
                self._log_mid_line = False

    # -- stopping

    def _stop_group(self) -> None:
        """SIGTERM the child's process group, SIGKILL it after the grace period, reap the child."""
        if self.proc is None:
            return
        grace = self.settings.grace_period
        stop_group(
            self.proc,
            grace=grace,
            on_kill=lambda: self._note(f"still running {grace:g}s after SIGTERM: sending SIGKILL"),
        )

    # -- result

    def result(self, outcome: str, *, metric: str, device: str) -> FinetuneResult:
        assert self.proc is not None
        rc = self.proc.returncode
        n = len(self.history)
        if outcome == "clash":
            raise self._failure(self.clash or "its output folder is another run's", cause=False)
        if outcome == "timeout":
            raise self._failure(
                f"timed out after {self.settings.timeout:g}s (finetune.timeout) with {n} epoch(s) reported"
            )
        if outcome == "finished":
            if rc != 0:
                raise self._failure(_exit_cause(rc))
            if not self.history:
                raise self._failure(
                    "finished (exit status 0) but printed no metric lines: expected DeepSC's "
                    "'Epoch N [Finetune Cell Type Annotation]' and 'Evaluation Loss: ...' lines "
                    f"(finetune.metric_regex) or JSON lines in ${METRICS_ENV} (finetune.metrics: {self.settings.metrics})"
                )
        history = sorted(self.history, key=lambda m: m.epoch)
        best = _best_epoch(history, metric)
        if best is None and outcome == "finished":
            raise self._failure(f"finished, but no epoch reported {metric}; choose a metric the program reports")
        return FinetuneResult(
            history=history,
            best_epoch=best,
            stopped=outcome == "pruned",
            device=device,
            extra={
                "argv": self.argv,
                "returncode": rc,
                "run_dir": str(self.run_dir),
                "log": str(self.log_path),
                "duration_s": round(time.monotonic() - self.start, 3),
                "metric_sources": dict(self.counts),
                "program_output_dir": self.output_dir,
                "checkpoints": list(self.checkpoints),
                "deepsc_warmup_steps": self.printed_warmup,
                "checkout": str(Path(self.settings.cwd or Path.cwd()).absolute()),
                "warnings": list(self.warnings),
            },
        )

    def _failure(self, headline: str, *, cause: bool = True) -> FinetuneError:
        cause = (self.cause or self.last_exception) if cause else None
        if cause:
            headline = f"{headline}: {cause}"
            hydra_key = re.search(r"Could not override '([^']*)'", cause)
            if hydra_key:
                headline += f" (if '{hydra_key.group(1)}' is new to the program's config, list it in finetune.new_keys)"
        lines = [
            f"fine-tuning command failed, {headline}",
            f"  command: {shlex.join(self.argv)}",
            f"  last lines of {self.log_path}:",
        ]
        lines += [f"    {line}" for line in self.tail] or ["    (no output)"]
        return FinetuneError("\n".join(lines))


def _inside(path: str, folder: Path) -> bool:
    """Whether ``path`` (as the child printed it, relative to its working directory ``folder``)
    is ``folder`` or under it."""
    resolved = Path(os.path.normpath(folder / os.path.expanduser(path)))
    return resolved == folder or folder in resolved.parents


def _exit_cause(rc: int) -> str:
    """A failed run's exit for its error message: ``exit status 1``, ``killed by SIGKILL ...``."""
    if rc < 0:
        # The kernel's OOM killer ends a process with SIGKILL.
        hint = " (out of memory?)" if -rc == signal.SIGKILL else ""
        return f"{describe_exit(rc)}{hint} (exit status {rc})"
    return f"exit status {rc}"


def _best_epoch(history: list[EpochMetrics], metric: str) -> int | None:
    best: tuple[float, int] | None = None
    for m in history:
        v = m.metric(metric)
        if v is None or math.isnan(v):
            continue
        if best is None or v > best[0]:  # ties keep the earlier epoch
            best = (v, m.epoch)
    return None if best is None else best[1]


__all__ = [
    "LOG_FILE",
    "METRICS_ENV",
    "METRICS_FILE",
    "RUN_DIR_ENV",
    "TAIL_LINES",
    "ChildRun",
]
