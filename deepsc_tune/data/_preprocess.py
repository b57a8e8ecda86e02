"""Expression values ready for a model, learned on the training cells only.

Per-cell normalisation (``data.normalize``: ``auto`` decides from the values, ``log1p`` or
``none``) with scanpy, then ``n_top_genes`` highly variable genes chosen on the training
cells only, dense float32 arrays, and a separate test file's (or a query file's) genes aligned
to the training genes by name. Normalisation is per cell, so normalising train, validation
and test cells together leaks nothing; the gene choice is the only statistic learned across
cells, and it sees training cells only. scanpy and anndata are imported where used.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepsc_tune.data._loading import InputFile, listing, read_input, resolve_input
from deepsc_tune.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from deepsc_tune.data._settings import DataSettings
    from deepsc_tune.data._split import CellSplit

#: Library size every cell is scaled to before ``log1p`` (counts per 10k, as DeepSC's guide does).
TARGET_SUM = 1e4
#: scanpy flavour for highly variable genes; expects log-normalised values, which we have.
HVG_FLAVOR = "seurat"


class ModelInput(NamedTuple):
    """The split's cells as dense float32 arrays over ``genes``, and what was done (``notes``)."""

    X_train: np.ndarray
    X_val: np.ndarray
    X_test: np.ndarray | None
    genes: pd.Index
    notes: list[str]


def preprocess_split(
    split: CellSplit,
    *,
    settings: DataSettings,
    train_ad: AnnData,
    test_ad: AnnData | None,
    train_inp: InputFile,
    test_inp: InputFile | None,
) -> ModelInput:
    """Normalise the split's cells, choose genes on its training cells, densify.

    Raises
    ------
    DataError
        NaN/inf values, negative values with ``normalize: log1p`` or with ``n_top_genes``, no
        genes shared with a test file.
    """
    notes = []
    # Normalise only the cells that are used, all of the train file's in one go.
    parts = [split.train, split.val]
    if split.test_source == "train":
        parts.append(split.test)
    rows = np.concatenate(parts)
    x, genes, note = prepare_expression(train_ad, rows, settings=settings, inp=train_inp)
    notes.append(note)
    n_train, n_val = split.train.size, split.val.size
    check_hvg_input(x[:n_train], genes, settings=settings, inp=train_inp)
    keep, note = select_genes(x[:n_train], genes, n_top_genes=settings.n_top_genes)
    notes.append(note)
    X_train = dense(x[:n_train], keep)
    X_val = dense(x[n_train : n_train + n_val], keep)
    kept_genes = genes[keep]
    X_test = None
    if split.test_source == "train":
        X_test = dense(x[n_train + n_val :], keep)
    elif split.test_source == "test":
        del x  # free the train matrix before reading the test one
        xt, test_genes, note = prepare_expression(test_ad, split.test, settings=settings, inp=test_inp)
        notes.append(note)
        X_test, note = align_genes(xt, test_genes, kept_genes, inp=test_inp)
        notes.append(note)
    return ModelInput(X_train, X_val, X_test, kept_genes, notes)


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


def prepare_expression(adata: AnnData, rows: np.ndarray, *, settings: DataSettings, inp: InputFile):
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
        zero = int(np.count_nonzero(np.asarray(x.sum(axis=1)).ravel() == 0)) if x.shape[1] else x.shape[0]
        tmp = anndata.AnnData(X=x.astype(np.float32, copy=True))
        with warnings.catch_warnings():
            # Said once in the note instead ("Some cells have zero counts" on stderr).
            warnings.filterwarnings("ignore", message=".*zero counts", category=UserWarning)
            sc.pp.normalize_total(tmp, target_sum=TARGET_SUM)
        sc.pp.log1p(tmp)
        x = tmp.X
        if zero:
            how += f"; {zero} of {x.shape[0]} cells have all-zero counts (left at 0)"
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


def dense(matrix, columns: np.ndarray | None = None) -> np.ndarray:
    """``matrix`` (sparse or not; only ``columns`` when given) as a C-contiguous float32 array."""
    if columns is not None:
        matrix = matrix[:, columns]
    if sp.issparse(matrix):
        matrix = matrix.toarray()
    return np.ascontiguousarray(matrix, dtype=np.float32)


def check_hvg_input(x_train, genes: pd.Index, *, settings: DataSettings, inp: InputFile) -> None:
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


def select_genes(x_train, genes: pd.Index, *, n_top_genes: int | None) -> tuple[np.ndarray, str]:
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


def align_genes(x, genes: pd.Index, wanted: pd.Index, *, inp: InputFile) -> tuple[np.ndarray, str]:
    """Columns of ``x`` reordered to ``wanted`` by name; genes absent from the file are 0."""
    where = genes.get_indexer(wanted)
    present = where >= 0
    if not present.any():
        raise DataError(
            f"{inp.key}: {inp.label} shares no gene names with the training genes"
            f" (e.g. {listing(list(wanted[:3]))} vs {listing(list(genes[:3]))});"
            " expected the same gene naming (symbols vs Ensembl IDs?)"
        )
    out = np.zeros((x.shape[0], len(wanted)), dtype=np.float32)
    out[:, present] = dense(x, where[present])
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

    The same functions as the test split of :func:`~deepsc_tune.data._prepare.prepare_data`: per-cell
    normalisation by ``settings.normalize`` (``auto`` decides on the query's own values), then
    the columns of ``genes`` picked by name; genes the query lacks are 0.

    Raises
    ------
    DataError
        The file is missing or not ``.h5ad``, holds no cell, has NaN/inf values, or shares no
        gene names.
    """
    inp = resolve_input(str(path), key="query", origin=None)
    adata = read_input(inp)
    if adata.n_obs == 0:
        raise DataError(f"query: {inp.label} holds 0 cells; expected at least one cell to annotate")
    x, query_genes, note = prepare_expression(adata, np.arange(adata.n_obs), settings=settings, inp=inp)
    X, _ = align_genes(x, query_genes, pd.Index(genes), inp=inp)
    n_missing = int(np.count_nonzero(query_genes.get_indexer(pd.Index(genes)) < 0))
    align = (
        f"genes: {len(genes) - n_missing} of the model's {len(genes)} found in {inp.label} by name;"
        f" {n_missing} missing, set to 0"
    )
    return QueryData(adata=adata, X=X, n_missing=n_missing, notes=[note, align])
