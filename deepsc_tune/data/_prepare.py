"""Labelled single-cell data: validate settings, split without leakage, preprocess once, cache.

Pipeline (one code path for :func:`prepare_data` and the ``split`` command's writers):

1. :class:`~deepsc_tune.data._settings.DataSettings` validates the YAML ``data:`` block
   (:class:`~deepsc_tune.errors.ConfigError`).
2. :mod:`~deepsc_tune.data._loading` resolves and reads the ``.h5ad`` file(s) (or a built-in
   dataset) and their labels.
3. :mod:`~deepsc_tune.data._split` drops classes with too few training cells, picks the test
   cells (a separate file, ``test_split`` on an ``obs`` column or ``test_fraction``) and carves a
   stratified, seeded validation set out of the training cells only.
4. :mod:`~deepsc_tune.data._preprocess` normalises each cell with scanpy (per cell, so no statistics
   cross the split), chooses highly variable genes on the training cells only and densifies
   the chosen genes.
5. :func:`prepare_data` runs these once: :mod:`~deepsc_tune.data._cache` keeps the arrays on
   disk (keyed by :func:`~deepsc_tune.data._cache.data_fingerprint`) and in process, so the
   trials of a study never redo it.

Problems with input files raise :class:`~deepsc_tune.errors.DataError` with a one-line message
naming the key, the file and the value. This module never imports Optuna; scanpy, anndata and
scikit-learn are imported where used so that importing the package (and ``--help``) stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from deepsc_tune.data._cache import data_fingerprint, load_cached, recall, remember, save_cached
from deepsc_tune.data._loading import read_input, resolve_inputs, with_hint
from deepsc_tune.data._preprocess import preprocess_split
from deepsc_tune.data._settings import DataSettings
from deepsc_tune.data._split import split_adata

# --------------------------------------------------------------------------------------------
# Prepared data
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Model-ready arrays of one dataset and split.

    ``X_*`` are dense float32 (cells x ``genes``), ``y_*`` int64 indices into ``classes``;
    ``X_test``/``y_test`` are ``None`` without a test split. ``indices`` holds the row positions
    of each split in its input file (see :class:`~deepsc_tune.data._split.CellSplit`). The same
    object is handed to every trial of a process: do not modify the arrays in place.
    """

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray | None
    y_test: np.ndarray | None
    classes: list[str]
    genes: list[str]
    dropped_classes: dict[str, int]
    fingerprint: str
    notes: list[str]
    source: dict[str, Any]
    indices: dict[str, np.ndarray | None]
    from_cache: bool = False

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_genes(self) -> int:
        return len(self.genes)


def prepare_data(settings: DataSettings, *, cache_dir: Path | None = None, hint: str | None = None) -> PreparedData:
    """Load, split and preprocess a dataset once; later calls reuse the result.

    Order: split cells (:func:`~deepsc_tune.data._split.split_cells`), normalise per cell with
    scanpy (``normalize``), choose ``n_top_genes`` highly variable genes on the training cells
    only, densify the chosen genes, align a separate test file's genes to them by name (missing
    genes are 0).

    Parameters
    ----------
    settings
        Validated data settings.
    cache_dir
        Folder for the disk cache (``data-<fingerprint>.npz`` and ``.json``); ``None`` keeps the
        result in this process only.
    hint
        Where the dataset can be obtained (e.g. the search space's ``source:`` text); added to
        "file not found" errors when ``settings.origin`` is unset. Not part of the fingerprint.

    Returns
    -------
    PreparedData
        The same object for repeated calls with identical inputs and settings in one process.

    Raises
    ------
    DataError
        Any problem with the input files (see :func:`~deepsc_tune.data._split.split_cells`),
        NaN/inf values, negative values with ``normalize: log1p``, no genes shared with a test
        file.
    """
    settings = with_hint(settings, hint)
    fingerprint = data_fingerprint(settings)
    prepared = recall(fingerprint)
    if prepared is not None:
        return prepared
    if cache_dir is not None:
        cached = load_cached(Path(cache_dir), fingerprint)
        prepared = None if cached is None else PreparedData(**cached)
    if prepared is None:
        prepared = _compute(settings, fingerprint=fingerprint)
        if cache_dir is not None:
            save_cached(Path(cache_dir), prepared)
    remember(prepared)
    return prepared


def _compute(settings: DataSettings, *, fingerprint: str) -> PreparedData:
    train_inp, test_inp = resolve_inputs(settings)
    train_ad = read_input(train_inp)
    test_ad = read_input(test_inp) if test_inp else None
    split = split_adata(settings, train_ad=train_ad, test_ad=test_ad, train_inp=train_inp, test_inp=test_inp)
    model_input = preprocess_split(
        split, settings=settings, train_ad=train_ad, test_ad=test_ad, train_inp=train_inp, test_inp=test_inp
    )
    source = {
        "train": train_inp.label,
        "test": test_inp.label if test_inp else None,
        "test_split": settings.test_split.to_dict() if settings.test_split else None,
        "test_source": split.test_source,
        "label_key": settings.label_key,
        "n_cells": {
            "train": int(split.train.size),
            "val": int(split.val.size),
            "test": None if split.test is None else int(split.test.size),
        },
    }
    return PreparedData(
        X_train=model_input.X_train,
        y_train=split.y_train,
        X_val=model_input.X_val,
        y_val=split.y_val,
        X_test=model_input.X_test,
        y_test=split.y_test,
        classes=list(split.classes),
        genes=[str(g) for g in model_input.genes],
        dropped_classes=dict(split.dropped_classes),
        fingerprint=fingerprint,
        notes=[*split.notes, *model_input.notes],
        source=source,
        indices={"train": split.train, "val": split.val, "test": split.test},
    )
