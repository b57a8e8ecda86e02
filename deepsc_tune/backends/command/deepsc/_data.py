"""The cells DeepSC trains and evaluates on, from the labels of its two files only (never X).

DeepSC's fine-tuner (``cell_type_annotation.py``, ``build_dataset_sampler_from_h5ad``, the same
at ``2416d85`` and ``abcf2be``) reads ``data_path`` and, with ``seperated_train_eval_dataset``,
``data_path_eval``; keeps only the cells whose ``obs[obs_celltype_col]`` is a class of **both**
files (line 327: ``common_celltypes = train_celltypes & test_celltypes``; lines 359-360 filter
both files); and numbers the classes in sorted order. Without the flag it splits ``data_path``
itself (``train_test_split(test_size=0.2)``, stratified). So the number of training cells, which
sets the real number of optimizer steps (:mod:`deepsc_tune.backends.command.deepsc._schedule`), and the validation
cells' majority class (the chance level, :mod:`deepsc_tune.data._chance`) come from the obs labels.

Only the label column of ``obs`` is read (h5py and anndata's element reader); X, layers and
obsm stay on disk. Errors are :class:`~deepsc_tune.errors.DataError` naming the key, the
file and what is expected. This module never imports torch or Optuna.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from deepsc_tune.errors import DataError

#: DeepSC's own defaults for ``obs_celltype_col`` and ``var_name_in_h5ad`` (configs/finetune/finetune.yaml).
DEFAULT_LABEL_COLUMN = "celltype"
DEFAULT_GENE_COLUMN = "gene_name"
#: Fraction of ``data_path`` DeepSC holds out itself without ``seperated_train_eval_dataset``.
OWN_SPLIT_TEST_SIZE = 0.2


class CellsError(DataError):
    """A file DeepSC reads cannot be counted: ``key`` names the setting, ``detail`` the rest."""

    def __init__(self, key: str, detail: str) -> None:
        super().__init__(f"{key}: {detail}")
        self.key = key
        self.detail = detail


@dataclass(frozen=True)
class DeepscCells:
    """What DeepSC will train and evaluate on, counted from the labels."""

    #: Cells of ``data_path`` DeepSC trains on (their class is in both files).
    n_train: int
    #: Cells in ``data_path`` before the classes are intersected.
    n_train_file: int
    #: The classes DeepSC keeps, in its order (sorted).
    classes: tuple[str, ...]
    #: Evaluation cells per class (``classes`` order), or ``None`` when DeepSC splits
    #: ``data_path`` itself (then deepsc-tune does not know which cells it holds out).
    eval_counts: tuple[int, ...] | None
    train_path: str
    eval_path: str | None = None

    def eval_codes(self) -> np.ndarray | None:
        """The evaluation cells' class numbers (for :func:`deepsc_tune.data._chance.chance_levels`)."""
        if self.eval_counts is None:
            return None
        return np.repeat(np.arange(len(self.classes)), self.eval_counts)


def _value(setting: Any) -> Any:
    return getattr(setting, "value", setting)


def _where(settings: Mapping[str, Any], key: str) -> str:
    return getattr(settings.get(key), "where", f"finetune.overrides.{key}")


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def read_labels(path: str, column: str, *, key: str) -> np.ndarray:
    """``obs[column]`` of an ``.h5ad`` file as strings, without reading X.

    ``key`` names the setting that points at the file (``finetune.overrides.data_path``), for
    the error message.

    Raises
    ------
    DataError
        The file cannot be read as ``.h5ad``, or has no such column (the message lists the
        columns it has).
    """
    st = os.stat(path)
    return _read_labels(os.path.abspath(path), column, key, st.st_mtime_ns, st.st_size).copy()


@functools.lru_cache(maxsize=16)
def _read_labels(path: str, column: str, key: str, mtime_ns: int, size: int) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            obs = f.get("obs")
            if isinstance(obs, h5py.Group):
                names = [n for n in obs.keys() if n not in ("_index", "__categories")]
                if column not in obs:
                    raise _no_column(key, path, column, names)
                return np.asarray(_read_elem(obs[column])).astype(str)
    except (OSError, KeyError, ValueError, TypeError) as e:
        raise CellsError(
            key,
            f"{path!r} cannot be read as an .h5ad file ({type(e).__name__}: {e}); expected "
            "the AnnData file DeepSC reads (deepsc-tune split writes it)",
        ) from None
    # An old layout (obs as one compound dataset): anndata reads it, X stays on disk.
    import anndata

    adata = anndata.read_h5ad(path, backed="r")
    try:
        if column not in adata.obs:
            raise _no_column(key, path, column, list(adata.obs.columns))
        return adata.obs[column].astype(str).to_numpy()
    finally:
        adata.file.close()


def _read_elem(node: Any) -> Any:
    try:
        from anndata.io import read_elem
    except ImportError:  # anndata < 0.11
        from anndata.experimental import read_elem
    return read_elem(node)


