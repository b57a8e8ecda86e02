"""The built-in fine-tuner: PyTorch on AnnData files, behind the :class:`Finetuner` interface.

Data are prepared once per process (and cached on disk) and shared by every trial; each run only
builds a model and trains it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from deepsc_tune.backends._interface import EpochCallback, FinetuneResult
from deepsc_tune.backends.builtin._train import TrainSettings, run_training
from deepsc_tune.data import PreparedData


class BuiltinFinetuner:
    """Fine-tune the built-in MLP or transformer on prepared data.

    Parameters
    ----------
    data
        Preprocessed splits (:func:`deepsc_tune.data._prepare.prepare_data`).
    log
        Where the banner and per-epoch lines go (``None``: silent, as inside a study).
    defaults
        Settings applied under every run's own (e.g. ``device`` or ``num_threads`` from the CLI).

    ``keeper`` (a :class:`deepsc_tune.backends.builtin._tuned_model.ModelKeeper`, set by ``run`` and ``repeat``)
    is offered each finished run's best weights; the trial number is the name of ``run_dir``
    (``trials/NNNNN``, as the objective names it).
    """

    keeper = None

    def __init__(
        self,
        data: PreparedData,
        *,
        log: Callable[[str], None] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> None:
        self.data = data
        self.log = log
        self.defaults = dict(defaults or {})

    def run(
        self,
        params: Mapping[str, Any],
        *,
        metric: str = "val_accuracy",
        on_epoch: EpochCallback | None = None,
        run_dir: Path | None = None,
    ) -> FinetuneResult:
        settings = TrainSettings.from_dict({**self.defaults, **params})
        result = run_training(
            self.data,
            settings,
            metric=metric,
            on_epoch=on_epoch,
            log=self.log or (lambda _line: None),
        )
        if self.keeper is not None and run_dir is not None and run_dir.name.isdigit():
            self.keeper.offer(result, settings=settings.to_dict(), trial=int(run_dir.name))
        result.state = None  # the weights live on in the keeper's folder or nowhere
        return result
