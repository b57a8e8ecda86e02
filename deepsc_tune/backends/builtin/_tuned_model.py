"""The tuned model: the best trial's weights kept under ``RESULTS_DIR/STUDY/model/``, and predictions.

Only the built-in fine-tuner has weights to keep. While a study runs, every finished (not pruned)
run offers its best epoch's weights to a :class:`ModelKeeper`; they are written only when the run
beats every completed trial so far (ties: the earlier trial stays, as in
:func:`deepsc_tune.study._selection.best_search_trial`), so the folder only ever holds one model:

- ``weights.pt``: ``torch.save`` of the model's ``state_dict`` (CPU tensors);
- ``model.json``: what is needed to use it: the trial, its metrics, the training settings
  (architecture), the data settings (normalisation), the genes in input order and the classes in
  output order.

Repeats (``deepsc-tune repeat``) offer their weights too, so a seed that beats the searched run
replaces it. Writers on one machine serialise on a lock file; the folder is swapped in whole.

:func:`predict_file` annotates a query ``.h5ad`` with the kept model. Its input goes through
:func:`deepsc_tune.data._preprocess.prepare_query`, the same code as the test split, so predicting the test
cells reproduces the test metrics the study recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepsc_tune import __version__
from deepsc_tune.errors import ConfigError, DataError, DeepscTuneError
from deepsc_tune.utils import DiskFull, disk_full, disk_is_full

WEIGHTS_FILE = "weights.pt"
CARD_FILE = "model.json"
CARD_FORMAT = 1
LOCK_FILE = ".model.lock"

#: Columns and keys written into a query by :func:`predict_file`.
LABEL_COLUMN = "deepsc_tune_label"
PROBABILITY_COLUMN = "deepsc_tune_probability"
PROBABILITIES_KEY = "deepsc_tune_probabilities"
UNS_KEY = "deepsc_tune"


@contextlib.contextmanager
def model_lock(folder: Path) -> Iterator[None]:
    """Hold the lock beside the model folder ``folder`` (writers and movers of a kept model)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / LOCK_FILE, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def read_card(folder: Path) -> dict[str, Any] | None:
    """The kept model's ``model.json``, or ``None`` when there is none (or it is unreadable)."""
    try:
        card = json.loads((Path(folder) / CARD_FILE).read_text())
    except (OSError, ValueError):
        return None
    return card if isinstance(card, dict) and card.get("format") == CARD_FORMAT else None


