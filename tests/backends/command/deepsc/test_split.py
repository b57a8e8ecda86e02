"""`deepsc-tune split` (deepsc_tune/backends/command/deepsc/_split.py): the files are read back and compared with
the original counts of a Baron pancreas subsample (../shared/data); with --for original
(write_split) they keep the input's own values and columns."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp
import yaml
from data_helpers import balanced_labels, counts, settings, write_h5ad
from guards import shared_file
from paths import REPO
from typer.testing import CliRunner

from deepsc_tune.backends.command.deepsc._split import deepsc_options, write_deepsc_split, write_split
from deepsc_tune.cli import app
from deepsc_tune.data import _cache as data_cache
from deepsc_tune.data._prepare import prepare_data
from deepsc_tune.data._settings import DataSettings
from deepsc_tune.data._split import split_cells
from deepsc_tune.errors import DataError

BARON = REPO.parent / "shared" / "data" / "baron_human_pancreas.h5ad"
runner = CliRunner()


@pytest.fixture(autouse=True)
def _fresh_memo():
    data_cache.clear_memo()
    yield
    data_cache.clear_memo()


@pytest.fixture(scope="module")
def baron_small(tmp_path_factory) -> Path:
    """600 Baron cells (donors human1 and human4), all genes, raw counts."""
    full = ad.read_h5ad(shared_file(BARON.name))
    rng = np.random.default_rng(0)
    keep = np.flatnonzero(full.obs["donor"].isin(["human1", "human4"]).to_numpy())
    rows = np.sort(rng.choice(keep, size=600, replace=False))
    small = full[rows].copy()
    path = tmp_path_factory.mktemp("baron") / "baron_small.h5ad"
    small.write_h5ad(path)
    return path


def block(path: Path) -> dict:
    return {
        "train": str(path),
        "label_key": "cell_type1",
        "val_fraction": 0.2,
        "test_split": {"obs_key": "donor", "values": ["human4"]},
        "min_cells_per_class": 5,
    }


def counts_of(path: Path, names) -> sp.csr_matrix:
    original = ad.read_h5ad(path)
    return sp.csr_matrix(original[pd.Index(names)].X, dtype=np.float64)


def log1p_cp10k(counts: sp.csr_matrix) -> np.ndarray:
    dense = counts.toarray()
    return np.log1p(dense / dense.sum(axis=1, keepdims=True) * 1e4)


def test_files_hold_what_deepsc_reads(baron_small, tmp_path):
    settings = DataSettings.from_dict(block(baron_small))
    result = write_deepsc_split(settings, tmp_path / "out", label_col="Celltype")
    original = ad.read_h5ad(baron_small)
    cells = split_cells(settings)
    for name, rows in (("train", cells.train), ("val", cells.val), ("test", cells.test)):
        part = ad.read_h5ad(result.paths[name])
        # exactly the split's cells, the validation file holding the validation cells
        assert list(part.obs_names) == list(original.obs_names[rows])
        # X = log1p(counts per 10k) of the original counts, all genes
        assert part.n_vars == original.n_vars == result.n_genes
        expected = log1p_cp10k(counts_of(baron_small, part.obs_names))
        np.testing.assert_allclose(part.X.toarray(), expected, rtol=1e-5, atol=1e-5)
        assert list(part.var["gene_name"]) == list(original.var_names)
        # the label column under DeepSC's obs_celltype_col name, with the original labels
        assert list(part.obs["Celltype"].astype(str)) == list(original.obs["cell_type1"].iloc[rows].astype(str))
        assert list(part.obs["Celltype"].cat.categories) == cells.classes
    assert set(cells.val).isdisjoint(cells.train)
    test = ad.read_h5ad(result.paths["test"])
    assert set(test.obs["donor"]) == {"human4"}
    assert result.overrides == {
        "data_path": str(result.paths["train"]),
        "data_path_eval": str(result.paths["val"]),
        "seperated_train_eval_dataset": True,
        "obs_celltype_col": "Celltype",
    }
    assert any("raw counts -> normalize_total(target_sum=1e4) + log1p" in n for n in result.notes)


def test_log_normalised_data_are_kept_as_they_are(baron_small, tmp_path):
    adata = ad.read_h5ad(baron_small)
    logged = sp.csr_matrix(log1p_cp10k(sp.csr_matrix(adata.X, dtype=np.float64)).astype(np.float32))
    adata.X = logged
    path = tmp_path / "logged.h5ad"
    adata.write_h5ad(path)
    result = write_deepsc_split(DataSettings.from_dict(block(path)), tmp_path / "out")
    train = ad.read_h5ad(result.paths["train"])
    np.testing.assert_array_equal(train.X.toarray(), logged[adata.obs_names.get_indexer(train.obs_names)].toarray())
    assert "celltype" in train.obs.columns  # DeepSC's default label column
    assert any("X used as is" in n for n in result.notes)


def gene_map(path: Path, names) -> Path:
    pd.DataFrame({"feature_name": list(names), "id": range(1, len(names) + 1)}).to_csv(path, index=False)
    return path


def test_gene_map_coverage(baron_small, tmp_path):
    genes = list(ad.read_h5ad(baron_small, backed="r").var_names)
    mapped = gene_map(tmp_path / "map.csv", genes[::4] + ["NOT_A_GENE"])
    result = write_deepsc_split(DataSettings.from_dict(block(baron_small)), tmp_path / "out", gene_map=mapped)
    assert result.genes_matched == len(genes[::4])
    assert any(f"DeepSC will see {len(genes[::4])} of the {len(genes)} genes" in n for n in result.notes)
    assert result.overrides["csv_path"] == str(mapped.resolve())


def test_gene_map_without_a_match_is_refused_before_writing(baron_small, tmp_path):
    mapped = gene_map(tmp_path / "ens.csv", [f"ENSG{i:011d}" for i in range(300)])
    with pytest.raises(DataError) as info:
        write_deepsc_split(DataSettings.from_dict(block(baron_small)), tmp_path / "out", gene_map=mapped)
    message = str(info.value)
    assert "none of the" in message and "gene symbols" in message and "Ensembl ids" in message
    assert not (tmp_path / "out").exists()

    bad = tmp_path / "bad.csv"
    pd.DataFrame({"gene": ["A"], "id": [1]}).to_csv(bad, index=False)
    with pytest.raises(DataError, match="no column feature_name"):
        write_deepsc_split(DataSettings.from_dict(block(baron_small)), tmp_path / "out", gene_map=bad)


def test_options_from_the_finetune_block():
    opts = deepsc_options(
        {"backend": "command", "overrides": {"obs_celltype_col": "Celltype", "csv_path": "maps/g.csv"}}
    )
    assert opts == {"label_col": "Celltype", "gene_col": "gene_name", "gene_map": Path("maps/g.csv")}
    assert deepsc_options(None) == {"label_col": "celltype", "gene_col": "gene_name", "gene_map": None}


# ----------------------------------------------------------------------------- CLI


def space(tmp_path: Path, path: Path, finetune: dict) -> Path:
    raw = {
        "name": "dsplit",
        "data": block(path),
        "finetune": finetune,
        "search": {"learning_rate": {"low": 1.0e-5, "high": 1.0e-3, "log": True}},
    }
    out = tmp_path / "dsplit.yaml"
    out.write_text(yaml.safe_dump(raw))
    return out


DEEPSC_BLOCK = {
    "backend": "command",
    "command": [sys.executable, "-m", "src.deepsc.finetune.finetune"],
    "overrides": {"obs_celltype_col": "cell_type"},
}


def test_cli_split_for_a_deepsc_space(baron_small, tmp_path):
    genes = list(ad.read_h5ad(baron_small, backed="r").var_names)
    mapped = gene_map(tmp_path / "map.csv", genes[:1000])
    path = space(
        tmp_path, baron_small, {**DEEPSC_BLOCK, "overrides": {"obs_celltype_col": "cell_type", "csv_path": str(mapped)}}
    )
    result = runner.invoke(app, ["split", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    out = result.output
    val = (tmp_path / "out" / "val.h5ad").resolve()
    assert f"data_path_eval: {val}" in out and "seperated_train_eval_dataset: true" in out
    assert "obs_celltype_col: cell_type" in out and "keep it out of the study" in out
    assert "DeepSC will see 1000 of the" in out
    assert "cell_type" in ad.read_h5ad(val).obs.columns


def test_cli_split_writes_the_gene_map_of_a_random_init_model(baron_small, tmp_path):
    """--write-gene-map: every gene of the written files once, ids 0..n-1, as DeepSC reads a map."""
    path = space(tmp_path, baron_small, DEEPSC_BLOCK)
    result = runner.invoke(app, ["split", str(path), "--out", str(tmp_path / "out"), "--write-gene-map"])
    assert result.exit_code == 0, result.output
    written = (tmp_path / "out" / "gene_map.csv").resolve()
    assert f"csv_path: {written}" in result.output and "random-init model" in result.output
    frame = pd.read_csv(written)
    assert list(frame.columns) == ["feature_name", "id"]
    train = ad.read_h5ad(tmp_path / "out" / "train.h5ad")
    assert frame["feature_name"].tolist() == train.var["gene_name"].astype(str).tolist()
    assert frame["id"].tolist() == list(range(train.n_vars))
    # One or the other: a given map and a written one are refused together, before writing.
    mapped = gene_map(tmp_path / "map.csv", frame["feature_name"].tolist()[:10])
    both = runner.invoke(
        app, ["split", str(path), "--out", str(tmp_path / "o2"), "--write-gene-map", "--gene-map", str(mapped)]
    )
    assert both.exit_code == 2 and both.output.strip().count("\n") == 0 and "one or the other" in both.output
    assert "Traceback" not in both.output and not (tmp_path / "o2").exists()


def test_cli_split_refuses_a_gene_map_without_match(baron_small, tmp_path):
    mapped = gene_map(tmp_path / "ens.csv", [f"ENSG{i:011d}" for i in range(300)])
    path = space(tmp_path, baron_small, DEEPSC_BLOCK)
    result = runner.invoke(app, ["split", str(path), "--out", str(tmp_path / "out"), "--gene-map", str(mapped)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: gene map") and "Ensembl ids" in lines[0]
    assert "Traceback" not in result.output and not (tmp_path / "out").exists()


def test_cli_split_original_for_builtin_spaces(baron_small, tmp_path):
    path = space(tmp_path, baron_small, {"model": "mlp"})
    results = ["--results-dir", str(tmp_path / "results")]  # its disk cache, not the checkout's
    result = runner.invoke(app, ["split", str(path), "--out", str(tmp_path / "orig"), *results])
    assert result.exit_code == 0, result.output
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train = ad.read_h5ad(tmp_path / "orig" / "train.h5ad")
    assert np.all(train.X.data == np.round(train.X.data))  # the input's raw counts
    assert "gene_name" not in train.var.columns

    forced = runner.invoke(app, ["split", str(path), "--out", str(tmp_path / "d"), "--for", "deepsc", *results])
    assert forced.exit_code == 0, forced.output
    assert "gene_name" in ad.read_h5ad(tmp_path / "d" / "train.h5ad").var.columns

    bad = runner.invoke(app, ["split", str(path), "--for", "scgpt"])
    assert bad.exit_code == 2 and bad.output.strip() == "error: --for: unknown 'scgpt'; expected deepsc or original"


# --------------------------------------------------------------------------- split --for original


def test_write_split_round_trip(baron, tmp_path):
    s = settings(
        train=str(baron),
        label_key="cell_type1",
        test_split={"obs_key": "donor", "values": ["human4"]},
        n_top_genes=300,
    )
    paths = write_split(s, tmp_path / "split", cache_dir=tmp_path / "cache")
    assert sorted(paths) == ["test", "train", "val"]
    p = prepare_data(s, cache_dir=tmp_path / "cache")
    original = ad.read_h5ad(baron)
    for name, path in paths.items():
        part = ad.read_h5ad(path)
        rows = p.indices[name]
        assert list(part.obs_names) == list(original.obs_names[rows])
        assert (part.X != original.X[rows]).nnz == 0  # unprocessed counts
        assert list(part.var_names) == list(original.var_names)
        labels = part.obs["cell_type1"]
        assert list(labels.cat.categories) == p.classes  # same codes in every file
        np.testing.assert_array_equal(labels.cat.codes, getattr(p, f"y_{name}"))
    assert set(ad.read_h5ad(paths["test"]).obs["donor"].astype(str)) == {"human4"}


def test_write_split_keeps_raw_and_separate_test_file(tmp_path):
    s = settings(train="builtin:pbmc68k_reduced", label_key="bulk_labels")
    paths = write_split(s, tmp_path / "pbmc")
    assert sorted(paths) == ["train", "val"]
    val = ad.read_h5ad(paths["val"])
    adata = sc.datasets.pbmc68k_reduced()
    rows = prepare_data(s).indices["val"]
    np.testing.assert_array_equal(val.X, adata.X[rows])
    np.testing.assert_array_equal(val.raw.X.toarray(), adata.raw.X[rows].toarray())

    train = write_h5ad(tmp_path / "ref.h5ad", counts(30, 4), balanced_labels(30))
    query = write_h5ad(tmp_path / "query.h5ad", counts(8, 3), ["A", "Z"] * 4, genes=["G0", "G1", "X"])
    paths = write_split(settings(train=str(train), test=str(query), label_key="cell_type"), tmp_path / "out")
    test = ad.read_h5ad(paths["test"])
    assert list(test.var_names) == ["G0", "G1", "X"]  # the file's own genes, not aligned
    assert list(test.obs["cell_type"].astype(str)) == ["A"] * 4
