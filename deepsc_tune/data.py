"""Labelled single-cell data: validate settings, split without leakage, preprocess once, cache.

Pipeline (one code path for :func:`prepare_data` and :func:`write_split`):

1. :class:`~deepsc_tune.data_settings.DataSettings` validates the YAML ``data:`` block
   (:class:`~deepsc_tune.errors.ConfigError`).
2. :func:`split_cells` reads the ``.h5ad`` file(s), drops classes with too few training cells,
   picks the test cells (a separate file or ``test_split`` on an ``obs`` column) and carves a
   stratified, seeded validation set out of the training cells only.
3. :func:`prepare_data` normalises each cell with scanpy (per cell, so no statistics cross the
   split), chooses highly variable genes on the training cells only, densifies the chosen genes
   and caches the arrays on disk (keyed by :func:`data_fingerprint`) and in process, so the
   trials of a study never redo it.
4. :func:`write_split` writes the same cells, unprocessed, so DeepSC's own fine-tuner can be run
   on exactly the split deepsc-tune tuned on.

Problems with input files raise :class:`~deepsc_tune.errors.DataError` with a one-line message
naming the key, the file and the value. This module never imports Optuna; scanpy, anndata and
scikit-learn are imported where used so that importing the package (and ``--help``) stays fast.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .data_settings import BUILTIN_PREFIX, DataSettings
from .errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

#: Library size every cell is scaled to before ``log1p`` (counts per 10k, as DeepSC's guide does).
TARGET_SUM = 1e4
#: scanpy flavour for highly variable genes; expects log-normalised values, which we have.
HVG_FLAVOR = "seurat"
#: Bump when the preprocessing changes, so old cache entries are not reused.
CACHE_FORMAT = 1
#: Files up to this size are identified by content (copies share a cache entry, ``touch`` does
#: not invalidate it); larger ones by path, size and modification time, to avoid reading GBs.
CONTENT_HASH_MAX_BYTES = 64 * 2**20

# Longest list of obs columns / values quoted in an error message.
_MAX_LISTED = 30


# --------------------------------------------------------------------------------------------
# Inputs: resolving, identifying and reading files
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Input:
    key: str  # key path, e.g. "data.train"
    value: str  # as written by the user
    builtin: str | None = None
    path: Path | None = None  # absolute

    @property
    def label(self) -> str:
        return self.value if self.builtin else str(self.path)


def _resolve_input(value: str, *, key: str, origin: str | None) -> _Input:
    if value.startswith(BUILTIN_PREFIX):
        return _Input(key=key, value=value, builtin=value[len(BUILTIN_PREFIX) :])
    # Relative paths are relative to the working directory, like any command-line tool.
    path = Path(value).expanduser()
    absolute = path if path.is_absolute() else Path.cwd() / path
    if not absolute.is_file():
        what = "is a directory, not a file" if absolute.is_dir() else "file not found"
        where = f"{key}" if path.is_absolute() else f"{key}, relative to {Path.cwd()}"
        hint = f"; it can be obtained from: {origin}" if origin else ""
        raise DataError(f"{what}: {value} ({where}); download the dataset or point {key} at your copy{hint}")
    return _Input(key=key, value=value, path=absolute.resolve())


def _with_hint(settings: DataSettings, hint: str | None) -> DataSettings:
    # The data block's own origin wins; a caller's hint (search-space ``source:``) fills in.
    if hint and not settings.origin:
        return replace(settings, origin=str(hint))
    return settings


def _inputs(settings: DataSettings) -> tuple[_Input, _Input | None]:
    src = settings.source
    train = _resolve_input(settings.train, key=f"{src}.train", origin=settings.origin)
    test = None
    if settings.test is not None:
        test = _resolve_input(settings.test, key=f"{src}.test", origin=settings.origin)
    return train, test


def check_inputs(settings: DataSettings, *, hint: str | None = None) -> None:
    """Check that the input files exist, without reading them (``deepsc-tune validate``).

    Raises
    ------
    DataError
        Naming the key and the missing path.
    """
    _inputs(_with_hint(settings, hint))


#: Fewer validation cells than this: one cell moves accuracy by more than 1 %, too coarse to
#: rank trials (a split of 81 cells "selected" macro-F1 1.000).
MIN_VAL_CELLS = 100


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


_CONTENT_HASHES: dict[tuple[str, int, int], str] = {}


def _identity(inp: _Input) -> dict[str, Any]:
    if inp.builtin:
        import scanpy

        # The bundled file can change between scanpy releases; hash it when it is there.
        bundled = Path(scanpy.__file__).parent / "datasets" / "10x_pbmc68k_reduced.h5ad"
        ident: dict[str, Any] = {"builtin": inp.builtin}
        if bundled.is_file():
            ident["sha256"] = _content_hash(bundled)
        return ident
    stat = inp.path.stat()
    if stat.st_size <= CONTENT_HASH_MAX_BYTES:
        return {"sha256": _content_hash(inp.path)}
    return {"path": str(inp.path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _content_hash(path: Path) -> str:
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    # Trials call prepare_data again and again; hash each file version once per process.
    if key not in _CONTENT_HASHES:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
        _CONTENT_HASHES[key] = digest.hexdigest()
    return _CONTENT_HASHES[key]


def _read(inp: _Input) -> AnnData:
    import anndata

    if inp.builtin:
        import scanpy

        return scanpy.datasets.pbmc68k_reduced()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            adata = anndata.read_h5ad(inp.path)
    except Exception as exc:  # h5py/anndata raise many types for a file that is not h5ad
        raise DataError(f"cannot read {inp.path} ({inp.key}) as an .h5ad file: {type(exc).__name__}: {exc}") from exc
    if adata.X is None:
        raise DataError(f"{inp.path} ({inp.key}) has no expression matrix X")
    n_cells, n_genes = adata.shape
    if n_genes == 0:
        raise DataError(f"{inp.path} ({inp.key}) has 0 genes (X is {n_cells} x 0); expected cells x genes")
    if n_cells and _all_zero(adata.X):
        raise DataError(
            f"{inp.path} ({inp.key}): X is all zero ({n_cells} x {n_genes}); expected expression"
            " values (are they in a layer or .raw of another file?)"
        )
    return adata


def _all_zero(matrix) -> bool:
    if sp.issparse(matrix):
        return not np.any(matrix.data)
    return not np.any(np.asarray(matrix))


def _listing(items) -> str:
    items = [str(i) for i in items]
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def _labels(adata: AnnData, *, label_key: str, inp: _Input, src: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as strings and a mask of cells that have one."""
    if label_key not in adata.obs.columns:
        raise DataError(
            f"{src}.label_key: column {label_key!r} not in obs of {inp.label} ({inp.key});"
            f" available obs columns: {_listing(adata.obs.columns)}"
        )
    column = adata.obs[label_key]
    has_label = ~column.isna().to_numpy()
    return column.astype(str).to_numpy(dtype=object), has_label