def _no_column(key: str, path: str, column: str, names: list[str]) -> CellsError:
    shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
    return CellsError(
        key,
        f"{path!r} has no obs column {column!r} (obs_celltype_col); its columns: "
        f"{shown or 'none'}; expected obs_celltype_col set to the column with the cell types",
    )


def deepsc_cells(settings: Mapping[str, Any]) -> DeepscCells | None:
    """The cells DeepSC trains and evaluates on, or ``None`` when ``data_path`` is not a file.

    ``settings`` are DeepSC's effective settings (plain values, or
    :class:`~deepsc_tune.backends.command.deepsc._space.Setting` with where they come from): ``data_path``,
    ``data_path_eval``, ``seperated_train_eval_dataset``, ``obs_celltype_col``.

    Raises
    ------
    DataError
        A file cannot be read, lacks the label column, or the two files share no class.
    """
    train = _value(settings.get("data_path"))
    if not isinstance(train, str) or not os.path.isfile(os.path.expanduser(train)):
        return None
    train = os.path.expanduser(train)
    column = str(_value(settings.get("obs_celltype_col")) or DEFAULT_LABEL_COLUMN)
    train_labels = read_labels(train, column, key=_where(settings, "data_path"))
    if not _truthy(_value(settings.get("seperated_train_eval_dataset"))):
        n = len(train_labels)
        n_test = math.ceil(OWN_SPLIT_TEST_SIZE * n)  # scikit-learn's train_test_split
        classes = tuple(sorted(set(train_labels)))
        return DeepscCells(n - n_test, n, classes, None, train)
    eval_path = _value(settings.get("data_path_eval"))
    if not isinstance(eval_path, str) or not os.path.isfile(os.path.expanduser(eval_path)):
        return None
    eval_path = os.path.expanduser(eval_path)
    eval_labels = read_labels(eval_path, column, key=_where(settings, "data_path_eval"))
    classes = tuple(sorted(set(train_labels) & set(eval_labels)))
    if not classes:
        raise CellsError(
            _where(settings, "data_path_eval"),
            f"{eval_path!r} shares no cell type ({column}) with data_path {train!r}, so DeepSC would "
            "have nothing to train on; expected the validation cells of the same cell types "
            "(deepsc-tune split writes both files)",
        )
    kept = set(classes)
    n_train = int(sum(1 for c in train_labels if c in kept))
    values, counts = np.unique(eval_labels, return_counts=True)
    by_class = dict(zip(values.tolist(), counts.tolist()))
    return DeepscCells(n_train, len(train_labels), classes, tuple(int(by_class[c]) for c in classes), train, eval_path)


def deepsc_chance(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """Chance levels of DeepSC's evaluation file (:func:`deepsc_tune.data._chance.chance_levels`), or
    ``None`` when there is none to read (DeepSC splitting ``data_path`` itself, no file)."""
    from deepsc_tune.data import chance_levels

    cells = deepsc_cells(settings)
    if cells is None or cells.eval_counts is None:
        return None
    return {**chance_levels(cells.eval_codes(), cells.classes), "source": cells.eval_path}


class DeepscInputs(NamedTuple):
    """The training and validation files of a DeepSC study and the columns DeepSC reads."""

    train: Path
    val: Path | None  # None: DeepSC evaluates on 20 % of ``train`` it splits off itself
    label_col: str
    gene_col: str


def deepsc_inputs(settings: Any) -> DeepscInputs | None:
    """The files a command-backend study running DeepSC reads (``None``: not DeepSC, or no
    ``data_path`` that is a file). ``settings``: its :class:`~deepsc_tune.backends.command._settings.CommandSettings`;
    the values are DeepSC's effective ones (:func:`deepsc_tune.backends.command.deepsc._checkout.deepsc_values`)."""
    from deepsc_tune.backends.command.deepsc._checkout import deepsc_values, is_deepsc_command

    if not is_deepsc_command(settings.command):
        return None
    values = deepsc_values(settings, settings.fixed)

    def path(key: str) -> Path | None:
        value = values.get(key)
        if not isinstance(value, str) or not value:
            return None
        p = Path(os.path.expanduser(value))
        return p if p.is_file() else None

    train = path("data_path")
    if train is None:
        return None
    return DeepscInputs(
        train=train,
        val=path("data_path_eval") if _truthy(values.get("seperated_train_eval_dataset")) else None,
        label_col=str(values.get("obs_celltype_col") or DEFAULT_LABEL_COLUMN),
        gene_col=str(values.get("var_name_in_h5ad") or DEFAULT_GENE_COLUMN),
    )


__all__ = [
    "CellsError",
    "DEFAULT_GENE_COLUMN",
    "DEFAULT_LABEL_COLUMN",
    "DeepscCells",
    "DeepscInputs",
    "deepsc_cells",
    "deepsc_chance",
    "deepsc_inputs",
    "read_labels",
]
