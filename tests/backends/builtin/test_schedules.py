"""LR schedules: exact trajectories, step counts, banners, torch integration.

Convention under test: ``step`` = optimizer steps already taken; update ``k`` (from 1) uses
``lr_multiplier(k - 1)``.
"""

from __future__ import annotations

import math

import pytest
import torch

from deepsc_tune.backends.builtin._schedules import (
    SCHEDULER_TYPES,
    LRSchedule,
    build_lr_scheduler,
    build_schedule,
    lr_multiplier,
    schedule_banner,
    steps_per_epoch,
    total_steps,
)
from deepsc_tune.errors import ConfigError


@pytest.mark.parametrize(
    ("n_train", "batch_size", "grad_acc", "epoch", "expected_per_epoch"),
    [
        (320, 32, 1, 1, 10),
        (321, 32, 1, 1, 11),  # a partial batch is a batch
        (320, 32, 4, 1, 3),  # 10 batches, grad_acc 4 -> 4 + 4 + 2: the partial group is stepped
        (320, 32, 5, 1, 2),
        (1, 32, 20, 1, 1),
        (11847, 32, 20, 10, 19),  # hPancreas with DeepSC's batch 32, grad_acc 20
    ],
)
def test_step_counts(n_train, batch_size, grad_acc, epoch, expected_per_epoch):
    assert steps_per_epoch(n_train, batch_size=batch_size, grad_acc=grad_acc) == expected_per_epoch
    got = total_steps(n_train, epoch=epoch, batch_size=batch_size, grad_acc=grad_acc)
    assert got == epoch * expected_per_epoch


def test_unknown_type_message_is_exact():
    with pytest.raises(ConfigError) as err:
        build_schedule(lr_scheduler_type="linear", learning_rate=1e-4, total_steps=10)
    assert str(err.value) == (
        "Unknown lr_scheduler_type: 'linear'. Must be one of: 'constant', 'cosine', 'cosine_restarts'"
    )
    with pytest.raises(ConfigError):
        lr_multiplier(0, lr_scheduler_type="step", total_steps=10)


def test_constant_is_flat():
    s = build_schedule(lr_scheduler_type="constant", learning_rate=5e-5, total_steps=100)
    assert [s.lr(k) for k in (0, 1, 50, 99, 100)] == [5e-5] * 5


