"""Labelled single-cell data: validate settings, split without leakage, preprocess once, cache.

Pipeline (one code path for :func:`prepare_data` and the ``split`` command's writers):

1. :class:`DataSettings` validates the YAML ``data:`` block
   (:class:`~deepsc_tune.errors.ConfigError`).
2. :mod:`~deepsc_tune.data_loading` resolves and reads the ``.h5ad`` file(s) (or a built-in
   dataset) and their labels.
3. :mod:`~deepsc_tune.data_split` drops classes with too few training cells, picks the test
   cells (a separate file, ``test_split`` on an ``obs`` column or ``test_fraction``) and carves a
   stratified, seeded validation set out of the training cells only.
4. :mod:`~deepsc_tune.preprocess` normalises each cell with scanpy (per cell, so no statistics
   cross the split), chooses highly variable genes on the training cells only and densifies
   the chosen genes.
5. :func:`prepare_data` runs these once: :mod:`~deepsc_tune.data_cache` keeps the arrays on
   disk (keyed by :func:`~deepsc_tune.data_cache.data_fingerprint`) and in process, so the
   trials of a study never redo it.

Problems with input files raise :class:`~deepsc_tune.errors.DataError` with a one-line message
naming the key, the file and the value. This module never imports Optuna; scanpy, anndata and
scikit-learn are imported where used so that importing the package (and ``--help``) stays fast.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .data_cache import data_fingerprint, load_cached, recall, remember, save_cached
from .data_loading import BUILTIN_DATASETS, BUILTIN_PREFIX, read_input, resolve_inputs, with_hint
from .data_split import split_adata
from .errors import ConfigError
from .preprocess import preprocess_split

#: Accepted values of ``data.normalize``.
NORMALIZE_MODES = ("auto", "log1p", "none")

#: Keys of the ``data:`` block, with what each expects (used in error messages).
DATA_KEYS = (
    "train",
    "test",
    "test_split",
    "test_fraction",
    "label_key",
    "val_fraction",
    "normalize",
    "n_top_genes",
    "min_cells_per_class",
    "split_seed",
    "origin",
)
TEST_SPLIT_KEYS = ("obs_key", "values")


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ObsSplit:
    """Test cells chosen by an ``obs`` column: cells whose ``obs[obs_key]`` is in ``values``.

    Values are compared as strings, so ``values: [1]`` in YAML matches an integer column.
    """

    obs_key: str
    values: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"obs_key": self.obs_key, "values": list(self.values)}


@dataclass(frozen=True)
class DataSettings:
    """Validated ``data:`` block. Build it with :meth:`from_dict`.

    ``origin`` is a free-text hint on where the dataset can be obtained (a URL, a command); it is
    added to "file not found" errors and is not part of the fingerprint. ``source`` is the key
    path prefix used in error messages (``data`` gives ``data.train``).
    """

    train: str
    label_key: str
    test: str | None = None
    test_split: ObsSplit | None = None
    val_fraction: float = 0.1
    test_fraction: float | None = None
    normalize: str = "auto"
    n_top_genes: int | None = None
    min_cells_per_class: int = 5
    split_seed: int = 0
    origin: str | None = field(default=None, compare=False)
    source: str = field(default="data", compare=False)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any] | None, *, source: str = "data") -> DataSettings:
        """Validate a ``data:`` mapping, reporting every problem at once.

        Parameters
        ----------
        d
            The mapping read from YAML. Numbers written as strings (PyYAML reads ``1e-5`` as a
            string) are accepted when they parse cleanly.
        source
            Key path prefix for messages, e.g. ``data`` gives ``data.val_fraction: ...``.

        Returns
        -------
        DataSettings

        Raises
        ------
        ConfigError
            One line per problem, each naming the key path, the value and what was expected.
        """
        if not isinstance(d, Mapping):
            raise ConfigError(f"{source}: expected a mapping with at least 'train' and 'label_key', got {d!r}")
        problems: list[str] = []
        unknown = [k for k in d if k not in DATA_KEYS]
        if unknown:
            problems.append(
                f"{source}: unknown key(s) {', '.join(repr(k) for k in unknown)}; "
                f"expected some of: {', '.join(DATA_KEYS)}"
            )

        def path_value(key: str, *, required: bool) -> str | None:
            value = d.get(key)
            if value is None:
                if required:
                    problems.append(
                        f"{source}.{key}: required; expected a path to an .h5ad file"
                        f" or {BUILTIN_PREFIX}{BUILTIN_DATASETS[0]}"
                    )
                return None
            if isinstance(value, os.PathLike):
                value = os.fspath(value)
            if not isinstance(value, str) or not value.strip():
                problems.append(
                    f"{source}.{key}: expected a path to an .h5ad file"
                    f" or {BUILTIN_PREFIX}{BUILTIN_DATASETS[0]}, got {value!r}"
                )
                return None
            value = value.strip()
            if value.startswith(BUILTIN_PREFIX):
                name = value[len(BUILTIN_PREFIX) :]
                if name not in BUILTIN_DATASETS:
                    problems.append(
                        f"{source}.{key}: unknown built-in dataset {value!r}; available: "
                        + ", ".join(BUILTIN_PREFIX + n for n in BUILTIN_DATASETS)
                    )
                    return None
            return value

        train = path_value("train", required=True)
        test = path_value("test", required=False)

        label_key = d.get("label_key")
        if not isinstance(label_key, str) or not label_key:
            problems.append(
                f"{source}.label_key: required; expected the obs column holding cell types, got {label_key!r}"
            )
            label_key = None

        test_split = _parse_test_split(d.get("test_split"), f"{source}.test_split", problems)
        if test is not None and test_split is not None:
            problems.append(f"{source}: give either 'test' (a file) or 'test_split' (an obs column), not both")

        val_fraction = _parse_number(
            d.get("val_fraction", 0.1),
            f"{source}.val_fraction",
            problems,
            ok=lambda x: 0 < x < 1,
            expected="a number in (0, 1)",
        )
        test_fraction = d.get("test_fraction")
        if test_fraction is not None:
            test_fraction = _parse_number(
                test_fraction,
                f"{source}.test_fraction",
                problems,
                ok=lambda x: 0 < x < 1,
                expected="a number in (0, 1) (or unset)",
            )
            if test is not None or test_split is not None:
                problems.append(
                    f"{source}: give one of 'test' (a file), 'test_split' (an obs column) or"
                    " 'test_fraction' (a random stratified hold-out), not several"
                )
        normalize = d.get("normalize", "auto")
        if normalize not in NORMALIZE_MODES:
            problems.append(f"{source}.normalize: expected one of {', '.join(NORMALIZE_MODES)}, got {normalize!r}")
        n_top_genes = d.get("n_top_genes")
        if n_top_genes is not None:
            n_top_genes = _parse_int(
                n_top_genes,
                f"{source}.n_top_genes",
                problems,
                minimum=1,
                expected="a positive integer (or unset for all genes)",
            )
        min_cells = _parse_int(
            d.get("min_cells_per_class", 5),
            f"{source}.min_cells_per_class",
            problems,
            minimum=0,
            expected="an integer >= 0",
        )
        split_seed = _parse_int(
            d.get("split_seed", 0),
            f"{source}.split_seed",
            problems,
            minimum=0,
            expected="an integer >= 0",
        )
        origin = d.get("origin")
        if origin is not None and not isinstance(origin, str):
            problems.append(f"{source}.origin: expected text saying where the dataset can be obtained, got {origin!r}")

        if problems:
            raise ConfigError("\n".join(problems))
        return cls(
            train=train,
            label_key=label_key,
            test=test,
            test_split=test_split,
            val_fraction=float(val_fraction),
            test_fraction=None if test_fraction is None else float(test_fraction),
            normalize=normalize,
            n_top_genes=n_top_genes,
            min_cells_per_class=min_cells,
            split_seed=split_seed,
            origin=origin,
            source=source,
        )

    def to_dict(self) -> dict[str, Any]:
        """The settings as a plain mapping; ``from_dict(s.to_dict())`` gives ``s`` back."""
        out: dict[str, Any] = {
            "train": self.train,
            "test": self.test,
            "test_split": self.test_split.to_dict() if self.test_split else None,
            "label_key": self.label_key,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "normalize": self.normalize,
            "n_top_genes": self.n_top_genes,
            "min_cells_per_class": self.min_cells_per_class,
            "split_seed": self.split_seed,
        }
        if self.origin is not None:
            out["origin"] = self.origin
        return out


def _parse_number(value, where, problems, *, ok, expected) -> float | None:
    number = _to_float(value)
    if number is None or not ok(number):
        problems.append(f"{where}: expected {expected}, got {value!r}")
        return None
    return number


def _parse_int(value, where, problems, *, minimum, expected) -> int | None:
    number = _to_float(value)
    # 2e3 (or "2e3") is a clean integer; 2.5 is not.
    if number is None or not number.is_integer() or number < minimum:
        problems.append(f"{where}: expected {expected}, got {value!r}")
        return None
    return int(number)


def _to_float(value) -> float | None:
    # bool is an int subclass; "true" as a fraction is a typo, not 1.0.
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _parse_test_split(value, where, problems) -> ObsSplit | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        problems.append(f"{where}: expected a mapping like {{obs_key: donor, values: [human4]}}, got {value!r}")
        return None
    unknown = [k for k in value if k not in TEST_SPLIT_KEYS]
    if unknown:
        problems.append(
            f"{where}: unknown key(s) {', '.join(repr(k) for k in unknown)}; expected: {', '.join(TEST_SPLIT_KEYS)}"
        )
    obs_key = value.get("obs_key")
    if not isinstance(obs_key, str) or not obs_key:
        problems.append(f"{where}.obs_key: expected the name of an obs column, got {obs_key!r}")
        obs_key = None
    values = value.get("values")
    if isinstance(values, (str, int)) and not isinstance(values, bool):
        values = [values]
    if (
        not isinstance(values, (list, tuple))
        or not values
        or not all(isinstance(v, (str, int)) and not isinstance(v, bool) for v in values)
    ):
        problems.append(f"{where}.values: expected a non-empty list of obs values (e.g. [human4]), got {values!r}")
        values = None
    if obs_key is None or values is None:
        return None
    return ObsSplit(obs_key=obs_key, values=tuple(str(v) for v in values))


# --------------------------------------------------------------------------------------------
# Prepared data
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Model-ready arrays of one dataset and split.

    ``X_*`` are dense float32 (cells x ``genes``), ``y_*`` int64 indices into ``classes``;
    ``X_test``/``y_test`` are ``None`` without a test split. ``indices`` holds the row positions
    of each split in its input file (see :class:`~deepsc_tune.data_split.CellSplit`). The same
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

    Order: split cells (:func:`~deepsc_tune.data_split.split_cells`), normalise per cell with
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
        Any problem with the input files (see :func:`~deepsc_tune.data_split.split_cells`),
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
