"""DeepSC's cosine warmup in the steps it really runs.

DeepSC plans its cosine schedule for a hard-coded 100,000 cells. At ``2416d85`` and ``abcf2be``
alike (``src/deepsc/finetune/cell_type_annotation.py``, ``create_scheduler``):

- line 220: ``total_steps = args.epoch * math.ceil((100000) / (args.batch_size *
  self.world_size * args.grad_acc))``, the *planned* steps;
- line 224: ``warmup_steps = math.ceil(total_steps * warmup_ratio)``; a ``LinearLR`` from
  0.01 x the peak over ``warmup_steps`` steps (line 226), then (line 231) cosine annealing with
  warm restarts every ``T_0 = warmup_steps * 3`` steps, the peak decayed 0.9 per restart,
  joined by ``SequentialLR(milestones=[warmup_steps])`` (line 239); line 244 prints
  ``  - Warmup steps: N``.

Stepped through DeepSC's own scheduler (tests/backends/command/deepsc/test_schedule.py), the rate of update
``k`` (from 1) rises from 0.01 x the peak (``k = 1``) to 0.9966 x at ``k = w + 1``; the peak itself
is the rate of update ``w + 2`` (``SequentialLR`` hands over at step ``w`` and DeepSC's cosine
class starts its cycle one step later), and the first restart (0.9 x the peak) is update
``4w + 2``, then every ``3w``. So the warmup has finished within a run of ``R`` updates when
``w + 2 <= R``.

The scheduler steps once per optimizer step (lines 446-448), and the optimizer steps once every
``grad_acc`` batches: ``is_accumulating = (i + 1) % grad_acc != 0`` with ``i`` counting the
epoch's batches from 0 (line 764). The training loader (lines 381-383) is a ``DataLoader`` over a
``DistributedSampler`` with ``batch_size`` and neither ``drop_last``: each of ``world_size`` ranks
sees ``ceil(n_train / world_size)`` cells in ``ceil(... / batch_size)`` batches, the last one
partial. A final group of fewer than ``grad_acc`` batches is never stepped (its gradients are
added to the next epoch's first step; the last epoch's are dropped). So a run really takes::

    steps_per_epoch = ceil(ceil(n_train / world_size) / batch_size) // grad_acc
    real_steps      = epoch * steps_per_epoch

On a training file of 1,000 cells, ``batch_size 32``, ``grad_acc 1``, 2 epochs, DeepSC plans
6,250 steps and runs 64: a ``warmup_ratio`` of 0.138 asks for 863 warmup steps, and the learning
rate never leaves warmup. deepsc-tune therefore searches the warmup as a fraction of the **real**
run and passes DeepSC the ``warmup_ratio`` whose ``ceil(planned x ratio)`` is that many steps
(:func:`plan_warmup`). This module never imports torch or Optuna.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

#: DeepSC's cosine schedule counts steps for this many cells, whatever the data's size.
SCHEDULE_CELLS = 100_000
#: DeepSC's restart period is this many times the warmup (``T_0 = warmup_steps * 3``).
RESTART_WARMUP_MULTIPLE = 3
#: DeepSC's peak decay at each restart.
RESTART_DECAY = 0.9

#: The trial attribute holding the ``warmup_ratio`` a cosine trial passed DeepSC; the whole
#: :meth:`WarmupPlan.record` (the searched ``fraction`` of the real run, the step counts) is in
#: the trial's ``trial.json`` under :data:`PLAN_KEY`.
DEEPSC_WARMUP = "deepsc_warmup_ratio"
PLAN_KEY = "warmup"
#: Where studies written before kept the whole plan (still read).
OLD_DEEPSC_WARMUP = "deepsc_warmup"


def planned_steps(*, epoch: float, batch_size: float, grad_acc: float, world_size: float = 1) -> int:
    """Steps DeepSC's cosine schedule plans for:
    ``epoch * ceil(100000 / (batch_size * world_size * grad_acc))`` (cell_type_annotation.py:220)."""
    return int(epoch) * math.ceil(SCHEDULE_CELLS / (batch_size * world_size * grad_acc))


def steps_per_epoch(n_train: int, *, batch_size: int, grad_acc: int, world_size: int = 1) -> int:
    """Optimizer steps DeepSC takes in one epoch over ``n_train`` cells (module docstring)."""
    if n_train < 1 or batch_size < 1 or grad_acc < 1 or world_size < 1:
        raise ValueError(f"expected positive counts, got {n_train}, {batch_size}, {grad_acc}, {world_size}")
    batches = math.ceil(math.ceil(n_train / world_size) / batch_size)
    return batches // grad_acc


def real_steps(n_train: int, *, epoch: int, batch_size: int, grad_acc: int, world_size: int = 1) -> int:
    """Optimizer steps of a whole DeepSC run: ``epoch * steps_per_epoch(...)``."""
    return int(epoch) * steps_per_epoch(n_train, batch_size=batch_size, grad_acc=grad_acc, world_size=world_size)


def warmup_steps_for(fraction: float, total: int) -> int:
    """``ceil(fraction * total)``: the warmup steps a fraction of the real run asks for."""
    # round() first: 0.07 * 100 is 7.000000000000001 in floats and must give 7 steps, not 8.
    return math.ceil(round(fraction * total, 9))


def deepsc_warmup_ratio(warmup_steps: int, planned: int) -> float:
    """The shortest decimal ``r`` for which DeepSC's ``math.ceil(planned * r)`` (in floats, as
    it computes it) is ``warmup_steps``."""
    if warmup_steps < 1 or planned < 1:
        raise ValueError(f"expected warmup_steps and planned >= 1, got {warmup_steps}, {planned}")
    mid = (warmup_steps - 0.5) / planned
    for digits in range(1, 18):
        r = float(f"{mid:.{digits}g}")
        if math.ceil(planned * r) == warmup_steps:
            return r
    return mid


def _epochs(steps: int, per_epoch: int) -> str:
    return f"{steps / per_epoch:.3g}"


@dataclass(frozen=True)
class WarmupPlan:
    """One cosine run's warmup: searched as a fraction of the real run, passed as DeepSC's ratio."""

    #: The searched ``warmup_ratio``: a fraction of the run's real optimizer steps.
    fraction: float
    n_train: int
    epoch: int
    steps_per_epoch: int
    real_steps: int
    planned_steps: int
    #: ``ceil(fraction * real_steps)``, and what DeepSC computes from ``deepsc_ratio``.
    warmup_steps: int
    #: The ``warmup_ratio`` DeepSC is given: ``ceil(planned_steps * deepsc_ratio) == warmup_steps``.
    deepsc_ratio: float

    @property
    def restart_steps(self) -> int:
        """DeepSC's restart period ``T_0 = 3 x warmup steps``, in real steps."""
        return RESTART_WARMUP_MULTIPLE * self.warmup_steps

    def problem(self) -> str | None:
        """Why DeepSC cannot run this warmup as meant, or ``None``."""
        if self.real_steps < 1:
            return (
                f"{self.n_train} training cells make fewer batches an epoch than grad_acc, so DeepSC "
                "never steps the optimizer (it steps once every grad_acc batches, within an epoch)"
            )
        if self.warmup_steps < 1:
            return "0 warmup steps: DeepSC then fails with ValueError: Expected positive integer T_0"
        if self.warmup_steps + 2 > self.real_steps:
            return (
                f"{self.warmup_steps} warmup steps do not finish within the run's {self.real_steps} optimizer "
                f"steps (DeepSC's peak is the rate of update warmup + 2; warmup_ratio is a fraction of the "
                f"real run, and at most {max_fraction(self.real_steps):.4g} reaches the peak)"
            )
        return None

    def describe(self) -> str:
        """One line: warmup and restart period in real steps and epochs, and what DeepSC is given."""
        per = self.steps_per_epoch
        return (
            f"warmup {self.warmup_steps} of {self.real_steps} optimizer steps ({_epochs(self.warmup_steps, per)} "
            f"epochs of {per} steps; warmup_ratio {self.fraction:.4g} of the real run; the peak at update "
            f"{self.warmup_steps + 2}), then cosine restarts "
            f"every {self.restart_steps} steps ({_epochs(self.restart_steps, per)} epochs), peak x{RESTART_DECAY} "
            f"each; DeepSC is passed warmup_ratio={self.deepsc_ratio!r} because it plans {self.planned_steps} "
            f"steps (for {SCHEDULE_CELLS:,} cells): ceil({self.planned_steps} x {self.deepsc_ratio!r}) = "
            f"{self.warmup_steps}"
        )

    def record(self) -> dict[str, Any]:
        """The trial attribute (:data:`DEEPSC_WARMUP`)."""
        return {**asdict(self), "restart_steps": self.restart_steps}


