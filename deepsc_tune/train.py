"""The built-in fine-tuning loop: settings, epochs, validation metrics, the per-epoch callback.

This module knows neither Optuna nor files of data: it takes a prepared data set (an object with
the attributes of :class:`deepsc_tune.data.PreparedData`) and a :class:`TrainSettings`, trains,
and calls ``on_epoch`` after every epoch; the objective decides what a callback does (report,
prune). Settings keep DeepSC's names (``learning_rate``, ``lr_scheduler_type``, ``warmup_ratio``,
``epoch``, ``batch_size``, ``grad_acc``, ``seed``).

Training
--------
- AdamW (``weight_decay: 0`` is plain Adam, DeepSC's optimizer) on the trainable parameters;
  gradients clipped to norm :data:`GRAD_CLIP_NORM` like DeepSC.
- One optimizer step per ``grad_acc`` batches; the loss of a step is the mean over the cells of
  its batches, so a short final group (the end of an epoch is always stepped, see
  :mod:`deepsc_tune.schedules`) is not under-weighted.
- The learning-rate schedule is stepped once per optimizer step, with the real step count.
- ``loss: balanced`` weights the cross-entropy by ``n_train / (n_classes_present * count_c)``
  (scikit-learn's "balanced" class weights, from the training labels). Validation loss is always
  the unweighted cross-entropy so that runs with either loss compare.
- Batches are drawn by indexing the dense training tensor with a shuffled permutation (a
  ``torch.Generator`` seeded from ``seed``); no DataLoader, no per-batch host syncs.
- Mixed precision on CUDA only: bf16 autocast where supported, else fp16 autocast with a
  ``GradScaler``. On the CPU everything is float32.
- Same ``seed``, settings, data and thread count on the CPU: identical metrics. (CUDA kernels
  are not bit-for-bit deterministic.)

Validation after every epoch
----------------------------
Loss, accuracy, macro precision / recall / F1 (scikit-learn's definitions: the macro average
over the classes present in the labels or the predictions, ``zero_division=0``) and the LR of
the epoch's last update. The best epoch (by ``metric``; the earliest on ties) keeps its weights
in memory; the test split, when there is one, is evaluated with them at the end, for reporting
only.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from deepsc_tune.backend import METRICS, EpochCallback, EpochMetrics, FinetuneResult
from deepsc_tune.errors import ConfigError, FinetuneError
from deepsc_tune.evaluation import as_tensor, autocast_for, classification_metrics, evaluate, format_epoch_lines
from deepsc_tune.model import (
    CellClassifier,
    GeneTransformerClassifier,
    MLPClassifier,
    load_init_checkpoint,
)
from deepsc_tune.schedules import (
    build_lr_scheduler,
    build_schedule,
    schedule_banner,
    steps_per_epoch,
)

# The settings live in a module without torch (validation must not import it); their names stay
# importable from here.
from deepsc_tune.train_settings import (  # noqa: F401
    FINETUNE_MODES,
    LOSSES,
    MODELS,
    TRAIN_KEYS,
    TrainSettings,
    device_problem,
)

#: Gradients are clipped to this total norm before every optimizer step (as DeepSC does).
GRAD_CLIP_NORM = 100.0

#: On the CPU, optimizer moments below this are zeroed every :data:`FLUSH_EVERY` steps, before
#: they become subnormal (beta1 = 0.9 needs ~170 steps to take 1e-30 below float32's 1.2e-38).
TINY_STATE = 1e-30
FLUSH_EVERY = 64

#: Training sets up to this size are copied to the GPU once; larger ones go batch by batch.
MAX_DEVICE_COPY_BYTES = 4 * 2**30


# --------------------------------------------------------------------------------------------
# Building blocks


def build_model(settings: TrainSettings, *, n_genes: int, n_classes: int) -> CellClassifier:
    """The classifier named by ``settings.model`` (weights from the current torch RNG)."""
    if settings.model == "mlp":
        return MLPClassifier(n_genes, n_classes, hidden=settings.hidden, dropout=settings.dropout)
    return GeneTransformerClassifier(
        n_genes,
        n_classes,
        seq_len=settings.seq_len,
        num_bin=settings.num_bin,
        d_model=settings.d_model,
        n_layers=settings.n_layers,
        n_heads=settings.n_heads,
        dropout=settings.dropout,
    )


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA request is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    why = device_problem(device)
    if why:
        raise FinetuneError(f"finetune.device: {device!r}: {why}")
    return torch.device(device)


def balanced_class_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """scikit-learn's "balanced" weights ``n / (n_present * count_c)``; 0 for absent classes."""
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    weights = np.zeros(n_classes, dtype=np.float64)
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's (all devices) global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _build_optimizer(
    params: list[torch.nn.Parameter], settings: TrainSettings, device: torch.device
) -> torch.optim.Optimizer:
    kwargs: dict[str, Any] = {"lr": settings.learning_rate, "weight_decay": settings.weight_decay}
    # The fused kernel is one call per step for all parameters: it matters at ~1 ms per batch.
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, **kwargs)


