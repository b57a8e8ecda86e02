"""The one fake fine-tuner of the study tests: a :class:`~deepsc_tune.backends.Finetuner` whose
accuracy is a known function of the learning rate, so a search has a right answer to find.

Tests of the objective and of tracking that need a fixed sequence of values per epoch keep
their own few-line recorders next to them; everything that runs a study uses this one.
"""

from __future__ import annotations

import math
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from deepsc_tune.backends import EpochMetrics, FinetuneResult
from deepsc_tune.config import SearchSpace, build_search_space
from deepsc_tune.errors import DeepscTuneError

#: "training diverged" as the built-in fine-tuner says it.
DIVERGED = "training diverged: loss is NaN at epoch 1"


class CurveFinetuner:
    """Accuracy ``top - 0.1 * (log10(learning_rate) + 3) ** 2`` (peak at 1e-3 in log space),
    ``+ seed_shift * (seed % 5)``; records every call's settings in :attr:`calls`.

    Parameters
    ----------
    top, seed_shift
        The peak accuracy and how much the seed moves it.
    falling
        Per epoch ``peak - 0.3 * (epoch - 1)`` (best at epoch 1, a curve a pruner would stop)
        instead of the rising ``peak * (1 - 0.5 ** epoch)``.
    macro_f1_gap, test_gap, test_macro_f1_gap
        ``val_macro_f1`` is the accuracy minus the first; test accuracy and macro-F1 are the
        peak minus the others (``None``: not reported).
    fail_when
        ``params -> message or None``: the run raises :class:`DeepscTuneError` with it.
    interrupt_seed
        The first run with this seed is interrupted (Ctrl-C) at epoch 2.
    epoch_seconds
        Each epoch sleeps about this long (so parallel workers overlap).
    """

    def __init__(
        self,
        *,
        top: float = 1.0,
        seed_shift: float = 0.0,
        falling: bool = False,
        macro_f1_gap: float | None = None,
        test_gap: float | None = None,
        test_macro_f1_gap: float | None = None,
        fail_when: Callable[[Mapping[str, Any]], str | None] | None = None,
        interrupt_seed: int | None = None,
        epoch_seconds: float = 0.0,
    ) -> None:
        self.top, self.seed_shift, self.falling = top, seed_shift, falling
        self.macro_f1_gap, self.test_gap, self.test_macro_f1_gap = macro_f1_gap, test_gap, test_macro_f1_gap
        self.fail_when, self.interrupt_seed, self.epoch_seconds = fail_when, interrupt_seed, epoch_seconds
        self.calls: list[dict[str, Any]] = []
        self.lock = threading.Lock()

    def peak(self, params: Mapping[str, Any]) -> float:
        shift = self.seed_shift * (params.get("seed", 0) % 5)
        return self.top - 0.1 * (math.log10(params["learning_rate"]) + 3) ** 2 + shift

    def run(self, params, *, metric="val_accuracy", on_epoch=None, run_dir=None) -> FinetuneResult:
        with self.lock:
            self.calls.append(dict(params))
        message = self.fail_when(params) if self.fail_when else None
        if message:
            raise DeepscTuneError(message)
        peak = self.peak(params)
        history = []
        for epoch in range(1, params["epoch"] + 1):
            if self.interrupt_seed is not None and params.get("seed") == self.interrupt_seed and epoch == 2:
                self.interrupt_seed = None
                raise KeyboardInterrupt
            if self.epoch_seconds:
                time.sleep(self.epoch_seconds * random.uniform(0.5, 1.5))
            acc = peak - 0.3 * (epoch - 1) if self.falling else peak * (1 - 0.5**epoch)
            f1 = None if self.macro_f1_gap is None else acc - self.macro_f1_gap
            m = EpochMetrics(epoch=epoch, val_accuracy=acc, val_macro_f1=f1)
            history.append(m)
            if on_epoch and on_epoch(m):
                return FinetuneResult(history, best_epoch=1 if self.falling else epoch, stopped=True)
        return FinetuneResult(
            history,
            best_epoch=1 if self.falling else len(history),
            test_accuracy=None if self.test_gap is None else peak - self.test_gap,
            test_macro_f1=None if self.test_macro_f1_gap is None else peak - self.test_macro_f1_gap,
        )


def study_curve(fail_when=None) -> CurveFinetuner:
    """The search tests' curve: peak 1.0 at 1e-3, macro-F1 and test metrics too; ``fail_when(params)``
    makes a run diverge."""
    return CurveFinetuner(
        macro_f1_gap=0.05,
        test_gap=0.01,
        test_macro_f1_gap=0.1,
        fail_when=(lambda p: DIVERGED if fail_when(p) else None) if fail_when else None,
    )


def make_space(n_trials=6, pruner=None, epoch=4, max_failures=3, **search_extra) -> SearchSpace:
    """The study tests' search space (pbmc68k, the fake's curve over scheduler, learning rate, warmup)."""
    return build_search_space(
        {
            "name": "curve",
            "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
            "finetune": {"epoch": epoch},
            "search": {
                "lr_scheduler_type": {"choices": ["constant", "cosine"]},
                "learning_rate": {"low": 1e-5, "high": 1e-1, "log": True},
                "warmup_ratio": {"low": 0.0, "high": 0.2, "when": {"lr_scheduler_type": "cosine"}},
                **search_extra,
            },
            "study": {
                "n_trials": n_trials,
                "max_failures": max_failures,
                "sampler": {"type": "tpe", "seed": 0},
                "pruner": pruner or {"type": "none"},
                "enqueue": [{"lr_scheduler_type": "constant", "learning_rate": 1e-4}],
            },
        }
    )
