"""Which cells are train, validation and test, decided on labels only, never on expression.

:func:`split_cells` reads the input file(s); :func:`split_adata` splits them in steps, one
private function each, in this order:

1. the labelled training pool (:func:`_obs_test_mask` first takes out ``test_split``'s cells);
2. classes with fewer than ``min_cells_per_class`` pool cells dropped from every split
   (:func:`_drop_rare_classes`), judged before the validation carve-out so the decision does
   not move with ``val_fraction`` or ``split_seed``;
3. the test cells, from one of three sources: a separate file (:func:`_test_from_file`),
   an ``obs`` column of the training file (:func:`_test_from_obs`) or a random stratified
   hold-out of the pool (:func:`_test_from_fraction`);
4. a stratified, seeded validation set carved out of the remaining pool
   (:func:`_carve_validation`).

scikit-learn is imported where used, so importing the package stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd

from deepsc_tune.data._loading import InputFile, listing, read_input, read_labels, resolve_inputs, with_hint
from deepsc_tune.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from deepsc_tune.data._settings import DataSettings

#: Fewer validation cells than this: one cell moves accuracy by more than 1 %, too coarse to
#: rank trials (a split of 81 cells "selected" macro-F1 1.000).
MIN_VAL_CELLS = 100


@dataclass
class CellSplit:
    """Which cells go where, as row positions into the input files.

    ``train`` and ``val`` index the ``data.train`` file; ``test`` indexes the ``data.test`` file
    (``test_source == "test"``) or the ``data.train`` file (``test_source == "train"``, from
    ``test_split``), or is ``None`` when there is no test split. Positions are sorted.
    """

    train: np.ndarray
    val: np.ndarray
    test: np.ndarray | None
    test_source: str | None
    y_train: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray | None
    classes: list[str]
    dropped_classes: dict[str, int]
    notes: list[str]


class _TestCells(NamedTuple):
    rows: np.ndarray
    y: np.ndarray
    source: str  # "test": rows of the test file; "train": rows of the training file


def validation_warning(y_val: np.ndarray, classes: Sequence[str]) -> str | None:
    """A warning when the validation set is too small to rank trials, else ``None``."""
    n = len(y_val)
    if n >= MIN_VAL_CELLS:
        return None
    per_class = np.bincount(np.asarray(y_val, dtype=np.int64), minlength=len(classes))
    low = int(per_class.min()) if len(per_class) else 0
    return (
        f"the validation set has only {n} cells ({low} to {int(per_class.max(initial=0))} per class, "
        f"{len(classes)} classes): one cell moves accuracy by {100 / max(n, 1):.1f} points, too coarse "
        "to rank trials; raise data.val_fraction or use more cells"
    )


def split_cells(settings: DataSettings, *, hint: str | None = None) -> CellSplit:
    """Read the input file(s) and decide which cells are train, validation and test.

    No expression values are used, so the split does not depend on ``normalize`` or
    ``n_top_genes``. :func:`~deepsc_tune.data._prepare.prepare_data` and the ``split`` command's
    writers all split through :func:`split_adata`.

    Parameters
    ----------
    settings
        Validated data settings.
    hint
        Where the dataset can be obtained, added to "file not found" errors (see
        :func:`~deepsc_tune.data._prepare.prepare_data`).

    Returns
    -------
    CellSplit

    Raises
    ------
    DataError
        Missing or unreadable files, missing columns or values, empty splits, fewer than two
        classes left.
    """
    train_inp, test_inp = resolve_inputs(with_hint(settings, hint))
    train_ad = read_input(train_inp)
    test_ad = read_input(test_inp) if test_inp else None
    return split_adata(settings, train_ad=train_ad, test_ad=test_ad, train_inp=train_inp, test_inp=test_inp)


def split_adata(
    settings: DataSettings,
    *,
    train_ad: AnnData,
    test_ad: AnnData | None,
    train_inp: InputFile,
    test_inp: InputFile | None,
) -> CellSplit:
    """:func:`split_cells` on files already read (``test_ad``/``test_inp``: the test file, if any)."""
    notes: list[str] = []
    labels, has_label = read_labels(train_ad, label_key=settings.label_key, inp=train_inp, src=settings.source)
    in_test = np.zeros(train_ad.n_obs, dtype=bool)
    if settings.test_split is not None:
        in_test = _obs_test_mask(settings, train_ad, train_inp=train_inp)
    pool = _labelled_pool(settings, has_label & ~in_test, has_label=has_label, train_inp=train_inp, notes=notes)
    classes, dropped = _drop_rare_classes(settings, labels[pool], train_inp=train_inp, notes=notes)
    pool = pool[np.isin(labels[pool], classes)]

    test = None
    if test_ad is not None:
        test = _test_from_file(settings, test_ad, classes=classes, test_inp=test_inp, notes=notes)
    elif settings.test_split is not None:
        test = _test_from_obs(settings, labels, in_test & has_label, classes=classes, train_inp=train_inp, notes=notes)
    elif settings.test_fraction is not None:
        pool, test = _test_from_fraction(settings, labels[pool], pool, classes=classes, notes=notes)

    if settings.subsample is not None:
        pool = _subsample(settings, labels[pool], pool, notes=notes)
    train_idx, val_idx, y_train, y_val = _carve_validation(
        settings, _codes(labels[pool], classes), pool, classes=classes, train_inp=train_inp, notes=notes
    )
    # Sorted positions keep file order (easier to read, cheaper to slice); training shuffles.
    order_t, order_v = np.argsort(train_idx), np.argsort(val_idx)
    return CellSplit(
        train=train_idx[order_t].astype(np.int64),
        val=val_idx[order_v].astype(np.int64),
        test=None if test is None else test.rows.astype(np.int64),
        test_source=None if test is None else test.source,
        y_train=y_train[order_t].astype(np.int64),
        y_val=y_val[order_v].astype(np.int64),
        y_test=None if test is None else test.y,
        classes=classes,
        dropped_classes=dropped,
        notes=notes,
    )


def _codes(labels: np.ndarray, classes: list[str]) -> np.ndarray:
    index = {c: i for i, c in enumerate(classes)}
    return np.array([index[c] for c in labels], dtype=np.int64)


def _obs_test_mask(settings: DataSettings, train_ad: AnnData, *, train_inp: InputFile) -> np.ndarray:
    """Cells of the training file whose ``obs[test_split.obs_key]`` is one of its values."""
    src, key = settings.source, settings.test_split.obs_key
    if key not in train_ad.obs.columns:
        raise DataError(
            f"{src}.test_split.obs_key: column {key!r} not in obs of {train_inp.label}"
            f" ({train_inp.key}); available obs columns: {listing(train_ad.obs.columns)}"
        )
    column = train_ad.obs[key]
    as_text = column.astype(str).where(~column.isna(), None).to_numpy(dtype=object)
    present = sorted({v for v in as_text if v is not None})
    absent = [v for v in settings.test_split.values if v not in present]
    if absent:
        raise DataError(
            f"{src}.test_split.values: {listing(repr(v) for v in absent)} not found in"
            f" obs[{key!r}] of {train_inp.label}; values that exist: {listing(present)}"
        )
    return np.isin(as_text, list(settings.test_split.values))


def _labelled_pool(
    settings: DataSettings, in_pool: np.ndarray, *, has_label: np.ndarray, train_inp: InputFile, notes: list[str]
) -> np.ndarray:
    """Positions of the labelled cells outside ``test_split``: training and validation come from them."""
    if not has_label.all():
        notes.append(
            f"ignored {int((~has_label).sum())} cells of {train_inp.label} with no {settings.label_key!r} label"
        )
    pool = np.flatnonzero(in_pool)
    if pool.size == 0:
        src = settings.source
        raise DataError(
            f"{src}.test_split: every labelled cell of {train_inp.label} is in the test split"
            f" ({settings.test_split.obs_key} in {list(settings.test_split.values)}); none left"
            " for training"
            if settings.test_split
            else f"{src}.train: {train_inp.label} has no labelled cells in {settings.label_key!r}"
        )
    return pool


def _drop_rare_classes(
    settings: DataSettings, pool_labels: np.ndarray, *, train_inp: InputFile, notes: list[str]
) -> tuple[list[str], dict[str, int]]:
    """The classes kept (sorted) and those dropped, with their number of pool cells."""
    counts = pd.Series(pool_labels).value_counts()
    dropped = {str(c): int(n) for c, n in counts.items() if n < settings.min_cells_per_class}
    classes = sorted(str(c) for c in counts.index if str(c) not in dropped)
    if dropped:
        listed = ", ".join(f"{c} ({n})" for c, n in dropped.items())
        notes.append(
            f"dropped {len(dropped)} class(es) with fewer than {settings.min_cells_per_class}"
            f" training cells (min_cells_per_class) from all splits: {listed};"
            f" {sum(dropped.values())} training cells removed"
        )
    if len(classes) < 2:
        raise DataError(
            f"{settings.source}.label_key: {len(classes)} class(es) ({listing(classes)}) left in"
            f" {settings.label_key!r} of {train_inp.label} after dropping classes with fewer than"
            f" min_cells_per_class={settings.min_cells_per_class} training cells; need at least 2"
        )
    return classes, dropped


def _test_from_file(
    settings: DataSettings, test_ad: AnnData, *, classes: list[str], test_inp: InputFile, notes: list[str]
) -> _TestCells:
    """The labelled cells of the ``test`` file whose class was kept."""
    labels, has_label = read_labels(test_ad, label_key=settings.label_key, inp=test_inp, src=settings.source)
    candidates = np.flatnonzero(has_label)
    if not has_label.all():
        notes.append(
            f"ignored {int((~has_label).sum())} test cells of {test_inp.label} with no {settings.label_key!r} label"
        )
    rows = _known_test_cells(
        settings, labels, candidates, classes=classes, key="test", what=test_inp.label, notes=notes
    )
    return _TestCells(rows, _codes(labels[rows], classes), "test")


def _test_from_obs(
    settings: DataSettings,
    labels: np.ndarray,
    in_test: np.ndarray,
    *,
    classes: list[str],
    train_inp: InputFile,
    notes: list[str],
) -> _TestCells:
    """The labelled ``test_split`` cells of the training file whose class was kept."""
    split = settings.test_split
    what = f"{train_inp.label} ({split.obs_key} in {list(split.values)})"
    rows = _known_test_cells(
        settings, labels, np.flatnonzero(in_test), classes=classes, key="test_split", what=what, notes=notes
    )
    return _TestCells(rows, _codes(labels[rows], classes), "train")


def _known_test_cells(
    settings: DataSettings,
    labels: np.ndarray,
    candidates: np.ndarray,
    *,
    classes: list[str],
    key: str,
    what: str,
    notes: list[str],
) -> np.ndarray:
    """``candidates`` whose label is a training class; a class the model never saw cannot be scored."""
    known = np.isin(labels[candidates], classes)
    if not known.all():
        unseen = pd.Series(labels[candidates[~known]]).value_counts()
        notes.append(
            f"dropped {int((~known).sum())} test cells whose label is not among the training"
            " classes: " + ", ".join(f"{c} ({n})" for c, n in unseen.items())
        )
    rows = candidates[known]
    if rows.size == 0:
        raise DataError(
            f"{settings.source}.{key}: the test split of {what} is empty after keeping cells whose"
            f" {settings.label_key!r} is one of the training classes ({listing(classes)})"
        )
    return rows


def _test_from_fraction(
    settings: DataSettings, pool_labels: np.ndarray, pool: np.ndarray, *, classes: list[str], notes: list[str]
) -> tuple[np.ndarray, _TestCells]:
    """A random hold-out of the pool; returns the pool left for training and validation.

    For data without a donor or condition to split on; carved before validation, so the
    validation split never sees test cells.
    """
    from sklearn.model_selection import train_test_split

    y_all = _codes(pool_labels, classes)
    counts_all = np.bincount(y_all, minlength=len(classes))
    n_test = math.ceil(settings.test_fraction * pool.size)
    strat = counts_all.min() >= 2 and n_test >= len(classes) and pool.size - n_test >= len(classes)
    pool, test_idx, _, y_test = train_test_split(
        pool,
        y_all,
        test_size=settings.test_fraction,
        random_state=settings.split_seed,
        shuffle=True,
        stratify=y_all if strat else None,
    )
    order = np.argsort(test_idx)
    test_idx, y_test = test_idx[order], y_test[order].astype(np.int64)
    notes.append(
        f"test: {test_idx.size} random cells held out (test_fraction"
        f" {settings.test_fraction:g}{', stratified' if strat else ', NOT stratified'}),"
        " only ever reported"
    )
    return np.sort(pool), _TestCells(test_idx, y_test, "train")


def _subsample(settings: DataSettings, y_pool: np.ndarray, pool: np.ndarray, *, notes: list[str]) -> np.ndarray:
    """At most ``subsample`` cells of the training pool, stratified by label, seeded by
    ``split_seed``: the same cells for every trial (the setting is part of the data fingerprint).
    Test cells were set aside before and are all kept."""
    n = settings.subsample
    src = settings.source
    if n >= pool.size:
        notes.append(f"{src}.subsample {n}: the pool has {pool.size} cells for training and validation; all kept")
        return pool
    from sklearn.model_selection import train_test_split

    counts = np.unique(y_pool, return_counts=True)[1]
    stratify = y_pool if counts.min() >= 2 and n >= len(counts) and pool.size - n >= len(counts) else None
    keep, _ = train_test_split(pool, train_size=n, random_state=settings.split_seed, stratify=stratify)
    notes.append(
        f"{src}.subsample: {n} of the {pool.size} cells for training and validation"
        f" ({'stratified by label' if stratify is not None else 'random: a class is too small to stratify'},"
        f" split_seed {settings.split_seed}); the test cells are all kept"
    )
    return np.sort(keep)


def _carve_validation(
    settings: DataSettings,
    y_pool: np.ndarray,
    pool: np.ndarray,
    *,
    classes: list[str],
    train_inp: InputFile,
    notes: list[str],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``train, val, y_train, y_val`` from the pool, in scikit-learn's (shuffled) order.

    Stratified when every class can give at least one cell to each side (scikit-learn's
    condition), else a plain shuffled split.
    """
    from sklearn.model_selection import train_test_split

    src = settings.source
    n_val = math.ceil(settings.val_fraction * pool.size)
    per_class = np.bincount(y_pool, minlength=len(classes))
    stratify = per_class.min() >= 2 and n_val >= len(classes) and pool.size - n_val >= len(classes)
    if pool.size < 2:
        raise DataError(
            f"{src}.val_fraction: {settings.val_fraction!r} cannot split {pool.size} training"
            f" cell of {train_inp.label} into train and validation; need at least 2 cells"
        )
    try:
        train_idx, val_idx, y_train, y_val = train_test_split(
            pool,
            y_pool,
            test_size=settings.val_fraction,
            random_state=settings.split_seed,
            shuffle=True,
            stratify=y_pool if stratify else None,
        )
    except ValueError as exc:
        raise DataError(
            f"{src}.val_fraction: {settings.val_fraction!r} cannot split the {pool.size}"
            f" training cells of {train_inp.label}: {exc}"
        ) from exc
    how = f"stratified by {settings.label_key!r}"
    if not stratify:
        reason = (
            "a class has fewer than 2 cells"
            if per_class.min() < 2
            else "too few cells to give every class a validation cell"
        )
        how = f"NOT stratified ({reason})"
    notes.append(
        f"validation: {val_idx.size} of {pool.size} training cells"
        f" (val_fraction {settings.val_fraction:g}), {how},"
        f" split_seed {settings.split_seed}"
    )
    if train_idx.size == 0 or val_idx.size == 0:
        empty = "train" if train_idx.size == 0 else "validation"
        raise DataError(
            f"{src}.val_fraction: {settings.val_fraction!r} leaves the {empty} split empty"
            f" ({pool.size} training cells in {train_inp.label})"
        )
    unseen_in_train = [classes[i] for i in np.setdiff1d(np.arange(len(classes)), y_train)]
    if unseen_in_train:
        # Only possible without stratification; the model cannot learn these classes.
        notes.append(
            f"class(es) with no training cell after the validation carve-out:"
            f" {', '.join(unseen_in_train)}; raise min_cells_per_class or lower val_fraction"
        )
    return train_idx, val_idx, y_train, y_val
