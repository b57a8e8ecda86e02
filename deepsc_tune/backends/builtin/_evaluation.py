"""Evaluation of a classifier: metrics, DeepSC's per-epoch lines, batched prediction.

Shared by the training loop (validation after every epoch, the test pass of the best epoch's
weights) and ``deepsc-tune predict`` (:mod:`deepsc_tune.backends.builtin._tuned_model`), so a prediction is cast
and batched exactly as the evaluation that chose the model.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def format_epoch_lines(epoch: int, *, loss: float, metrics: Mapping[str, float]) -> str:
    """DeepSC's two per-epoch lines."""
    acc = metrics["accuracy"]
    return (
        f"Epoch {epoch} [Finetune Cell Type Annotation]\n"
        f"Evaluation Loss: {loss:.4f}, Error Rate: {1 - acc:.4f}, Accuracy: {acc:.4f}, "
        f"Precision: {metrics['precision']:.4f}, Recall: {metrics['recall']:.4f}, "
        f"Macro F1: {metrics['macro_f1']:.4f}"
    )


def autocast_for(device: torch.device) -> tuple[Callable[[], Any], torch.amp.GradScaler | None, str]:
    """Autocast context factory, optional GradScaler and a name for the record."""
    if device.type != "cuda":
        return contextlib.nullcontext, None, "float32"
    if torch.cuda.is_bf16_supported():
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16), None, "bf16-mixed"
    return (
        lambda: torch.autocast("cuda", dtype=torch.float16),
        torch.amp.GradScaler("cuda"),
        "fp16-mixed",
    )


def as_tensor(a: np.ndarray, dtype: np.dtype) -> torch.Tensor:
    """A tensor sharing ``a``'s memory when possible (training never writes to it)."""
    arr = np.ascontiguousarray(a, dtype=dtype)
    with warnings.catch_warnings():
        # Read-only arrays (memory-mapped caches) are fine: nothing here writes to them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(arr)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    X: torch.Tensor,
    y: torch.Tensor,
    *,
    batch_size: int,
    device: torch.device,
    autocast: Callable[[], Any],
) -> tuple[float, np.ndarray]:
    """Mean unweighted cross-entropy and predicted classes."""
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    preds = []
    for start in range(0, X.shape[0], batch_size):
        xb = X[start : start + batch_size].to(device, non_blocking=True)
        yb = y[start : start + batch_size].to(device, non_blocking=True)
        with autocast():
            logits = model(xb)
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum")
        preds.append(logits.argmax(dim=1))
    return float(loss_sum) / max(1, X.shape[0]), torch.cat(preds).cpu().numpy()


@torch.inference_mode()
def predict_logits(model: torch.nn.Module, X: np.ndarray, *, batch_size: int, device: torch.device) -> np.ndarray:
    """Float32 logits of ``X`` (cells x genes), batched and cast exactly as the test evaluation."""
    autocast, _, _ = autocast_for(device)
    model.eval()
    Xt = as_tensor(X, np.float32)
    out = []
    for start in range(0, Xt.shape[0], batch_size):
        xb = Xt[start : start + batch_size].to(device, non_blocking=True)
        with autocast():
            logits = model(xb)
        out.append(logits.float().cpu())
    if not out:
        return np.zeros((0, 0), dtype=np.float32)
    return torch.cat(out).numpy()