def _clip_gradients(params: list[torch.nn.Parameter], max_norm: float) -> None:
    """``clip_grad_norm_``, but on the CPU the rescale only runs when the norm is over the limit.

    torch always multiplies every gradient by the (usually 1.0) clip factor to avoid a device
    sync; on the CPU there is no sync to avoid and the multiplies cost ~7 % of an MLP step.
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    if grads[0].device.type != "cpu":
        torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        return
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    if total > max_norm:
        torch._foreach_mul_(grads, max_norm / (float(total) + 1e-6))


def _flush_tiny_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Zero optimizer moments below :data:`TINY_STATE` before they decay into subnormal floats.

    Adam's first moment of a weight whose gradient is exactly 0 (a gene not expressed in the
    batch, a dead ReLU) shrinks by ``beta1`` every step and spends ~150 steps as a subnormal
    float, which x86 CPUs process far slower: from the third epoch on the MLP lost ~30 % of its
    throughput. ``torch.set_flush_denormal`` would fix it only for threads created after the call,
    so the values are cleared instead. Numerically irrelevant: a moment under 1e-30 moves a
    weight by less than ``1e-22 * learning_rate``.
    """
    with torch.no_grad():
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor) and value.dim() and value.is_floating_point():
                    value.masked_fill_(value.abs() < TINY_STATE, 0.0)


# --------------------------------------------------------------------------------------------
# The loop


