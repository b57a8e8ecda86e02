"""The small interface every fine-tuner backend implements.

The objective (``study/_objective.py``) is the only caller. A backend runs one fine-tune with a dict of
settings (DeepSC's names: ``learning_rate``, ``lr_scheduler_type``, ``warmup_ratio``, ``epoch``...),
calls ``on_epoch`` after every epoch with that epoch's validation metrics, stops early when the
callback returns ``True``, and returns a :class:`FinetuneResult`.

Backends:
- ``builtin`` (:mod:`deepsc_tune.backends.builtin._train` via :class:`deepsc_tune.backends.builtin._finetuner.BuiltinFinetuner`):
  PyTorch on AnnData files, works out of the box.
- ``command`` (:mod:`deepsc_tune.backends.command._finetuner`): DeepSC's own fine-tuner (or any program) run as a
  subprocess; metrics parsed from its stdout or a JSON-lines file.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

#: Metrics a study may optimise (always maximised).
METRICS = ("val_accuracy", "val_macro_f1")


@dataclass
class EpochMetrics:
    """Validation metrics after one epoch (``epoch`` counts from 1)."""

    epoch: int
    val_accuracy: float
    val_macro_f1: float | None = None
    val_loss: float | None = None
    learning_rate: float | None = None
    train_loss: float | None = None
    seconds: float | None = None

    def metric(self, name: str) -> float | None:
        """Value of the metric ``name`` (one of :data:`METRICS`)."""
        return getattr(self, name)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: Called after every epoch; returning ``True`` asks the backend to stop (used for pruning).
EpochCallback = Callable[[EpochMetrics], bool]


@dataclass
class FinetuneResult:
    """What one fine-tune produced.

    ``best_epoch`` is the epoch with the highest value of the metric the run was asked to
    select on; test metrics, when a test split exists, are those of the model at that epoch.
    They are reported, never used for selection.
    """

    history: list[EpochMetrics]
    best_epoch: int | None = None
    test_accuracy: float | None = None
    test_macro_f1: float | None = None
    stopped: bool = False
    device: str = "cpu"
    extra: dict[str, Any] = field(default_factory=dict)
    #: The best epoch's weights (a torch ``state_dict``; built-in backend only). Kept in memory
    #: for :mod:`deepsc_tune.backends.builtin._tuned_model`, never stored in the study.
    state: Any = field(default=None, repr=False)

    def best(self) -> EpochMetrics | None:
        """The :class:`EpochMetrics` of ``best_epoch``."""
        for m in self.history:
            if m.epoch == self.best_epoch:
                return m
        return None


class Finetuner(Protocol):
    """A fine-tuner the objective can drive.

    A backend may also have ``trial_attrs(params) -> dict``: what it derives from a trial's
    settings before running them (the ``command`` backend: DeepSC's warmup in real steps and the
    ratio it is passed), stored with the trial by the objective, failed or not.
    """

    def run(
        self,
        params: Mapping[str, Any],
        *,
        metric: str = "val_accuracy",
        on_epoch: EpochCallback | None = None,
        run_dir: Path | None = None,
    ) -> FinetuneResult:
        """Fine-tune once with ``params`` (fixed settings merged with the trial's values).

        ``metric`` selects the best epoch; ``run_dir`` is a per-run folder for logs and files
        (may be ``None`` for the built-in backend). Raises
        :class:`~deepsc_tune.errors.DeepscTuneError` for problems the user can fix.
        """
        ...
