"""The built-in fine-tuning loop: settings, epochs, validation metrics, the per-epoch callback.

This module knows neither Optuna nor files of data: it takes a prepared data set (an object with
the attributes of :class:`deepsc_tune.data._prepare.PreparedData`) and a :class:`TrainSettings`, trains,
and calls ``on_epoch`` after every epoch; the objective decides what a callback does (report,
prune). Settings keep DeepSC's names (``learning_rate``, ``lr_scheduler_type``, ``warmup_ratio``,
``epoch``, ``batch_size``, ``grad_acc``, ``seed``).

Training
--------
- AdamW (``weight_decay: 0`` is plain Adam, DeepSC's optimizer) on the trainable parameters;
  gradients clipped to norm :data:`GRAD_CLIP_NORM` like DeepSC.
- One optimizer step per ``grad_acc`` batches; the loss of a step is the mean over the cells of
  its batches, so a short final group (the end of an epoch is always stepped, see
  :mod:`deepsc_tune.backends.builtin._schedules`) is not under-weighted.
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

from deepsc_tune.backends._interface import METRICS, EpochCallback, EpochMetrics, FinetuneResult
from deepsc_tune.backends.builtin._evaluation import (
    as_tensor,
    autocast_for,
    evaluate,
    format_epoch_lines,
)
from deepsc_tune.backends.builtin._model import (
    CellClassifier,
    GeneTransformerClassifier,
    MLPClassifier,
    load_init_checkpoint,
)
from deepsc_tune.backends.builtin._optimizer import (
    FLUSH_EVERY,
    GRAD_CLIP_NORM,
    build_optimizer,
    clip_gradients,
    flush_tiny_optimizer_state,
)
from deepsc_tune.backends.builtin._schedules import (
    build_lr_scheduler,
    build_schedule,
    schedule_banner,
    steps_per_epoch,
)

# The settings live in a module without torch (validation must not import it); their names stay
# importable from here.
from deepsc_tune.backends.builtin._settings import (  # noqa: F401
    FINETUNE_MODES,
    LOSSES,
    MODELS,
    TRAIN_KEYS,
    TrainSettings,
    device_problem,
)
from deepsc_tune.data import classification_metrics
from deepsc_tune.errors import ConfigError, FinetuneError

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
        A :class:`deepsc_tune.data._prepare.PreparedData` (or any object with ``X_train, y_train, X_val,
        y_val, X_test, y_test, classes, genes``; float32 cells x genes and int64 labels).
    settings
        Validated settings (:meth:`TrainSettings.from_dict`).
    metric
        Validation metric that selects the best epoch (one of :data:`deepsc_tune.backends._interface.METRICS`).
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


def _set_up(
    data: Any, settings: TrainSettings, *, device: torch.device, log: Callable[[str], None], schedule: Any = None
) -> _Setup:
    """Seed, build the model, optimizer, schedule and tensors; log the run's banner.

    ``schedule``: instead of the trial's (the LR range test); the optimizer starts at its
    ``learning_rate``."""
    n_classes = len(data.classes)
    n_train, n_genes = data.X_train.shape
    if n_train == 0 or (schedule is None and len(data.y_val) == 0):
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
    if schedule is None:
        schedule = build_schedule(
            lr_scheduler_type=settings.lr_scheduler_type,
            learning_rate=settings.learning_rate,
            total_steps=settings.epoch * per_epoch,
            warmup_ratio=settings.warmup_ratio,
            restart_decay=settings.restart_decay,
            num_cycles=settings.num_cycles,
        )
    optimizer = build_optimizer(trainable, settings, device, lr=schedule.learning_rate)
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


def _step(run: _Setup, group: tuple[torch.Tensor, ...], *, device: torch.device, step: int) -> torch.Tensor:
    """One optimizer step over the batches of ``group`` (``grad_acc`` of them at most): autocast,
    the training loss (balanced when set), clipping, the optimizer and the schedule. Returns the
    summed (detached) loss of the group's cells. ``step``: steps taken before this one.

    The epochs of a trial and the LR range test (:func:`run_range_test`) both train through
    here, so every ``finetune`` setting applies to both."""
    model, optimizer, scaler = run.model, run.optimizer, run.scaler
    group_cells = sum(len(b) for b in group)
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
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
    clip_gradients(run.trainable, GRAD_CLIP_NORM)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    run.scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    if device.type == "cpu" and (step + 1) % FLUSH_EVERY == 0:
        flush_tiny_optimizer_state(optimizer)
    return loss_sum


def _groups(run: _Setup, settings: TrainSettings) -> list[tuple[torch.Tensor, ...]]:
    """One epoch's optimizer-step groups: a fresh shuffle, ``grad_acc`` batches per group."""
    perm = torch.randperm(run.X_train.shape[0], generator=run.shuffle_gen).to(run.X_train.device)
    batches = perm.split(settings.batch_size)
    return [tuple(batches[g : g + settings.grad_acc]) for g in range(0, len(batches), settings.grad_acc)]


def _train_epoch(run: _Setup, settings: TrainSettings, *, device: torch.device, step: int) -> tuple[float, int]:
    """One pass over the training cells; returns the mean training loss and the step count."""
    run.model.train()
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    for group in _groups(run, settings):
        loss_sum += _step(run, group, device=device, step=step)
        step += 1
    return float(loss_sum) / run.X_train.shape[0], step


def run_range_test(
    data: Any,
    settings: TrainSettings,
    *,
    schedule: Any,
    steps: int,
    on_step: Callable[[float, float], bool],
    log: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Train ``steps`` optimizer steps of a trial (same model, data, loss, ``grad_acc``, clipping,
    precision, ``init_checkpoint`` and freezing) under ``schedule`` instead of the trial's, with
    no validation; epochs follow each other with fresh shuffles.

    ``schedule`` has ``learning_rate`` (the optimizer's base rate) and ``multiplier(step)``, as
    :class:`~deepsc_tune.backends.builtin._schedules.LRSchedule`. ``on_step(lr, loss)`` gets each step's rate and
    mean training loss (over its cells); returning ``True`` stops. Returns the run's ``extra``.
    """
    device = resolve_device(settings.device)
    threads_before = torch.get_num_threads()
    try:
        if settings.num_threads:
            torch.set_num_threads(settings.num_threads)
        run = _set_up(data, settings, device=device, log=log, schedule=schedule)
        run.model.train()
        step = 0
        while step < steps:
            for group in _groups(run, settings):
                lr = schedule.learning_rate * schedule.multiplier(step)
                loss = float(_step(run, group, device=device, step=step)) / sum(len(b) for b in group)
                step += 1
                if on_step(lr, loss) or step >= steps:
                    return run.extra
        return run.extra
    finally:
        torch.set_num_threads(threads_before)


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