def run_training(
    data: Any,
    settings: TrainSettings,
    *,
    metric: str = "val_accuracy",
    on_epoch: EpochCallback | None = None,
    log: Callable[[str], None] = print,
) -> FinetuneResult:
    """Fine-tune a model on ``data`` and validate after every epoch.

    Parameters
    ----------
    data
        A :class:`deepsc_tune.data.PreparedData` (or any object with ``X_train, y_train, X_val,
        y_val, X_test, y_test, classes, genes``; float32 cells x genes and int64 labels).
    settings
        Validated settings (:meth:`TrainSettings.from_dict`).
    metric
        Validation metric that selects the best epoch (one of :data:`deepsc_tune.backend.METRICS`).
    on_epoch
        Called with each epoch's :class:`EpochMetrics`; returning ``True`` stops training (the
        objective uses it to prune). The epoch is kept in the history.
    log
        Receives the schedule banner and DeepSC's per-epoch lines.

    Returns
    -------
    FinetuneResult
        History, best epoch, test metrics of the best epoch's weights (``None`` without a test
        split), whether the callback stopped the run, and the device. ``extra`` holds the
        schedule (with its shape), step counts, precision, parameter counts, per-epoch training
        seconds and the ``init_checkpoint`` report.

    Raises
    ------
    FinetuneError
        The loss became NaN or infinite, the device is unavailable or ``init_checkpoint`` does
        not fit.
    """
    if metric not in METRICS:
        raise ConfigError(f"study.metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    device = resolve_device(settings.device)
    threads_before = torch.get_num_threads()
    try:
        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        return _train(data, settings, metric=metric, on_epoch=on_epoch, log=log, device=device)
    finally:
        torch.set_num_threads(threads_before)


@dataclass
class _Setup:
    """Everything a run needs before its first epoch (built in one fixed order: same seed, same run)."""

    model: CellClassifier
    trainable: list[torch.nn.Parameter]
    schedule: Any
    optimizer: torch.optim.Optimizer
    scheduler: Any
    autocast: Callable[[], Any]
    scaler: torch.amp.GradScaler | None
    X_train: torch.Tensor
    y_train: torch.Tensor
    class_weight: torch.Tensor | None
    shuffle_gen: torch.Generator
    extra: dict[str, Any]


def _set_up(data: Any, settings: TrainSettings, *, device: torch.device, log: Callable[[str], None]) -> _Setup:
    """Seed, build the model, optimizer, schedule and tensors; log the run's banner."""
    n_classes = len(data.classes)
    n_train, n_genes = data.X_train.shape
    if n_train == 0 or len(data.y_val) == 0:
        raise FinetuneError(f"nothing to train on: {n_train} training and {len(data.y_val)} validation cells")

    seed_everything(settings.seed)
    shuffle_gen = torch.Generator().manual_seed(settings.seed)

    model = build_model(settings, n_genes=n_genes, n_classes=n_classes)
    extra: dict[str, Any] = {}
    if settings.init_checkpoint:
        report = load_init_checkpoint(model, settings.init_checkpoint)
        log(report.summary())
        extra["init_checkpoint"] = report.to_dict()
    if settings.finetune_mode == "head_only":
        model.freeze_encoder()
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]

    per_epoch = steps_per_epoch(n_train, batch_size=settings.batch_size, grad_acc=settings.grad_acc)
    schedule = build_schedule(
        lr_scheduler_type=settings.lr_scheduler_type,
        learning_rate=settings.learning_rate,
        total_steps=settings.epoch * per_epoch,
        warmup_ratio=settings.warmup_ratio,
        restart_decay=settings.restart_decay,
        num_cycles=settings.num_cycles,
    )
    optimizer = _build_optimizer(trainable, settings, device)
    scheduler = build_lr_scheduler(optimizer, schedule)
    autocast, scaler, precision = autocast_for(device)

    X_train = as_tensor(data.X_train, np.float32)
    y_train = as_tensor(data.y_train, np.int64)
    if device.type != "cpu" and X_train.element_size() * X_train.nelement() <= MAX_DEVICE_COPY_BYTES:
        X_train, y_train = X_train.to(device), y_train.to(device)
    elif device.type == "cuda":
        X_train, y_train = X_train.pin_memory(), y_train.pin_memory()

    class_weight = None
    if settings.loss == "balanced":
        w = balanced_class_weights(data.y_train, n_classes)
        class_weight = torch.tensor(w, dtype=torch.float32, device=device)
        extra["class_weights"] = [float(v) for v in w]

    n_params = sum(p.numel() for p in model.parameters())
    log(
        f"Fine-tuning {settings.model} ({n_params:,} parameters, "
        f"{sum(p.numel() for p in trainable):,} trainable) on {n_train:,} cells x {n_genes:,} "
        f"genes, {n_classes} classes; {per_epoch} optimizer steps per epoch "
        f"(batch_size {settings.batch_size}, grad_acc {settings.grad_acc}); device {device} "
        f"({precision})"
    )
    log(schedule_banner(schedule))
    extra.update(
        schedule=schedule.describe(),
        steps_per_epoch=per_epoch,
        total_steps=schedule.total_steps,
        precision=precision,
        n_parameters=n_params,
        n_trainable=sum(p.numel() for p in trainable),
        train_seconds=[],
    )
    return _Setup(
        model=model,
        trainable=trainable,
        schedule=schedule,
        optimizer=optimizer,
        scheduler=scheduler,
        autocast=autocast,
        scaler=scaler,
        X_train=X_train,
        y_train=y_train,
        class_weight=class_weight,
        shuffle_gen=shuffle_gen,
        extra=extra,
    )