class ModelKeeper:
    """Keeps the weights of the best run of one study in ``folder``.

    Parameters
    ----------
    folder
        ``RESULTS_DIR/STUDY/model`` (:attr:`StudyFolder.model`).
    study_name, metric
        Recorded in the card; ``metric`` is the value runs are compared on.
    data
        The :class:`~deepsc_tune.data._prepare.PreparedData` the runs train on (genes, classes, notes).
    data_settings
        The ``data:`` block as :meth:`DataSettings.to_dict` gives it (normalisation rule).
    completed
        ``{trial number: value}`` of the study's COMPLETE trials when the keeper starts: a kept
        model whose trial is not among them (a deleted and recreated study) is stale and ignored,
        and a run must beat them all, also those that finished before any model was kept.
    """

    def __init__(
        self,
        folder: Path,
        *,
        study_name: str,
        metric: str,
        data: Any,
        data_settings: Mapping[str, Any],
        completed: Mapping[int, float],
    ) -> None:
        self.folder = Path(folder)
        self.study_name = study_name
        self.metric = metric
        self.data = data
        self.data_settings = dict(data_settings)
        self.floor = max(completed.values(), default=-math.inf)
        card = read_card(self.folder)
        self.stale = card is not None and not (
            card.get("study") == study_name and completed.get(card.get("trial")) == card.get("value")
        )

    def _bar(self) -> float:
        card = None if self.stale else read_card(self.folder)
        value = card.get("value") if card else None
        return max(self.floor, value if isinstance(value, (int, float)) else -math.inf)

    def offer(self, result: Any, *, settings: Mapping[str, Any], trial: int | None) -> bool:
        """Keep ``result.state`` when the run beats the kept model; ``True`` when written."""
        best = result.best()
        value = None if best is None else best.metric(self.metric)
        if result.state is None or result.stopped or value is None or trial is None:
            return False
        with model_lock(self.folder):
            if not float(value) > self._bar():
                return False
            card = {
                "format": CARD_FORMAT,
                "study": self.study_name,
                "trial": trial,
                "metric": self.metric,
                "value": float(value),
                "best_epoch": result.best_epoch,
                "val_accuracy": best.val_accuracy,
                "val_macro_f1": best.val_macro_f1,
                "test_accuracy": result.test_accuracy,
                "test_macro_f1": result.test_macro_f1,
                "device": result.device,
                "settings": dict(settings),
                "data": self.data_settings,
                "data_notes": list(getattr(self.data, "notes", [])),
                "data_fingerprint": getattr(self.data, "fingerprint", None),
                "classes": list(self.data.classes),
                "genes": list(self.data.genes),
                "deepsc_tune_version": __version__,
                "saved": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            _write(self.folder, result.state, card)
            self.stale = False
            self.floor = max(self.floor, float(value))
            return True


def _write(folder: Path, state: Mapping[str, Any], card: Mapping[str, Any]) -> None:
    """Write into a fresh folder beside ``folder``, then swap it in whole."""
    import torch

    tmp = folder.with_name(f"{folder.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        torch.save({k: v.detach().cpu() for k, v in state.items()}, tmp / WEIGHTS_FILE)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n")
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)  # the kept model is untouched
        # torch says only "file write failed" when the disk is full.
        full = disk_full(e, tmp / WEIGHTS_FILE) or (DiskFull(tmp / WEIGHTS_FILE) if disk_is_full(tmp.parent) else None)
        if full is not None:
            raise full from None
        raise
    old = folder.with_name(f"{folder.name}.old-{os.getpid()}")
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Loading and predicting


@dataclass
class TunedModel:
    """A kept model, ready to predict."""

    model: Any  # torch.nn.Module, in eval mode on ``device``
    card: dict[str, Any]
    device: Any  # torch.device
    batch_size: int


def load_model(folder: Path, *, device: str = "auto", name: str | None = None) -> TunedModel:
    """Rebuild the kept model from ``weights.pt`` and ``model.json``.

    Raises
    ------
    DeepscTuneError
        No model in ``folder`` (or one this version cannot read).
    """

    from deepsc_tune.backends.builtin._train import TrainSettings, build_model, resolve_device

    folder = Path(folder)
    run = f"deepsc-tune run {name}" if name else "deepsc-tune run NAME"
    missing = DeepscTuneError(
        f"no tuned model in {folder}; it is written by `{run}` with the built-in"
        " fine-tuner (finetune.backend: builtin) when a trial completes"
        " (DeepSC's own fine-tuner keeps its checkpoints itself)"
    )
    if not folder.parent.is_dir():  # nothing to lock, and nothing to create
        raise missing
    with model_lock(folder):
        if not (folder / CARD_FILE).is_file() or not (folder / WEIGHTS_FILE).is_file():
            raise missing
        card = _checked_card(folder / CARD_FILE)
        state = _weights(folder / WEIGHTS_FILE)
    settings = {k: v for k, v in card["settings"].items() if k != "init_checkpoint"}
    train_settings = TrainSettings.from_dict(settings, source=f"{folder / CARD_FILE}: settings")
    model = build_model(train_settings, n_genes=len(card["genes"]), n_classes=len(card["classes"]))
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # tensors of another model (names or shapes)
        raise DeepscTuneError(
            f"{folder / WEIGHTS_FILE}: does not match {CARD_FILE} beside it ({str(e).splitlines()[0][:200]}); "
            f"{_RESTORE}"
        ) from None
    dev = resolve_device(device)
    model.to(dev).eval()
    return TunedModel(model=model, card=card, device=dev, batch_size=train_settings.eval_batch_size)


