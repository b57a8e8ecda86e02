"""Tests for deepsc_tune.data._preprocess: per-cell normalisation, highly variable genes chosen on the
training cells only, test genes aligned by name (scanpy's pbmc68k_reduced and tiny synthetic
files)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
from data_helpers import balanced_labels, counts, log_cp10k, settings, write_h5ad

from deepsc_tune.data._prepare import prepare_data
from deepsc_tune.data._split import split_cells
from deepsc_tune.errors import DataError

pytestmark = pytest.mark.usefixtures("fresh_data_memo")


# --------------------------------------------------------------------------- value errors


def test_nan_in_x(tmp_path):
    x = counts(20, 5)
    x[3, 2] = np.nan
    path = write_h5ad(tmp_path / "t.h5ad", x, balanced_labels(20))
    with pytest.raises(DataError, match=r"data.train: .*t.h5ad has 1 NaN or infinite"):
        prepare_data(settings(train=str(path), label_key="cell_type", min_cells_per_class=1))


def test_negative_values_with_log1p(tmp_path):
    x = counts(20, 5) - 1.5
    path = write_h5ad(tmp_path / "t.h5ad", x, balanced_labels(20))
    s = settings(train=str(path), label_key="cell_type", normalize="log1p", min_cells_per_class=1)
    with pytest.raises(DataError, match=r"data.normalize: 'log1p' needs non-negative.*min -1.5"):
        prepare_data(s)
    # The same file with normalize: none is used as is.
    assert prepare_data(dataclasses.replace(s, normalize="none")).X_train.min() == -1.5


# --------------------------------------------------------------------------- preprocessing


def test_counts_are_normalised_per_cell(tmp_path):
    x = counts(60, 8)
    path = write_h5ad(tmp_path / "t.h5ad", x, balanced_labels(60))
    p = prepare_data(settings(train=str(path), label_key="cell_type"))
    assert p.X_train.dtype == np.float32 and p.y_train.dtype == np.int64
    np.testing.assert_allclose(p.X_train, log_cp10k(x)[p.indices["train"]], rtol=1e-5)
    np.testing.assert_allclose(p.X_val, log_cp10k(x)[p.indices["val"]], rtol=1e-5)
    assert any("raw counts -> normalize_total(target_sum=1e4) + log1p" in n for n in p.notes)
    assert p.X_test is None and p.y_test is None

    none = prepare_data(settings(train=str(path), label_key="cell_type", normalize="none"))
    np.testing.assert_array_equal(none.X_train, x[none.indices["train"]])


def test_pbmc68k_reduced_uses_log_normalised_raw():
    p = prepare_data(settings(train="builtin:pbmc68k_reduced", label_key="bulk_labels"))
    adata = sc.datasets.pbmc68k_reduced()
    raw = adata.raw.X.toarray()
    np.testing.assert_allclose(p.X_train, raw[p.indices["train"]], rtol=1e-6)
    assert p.genes == list(adata.raw.var_names)
    assert any("used .raw" in n for n in p.notes)
    assert len(p.classes) == 10 and p.X_train.shape[0] + p.X_val.shape[0] == 700
    labels = adata.obs["bulk_labels"].astype(str).to_numpy()
    assert [p.classes[i] for i in p.y_val] == list(labels[p.indices["val"]])

    scaled = prepare_data(settings(train="builtin:pbmc68k_reduced", label_key="bulk_labels", normalize="none"))
    assert scaled.X_train.min() < 0  # X itself is scaled
    hvg = prepare_data(settings(train="builtin:pbmc68k_reduced", label_key="bulk_labels", n_top_genes=100))
    assert hvg.n_genes == 100 and set(hvg.genes) <= set(p.genes)
    np.testing.assert_array_equal(hvg.indices["val"], p.indices["val"])


def test_hvgs_are_chosen_on_training_cells_only(tmp_path):
    n, g = 240, 300
    rng = np.random.default_rng(1)
    # Means spread evenly so scanpy's 'seurat' mean bins hold many genes each.
    x = rng.poisson(np.geomspace(0.5, 20, g), size=(n, g)).astype(np.float32)
    labels = balanced_labels(n)
    genes = [f"G{j}" for j in range(g - 1)] + ["LEAK"]
    donor = np.where(np.arange(n) < 60, "query", "ref")
    path = tmp_path / "t.h5ad"
    write_h5ad(path, x, labels, genes=genes, obs={"donor": donor})
    s = settings(
        train=str(path),
        label_key="cell_type",
        test_split={"obs_key": "donor", "values": ["query"]},
        n_top_genes=10,
        val_fraction=0.25,
    )
    split = split_cells(s)
    # LEAK is silent in training cells and swings wildly in validation and test cells.
    x[:, -1] = 0
    held_out = np.concatenate([split.val, split.test])
    x[held_out, -1] = rng.choice([0, 60], size=held_out.size)
    write_h5ad(path, x, labels, genes=genes, obs={"donor": donor})

    p = prepare_data(s)
    assert "LEAK" not in p.genes
    assert len(p.genes) == 10
    # Without the train-only rule LEAK would be picked: it is the most variable gene overall.
    every = sc.AnnData(X=log_cp10k(x), var=pd.DataFrame(index=genes))
    table = sc.pp.highly_variable_genes(every, flavor="seurat", n_top_genes=10, inplace=False)
    assert table["dispersions_norm"].idxmax() == "LEAK"
    # Splits are disjoint and the test split is exactly the query donor.
    train, val, test = (set(p.indices[k]) for k in ("train", "val", "test"))
    assert not (train & val) and not (train & test) and not (val & test)
    assert test == set(np.flatnonzero(donor == "query"))
    assert any("chosen on the" in n and "training cells only" in n for n in p.notes)


def test_duplicate_gene_names_are_made_unique_before_alignment(tmp_path):
    x_ref, x_query = counts(30, 3) + 1, counts(6, 2) + 1
    ref = write_h5ad(tmp_path / "ref.h5ad", x_ref, balanced_labels(30), genes=["A", "B", "A"])
    query = write_h5ad(tmp_path / "q.h5ad", x_query, balanced_labels(6), genes=["X", "B"])
    p = prepare_data(settings(train=str(ref), test=str(query), label_key="cell_type"))
    assert p.genes == ["A", "B", "A-1"]
    assert np.all(p.X_test[:, [0, 2]] == 0) and np.all(p.X_test[:, 1] > 0)
    assert any("duplicate gene names made unique" in n for n in p.notes)


def test_n_top_genes_at_least_all_genes_keeps_all(tmp_path):
    path = write_h5ad(tmp_path / "t.h5ad", counts(30, 7), balanced_labels(30))
    p = prepare_data(settings(train=str(path), label_key="cell_type", n_top_genes=7))
    assert p.genes == [f"G{j}" for j in range(7)]


def test_test_file_genes_aligned_by_name_missing_are_zero(tmp_path):
    train = write_h5ad(tmp_path / "ref.h5ad", counts(60, 6), balanced_labels(60))
    xq = counts(12, 4, seed=5) + 1
    labels_q = ["A", "B", "C", "Z"] * 3  # Z is not a training class
    query = write_h5ad(tmp_path / "query.h5ad", xq, labels_q, genes=["G3", "G1", "NEW", "G5"])
    p = prepare_data(settings(train=str(train), test=str(query), label_key="cell_type"))
    assert p.genes == [f"G{j}" for j in range(6)]
    kept = np.array([lab != "Z" for lab in labels_q])
    np.testing.assert_array_equal(p.indices["test"], np.flatnonzero(kept))
    assert [p.classes[i] for i in p.y_test] == [lab for lab in labels_q if lab != "Z"]
    # Normalised on the query file's own genes (library size), then reordered by name.
    expected = log_cp10k(xq)[kept]
    np.testing.assert_allclose(p.X_test[:, [3, 1, 5]], expected[:, [0, 1, 3]], rtol=1e-5)
    np.testing.assert_array_equal(p.X_test[:, [0, 2, 4]], 0)
    assert any("3 missing from" in n and "set to 0" in n for n in p.notes)
    assert any("dropped 3 test cells whose label is not among the training classes: Z (3)" in n for n in p.notes)
    assert p.source["test_source"] == "test"

    disjoint = write_h5ad(tmp_path / "ens.h5ad", xq, labels_q, genes=["ENSG1", "ENSG2", "ENSG3", "ENSG4"])
    with pytest.raises(DataError, match="data.test: .*ens.h5ad shares no gene names"):
        prepare_data(settings(train=str(train), test=str(disjoint), label_key="cell_type"))