def _train_epoch(run: _Setup, settings: TrainSettings, *, device: torch.device, step: int) -> tuple[float, int]:
    """One pass over the training cells; returns the mean training loss and the step count."""
    model, optimizer, scaler = run.model, run.optimizer, run.scaler
    n_train = run.X_train.shape[0]
    flush_state = device.type == "cpu"
    model.train()
    perm = torch.randperm(n_train, generator=run.shuffle_gen).to(run.X_train.device)
    batches = perm.split(settings.batch_size)
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    for g in range(0, len(batches), settings.grad_acc):
        group = batches[g : g + settings.grad_acc]
        group_cells = sum(len(b) for b in group)
        for idx in group:
            xb = run.X_train.index_select(0, idx).to(device, non_blocking=True)
            yb = run.y_train.index_select(0, idx).to(device, non_blocking=True)
            with run.autocast():
                logits = model(xb)
            loss = F.cross_entropy(logits.float(), yb, weight=run.class_weight, reduction="sum")
            loss_sum += loss.detach()
            scaled = loss / group_cells
            (scaler.scale(scaled) if scaler else scaled).backward()
        if scaler:
            scaler.unscale_(optimizer)
        _clip_gradients(run.trainable, GRAD_CLIP_NORM)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        run.scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if flush_state and step % FLUSH_EVERY == 0:
            _flush_tiny_optimizer_state(optimizer)
    return float(loss_sum) / n_train, step


def _test_metrics(
    run: _Setup, data: Any, settings: TrainSettings, *, best_state: dict[str, torch.Tensor] | None, device: torch.device
) -> dict[str, float] | None:
    """The test split's metrics with the best epoch's weights; ``None`` without a test split."""
    if getattr(data, "X_test", None) is None or data.y_test is None or not len(data.y_test):
        return None
    if best_state is not None:
        run.model.load_state_dict(best_state)
    _, test_pred = evaluate(
        run.model,
        as_tensor(data.X_test, np.float32),
        as_tensor(data.y_test, np.int64),
        batch_size=settings.eval_batch_size,
        device=device,
        autocast=run.autocast,
    )
    return classification_metrics(np.asarray(data.y_test), test_pred, n_classes=len(data.classes))


def _train(
    data: Any,
    settings: TrainSettings,
    *,
    metric: str,
    on_epoch: EpochCallback | None,
    log: Callable[[str], None],
    device: torch.device,
) -> FinetuneResult:
    run = _set_up(data, settings, device=device, log=log)
    X_val, y_val = as_tensor(data.X_val, np.float32), as_tensor(data.y_val, np.int64)
    history: list[EpochMetrics] = []
    best_epoch: int | None = None
    best_value = -math.inf
    best_state: dict[str, torch.Tensor] | None = None
    stopped = False
    step = 0

    for epoch in range(1, settings.epoch + 1):
        t0 = time.perf_counter()
        train_loss, step = _train_epoch(run, settings, device=device, step=step)
        train_seconds = time.perf_counter() - t0
        if not math.isfinite(train_loss):
            kind = "NaN" if math.isnan(train_loss) else "infinite"
            raise FinetuneError(
                f"training diverged: loss is {kind} at epoch {epoch} (learning_rate={settings.learning_rate})"
            )

        val_loss, val_pred = evaluate(
            run.model, X_val, y_val, batch_size=settings.eval_batch_size, device=device, autocast=run.autocast
        )
        m = classification_metrics(np.asarray(data.y_val), val_pred, n_classes=len(data.classes))
        em = EpochMetrics(
            epoch=epoch,
            val_accuracy=m["accuracy"],
            val_macro_f1=m["macro_f1"],
            val_loss=val_loss,
            learning_rate=run.schedule.lr(step - 1),
            train_loss=train_loss,
            seconds=time.perf_counter() - t0,
        )
        history.append(em)
        run.extra["train_seconds"].append(train_seconds)
        log(format_epoch_lines(epoch, loss=val_loss, metrics=m))

        value = em.metric(metric)
        if value is not None and value > best_value:
            best_value, best_epoch = value, epoch
            best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        if on_epoch is not None and on_epoch(em):
            stopped = True
            break

    tm = _test_metrics(run, data, settings, best_state=best_state, device=device)
    if tm is not None:
        run.extra["test_precision"], run.extra["test_recall"] = tm["precision"], tm["recall"]
    return FinetuneResult(
        history=history,
        best_epoch=best_epoch,
        test_accuracy=tm["accuracy"] if tm else None,
        test_macro_f1=tm["macro_f1"] if tm else None,
        stopped=stopped,
        device=str(device),
        extra=run.extra,
        state=best_state,
    )