_RESTORE = "restore the model folder from a copy, or run the study again into a new --results-dir"
#: What :func:`load_model` and :func:`predict_file` read from ``model.json``, and its type.
CARD_KEYS = {
    "study": str,
    "trial": int,
    "metric": str,
    "value": (int, float),
    "settings": dict,
    "data": dict,
    "genes": list,
    "classes": list,
}


def _checked_card(path: Path) -> dict[str, Any]:
    """``model.json``, with a one-line error naming the file when it cannot be used."""
    try:
        card = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DeepscTuneError(f"{path}: not UTF-8 text; the model card is damaged: {_RESTORE}") from None
    except ValueError as e:
        raise DeepscTuneError(f"{path}: not valid JSON ({e}); the model card is damaged: {_RESTORE}") from None
    if not isinstance(card, dict):
        raise DeepscTuneError(f"{path}: expected a JSON object, got {type(card).__name__}; {_RESTORE}")
    if card.get("format") != CARD_FORMAT:
        raise DeepscTuneError(
            f"{path}: format {card.get('format')!r}; this deepsc-tune ({__version__}) reads format "
            f"{CARD_FORMAT}: use the version that wrote it, or run the study again"
        )
    for key, kind in CARD_KEYS.items():
        if not isinstance(card.get(key), kind) or isinstance(card.get(key), bool):
            raise DeepscTuneError(f"{path}: {key}: missing or not a {getattr(kind, '__name__', 'number')}; {_RESTORE}")
    return card


def _weights(path: Path) -> dict[str, Any]:
    """``weights.pt`` as a state dict, with a one-line error naming the file when it cannot be read."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated, damaged, or not a torch file: one line
        first = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0][:200]
        raise DeepscTuneError(f"{path}: cannot read the model's weights ({first}); {_RESTORE}") from None
    if not isinstance(state, dict):
        raise DeepscTuneError(f"{path}: expected a state dict (names to tensors); {_RESTORE}")
    return state


@dataclass
class Prediction:
    """What :func:`predict_file` wrote and found."""

    out: Path
    n_cells: int
    n_genes: int
    n_missing: int
    notes: list[str]
    accuracy: float | None  # against the query's label column, when it has one
    n_scored: int
    n_unknown: int  # labelled cells whose label is not one of the model's classes
    card: dict[str, Any]


def default_output(query: Path) -> Path:
    """``query.h5ad`` -> ``query.predicted.h5ad`` beside it."""
    query = Path(query)
    return query.with_name(f"{query.name.removesuffix('.h5ad')}.predicted.h5ad")


def check_query(query: Path) -> None:
    """The query must be an existing file (a folder is said to be one)."""
    if Path(query).is_dir():
        raise DataError(f"query: {query} is a folder; expected an .h5ad file of cells to annotate")
    if not Path(query).is_file():
        raise DataError(f"query: file not found: {query}; expected an .h5ad file of cells to annotate")


def check_output(query: Path, out: Path, *, overwrite: bool) -> None:
    """Refuse to write over the query, over a folder, or over an existing file without ``overwrite``."""
    check_query(query)
    if out.is_dir():
        raise ConfigError(
            f"--out: {out} is a folder; expected the new file's path, e.g. {out / default_output(query).name}"
        )
    if out.suffix != ".h5ad":
        raise ConfigError(f"--out: {out} does not end in .h5ad; expected the new file's path")
    if out.exists() and out.resolve() == Path(query).resolve():
        raise ConfigError(f"--out: {out} is the query file itself; the input is never overwritten")
    if out.exists() and not overwrite:
        raise ConfigError(f"--out: {out} exists; choose another path or pass --overwrite")
    if not out.parent.is_dir():
        raise ConfigError(f"--out: folder {out.parent} does not exist; expected an existing folder")


def _write_output(adata: Any, out: Path) -> None:
    """Write ``adata`` to a hidden file beside ``out``, then move it there; nothing is left
    behind when that fails (a full disk, a folder in the way)."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        adata.write_h5ad(tmp)
        os.replace(tmp, out)
    except BaseException as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        full = disk_full(e, out) if isinstance(e, Exception) else None
        if full is not None:
            raise DiskFull(full.path, f"{out} was not written; ", elsewhere="--out") from None
        if isinstance(e, OSError):
            raise DeepscTuneError(f"--out {out}: cannot write it: {e.strerror or e}") from None
        raise