def recorded_plan(user_attrs: Mapping[str, Any], details: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
    """A trial's warmup plan (:meth:`WarmupPlan.record`) from its ``trial.json`` ``details``, or
    from the attribute of studies written before; ``None`` for a trial without one."""
    for plan in ((details or {}).get(PLAN_KEY), user_attrs.get(OLD_DEEPSC_WARMUP)):
        if isinstance(plan, dict) and "deepsc_ratio" in plan:
            return plan
    return None


def recorded_ratio(user_attrs: Mapping[str, Any]) -> float | None:
    """The ``warmup_ratio`` a trial passed DeepSC (:data:`DEEPSC_WARMUP`), or ``None``."""
    ratio = user_attrs.get(DEEPSC_WARMUP)
    if isinstance(ratio, (int, float)):
        return float(ratio)
    plan = recorded_plan(user_attrs)
    return float(plan["deepsc_ratio"]) if plan is not None else None


def max_fraction(real: int) -> float:
    """The largest fraction of ``real`` steps whose warmup finishes within them: ``w + 2 <= real``
    (DeepSC's peak is the rate of update ``w + 2``, module docstring)."""
    return (real - 2) / real if real > 2 else 0.0


def plan_warmup(
    fraction: float, *, n_train: int, epoch: int, batch_size: int, grad_acc: int, world_size: int = 1
) -> WarmupPlan:
    """The warmup of a cosine run whose ``warmup_ratio`` means ``fraction`` of its real steps.

    Check :meth:`WarmupPlan.problem` before passing it on.
    """
    per = steps_per_epoch(n_train, batch_size=batch_size, grad_acc=grad_acc, world_size=world_size)
    real = int(epoch) * per
    planned = planned_steps(epoch=epoch, batch_size=batch_size, grad_acc=grad_acc, world_size=world_size)
    warmup = warmup_steps_for(float(fraction), real) if real > 0 else 0
    ratio = deepsc_warmup_ratio(warmup, planned) if warmup >= 1 else float(fraction)
    return WarmupPlan(float(fraction), int(n_train), int(epoch), per, real, planned, warmup, ratio)


def _int(value: Any, default: int) -> int:
    if value is None:
        return default
    try:
        return int(float(str(value)))
    except ValueError:
        return default


def plan_for_settings(values: Mapping[str, Any], n_train: int) -> WarmupPlan | None:
    """The plan of one run from DeepSC's effective settings (plain values), or ``None`` for a
    schedule other than cosine."""
    if values.get("lr_scheduler_type") != "cosine":
        return None
    world = _int(values.get("num_device"), 1) * _int(values.get("num_nodes"), 1)
    return plan_warmup(
        float(values.get("warmup_ratio", 0.03)),
        n_train=n_train,
        epoch=_int(values.get("epoch"), 10),
        batch_size=_int(values.get("batch_size"), 32),
        grad_acc=_int(values.get("grad_acc"), 20),
        world_size=world,
    )


__all__ = [
    "RESTART_DECAY",
    "RESTART_WARMUP_MULTIPLE",
    "SCHEDULE_CELLS",
    "WarmupPlan",
    "deepsc_warmup_ratio",
    "max_fraction",
    "plan_for_settings",
    "plan_warmup",
    "planned_steps",
    "real_step_findings",
    "recorded_plan",
    "recorded_ratio",
    "real_steps",
    "run_plan",
    "steps_per_epoch",
    "warmup_steps_for",
]


# ----------------------------------------------------------------------------- one run


def run_plan(settings: Any, params: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> WarmupPlan | None:
    """The warmup of one DeepSC cosine run (``settings``: the ``command`` backend's settings),
    or ``None`` for another program or schedule.

    Raises
    ------
    FinetuneError
        ``data_path`` cannot be counted, or the warmup cannot run as meant
        (:meth:`WarmupPlan.problem`): refused before DeepSC's 30 s start-up.
    """
    from deepsc_tune.backends.command.deepsc._checkout import deepsc_values, is_deepsc_command
    from deepsc_tune.backends.command.deepsc._data import deepsc_cells
    from deepsc_tune.errors import FinetuneError

    if not is_deepsc_command(settings.command):
        return None
    values = deepsc_values(settings, params, config)
    if values.get("lr_scheduler_type") != "cosine":
        return None
    cells = deepsc_cells(values)
    if cells is None:
        raise FinetuneError(
            f"data_path {values.get('data_path')!r}: not a file (or data_path_eval missing), so deepsc-tune "
            "cannot count the real optimizer steps the cosine warmup is a fraction of; expected the "
            "training .h5ad (deepsc-tune split writes it)"
        )
    plan = plan_for_settings(values, cells.n_train)
    assert plan is not None
    problem = plan.problem()
    if problem:
        raise FinetuneError(
            f"warmup_ratio {plan.fraction!r} with epoch {plan.epoch}, batch_size {values.get('batch_size')}, "
            f"grad_acc {values.get('grad_acc')}: {problem}"
        )
    return plan


# ----------------------------------------------------------------------------- validate


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _candidates(name: str, settings: Mapping[str, Any], search: Mapping[str, Any]) -> list[Any] | None:
    """Values a setting can take: a searched entry's choices/grid/ends, else the fixed value."""
    spec = search.get(name)
    if spec is None:
        setting = settings.get(name)
        return None if setting is None else [getattr(setting, "value", setting)]
    values = list(spec.choices or ()) if spec.kind == "categorical" else [spec.low, spec.high]
    return values + list(spec.grid or ())


_STEP_KEYS = ("epoch", "batch_size", "grad_acc")
_STEP_DEFAULTS = {"epoch": 10, "batch_size": 32, "grad_acc": 20}


def _corners(settings: Mapping[str, Any], search: Mapping[str, Any]) -> list[dict[str, int]] | None:
    """Each combination of the smallest and largest epoch, batch_size and grad_acc a trial can
    have (``None`` when one is not a number)."""
    from itertools import product

    ends = []
    for name in _STEP_KEYS:
        nums = [_num(v) for v in (_candidates(name, settings, search) or [_STEP_DEFAULTS[name]])]
        if any(n is None or n < 1 for n in nums):
            return None
        ends.append(sorted({int(min(nums)), int(max(nums))}))
    return [dict(zip(_STEP_KEYS, c)) for c in product(*ends)]


def _where(settings: Mapping[str, Any], search: Mapping[str, Any], name: str) -> str:
    if name in search:
        return f"search.{name}"
    return getattr(settings.get(name), "where", f"finetune.{name}")


def _run_text(plan: WarmupPlan, corner: Mapping[str, int]) -> str:
    return (
        f"{plan.n_train} training cells, epoch {corner['epoch']} x {plan.steps_per_epoch} optimizer steps "
        f"(batch_size {corner['batch_size']}, grad_acc {corner['grad_acc']}) = {plan.real_steps} steps"
    )


def real_step_findings(
    settings: Mapping[str, Any],
    search: Mapping[str, Any],
    *,
    n_train: int,
    cosine: bool,
    enqueue: Sequence[Mapping[str, Any]] = (),
) -> Any:
    """What ``validate`` says about DeepSC's schedule in the steps it really runs.

    Parameters
    ----------
    settings
        DeepSC's effective settings (``{key: Setting}`` or plain values).
    search
        The searched parameters (``ParamSpec``-like).
    n_train
        The cells DeepSC trains on (:func:`deepsc_tune.backends.command.deepsc._data.deepsc_cells`).
    cosine
        Whether any trial can run DeepSC's cosine schedule.
    enqueue
        ``study.enqueue``.

    Returns
    -------
    Findings
        A problem when a run can take no optimizer step at all (fewer batches an epoch than
        ``grad_acc``), or when a fixed, enqueued or listed ``warmup_ratio`` cannot finish within
        the run; a searched range whose high end cannot is **clipped** (``highs``) to the largest
        fraction that finishes in the shortest run, with a note. A note states the warmup and the
        restart period in real steps and epochs and the ``warmup_ratio`` DeepSC is passed.
    """
    from deepsc_tune.backends.command.deepsc._checkout import Findings, Problem

    out = Findings()
    corners = _corners(settings, search)
    if corners is None:
        return out
    plans = [(plan_warmup(0.5, n_train=n_train, **c), c) for c in corners]
    short_plan, short = min(plans, key=lambda p: p[0].real_steps)
    long_plan, long = max(plans, key=lambda p: p[0].real_steps)
    if short_plan.real_steps < 1:
        batches = math.ceil(n_train / short["batch_size"])
        out.problems.append(
            Problem(
                _where(settings, search, "grad_acc"),
                (
                    f"{short['grad_acc']} with batch_size {short['batch_size']}: data_path's {n_train} training cells "
                    f"make {batches} batches an epoch, fewer than grad_acc, so DeepSC never steps the optimizer "
                    f"(it steps once every grad_acc batches of an epoch and carries the rest); expected grad_acc <= "
                    f"{batches} or a smaller batch_size"
                ),
            )
        )
        return out
    if not cosine:
        return out
    limit = max_fraction(short_plan.real_steps)
    spec = search.get("warmup_ratio")
    fixed = settings.get("warmup_ratio")
    if spec is None:
        value = _num(getattr(fixed, "value", fixed))
        if value is None or value <= 0:
            return out  # schedule_problems refuses it
        plan = plan_warmup(value, n_train=n_train, **short)
        if plan.problem():
            out.problems.append(
                Problem(
                    getattr(fixed, "where", "finetune.warmup_ratio"),
                    f"{value!r} with lr_scheduler_type cosine ({_run_text(plan, short)}): {plan.problem()}; "
                    f"expected a warmup_ratio <= {limit:.4g}",
                )
            )
            return out
        out.notes.append(f"warmup_ratio: {_run_text(plan, short)}; {plan.describe()}")
    elif spec.kind == "categorical" or spec.grid:
        values = list(spec.choices or ()) if spec.kind == "categorical" else []
        key = "choices" if spec.kind == "categorical" else "grid"
        values += list(spec.grid or ())
        bad = [v for v in values if (_num(v) or 0) > 0 and plan_warmup(_num(v), n_train=n_train, **short).problem()]
        if bad:
            plan = plan_warmup(_num(bad[0]), n_train=n_train, **short)
            out.problems.append(
                Problem(
                    f"search.warmup_ratio.{key}",
                    f"{bad[0]!r} ({_run_text(plan, short)}): {plan.problem()}; expected values <= {limit:.4g}",
                )
            )
    elif spec.high > limit:
        new_high = limit
        if spec.step:
            new_high = spec.low + math.floor(round((limit - spec.low) / spec.step, 9)) * spec.step
        if new_high <= max(spec.low, 0.0):
            out.problems.append(
                Problem(
                    "search.warmup_ratio.high",
                    (
                        f"{spec.high!r}: no warmup_ratio of [{spec.low}, {spec.high}] finishes its warmup within "
                        f"the shortest run ({_run_text(short_plan, short)}); warmup_ratio is a fraction of the real "
                        f"run; expected high <= {limit:.4g}"
                    ),
                )
            )
            return out
        out.highs["warmup_ratio"] = new_high
        out.notes.append(
            f"search.warmup_ratio: high end {spec.high:g} clipped to {new_high:.4g}: warmup_ratio is a fraction "
            f"of the real run, and above that the warmup of the shortest run ({_run_text(short_plan, short)}) "
            "does not finish"
        )
    if spec is not None and spec.kind != "categorical":
        low = max(spec.low, 1.0 / long_plan.real_steps)
        high = out.highs.get("warmup_ratio", spec.high)
        first = plan_warmup(low, n_train=n_train, **short)
        last = plan_warmup(high, n_train=n_train, **long)
        steps = (
            f"{first.real_steps}" if first.real_steps == last.real_steps else f"{first.real_steps}-{last.real_steps}"
        )
        out.notes.append(
            f"search.warmup_ratio is a fraction of the real run ({steps} optimizer steps, "
            f"{n_train} training cells): {low:.3g}-{high:.3g} gives warmup {first.warmup_steps}-{last.warmup_steps} "
            f"steps ({first.warmup_steps / first.steps_per_epoch:.3g}-{last.warmup_steps / last.steps_per_epoch:.3g} "
            f"epochs), restarts every {first.restart_steps}-{last.restart_steps} steps "
            f"({first.restart_steps / first.steps_per_epoch:.3g}-{last.restart_steps / last.steps_per_epoch:.3g} "
            f"epochs); DeepSC, which plans {first.planned_steps} steps for {SCHEDULE_CELLS:,} cells, is passed "
            f"warmup_ratio {first.deepsc_ratio!r}-{last.deepsc_ratio!r}"
        )
    for i, entry in enumerate(enqueue):
        # Without its own lr_scheduler_type an enqueued trial samples it (or takes the fixed one).
        lr = (
            [entry["lr_scheduler_type"]]
            if "lr_scheduler_type" in entry
            else _candidates("lr_scheduler_type", settings, search)
        )
        value = _num(entry.get("warmup_ratio", getattr(fixed, "value", fixed)))
        if "cosine" not in (lr or ()) or value is None or value <= 0:
            continue
        corner = {k: int(_num(entry[k]) or 0) if k in entry else short[k] for k in _STEP_KEYS}
        if min(corner.values()) < 1:
            continue
        plan = plan_warmup(value, n_train=n_train, **corner)
        if plan.problem():
            key = "warmup_ratio" if "warmup_ratio" in entry else "lr_scheduler_type"
            out.problems.append(
                Problem(f"study.enqueue[{i}].{key}", f"cosine with warmup_ratio {value!r}: {plan.problem()}")
            )
    return out
