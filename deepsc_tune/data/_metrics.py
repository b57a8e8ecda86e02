"""Accuracy and macro-F1 of predicted labels: the one definition every model is scored by.

The built-in fine-tuner's validation and test metrics, the logistic-regression baseline and
DeepSC's own lines (which use scikit-learn's macro average too) all mean the same numbers.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_fscore_support


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, *, n_classes: int) -> dict[str, float]:
    """Accuracy and macro precision / recall / F1 (scikit-learn's definitions).

    The macro average runs over every class that occurs in ``y_true`` or ``y_pred`` (scikit-learn's
    default): a class the split holds no cell of and that is never predicted has no F1 at all,
    and counting it as 0 would punish every model for the split (a donor without mast cells).
    A class present but never predicted, or predicted but absent, still counts as 0.
    """
    labels = np.union1d(np.asarray(y_true), np.asarray(y_pred)).tolist()
    if not labels:
        labels = list(range(n_classes))
    precision, recall, f1, _ = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average="macro", zero_division=0
    )
    return {
        "accuracy": float(np.mean(y_true == y_pred)) if len(y_true) else float("nan"),
        "precision": float(precision),
        "recall": float(recall),
        "macro_f1": float(f1),
    }
