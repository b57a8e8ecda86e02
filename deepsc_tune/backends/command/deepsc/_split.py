"""Train / validation / test files that DeepSC's own fine-tuner reads as they are
(:func:`write_deepsc_split`), or with the input's own values (:func:`write_split`).

What DeepSC 2416d85 does with an ``.h5ad`` (``deepsc/data/dataset.py``,
``deepsc/data/data_collator.py``, ``finetune/cell_type_annotation.py``):

- labels from ``obs[obs_celltype_col]`` (default ``celltype``); classes missing from either
  file are dropped;
- gene names from ``var[var_name_in_h5ad]`` (default ``gene_name``), else ``var.index``; each
  name is looked up in the gene map ``csv_path`` (columns ``feature_name,id``) and genes not
  in it are dropped without a word;
- ``X`` is used as it is: each cell's nonzero values are min-max binned into ``num_bin`` bins
  and fed to the model as ``value_log1p``. DeepSC does not normalise, so the file must already
  hold log1p-scale values.

So the files written here hold ``log1p`` of counts per 10,000 (scanpy's
``normalize_total(target_sum=1e4)`` then ``log1p``) computed from raw counts; data that are
already log-normalised are kept as they are. The decision is data/_prepare.py's own (the one the
built-in fine-tuner uses, ``data.normalize``); it is stated in the notes. All genes are kept
(no highly variable genes: DeepSC maps genes through its own vocabulary), as a sparse matrix,
with ``var[gene_col]``, and the label column under DeepSC's ``obs_celltype_col`` name. The
cells are those of :func:`deepsc_tune.data._split.split_cells`, the same split as the built-in
fine-tuner's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepsc_tune.backends.command.deepsc._data import DEFAULT_GENE_COLUMN, DEFAULT_LABEL_COLUMN
from deepsc_tune.data import (
    DataSettings,
    prepare_data,
    prepare_expression,
    read_input,
    resolve_inputs,
    split_adata,
    with_hint,
)
from deepsc_tune.errors import DataError

if TYPE_CHECKING:  # pragma: no cover
    from anndata import AnnData

#: Columns of DeepSC's gene map (``csv_path``).
GENE_MAP_COLUMNS = ("feature_name", "id")

_ENSEMBL = re.compile(r"^ENS[A-Z]*G\d{6,}(\.\d+)?$")


@dataclass
class DeepscSplit:
    """What :func:`write_deepsc_split` wrote.

    ``overrides`` are the DeepSC settings that point at the files (``data_path`` = train,
    ``data_path_eval`` = validation: DeepSC evaluates, and so the study selects, on it).
    ``genes_matched`` is how many of the training file's genes DeepSC will see through the
    gene map (``None`` without a map).
    """

    paths: dict[str, Path]
    label_col: str
    gene_col: str
    n_genes: int
    gene_map: Path | None
    genes_matched: int | None
    overrides: dict[str, Any]
    notes: list[str] = field(default_factory=list)


def deepsc_options(finetune: Mapping[str, Any] | None) -> dict[str, Any]:
    """``label_col``, ``gene_col`` and ``gene_map`` from a ``finetune:`` block (its fixed keys
    or ``overrides``: ``obs_celltype_col``, ``var_name_in_h5ad``, ``csv_path``), DeepSC's
    defaults where unset. ``gene_map`` is relative to the current directory."""
    block = dict(finetune or {})
    given = {str(k).lstrip("+"): v for k, v in (block.get("overrides") or {}).items()}
    given.update({k: v for k, v in block.items() if k != "overrides"})
    gene_map = given.get("csv_path")
    return {
        "label_col": str(given.get("obs_celltype_col") or DEFAULT_LABEL_COLUMN),
        "gene_col": str(given.get("var_name_in_h5ad") or DEFAULT_GENE_COLUMN),
        "gene_map": Path(str(gene_map)).expanduser() if gene_map else None,
    }


def read_gene_map(path: Path) -> set[str]:
    """The gene names (``feature_name``) of a DeepSC gene map, as DeepSC reads them.

    Raises
    ------
    DataError
        The file is missing, unreadable, or lacks the columns ``feature_name,id``.
    """
    path = Path(path)
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(
            f"gene map not found: {path} (csv_path / --gene-map); expected DeepSC's CSV with columns feature_name,id"
        ) from None
    except (OSError, ValueError, pd.errors.ParserError) as e:
        raise DataError(f"gene map {path}: cannot read it as CSV: {str(e).splitlines()[0]}") from None
    missing = [c for c in GENE_MAP_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(
            f"gene map {path}: no column {', '.join(missing)}; expected DeepSC's CSV "
            f"with columns feature_name,id, got {', '.join(map(str, frame.columns))}"
        )
    frame = frame.dropna(subset=list(GENE_MAP_COLUMNS))
    return set(frame["feature_name"].astype(str))


def _gene_kind(names) -> str:
    names = [str(n) for n in names][:2000]
    ensembl = sum(bool(_ENSEMBL.match(n)) for n in names)
    return "Ensembl ids" if names and ensembl * 2 > len(names) else "gene symbols"


def _match_or_refuse(genes: pd.Index, names: set[str], *, gene_map: Path, label: str) -> int:
    matched = int(np.count_nonzero(genes.isin(list(names))))
    if matched:
        return matched
    data_kind, map_kind = _gene_kind(genes), _gene_kind(sorted(names))
    folded = {n.upper() for n in names}
    by_case = int(sum(g.upper() in folded for g in genes))
    why = (
        f"the data's genes look like {data_kind} (e.g. {', '.join(genes[:3])}) and the map's "
        f"like {map_kind} (e.g. {', '.join(sorted(names)[:3])})"
    )
    if by_case:
        why += f"; {by_case} match when case is ignored (another species' symbols?)"
    fix = (
        "use data whose gene names are of the map's kind, or a gene map of the data's kind"
        if data_kind != map_kind
        else "give the gene map made for this data's gene names"
    )
    raise DataError(
        f"gene map {gene_map}: none of the {len(genes)} genes of {label} is in its "
        f"feature_name column, so DeepSC would see no gene; {why}; {fix}"
    )


def write_deepsc_split(
    settings: DataSettings,
    out_dir: Path,
    *,
    label_col: str = DEFAULT_LABEL_COLUMN,
    gene_col: str = DEFAULT_GENE_COLUMN,
    gene_map: Path | None = None,
    write_gene_map: bool = False,
    hint: str | None = None,
) -> DeepscSplit:
    """Write ``train.h5ad``, ``val.h5ad`` and ``test.h5ad`` for DeepSC's fine-tuner.

    Parameters
    ----------
    settings
        Validated data settings (the split: ``val_fraction``, ``split_seed``, test cells,
        dropped classes; ``normalize`` decides the values, as for the built-in fine-tuner).
    out_dir
        Folder to write to (created if needed); existing files are replaced.
    label_col
        Name of the label column in ``obs`` (DeepSC's ``obs_celltype_col``).
    gene_col
        Name of the gene-name column in ``var`` (DeepSC's ``var_name_in_h5ad``).
    gene_map
        DeepSC's gene map (``csv_path``): count the genes DeepSC will see, refuse when none.
    write_gene_map
        Write ``gene_map.csv`` beside the files instead (:func:`write_random_init_gene_map`):
        every gene of the data, for a random-init model only.
    hint
        Where the dataset can be obtained, for "file not found" errors.

    Returns
    -------
    DeepscSplit

    Raises
    ------
    DataError
        Input problems (as :func:`deepsc_tune.data._split.split_cells`), an unreadable gene map, or a
        gene map that matches none of the data's genes; nothing is written then.
    """
    if write_gene_map and gene_map is not None:
        raise DataError(f"--write-gene-map: a gene map is given already ({gene_map}); expected one or the other")
    names = read_gene_map(gene_map) if gene_map is not None else None
    settings = with_hint(settings, hint)
    # data/_prepare.py's own reading, splitting and normalisation, so both backends see the same cells
    # on the same scale.
    train_inp, test_inp = resolve_inputs(settings)
    train_ad = read_input(train_inp)
    test_ad = read_input(test_inp) if test_inp else None
    cells = split_adata(settings, train_ad=train_ad, test_ad=test_ad, train_inp=train_inp, test_inp=test_inp)
    classes = np.asarray(cells.classes, dtype=object)
    parts = {
        "train": (train_ad, train_inp, cells.train, cells.y_train),
        "val": (train_ad, train_inp, cells.val, cells.y_val),
    }
    if cells.test is not None:
        from_test = cells.test_source == "test"
        parts["test"] = (
            test_ad if from_test else train_ad,
            test_inp if from_test else train_inp,
            cells.test,
            cells.y_test,
        )

    notes = [
        (
            "X: log1p of counts per 10k, the scale DeepSC's fine-tuner expects (it uses X as "
            "it is and bins each cell's values into num_bin bins itself); how each file was made:"
        )
    ]
    built: dict[str, Any] = {}
    matched: dict[str, tuple[int, int]] = {}
    for name, (adata, inp, rows, y) in parts.items():
        x, genes, how = prepare_expression(adata, rows, settings=settings, inp=inp)
        if how not in notes:
            notes.append(how)
        x = sp.csr_matrix(x, dtype=np.float32)
        x.eliminate_zeros()
        if x.nnz and float(x.data.min()) < 0:
            note = (
                f"{inp.key}: X has negative values (scaled data?) and no raw counts: DeepSC "
                "bins each cell's values as log1p expression; give counts or log1p values"
            )
            if note not in notes:
                notes.append(note)
        if names is not None and inp.key not in matched:
            n = _match_or_refuse(genes, names, gene_map=gene_map, label=f"{inp.label} ({inp.key})")
            matched[inp.key] = (n, len(genes))
        built[name] = _deepsc_anndata(
            adata,
            rows,
            x=x,
            genes=genes,
            labels=classes[y],
            classes=cells.classes,
            label_col=label_col,
            gene_col=gene_col,
        )

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, adata in built.items():
        paths[name] = (out_dir / f"{name}.h5ad").resolve()
        adata.write_h5ad(paths[name])

    n_genes = built["train"].n_vars
    if write_gene_map:
        gene_map = write_random_init_gene_map(out_dir / "gene_map.csv", [a.var[gene_col] for a in built.values()])
        notes.append(
            f"gene map {gene_map}: every one of the data's genes, ids 0..n-1, for a random-init model "
            "(load_pretrained_model: false) only; a pretrained model needs the map it was trained with"
        )
    for key, (n, total) in matched.items():
        notes.append(
            f"gene map {gene_map}: DeepSC will see {n} of the {total} genes of {key} "
            f"({n / total:.0%}); it drops the others"
        )
    if names is None and not write_gene_map:
        notes.append(
            "no gene map (finetune.overrides.csv_path or --gene-map): how many of the "
            f"{n_genes} genes DeepSC will see is unknown; it drops genes not in its map"
        )
    notes.extend(cells.notes)
    overrides: dict[str, Any] = {
        "data_path": str(paths["train"]),
        "data_path_eval": str(paths["val"]),
        "seperated_train_eval_dataset": True,
        "obs_celltype_col": label_col,
    }
    if gene_col != DEFAULT_GENE_COLUMN:
        overrides["var_name_in_h5ad"] = gene_col
    if gene_map is not None:
        overrides["csv_path"] = str(Path(gene_map).resolve())
    return DeepscSplit(
        paths=paths,
        label_col=label_col,
        gene_col=gene_col,
        n_genes=n_genes,
        gene_map=gene_map,
        genes_matched=matched[train_inp.key][0] if names is not None else None,
        overrides=overrides,
        notes=notes,
    )


def write_random_init_gene_map(path: Path, gene_lists) -> Path:
    """DeepSC's gene map (``feature_name,id``) for a model trained from scratch: every gene of
    ``gene_lists`` once, in first-seen order, ids ``0 .. n-1`` (DeepSC's collator adds 1 to each
    id and keeps 0 for padding, so ids must stay below the model's ``num_genes``)."""
    names = list(dict.fromkeys(str(g) for genes in gene_lists for g in genes))
    path = Path(path)
    pd.DataFrame({"feature_name": names, "id": np.arange(len(names))}).to_csv(path, index=False)
    return path.resolve()


def _deepsc_anndata(adata, rows, *, x, genes: pd.Index, labels, classes, label_col: str, gene_col: str):
    import anndata

    obs = adata.obs.iloc[rows].copy()
    # Categorical with the kept classes in one order, so codes agree across the three files.
    obs[label_col] = pd.Categorical(np.asarray(labels, dtype=str), categories=list(classes))
    var = pd.DataFrame({gene_col: np.asarray(genes, dtype=str)}, index=pd.Index(genes, dtype=str))
    return anndata.AnnData(X=x, obs=obs, var=var)


# ----------------------------------------------------------------------------- original files


def write_split(
    settings: DataSettings,
    out_dir: Path,
    *,
    cache_dir: Path | None = None,
    hint: str | None = None,
) -> dict[str, Path]:
    """Write the split's cells, unprocessed, as ``train.h5ad``, ``val.h5ad`` and ``test.h5ad``.

    The cells are exactly those of :func:`~deepsc_tune.data._prepare.prepare_data` (same call, same
    cache), so DeepSC's fine-tuner can be run on the split deepsc-tune tuned on. Each file
    keeps the input's original ``X``, ``layers``, ``.raw``, ``var`` and all ``obs`` columns
    (the label column included); embeddings and graphs (``obsm``, ``obsp``, ``varm``, ``uns``)
    are left out because they were computed on all cells. Cells of dropped classes are not
    written, and the label column is categorical with exactly the kept classes
    (``PreparedData.classes``, same order in every file), so category codes agree across the
    three files.

    Parameters
    ----------
    settings
        Validated data settings.
    out_dir
        Folder to write to (created if needed); existing files are replaced.
    cache_dir, hint
        Passed to :func:`~deepsc_tune.data._prepare.prepare_data`.

    Returns
    -------
    dict[str, Path]
        ``{"train": ..., "val": ..., "test": ...}`` (no ``"test"`` without a test split).
    """
    settings = with_hint(settings, hint)
    prepared = prepare_data(settings, cache_dir=cache_dir)
    train_inp, test_inp = resolve_inputs(settings)
    train_ad = read_input(train_inp)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for name in ("train", "val", "test"):
        rows = prepared.indices.get(name)
        if rows is None:
            continue
        adata = train_ad
        if name == "test" and prepared.source.get("test_source") == "test":
            adata = read_input(test_inp)
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