def test_cosine_trajectory():
    # 1000 steps, warmup_ratio 0.1 -> 100 warmup steps, 900 decay steps.
    s = build_schedule(lr_scheduler_type="cosine", learning_rate=1e-3, total_steps=1000, warmup_ratio=0.1)
    assert s.warmup_steps == 100
    m = s.multiplier
    assert m(0) == pytest.approx(0.01)  # first update: 1 % of the peak
    assert m(50) == pytest.approx(0.01 + 0.99 * 0.5)  # linear in between
    assert m(99) == pytest.approx(0.01 + 0.99 * 0.99)
    assert m(100) == pytest.approx(1.0)  # end of warmup: the peak
    assert m(100 + 450) == pytest.approx(0.5)  # midpoint of the decay
    assert 0 < m(999) < 1e-4  # last update: ~0 but not wasted
    assert m(1000) == pytest.approx(0.0, abs=1e-12)  # after the last update: 0
    assert m(1200) == pytest.approx(0.0, abs=1e-12)  # never negative or rising past the end
    values = [m(k) for k in range(100, 1001)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay
    assert s.lr(100) == pytest.approx(1e-3)


def test_cosine_without_warmup_starts_at_peak():
    s = build_schedule(lr_scheduler_type="cosine", learning_rate=1.0, total_steps=10, warmup_ratio=0)
    assert s.warmup_steps == 0
    assert s.multiplier(0) == 1.0
    assert s.multiplier(5) == pytest.approx(0.5)


def test_warmup_steps_use_ceil():
    s = build_schedule(lr_scheduler_type="cosine", learning_rate=1e-4, total_steps=5000, warmup_ratio=0.03)
    assert s.warmup_steps == 150
    s = build_schedule(lr_scheduler_type="cosine", learning_rate=1e-4, total_steps=101, warmup_ratio=0.03)
    assert s.warmup_steps == 4  # ceil(3.03)
    s = build_schedule(lr_scheduler_type="cosine", learning_rate=1e-4, total_steps=100, warmup_ratio=0.07)
    assert s.warmup_steps == 7  # 0.07 * 100 is 7.000000000000001 in floats


def test_cosine_restarts_trajectory_deepsc_cycle():
    # warmup 10 of 100 steps; DeepSC's cycle = 3 x warmup = 30 steps -> restarts at 40, 70, 100.
    s = build_schedule(lr_scheduler_type="cosine_restarts", learning_rate=1.0, total_steps=100, warmup_ratio=0.1)
    assert (s.warmup_steps, s.cycle_steps, s.restart_decay) == (10, 30, 0.9)
    m = s.multiplier
    assert m(0) == pytest.approx(0.01)
    assert m(10) == pytest.approx(1.0)  # end of warmup: the peak
    assert m(25) == pytest.approx(0.5)  # midpoint of the first cycle
    assert m(39) == pytest.approx(0.5 * (1 + math.cos(math.pi * 29 / 30)))  # just before restart
    assert m(40) == pytest.approx(0.9)  # restart 1: peak decayed once
    assert m(55) == pytest.approx(0.9 * 0.5)
    assert m(70) == pytest.approx(0.81)  # restart 2: decayed twice
    assert m(99) == pytest.approx(0.81 * 0.5 * (1 + math.cos(math.pi * 29 / 30)))


def test_cosine_restarts_num_cycles_and_no_warmup():
    s = build_schedule(
        lr_scheduler_type="cosine_restarts",
        learning_rate=1.0,
        total_steps=100,
        warmup_ratio=0.0,
        num_cycles=4,
        restart_decay=0.5,
    )
    assert (s.warmup_steps, s.cycle_steps) == (0, 25)
    assert [s.multiplier(k) for k in (0, 25, 50, 75)] == pytest.approx([1, 0.5, 0.25, 0.125])
    # No warmup and no num_cycles: 3 x 0 steps would be meaningless, so one cycle over the run.
    s = build_schedule(lr_scheduler_type="cosine_restarts", learning_rate=1.0, total_steps=100, warmup_ratio=0)
    assert s.cycle_steps == 100
    assert s.multiplier(50) == pytest.approx(0.5)


def test_banners_are_deepscs():
    const = build_schedule(lr_scheduler_type="constant", learning_rate=1e-4, total_steps=5000)
    assert schedule_banner(const) == (
        "Using CONSTANT learning rate: 0.0001\nNo learning rate scheduling will be applied."
    )
    cos = build_schedule(lr_scheduler_type="cosine", learning_rate=1e-4, total_steps=5000, warmup_ratio=0.03)
    assert schedule_banner(cos) == (
        "Using COSINE ANNEALING with warmup:\n  - Warmup steps: 150\n  - Total steps: 5000\n  - Initial LR: 0.0001"
    )
    rst = build_schedule(lr_scheduler_type="cosine_restarts", learning_rate=5e-5, total_steps=5000, warmup_ratio=0.03)
    assert schedule_banner(rst) == (
        "Using COSINE ANNEALING WITH WARM RESTARTS with warmup:\n"
        "  - Warmup steps: 150\n"
        "  - Total steps: 5000\n"
        "  - Initial LR: 5e-05\n"
        "  - Restart decay: 0.9\n"
        "  - Cycle length: 450 steps"
    )


def test_describe_names_the_shape():
    for kind in SCHEDULER_TYPES:
        d = build_schedule(lr_scheduler_type=kind, learning_rate=1e-4, total_steps=100).describe()
        assert d["lr_scheduler_type"] == kind and d["shape"]
    d = build_schedule(lr_scheduler_type="cosine_restarts", learning_rate=1e-4, total_steps=100).describe()
    assert "DeepSC" in d["shape"] and d["cycle_steps"] == 9


@pytest.mark.parametrize("kind", SCHEDULER_TYPES)
def test_torch_scheduler_follows_the_function(kind):
    schedule = build_schedule(lr_scheduler_type=kind, learning_rate=0.1, total_steps=40, warmup_ratio=0.1)
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=schedule.learning_rate)
    sched = build_lr_scheduler(opt, schedule)
    seen = []
    for _ in range(schedule.total_steps):
        seen.append(opt.param_groups[0]["lr"])  # the rate this update uses
        opt.step()
        sched.step()
    assert sched.last_epoch == schedule.total_steps
    assert seen == pytest.approx([schedule.lr(k) for k in range(schedule.total_steps)])
    sched.state_dict()  # picklable state, no lambda


def test_schedule_is_plain_data():
    s = LRSchedule("cosine", 1e-4, 10, warmup_steps=1)
    assert s == LRSchedule("cosine", 1e-4, 10, warmup_steps=1)
