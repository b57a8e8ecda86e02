"""Learning-rate schedules (DeepSC's names) and the banners DeepSC prints at start.

Every schedule is a multiplier of the peak ``learning_rate``, stepped once per **optimizer step**
(not per batch: with ``grad_acc`` batches per step, one step covers ``grad_acc`` batches). The
number of steps comes from the real number of training cells::

    steps_per_epoch = ceil(ceil(n_train / batch_size) / grad_acc)
    total_steps     = epoch * steps_per_epoch

A partial group of fewer than ``grad_acc`` batches at the end of an epoch is stepped, not carried
into the next epoch. (DeepSC computes ``total_steps`` from a hard-coded 100,000 cells, so the
shape of its schedule changes with the data set; deepsc-tune does not copy that.)

Step indexing
-------------
``step`` counts optimizer steps already taken: the ``k``-th update (``k`` from 1) uses
``learning_rate * lr_multiplier(k - 1, ...)``. This is :class:`torch.optim.lr_scheduler.LambdaLR`'s
convention when ``scheduler.step()`` follows each ``optimizer.step()``. ``step == total_steps``
is the state after the last update.

Schedules
---------
``constant``
    Multiplier 1 at every step.
``cosine``
    Linear warmup over ``warmup_steps = ceil(warmup_ratio * total_steps)`` steps from 1 % of the
    peak (``step 0``) towards the peak, reached at ``step == warmup_steps`` (torch's
    ``LinearLR(start_factor=0.01, total_iters=warmup_steps)``), then one half-cosine from the
    peak down to 0 at ``step == total_steps``. The last update (``step == total_steps - 1``) uses a
    small, non-zero rate; the midpoint of the decay uses half the peak.
``cosine_restarts``
    DeepSC's shape (their ``lr_scheduler_type: cosine``): the same warmup, then cosine annealing
    with warm restarts (SGDR) whose peak is multiplied by ``restart_decay`` (0.9) at each restart.
    The cycle length is ``ceil((total_steps - warmup_steps) / num_cycles)`` when ``num_cycles`` is
    set, otherwise ``3 * warmup_steps`` as in DeepSC's code (a single cycle when there is no
    warmup, since a zero-length cycle is meaningless).

.. note::
   DeepSC's own ``cosine`` **is** the restart shape (``cosine_restarts`` here); deepsc-tune's
   ``cosine`` is the common single-cycle decay. Anything exported for DeepSC must say which shape
   was used (:meth:`LRSchedule.describe`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from deepsc_tune.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a scheduler is built: validating needs no torch
    import torch

#: Accepted values of ``lr_scheduler_type``.
SCHEDULER_TYPES = ("constant", "cosine", "cosine_restarts")

#: Warmup starts at this fraction of the peak (DeepSC's ``LinearLR(start_factor=0.01)``).
WARMUP_START_FACTOR = 0.01

#: Peak decay at each restart of ``cosine_restarts`` (DeepSC's ``decay=0.9``).
DEFAULT_RESTART_DECAY = 0.9

#: Without ``num_cycles``, a ``cosine_restarts`` cycle lasts this many times the warmup (DeepSC).
CYCLE_WARMUP_MULTIPLE = 3

_SHAPES = {
    "constant": "constant learning rate",
    "cosine": "linear warmup from 1% then a single cosine decay to 0 (not DeepSC's shape)",
    "cosine_restarts": (
        "linear warmup from 1% then cosine annealing with warm restarts, peak decayed at each "
        "restart (DeepSC's lr_scheduler_type=cosine)"
    ),
}


def check_scheduler_type(lr_scheduler_type: Any) -> str:
    """Return ``lr_scheduler_type`` if it is known, else raise :class:`ConfigError`.

    The message is DeepSC's, extended with the restart shape.
    """
    if lr_scheduler_type not in SCHEDULER_TYPES:
        allowed = ", ".join(f"'{t}'" for t in SCHEDULER_TYPES)
        raise ConfigError(f"Unknown lr_scheduler_type: {lr_scheduler_type!r}. Must be one of: {allowed}")
    return lr_scheduler_type


def steps_per_epoch(n_train: int, *, batch_size: int, grad_acc: int = 1) -> int:
    """Optimizer steps in one epoch over ``n_train`` cells (a final partial group is stepped)."""
    if n_train < 1 or batch_size < 1 or grad_acc < 1:
        raise ValueError(f"n_train, batch_size and grad_acc must be >= 1, got {n_train}, {batch_size}, {grad_acc}")
    batches = math.ceil(n_train / batch_size)
    return math.ceil(batches / grad_acc)


def total_steps(n_train: int, *, epoch: int, batch_size: int, grad_acc: int = 1) -> int:
    """Optimizer steps of a whole run: ``epoch * steps_per_epoch(...)``."""
    return epoch * steps_per_epoch(n_train, batch_size=batch_size, grad_acc=grad_acc)


def warmup_steps_for(total: int, warmup_ratio: float) -> int:
    """``ceil(warmup_ratio * total)``, as DeepSC computes it."""
    # round() first: 0.07 * 100 is 7.000000000000001 in floats and must give 7 steps, not 8.
    return math.ceil(round(warmup_ratio * total, 9))


def lr_multiplier(
    step: int,
    *,
    lr_scheduler_type: str,
    total_steps: int,
    warmup_steps: int = 0,
    restart_decay: float = DEFAULT_RESTART_DECAY,
    cycle_steps: int | None = None,
) -> float:
    """Multiplier of the peak learning rate after ``step`` optimizer steps.

    Parameters
    ----------
    step
        Optimizer steps already taken (0 for the first update), see the module docstring.
    lr_scheduler_type
        One of :data:`SCHEDULER_TYPES`.
    total_steps
        Optimizer steps of the whole run.
    warmup_steps
        Steps of linear warmup (ignored by ``constant``).
    restart_decay
        ``cosine_restarts`` only: peak multiplier applied at each restart.
    cycle_steps
        ``cosine_restarts`` only: steps per cycle (default: :data:`CYCLE_WARMUP_MULTIPLE` times
        ``warmup_steps``, or one cycle over all post-warmup steps when there is no warmup).

    Returns
    -------
    float
        A factor in ``[0, 1]``.
    """
    check_scheduler_type(lr_scheduler_type)
    if lr_scheduler_type == "constant":
        return 1.0
    if step < warmup_steps:
        return WARMUP_START_FACTOR + (1.0 - WARMUP_START_FACTOR) * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    t = step - warmup_steps
    if lr_scheduler_type == "cosine":
        progress = min(1.0, t / decay_steps)
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    cycle = cycle_steps if cycle_steps is not None else default_cycle_steps(total_steps, warmup_steps)
    k, t_cur = divmod(t, cycle)
    return restart_decay**k * 0.5 * (1.0 + math.cos(math.pi * t_cur / cycle))


def default_cycle_steps(total: int, warmup_steps: int, num_cycles: int | None = None) -> int:
    """Cycle length of ``cosine_restarts`` (see the module docstring)."""
    if num_cycles is not None:
        return max(1, math.ceil(max(1, total - warmup_steps) / num_cycles))
    if warmup_steps == 0:
        return max(1, total)
    return CYCLE_WARMUP_MULTIPLE * warmup_steps


@dataclass(frozen=True)
class LRSchedule:
    """A fully resolved schedule: type, peak and step counts of one run."""

    lr_scheduler_type: str
    learning_rate: float
    total_steps: int
    warmup_steps: int = 0
    restart_decay: float = DEFAULT_RESTART_DECAY
    cycle_steps: int | None = None

    def multiplier(self, step: int) -> float:
        """Factor of the peak after ``step`` optimizer steps."""
        return lr_multiplier(
            step,
            lr_scheduler_type=self.lr_scheduler_type,
            total_steps=self.total_steps,
            warmup_steps=self.warmup_steps,
            restart_decay=self.restart_decay,
            cycle_steps=self.cycle_steps,
        )

    def lr(self, step: int) -> float:
        """Learning rate used by update ``step + 1``."""
        return self.learning_rate * self.multiplier(step)

    def describe(self) -> dict[str, Any]:
        """Plain dict for exports and trial records, including which shape was used."""
        d: dict[str, Any] = {
            "lr_scheduler_type": self.lr_scheduler_type,
            "shape": _SHAPES[self.lr_scheduler_type],
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
        }
        if self.lr_scheduler_type != "constant":
            d["warmup_steps"] = self.warmup_steps
            d["warmup_start_factor"] = WARMUP_START_FACTOR
        if self.lr_scheduler_type == "cosine_restarts":
            d["restart_decay"] = self.restart_decay
            d["cycle_steps"] = self.cycle_steps
        return d


@dataclass(frozen=True)
class ExponentialRange:
    """The LR range test's schedule: from ``learning_rate`` (step 0) up by a constant factor per
    optimizer step to ``max_lr`` at step ``total_steps - 1`` (``deepsc-tune lr-find``)."""

    learning_rate: float  # the first rate
    max_lr: float
    total_steps: int

    def multiplier(self, step: int) -> float:
        span = max(self.total_steps - 1, 1)
        return (self.max_lr / self.learning_rate) ** (min(step, span) / span)

    def lr(self, step: int) -> float:
        return self.learning_rate * self.multiplier(step)

    def describe(self) -> dict[str, Any]:
        return {
            "shape": "exponential range test",
            "min_lr": self.learning_rate,
            "max_lr": self.max_lr,
            "steps": self.total_steps,
        }

    def banner(self) -> str:
        return f"LR range test: {self.total_steps} steps from {self.learning_rate:g} to {self.max_lr:g} (exponential)"


def build_schedule(
    *,
    lr_scheduler_type: str,
    learning_rate: float,
    total_steps: int,
    warmup_ratio: float = 0.03,
    restart_decay: float = DEFAULT_RESTART_DECAY,
    num_cycles: int | None = None,
) -> LRSchedule:
    """Resolve a schedule from DeepSC's settings and the run's real step count.

    Raises :class:`ConfigError` for an unknown ``lr_scheduler_type``.
    """
    check_scheduler_type(lr_scheduler_type)
    if lr_scheduler_type == "constant":
        return LRSchedule("constant", float(learning_rate), int(total_steps))
    warmup = min(warmup_steps_for(total_steps, warmup_ratio), total_steps)
    cycle = None
    if lr_scheduler_type == "cosine_restarts":
        cycle = default_cycle_steps(total_steps, warmup, num_cycles)
    return LRSchedule(
        lr_scheduler_type,
        float(learning_rate),
        int(total_steps),
        warmup_steps=warmup,
        restart_decay=float(restart_decay),
        cycle_steps=cycle,
    )


def build_lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: LRSchedule | ExponentialRange
) -> torch.optim.lr_scheduler.LambdaLR:
    """A :class:`~torch.optim.lr_scheduler.LambdaLR` applying ``schedule`` to ``optimizer``.

    The optimizer's ``lr`` must be the peak (``schedule.learning_rate``). Call
    ``scheduler.step()`` after every ``optimizer.step()``; ``scheduler.last_epoch`` then counts
    optimizer steps.
    """
    # A partial over a module-level function (not a lambda) keeps the scheduler picklable.
    import torch

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=partial(_multiplier, schedule))


def _multiplier(schedule: LRSchedule | ExponentialRange, step: int) -> float:
    return schedule.multiplier(step)


def schedule_banner(schedule: LRSchedule | ExponentialRange) -> str:
    """The lines DeepSC prints at start, with this run's real step counts.

    Examples
    --------
    >>> print(schedule_banner(build_schedule(lr_scheduler_type="constant", learning_rate=1e-4,
    ...                                      total_steps=5000)))
    Using CONSTANT learning rate: 0.0001
    No learning rate scheduling will be applied.
    >>> print(schedule_banner(build_schedule(lr_scheduler_type="cosine", learning_rate=1e-4,
    ...                                      total_steps=5000, warmup_ratio=0.03)))
    Using COSINE ANNEALING with warmup:
      - Warmup steps: 150
      - Total steps: 5000
      - Initial LR: 0.0001
    """
    if isinstance(schedule, ExponentialRange):
        return schedule.banner()
    lr = float(schedule.learning_rate)
    if schedule.lr_scheduler_type == "constant":
        return f"Using CONSTANT learning rate: {lr}\nNo learning rate scheduling will be applied."
    title = (
        "Using COSINE ANNEALING with warmup:"
        if schedule.lr_scheduler_type == "cosine"
        else "Using COSINE ANNEALING WITH WARM RESTARTS with warmup:"
    )
    lines = [
        title,
        f"  - Warmup steps: {schedule.warmup_steps}",
        f"  - Total steps: {schedule.total_steps}",
        f"  - Initial LR: {lr}",
    ]
    if schedule.lr_scheduler_type == "cosine_restarts":
        lines += [
            f"  - Restart decay: {schedule.restart_decay}",
            f"  - Cycle length: {schedule.cycle_steps} steps",
        ]
    return "\n".join(lines)
