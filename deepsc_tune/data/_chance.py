"""Trials that complete at chance level: they trained without a NaN but learned nothing.

A learning rate of 1e3 can leave the loss finite while the network predicts one class: the
trial COMPLETEs with the validation accuracy of "always the majority class" (0.339 on three
balanced classes). Such trials are kept (they are the sampler's evidence that the region is
bad) but flagged in ``status`` and the report, so nobody mistakes them for results.

The chance levels of the validation set are stored in the study (``val_chance``) by ``run``:
for the built-in fine-tuner from its prepared validation cells, for DeepSC from the labels of
``data_path_eval`` (:func:`deepsc_tune.backends.command.deepsc._data.deepsc_chance`, the classes DeepSC keeps).
Studies without them (another program, DeepSC splitting its data itself, older studies) are
never flagged.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

#: Study user attribute holding :func:`chance_levels`.
CHANCE_ATTR = "val_chance"
#: A trial within this much of the chance level counts as "at chance".
TOLERANCE = 0.02


def chance_levels(y_val: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Validation metrics of a model that always predicts the majority class."""
    counts = np.bincount(np.asarray(y_val, dtype=np.int64), minlength=len(classes))
    n = int(counts.sum())
    p = float(counts.max() / n) if n else 0.0
    k = max(int((counts > 0).sum()), 1)
    return {
        "n_classes": len(classes),
        "n_cells": n,
        "val_accuracy": round(p, 6),
        "val_macro_f1": round((2 * p / (1 + p)) / k, 6) if p else 0.0,
    }


def at_chance(trial: Any, levels: dict[str, Any] | None, metric: str) -> bool:
    """Whether a COMPLETE trial's value is no better than chance on ``metric``."""
    if not levels or metric not in levels or trial.value is None:
        return False
    if getattr(trial.state, "name", "") != "COMPLETE":
        return False
    return float(trial.value) <= float(levels[metric]) + TOLERANCE


def chance_trials(study: Any, trials: Iterable[Any] | None = None) -> list[int]:
    """Numbers of the study's COMPLETE trials at chance level."""
    levels = study.user_attrs.get(CHANCE_ATTR)
    metric = study.user_attrs.get("metric", "val_accuracy")
    trials = study.get_trials(deepcopy=False) if trials is None else trials
    return [t.number for t in trials if at_chance(t, levels, metric)]


def chance_note(study: Any, trials: Iterable[Any] | None = None) -> str | None:
    """One line about the trials at chance level, or ``None`` when there are none."""
    numbers = chance_trials(study, trials)
    if not numbers:
        return None
    levels = study.user_attrs[CHANCE_ATTR]
    metric = study.user_attrs.get("metric", "val_accuracy")
    shown = ", ".join(f"#{n}" for n in numbers[:10]) + (" ..." if len(numbers) > 10 else "")
    return (
        f"{len(numbers)} trial{'s' if len(numbers) > 1 else ''} completed at chance level "
        f"({metric} within {TOLERANCE} of {levels[metric]:.3f}, always predicting the majority "
        f"class): {shown}; they learned nothing (learning rate too high or too low?)"
    )
