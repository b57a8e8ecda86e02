"""What a worker prints: one line per finished trial, and a live epoch line on a terminal.

The live line is a transient :class:`rich.live.Live` (rich ships with typer): it redraws in place
on a terminal and leaves nothing behind; trial lines print above it. Off a terminal (a pipe, a
log file, a worker under ``run --workers``) only the trial lines are written.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.live import Live
from rich.text import Text

from deepsc_tune.backends import EpochMetrics
from deepsc_tune.study import failure_reason, trial_result


@dataclass
class Progress:
    """Prints one line per trial (and a live epoch line on a terminal)."""

    metric: str
    stream: TextIO = field(default_factory=lambda: sys.stdout)
    verbose: bool = False
    prefix: str = ""
    _console: Console | None = None
    _line: Live | None = None

    def __post_init__(self) -> None:
        # Plain text: no markup, highlighting or wrapping; the terminal check is rich's own.
        self._console = Console(file=self.stream, highlight=False, markup=False, emoji=False, soft_wrap=True)

    @property
    def live(self) -> bool:
        """Whether epochs are shown on a live line (a terminal, and not ``--verbose``)."""
        return not self.verbose and self._console.is_terminal

    def epoch(self, number: int, m: EpochMetrics) -> None:
        value = m.metric(self.metric)
        text = f"{self.prefix}  trial {number:>3} epoch {m.epoch:>3}  {self.metric} {value:.4f}"
        if self.verbose:
            print(text, file=self.stream, flush=True)
        elif self.live:
            if self._line is None:
                self._line = Live(Text(text), console=self._console, transient=True, auto_refresh=False)
                self._line.start(refresh=True)
            else:
                self._line.update(Text(text), refresh=True)

    def close(self) -> None:
        """Erase the live line, if one is shown."""
        if self._line is not None:
            self._line.stop()
            self._line = None

    def recovered(self, numbers: list[int]) -> None:
        """Said when it happens, before the trials that follow (not in the final summary)."""
        self.close()
        print(f"{self.prefix}re-queued trials left running by a dead process: {numbers}", file=self.stream, flush=True)

    def requeued(self, numbers: list[int]) -> None:
        """Said when it happens: interrupted trials whose retry was lost (a process killed between
        recording the FAIL and queueing the retry)."""
        self.close()
        print(f"{self.prefix}re-queued interrupted trials that had no retry: {numbers}", file=self.stream, flush=True)

    def taken_over(self, number: int) -> None:
        """Said when a trial this worker ran was failed and re-queued by another meanwhile."""
        self.close()
        print(
            f"{self.prefix}trial {number} was declared dead by another worker while this one was "
            "stopped (suspended past the heartbeat grace period) and re-queued; its result here is "
            "dropped, carrying on",
            file=self.stream,
            flush=True,
        )

    def trial_done(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self.close()
        print(self.prefix + format_trial_line(study, trial, self.metric), file=self.stream, flush=True)


def format_params(params: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_fmt(v)}" for k, v in params.items())


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def format_trial_line(study: optuna.Study, trial: FrozenTrial, metric: str) -> str:
    """``#  3 COMPLETE  params | metric per epoch | time | best so far``."""
    curve = " ".join(f"{trial.intermediate_values[e]:.3f}" for e in sorted(trial.intermediate_values))
    if len(trial.intermediate_values) > 12:
        values = [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]
        curve = " ".join(f"{v:.3f}" for v in values[:4]) + " ... " + " ".join(f"{v:.3f}" for v in values[-4:])
    state = trial.state.name
    duration = trial_result(trial).duration_s
    parts = [f"#{trial.number:>3} {state:<8}", format_params(trial.params)]
    if curve:
        parts.append(f"{metric} {curve}")
    if duration is not None:
        parts.append(f"{duration:.1f}s")
    if trial.state == TrialState.FAIL:
        reason = (failure_reason(trial) or "").splitlines()[0][:160]
        parts.append(f"reason: {reason}")
    try:
        best = study.best_trial
        parts.append(f"best {best.value:.4f} (#{best.number})")
    except ValueError:
        pass
    return " | ".join(parts)
