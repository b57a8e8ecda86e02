"""Tests of deepsc_tune.backends.builtin._evaluation: metrics, DeepSC's epoch lines, batched prediction."""

import numpy as np
import pytest
import torch

from deepsc_tune.backends.builtin._evaluation import format_epoch_lines, predict_logits
from deepsc_tune.backends.builtin._model import MLPClassifier
from deepsc_tune.data._metrics import classification_metrics


def test_macro_metrics_over_classes_present_or_predicted():
    y_true = np.array([0, 0, 1, 1])
    y_pred = np.array([0, 0, 1, 0])
    m = classification_metrics(y_true, y_pred, n_classes=3)  # class 2: no cell, never predicted
    assert m["accuracy"] == 0.75
    f1_0, f1_1 = 2 * (2 / 3 * 1) / (2 / 3 + 1), 2 * (1 * 0.5) / 1.5
    assert m["macro_f1"] == pytest.approx((f1_0 + f1_1) / 2)
    assert m["precision"] == pytest.approx((2 / 3 + 1) / 2)
    assert m["recall"] == pytest.approx((1 + 0.5) / 2)
    # a class predicted but absent, or present but never predicted, counts as 0
    wrong = classification_metrics(np.array([0, 0, 1]), np.array([0, 2, 1]), n_classes=3)
    assert wrong["macro_f1"] == pytest.approx((2 * 1 * 0.5 / 1.5 + 1 + 0) / 3)
    from sklearn.metrics import f1_score

    assert wrong["macro_f1"] == pytest.approx(f1_score([0, 0, 1], [0, 2, 1], average="macro"))


def test_epoch_lines_are_deepsc_s_two_lines():
    m = {"accuracy": 0.9, "precision": 0.8, "recall": 0.7, "macro_f1": 0.75}
    text = format_epoch_lines(3, loss=0.5, metrics=m)
    assert text.splitlines() == [
        "Epoch 3 [Finetune Cell Type Annotation]",
        "Evaluation Loss: 0.5000, Error Rate: 0.1000, Accuracy: 0.9000, Precision: 0.8000, "
        "Recall: 0.7000, Macro F1: 0.7500",
    ]


def test_predict_logits_batches_like_one_pass():
    torch.manual_seed(0)
    model = MLPClassifier(5, 3, hidden=(8,), dropout=0.0)
    X = np.random.default_rng(0).normal(size=(7, 5)).astype(np.float32)
    whole = predict_logits(model, X, batch_size=100, device=torch.device("cpu"))
    batched = predict_logits(model, X, batch_size=2, device=torch.device("cpu"))
    assert whole.shape == (7, 3)
    np.testing.assert_allclose(batched, whole, rtol=1e-6, atol=1e-6)
    assert predict_logits(model, X[:0], batch_size=2, device=torch.device("cpu")).shape == (0, 0)