def predict_file(
    folder: Path,
    query: Path,
    *,
    out: Path | None = None,
    device: str = "auto",
    overwrite: bool = False,
    name: str | None = None,
    log: Callable[[str], None] = lambda _line: None,
) -> Prediction:
    """Annotate ``query`` with the kept model and write it to ``out`` (a new file).

    Adds ``obs['deepsc_tune_label']`` (categorical, the model's classes),
    ``obs['deepsc_tune_probability']`` (the predicted class's probability),
    ``obsm['deepsc_tune_probabilities']`` (cells x classes, in the order of
    ``uns["deepsc_tune"]["classes"]``) and ``uns["deepsc_tune"]`` (study, trial, genes missing).
    When the query has the training label column, the accuracy on its cells of known classes is
    returned too.

    Raises
    ------
    DeepscTuneError
        No model, a missing or unreadable query, no shared genes, an existing ``out``.
    """
    import numpy as np
    import pandas as pd

    from deepsc_tune.backends.builtin._evaluation import predict_logits
    from deepsc_tune.data import DataSettings, prepare_query

    query = Path(query)
    out = Path(out) if out is not None else default_output(query)
    check_query(query)
    tuned = load_model(folder, device=device, name=name)
    check_output(query, out, overwrite=overwrite)
    card = tuned.card
    settings = DataSettings.from_dict(card["data"], source=f"{Path(folder) / CARD_FILE}: data")
    q = prepare_query(query, settings=settings, genes=card["genes"])
    logits = predict_logits(tuned.model, q.X, batch_size=tuned.batch_size, device=tuned.device)
    classes = list(card["classes"])
    pred = logits.argmax(axis=1) if len(logits) else np.zeros(0, dtype=np.int64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True)) if len(logits) else logits
    proba = shifted / shifted.sum(axis=1, keepdims=True) if len(logits) else logits

    adata = q.adata
    adata.obs[LABEL_COLUMN] = pd.Categorical.from_codes(pred, categories=classes)
    adata.obs[PROBABILITY_COLUMN] = proba[np.arange(len(pred)), pred].astype(np.float32)
    # An array, not a DataFrame: class names such as "CD4+/CD25 T Reg" are not valid HDF5 keys.
    adata.obsm[PROBABILITIES_KEY] = proba.astype(np.float32).reshape(len(pred), len(classes))
    adata.uns[UNS_KEY] = {
        "study": card["study"],
        "trial": int(card["trial"]),
        "model": str(Path(folder)),
        "classes": classes,
        "genes_missing": int(q.n_missing),
        "n_genes": len(card["genes"]),
    }

    accuracy, n_scored, n_unknown = None, 0, 0
    label_key = card["data"].get("label_key")
    if label_key in adata.obs.columns:
        truth = adata.obs[label_key]
        has = ~truth.isna().to_numpy()
        text = truth.astype(str).to_numpy()
        known = has & np.isin(text, classes)
        n_unknown = int((has & ~known).sum())
        n_scored = int(known.sum())
        if n_scored:
            accuracy = float(np.mean(np.asarray(classes, dtype=object)[pred[known]] == text[known]))

    _write_output(adata, out)
    return Prediction(
        out=out,
        n_cells=adata.n_obs,
        n_genes=len(card["genes"]),
        n_missing=q.n_missing,
        notes=q.notes,
        accuracy=accuracy,
        n_scored=n_scored,
        n_unknown=n_unknown,
        card=card,
    )
