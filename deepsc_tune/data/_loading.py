"""Input files of the ``data:`` block: resolve, read and check them, and read their labels.

An input is a path to an ``.h5ad`` file (relative to the working directory, like any
command-line tool) or a built-in dataset (``builtin:NAME``, a file scanpy ships). Problems
raise :class:`~deepsc_tune.errors.DataError` with a one-line message naming the key, the file
and the value. anndata and scanpy are imported where used, so importing the package stays fast.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp

from deepsc_tune.data._settings import BUILTIN_PREFIX
from deepsc_tune.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

    from deepsc_tune.data._settings import DataSettings


# Longest list of obs columns / values quoted in an error message.
_MAX_LISTED = 30


@dataclass(frozen=True)
class InputFile:
    """One input as the user named it (``value`` under key path ``key``, e.g. ``data.train``):
    a built-in dataset or an absolute path to an existing file."""

    key: str  # key path, e.g. "data.train"
    value: str  # as written by the user
    builtin: str | None = None
    path: Path | None = None  # absolute

    @property
    def label(self) -> str:
        return self.value if self.builtin else str(self.path)


def resolve_input(value: str, *, key: str, origin: str | None) -> InputFile:
    """The input ``value`` names; a missing file is a :class:`DataError` saying where to get it."""
    if value.startswith(BUILTIN_PREFIX):
        return InputFile(key=key, value=value, builtin=value[len(BUILTIN_PREFIX) :])
    # Relative paths are relative to the working directory, like any command-line tool.
    path = Path(value).expanduser()
    absolute = path if path.is_absolute() else Path.cwd() / path
    if not absolute.is_file():
        what = "is a directory, not a file" if absolute.is_dir() else "file not found"
        where = f"{key}" if path.is_absolute() else f"{key}, relative to {Path.cwd()}"
        hint = f"; it can be obtained from: {origin}" if origin else ""
        raise DataError(f"{what}: {value} ({where}); download the dataset or point {key} at your copy{hint}")
    return InputFile(key=key, value=value, path=absolute.resolve())


def with_hint(settings: DataSettings, hint: str | None) -> DataSettings:
    """``settings`` with ``origin`` set to ``hint`` when it has none."""
    # The data block's own origin wins; a caller's hint (search-space ``source:``) fills in.
    if hint and not settings.origin:
        return replace(settings, origin=str(hint))
    return settings


def resolve_inputs(settings: DataSettings) -> tuple[InputFile, InputFile | None]:
    """The ``train`` input and the ``test`` one (``None`` without a test file)."""
    src = settings.source
    train = resolve_input(settings.train, key=f"{src}.train", origin=settings.origin)
    test = None
    if settings.test is not None:
        test = resolve_input(settings.test, key=f"{src}.test", origin=settings.origin)
    return train, test


def check_inputs(settings: DataSettings, *, hint: str | None = None) -> None:
    """Check that the input files exist, without reading them (``deepsc-tune validate``).

    Raises
    ------
    DataError
        Naming the key and the missing path.
    """
    resolve_inputs(with_hint(settings, hint))


def read_input(inp: InputFile) -> AnnData:
    """The input as an AnnData; refuses files that are not ``.h5ad``, have no genes or an all-zero X."""
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


def listing(items) -> str:
    """``items`` comma-separated for an error message, the first 30 and how many more."""
    items = [str(i) for i in items]
    more = f", ... ({len(items) - _MAX_LISTED} more)" if len(items) > _MAX_LISTED else ""
    return ", ".join(items[:_MAX_LISTED]) + more


def read_labels(adata: AnnData, *, label_key: str, inp: InputFile, src: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels as strings and a mask of cells that have one."""
    if label_key not in adata.obs.columns:
        raise DataError(
            f"{src}.label_key: column {label_key!r} not in obs of {inp.label} ({inp.key});"
            f" available obs columns: {listing(adata.obs.columns)}"
        )
    column = adata.obs[label_key]
    has_label = ~column.isna().to_numpy()
    return column.astype(str).to_numpy(dtype=object), has_label