# --------------------------------------------------------------------------------------------
# Splitting
# --------------------------------------------------------------------------------------------


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


def split_cells(settings: DataSettings, *, hint: str | None = None) -> CellSplit:
    """Read the input file(s) and decide which cells are train, validation and test.

    No expression values are used, so the split does not depend on ``normalize`` or
    ``n_top_genes``. :func:`prepare_data` and :func:`write_split` both split through here.

    Parameters
    ----------
    settings
        Validated data settings.
    hint
        Where the dataset can be obtained, added to "file not found" errors (see
        :func:`prepare_data`).

    Returns
    -------
    CellSplit

    Raises
    ------
    DataError
        Missing or unreadable files, missing columns or values, empty splits, fewer than two
        classes left.
    """
    train_inp, test_inp = _inputs(_with_hint(settings, hint))
    train_ad = _read(train_inp)
    test_ad = _read(test_inp) if test_inp else None
    return _split(settings, train_ad=train_ad, test_ad=test_ad, train_inp=train_inp, test_inp=test_inp)


def _split(settings, *, train_ad, test_ad, train_inp, test_inp) -> CellSplit:
    from sklearn.model_selection import train_test_split

    src = settings.source
    notes: list[str] = []
    labels, has_label = _labels(train_ad, label_key=settings.label_key, inp=train_inp, src=src)
    in_test = np.zeros(train_ad.n_obs, dtype=bool)

    if settings.test_split is not None:
        key = settings.test_split.obs_key
        if key not in train_ad.obs.columns:
            raise DataError(
                f"{src}.test_split.obs_key: column {key!r} not in obs of {train_inp.label}"
                f" ({train_inp.key}); available obs columns: {_listing(train_ad.obs.columns)}"
            )
        column = train_ad.obs[key]
        as_text = column.astype(str).where(~column.isna(), None).to_numpy(dtype=object)
        present = sorted({v for v in as_text if v is not None})
        absent = [v for v in settings.test_split.values if v not in present]
        if absent:
            raise DataError(
                f"{src}.test_split.values: {_listing(repr(v) for v in absent)} not found in"
                f" obs[{key!r}] of {train_inp.label}; values that exist: {_listing(present)}"
            )
        in_test = np.isin(as_text, list(settings.test_split.values))

    if not has_label.all():
        notes.append(
            f"ignored {int((~has_label).sum())} cells of {train_inp.label} with no {settings.label_key!r} label"
        )
    pool = np.flatnonzero(~in_test & has_label)
    if pool.size == 0:
        raise DataError(
            f"{src}.test_split: every labelled cell of {train_inp.label} is in the test split"
            f" ({settings.test_split.obs_key} in {list(settings.test_split.values)}); none left"
            " for training"
            if settings.test_split
            else f"{src}.train: {train_inp.label} has no labelled cells in {settings.label_key!r}"
        )

    # Classes are judged on the training pool (before the validation carve-out) so the decision
    # does not move with val_fraction or split_seed.
    counts = pd.Series(labels[pool]).value_counts()
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
            f"{src}.label_key: {len(classes)} class(es) ({_listing(classes)}) left in"
            f" {settings.label_key!r} of {train_inp.label} after dropping classes with fewer than"
            f" min_cells_per_class={settings.min_cells_per_class} training cells; need at least 2"
        )
    class_index = {c: i for i, c in enumerate(classes)}
    pool = pool[np.isin(labels[pool], classes)]

    # Test cells.
    test_idx = y_test = test_source = None
    if settings.test_split is not None or test_ad is not None:
        if test_ad is not None:
            test_source = "test"
            t_labels, t_has = _labels(test_ad, label_key=settings.label_key, inp=test_inp, src=src)
            candidates = np.flatnonzero(t_has)
            if not t_has.all():
                notes.append(
                    f"ignored {int((~t_has).sum())} test cells of {test_inp.label} with no {settings.label_key!r} label"
                )
            test_label = test_inp.label
        else:
            test_source = "train"
            t_labels = labels
            candidates = np.flatnonzero(in_test & has_label)
            test_label = f"{train_inp.label} ({settings.test_split.obs_key} in"
            test_label += f" {list(settings.test_split.values)})"
        known = np.isin(t_labels[candidates], classes)
        if not known.all():
            unseen = pd.Series(t_labels[candidates[~known]]).value_counts()
            notes.append(
                f"dropped {int((~known).sum())} test cells whose label is not among the training"
                " classes: " + ", ".join(f"{c} ({n})" for c, n in unseen.items())
            )
        test_idx = candidates[known]
        if test_idx.size == 0:
            raise DataError(
                f"{src}.{'test' if test_ad is not None else 'test_split'}: the test split of"
                f" {test_label} is empty after keeping cells whose {settings.label_key!r} is one"
                f" of the training classes ({_listing(classes)})"
            )
        y_test = np.array([class_index[c] for c in t_labels[test_idx]], dtype=np.int64)
    elif settings.test_fraction is not None:
        # A random hold-out for data without a donor or condition to split on; carved before
        # validation, so the validation split never sees test cells.
        test_source = "train"
        y_all = np.array([class_index[c] for c in labels[pool]], dtype=np.int64)
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
        pool = np.sort(pool)
        notes.append(
            f"test: {test_idx.size} random cells held out (test_fraction"
            f" {settings.test_fraction:g}{', stratified' if strat else ', NOT stratified'}),"
            " only ever reported"
        )

    # Validation cells come from the training pool only; stratified when every class can give
    # at least one cell to each side (scikit-learn's condition), else a plain shuffled split.
    y_pool = np.array([class_index[c] for c in labels[pool]], dtype=np.int64)
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
    if stratify:
        notes.append(
            f"validation: {val_idx.size} of {pool.size} training cells"
            f" (val_fraction {settings.val_fraction:g}), stratified by {settings.label_key!r},"
            f" split_seed {settings.split_seed}"
        )
    else:
        reason = (
            "a class has fewer than 2 cells"
            if per_class.min() < 2
            else "too few cells to give every class a validation cell"
        )
        notes.append(
            f"validation: {val_idx.size} of {pool.size} training cells"
            f" (val_fraction {settings.val_fraction:g}), NOT stratified ({reason}),"
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

    # Sorted positions keep file order (easier to read, cheaper to slice); training shuffles.
    order_t, order_v = np.argsort(train_idx), np.argsort(val_idx)
    return CellSplit(
        train=train_idx[order_t].astype(np.int64),
        val=val_idx[order_v].astype(np.int64),
        test=None if test_idx is None else test_idx.astype(np.int64),
        test_source=test_source,
        y_train=y_train[order_t].astype(np.int64),
        y_val=y_val[order_v].astype(np.int64),
        y_test=y_test,
        classes=classes,
        dropped_classes=dropped,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def _values(matrix) -> np.ndarray:
    """The stored values of a matrix (nonzeros of a sparse one)."""
    if sp.issparse(matrix):
        return np.asarray(matrix.data)
    return np.asarray(matrix).ravel()


def _is_counts(matrix) -> bool:
    values = _values(matrix)
    return bool(np.all(values >= 0) and np.all(values == np.round(values)))


def _rows(matrix, rows: np.ndarray):
    if sp.issparse(matrix):
        return sp.csr_matrix(matrix)[rows]
    return np.asarray(matrix)[rows]


def _expression(adata: AnnData, rows: np.ndarray, *, settings: DataSettings, inp: _Input):
    """Expression of ``rows`` ready for modelling, with its gene names and a note.

    Normalisation is per cell, so normalising train, validation and test cells together leaks
    nothing; it runs before any gene subsetting because library size needs every gene.
    """
    import anndata
    import scanpy as sc

    src = settings.source
    x = _rows(adata.X, rows)
    genes = adata.var_names
    normalise = False
    if settings.normalize == "none":
        how = "X used as is (normalize: none)"
    elif settings.normalize == "log1p":
        normalise = True
        how = "X -> normalize_total(target_sum=1e4) + log1p (normalize: log1p)"
    elif _is_counts(x):
        normalise = True
        how = "X holds raw counts -> normalize_total(target_sum=1e4) + log1p"
    elif adata.raw is not None and np.all(_values(raw := _rows(adata.raw.X, rows)) >= 0):
        x, genes = raw, adata.raw.var_names
        if _is_counts(x):
            normalise = True
            how = "X is not counts; .raw holds counts -> normalize_total(target_sum=1e4) + log1p"
        else:
            how = "X is not counts; used .raw (log-normalised values) as is"
    else:
        how = "X is not raw counts and there is no usable .raw; X used as is"

    bad = int(np.count_nonzero(~np.isfinite(_values(x))))
    if bad:
        raise DataError(
            f"{inp.key}: {inp.label} has {bad} NaN or infinite expression values;"
            " expected finite numbers (clean the file first)"
        )
    if normalise:
        low = float(_values(x).min(initial=0.0))
        if low < 0:
            raise DataError(
                f"{src}.normalize: 'log1p' needs non-negative counts but X of {inp.label}"
                f" ({inp.key}) has negative values (min {low:g}); use normalize: auto or none"
            )
        tmp = anndata.AnnData(X=x.astype(np.float32, copy=True))
        sc.pp.normalize_total(tmp, target_sum=TARGET_SUM)
        sc.pp.log1p(tmp)
        x = tmp.X
    elif not sp.issparse(x):
        x = np.asarray(x, dtype=np.float32)
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)
    genes = pd.Index([str(g) for g in genes])
    if not genes.is_unique:
        # Alignment and HVG selection need unique names; same rule as anndata's make_unique.
        genes = pd.Index(anndata.utils.make_index_unique(genes))
        how += "; duplicate gene names made unique (anndata's var_names_make_unique rule)"
    return x, genes, f"normalisation of {inp.key} ({inp.label}): {how}"


def _dense(matrix, columns: np.ndarray | None = None) -> np.ndarray:
    if columns is not None:
        matrix = matrix[:, columns]
    if sp.issparse(matrix):
        matrix = matrix.toarray()
    return np.ascontiguousarray(matrix, dtype=np.float32)


def _check_hvg_input(x_train, genes: pd.Index, *, settings: DataSettings, inp: _Input) -> None:
    """Highly-variable-gene selection needs non-negative (log-normalised) values."""
    n_top = settings.n_top_genes
    if n_top is None or n_top >= len(genes):
        return
    low = float(_values(x_train).min(initial=0.0))
    if low < 0:
        raise DataError(
            f"{settings.source}.n_top_genes={n_top}: selecting highly variable genes needs"
            f" non-negative values, but the expression of {inp.label} ({inp.key}) has negative"
            f" values (min {low:g}; scaled data?); unset n_top_genes or give counts or"
            " log-normalised values"
        )


def _select_genes(x_train, genes: pd.Index, *, n_top_genes: int | None) -> tuple[np.ndarray, str]:
    """Columns to keep, chosen on training cells only."""
    if n_top_genes is None or n_top_genes >= len(genes):
        why = "n_top_genes unset" if n_top_genes is None else f"n_top_genes {n_top_genes} >= genes"
        return np.arange(len(genes)), f"genes: all {len(genes)} ({why})"
    import anndata
    import scanpy as sc

    tmp = anndata.AnnData(X=x_train, var=pd.DataFrame(index=genes))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        table = sc.pp.highly_variable_genes(tmp, flavor=HVG_FLAVOR, n_top_genes=n_top_genes, inplace=False)
    keep = np.flatnonzero(table["highly_variable"].to_numpy())
    if keep.size > n_top_genes:
        # scanpy keeps every gene tied at the cut-off; trim to exactly n_top_genes (ties broken
        # by gene order) so the input width is what the user asked for.
        score = np.nan_to_num(table["dispersions_norm"].to_numpy()[keep], nan=-np.inf)
        keep = np.sort(keep[np.argsort(-score, kind="stable")[:n_top_genes]])
    return keep, (
        f"genes: {keep.size} highly variable of {len(genes)} (n_top_genes {n_top_genes}),"
        f" chosen on the {x_train.shape[0]} training cells only (scanpy, flavor {HVG_FLAVOR!r})"
    )


# --------------------------------------------------------------------------------------------
# Prepared data, fingerprint, cache
# --------------------------------------------------------------------------------------------


@dataclass
class PreparedData:
    """Model-ready arrays of one dataset and split.

    ``X_*`` are dense float32 (cells x ``genes``), ``y_*`` int64 indices into ``classes``;
    ``X_test``/``y_test`` are ``None`` without a test split. ``indices`` holds the row positions
    of each split in its input file (see :class:`CellSplit`). The same object is handed to every
    trial of a process: do not modify the arrays in place.
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


_MEMO: dict[str, PreparedData] = {}


def clear_memo() -> None:
    """Forget the in-process copies of prepared data (the disk cache is kept)."""
    _MEMO.clear()


def data_fingerprint(settings: DataSettings, *, hint: str | None = None) -> str:
    """sha256 identifying the input file(s) and every setting that shapes the prepared data.

    Files up to :data:`CONTENT_HASH_MAX_BYTES` are identified by content, larger ones by
    absolute path, size and modification time. ``origin`` is not part of it.

    Raises
    ------
    DataError
        When an input file is missing (``hint`` as in :func:`prepare_data`).
    """
    train_inp, test_inp = _inputs(_with_hint(settings, hint))
    payload = {
        "format": CACHE_FORMAT,
        "train": _identity(train_inp),
        "test": _identity(test_inp) if test_inp else None,
        "settings": {k: v for k, v in settings.to_dict().items() if k not in ("train", "test", "origin")},
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def prepare_data(settings: DataSettings, *, cache_dir: Path | None = None, hint: str | None = None) -> PreparedData:
    """Load, split and preprocess a dataset once; later calls reuse the result.

    Order: split cells (:func:`split_cells`), normalise per cell with scanpy (``normalize``),
    choose ``n_top_genes`` highly variable genes on the training cells only, densify the chosen
    genes, align a separate test file's genes to them by name (missing genes are 0).

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
        Any problem with the input files (see :func:`split_cells`), NaN/inf values, negative
        values with ``normalize: log1p``, no genes shared with a test file.
    """
    settings = _with_hint(settings, hint)
    fingerprint = data_fingerprint(settings)
    if fingerprint in _MEMO:
        return _MEMO[fingerprint]
    prepared = None
    if cache_dir is not None:
        prepared = _load_cached(Path(cache_dir), fingerprint)
    if prepared is None:
        prepared = _compute(settings, fingerprint=fingerprint)
        if cache_dir is not None:
            _save_cached(Path(cache_dir), prepared)
    _MEMO[fingerprint] = prepared
    return prepared


def _compute(settings: DataSettings, *, fingerprint: str) -> PreparedData:
    train_inp, test_inp = _inputs(settings)
    train_ad = _read(train_inp)
    test_ad = _read(test_inp) if test_inp else None
    split = _split(settings, train_ad=train_ad, test_ad=test_ad, train_inp=train_inp, test_inp=test_inp)
    notes = list(split.notes)

    # Normalise only the cells that are used, all of the train file's in one go.
    parts = [split.train, split.val]
    if split.test_source == "train":
        parts.append(split.test)
    rows = np.concatenate(parts)
    x, genes, note = _expression(train_ad, rows, settings=settings, inp=train_inp)
    notes.append(note)
    n_train, n_val = split.train.size, split.val.size
    _check_hvg_input(x[:n_train], genes, settings=settings, inp=train_inp)
    keep, note = _select_genes(x[:n_train], genes, n_top_genes=settings.n_top_genes)
    notes.append(note)
    X_train = _dense(x[:n_train], keep)
    X_val = _dense(x[n_train : n_train + n_val], keep)
    kept_genes = genes[keep]
    X_test = None
    if split.test_source == "train":
        X_test = _dense(x[n_train + n_val :], keep)
    elif split.test_source == "test":
        del x  # free the train matrix before reading the test one
        xt, test_genes, note = _expression(test_ad, split.test, settings=settings, inp=test_inp)
        notes.append(note)
        X_test, note = _align_genes(xt, test_genes, kept_genes, inp=test_inp)
        notes.append(note)

    source = {
        "train": train_inp.label,
        "test": test_inp.label if test_inp else None,
        "test_split": settings.test_split.to_dict() if settings.test_split else None,
        "test_source": split.test_source,
        "label_key": settings.label_key,
        "n_cells": {
            "train": int(n_train),
            "val": int(n_val),
            "test": None if split.test is None else int(split.test.size),
        },
    }
    return PreparedData(
        X_train=X_train,
        y_train=split.y_train,
        X_val=X_val,
        y_val=split.y_val,
        X_test=X_test,
        y_test=split.y_test,
        classes=list(split.classes),
        genes=[str(g) for g in kept_genes],
        dropped_classes=dict(split.dropped_classes),
        fingerprint=fingerprint,
        notes=notes,
        source=source,
        indices={"train": split.train, "val": split.val, "test": split.test},
    )


def _align_genes(x, genes: pd.Index, wanted: pd.Index, *, inp: _Input) -> tuple[np.ndarray, str]:
    """Columns of ``x`` reordered to ``wanted`` by name; genes absent from the file are 0."""
    where = genes.get_indexer(wanted)
    present = where >= 0
    if not present.any():
        raise DataError(
            f"{inp.key}: {inp.label} shares no gene names with the training genes"
            f" (e.g. {_listing(list(wanted[:3]))} vs {_listing(list(genes[:3]))});"
            " expected the same gene naming (symbols vs Ensembl IDs?)"
        )
    out = np.zeros((x.shape[0], len(wanted)), dtype=np.float32)
    out[:, present] = _dense(x, where[present])
    missing = int((~present).sum())
    return out, (
        f"test genes aligned to the {len(wanted)} training genes by name: {missing} missing from {inp.label}, set to 0"
    )


@dataclass
class QueryData:
    """A query file's cells, preprocessed as the training cells were (:func:`prepare_query`)."""

    adata: AnnData  # the file as read, to be annotated and written back
    X: np.ndarray  # float32 cells x training genes
    n_missing: int  # training genes absent from the query (set to 0)
    notes: list[str]


def prepare_query(path: Path, *, settings: DataSettings, genes: list[str]) -> QueryData:
    """Read a query ``.h5ad`` and turn it into model input, the way test cells are.

    The same functions as the test split of :func:`prepare_data`: per-cell normalisation by
    ``settings.normalize`` (``auto`` decides on the query's own values), then the columns of
    ``genes`` picked by name; genes the query lacks are 0.

    Raises
    ------
    DataError
        The file is missing or not ``.h5ad``, has NaN/inf values, or shares no gene names.
    """
    inp = _resolve_input(str(path), key="query", origin=None)
    adata = _read(inp)
    x, query_genes, note = _expression(adata, np.arange(adata.n_obs), settings=settings, inp=inp)
    X, _ = _align_genes(x, query_genes, pd.Index(genes), inp=inp)
    n_missing = int(np.count_nonzero(query_genes.get_indexer(pd.Index(genes)) < 0))
    align = (
        f"genes: {len(genes) - n_missing} of the model's {len(genes)} found in {inp.label} by name;"
        f" {n_missing} missing, set to 0"
    )
    return QueryData(adata=adata, X=X, n_missing=n_missing, notes=[note, align])


_ARRAYS = ("X_train", "y_train", "X_val", "y_val", "X_test", "y_test")


def _cache_paths(cache_dir: Path, fingerprint: str) -> tuple[Path, Path]:
    stem = f"data-{fingerprint[:20]}"
    return cache_dir / f"{stem}.npz", cache_dir / f"{stem}.json"


def _save_cached(cache_dir: Path, prepared: PreparedData) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    npz, meta = _cache_paths(cache_dir, prepared.fingerprint)
    arrays = {k: getattr(prepared, k) for k in _ARRAYS if getattr(prepared, k) is not None}
    arrays.update({f"idx_{k}": v for k, v in prepared.indices.items() if v is not None})
    info = {
        "fingerprint": prepared.fingerprint,
        "format": CACHE_FORMAT,
        "classes": prepared.classes,
        "genes": prepared.genes,
        "dropped_classes": prepared.dropped_classes,
        "notes": prepared.notes,
        "source": prepared.source,
    }
    # Several worker processes may prepare at once: write to a private name, then rename, so a
    # reader sees a whole file or none. The .json goes last and marks the entry complete.
    tmp = npz.with_name(f".{npz.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
    os.replace(tmp, npz)
    tmp = meta.with_name(f".{meta.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, meta)


def _load_cached(cache_dir: Path, fingerprint: str) -> PreparedData | None:
    npz, meta = _cache_paths(cache_dir, fingerprint)
    try:
        info = json.loads(meta.read_text())
        if info.get("fingerprint") != fingerprint or info.get("format") != CACHE_FORMAT:
            return None
        with np.load(npz, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        # Missing or damaged entry: recompute and overwrite it.
        return None
    return PreparedData(
        **{k: arrays.get(k) for k in _ARRAYS},
        classes=info["classes"],
        genes=info["genes"],
        dropped_classes=info["dropped_classes"],
        fingerprint=fingerprint,
        notes=info["notes"],
        source=info["source"],
        indices={k: arrays.get(f"idx_{k}") for k in ("train", "val", "test")},
        from_cache=True,
    )


# --------------------------------------------------------------------------------------------
# Export for DeepSC's own fine-tuner
# --------------------------------------------------------------------------------------------


def write_split(
    settings: DataSettings,
    out_dir: Path,
    *,
    cache_dir: Path | None = None,
    hint: str | None = None,
) -> dict[str, Path]:
    """Write the split's cells, unprocessed, as ``train.h5ad``, ``val.h5ad`` and ``test.h5ad``.

    The cells are exactly those of :func:`prepare_data` (same call, same cache), so DeepSC's
    fine-tuner can be run on the split deepsc-tune tuned on. Each file keeps the input's
    original ``X``, ``layers``, ``.raw``, ``var`` and all ``obs`` columns (the label column
    included); embeddings and graphs (``obsm``, ``obsp``, ``varm``, ``uns``) are left out
    because they were computed on all cells. Cells of dropped classes are not written, and the
    label column is categorical with exactly the kept classes (``PreparedData.classes``, same
    order in every file), so category codes agree across the three files.

    Parameters
    ----------
    settings
        Validated data settings.
    out_dir
        Folder to write to (created if needed); existing files are replaced.
    cache_dir, hint
        Passed to :func:`prepare_data`.

    Returns
    -------
    dict[str, Path]
        ``{"train": ..., "val": ..., "test": ...}`` (no ``"test"`` without a test split).
    """
    settings = _with_hint(settings, hint)
    prepared = prepare_data(settings, cache_dir=cache_dir)
    train_inp, test_inp = _inputs(settings)
    train_ad = _read(train_inp)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in ("train", "val", "test"):
        rows = prepared.indices.get(name)
        if rows is None:
            continue
        adata = train_ad
        if name == "test" and prepared.source.get("test_source") == "test":
            adata = _read(test_inp)
        part = _original_subset(adata, rows)
        part.obs[settings.label_key] = pd.Categorical(
            part.obs[settings.label_key].astype(str), categories=prepared.classes
        )
        path = out_dir / f"{name}.h5ad"
        part.write_h5ad(path)
        written[name] = path
    return written


def _original_subset(adata: AnnData, rows: np.ndarray) -> AnnData:
    import anndata

    view = adata[rows]
    out = anndata.AnnData(
        X=view.X.copy(),
        obs=view.obs.copy(),
        var=view.var.copy(),
        layers={k: v.copy() for k, v in view.layers.items()},
    )
    if adata.raw is not None:
        out.raw = anndata.AnnData(X=adata.raw.X[rows], var=adata.raw.var.copy(), obs=out.obs)
    return out
