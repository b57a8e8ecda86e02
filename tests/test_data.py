"""Tests for deepsc_tune.data: settings validation, splits, preprocessing, cache, export.

Real data where behaviour depends on it (scanpy's pbmc68k_reduced, Baron pancreas from
../shared/data); tiny synthetic AnnData files for edge cases and errors.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import scipy.sparse as sp

from deepsc_tune import data
from deepsc_tune.data import prepare_data, split_cells, write_split
from deepsc_tune.data_settings import DataSettings
from deepsc_tune.errors import DataError

SHARED_DATA = Path(__file__).parents[1].parent / "shared" / "data"
BARON = SHARED_DATA / "baron_human_pancreas.h5ad"


@pytest.fixture(autouse=True)
def _fresh_memo():
    # Each test sees prepare_data as a new process would (its own disk cache, if any, survives).
    data.clear_memo()
    yield
    data.clear_memo()


@pytest.fixture
def baron() -> Path:
    if not BARON.is_file():
        reason = f"real data not found: {BARON} (the shared data folder beside the repository)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{reason}; CI must provide it")
        pytest.skip(reason)
    return BARON


def settings(**kw) -> DataSettings:
    return DataSettings.from_dict(kw)


def write_h5ad(
    path: Path,
    X: np.ndarray,
    labels,
    *,
    genes=None,
    obs: dict | None = None,
    label_key: str = "cell_type",
) -> Path:
    """A small .h5ad file with sparse X, one label column and optional extra obs columns."""
    n, g = X.shape
    frame = pd.DataFrame({label_key: pd.Categorical(labels), **(obs or {})})
    frame.index = [f"{path.stem}_c{i}" for i in range(n)]
    var = pd.DataFrame(index=list(genes) if genes is not None else [f"G{j}" for j in range(g)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate gene names are made on purpose
        adata = ad.AnnData(X=sp.csr_matrix(X.astype(np.float32)), obs=frame, var=var)
        adata.write_h5ad(path)
    return path


def counts(n: int, g: int, *, seed: int = 0, lam: float = 3.0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(lam, size=(n, g)).astype(np.float32)


def balanced_labels(n: int, classes=("A", "B", "C")) -> list[str]:
    return [classes[i % len(classes)] for i in range(n)]


def log_cp10k(x: np.ndarray) -> np.ndarray:
    return np.log1p(x / x.sum(axis=1, keepdims=True) * 1e4)


# --------------------------------------------------------------------------- input errors


def test_missing_file_names_key_path_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    s = settings(train="data/hPancreas/demo_train.h5ad", label_key="Celltype")
    with pytest.raises(DataError) as info:
        prepare_data(s, hint="scGPT's tutorial data")
    msg = str(info.value)
    assert msg.startswith("file not found: data/hPancreas/demo_train.h5ad (data.train")
    assert "download the dataset or point data.train at your copy" in msg
    assert "scGPT's tutorial data" in msg
    assert "\n" not in msg

    write_h5ad(tmp_path / "train.h5ad", counts(20, 5), balanced_labels(20))
    s = settings(train="train.h5ad", test="missing_test.h5ad", label_key="cell_type")
    with pytest.raises(DataError, match=r"file not found: missing_test.h5ad \(data.test"):
        split_cells(s)
    # origin in the data block itself is used too, and a relative path resolves against cwd.
    s = dataclasses.replace(s, test=None, origin="ask Ann")
    assert split_cells(s).classes == ["A", "B", "C"]


def test_file_that_is_not_h5ad(tmp_path):
    bad = tmp_path / "notes.h5ad"
    bad.write_text("not an hdf5 file")
    with pytest.raises(DataError) as info:
        prepare_data(settings(train=str(bad), label_key="y"))
    assert f"cannot read {bad} (data.train) as an .h5ad file" in str(info.value)


def test_missing_label_column_lists_obs_columns(tmp_path):
    path = write_h5ad(tmp_path / "t.h5ad", counts(20, 5), balanced_labels(20), obs={"donor": ["d"] * 20})
    with pytest.raises(DataError) as info:
        prepare_data(settings(train=str(path), label_key="celltype"))
    msg = str(info.value)
    assert "data.label_key: column 'celltype' not in obs" in msg
    assert "available obs columns: cell_type, donor" in msg


def test_test_split_column_or_values_missing(tmp_path):
    donors = ["d1", "d2"] * 15
    path = write_h5ad(tmp_path / "t.h5ad", counts(30, 5), balanced_labels(30), obs={"donor": donors})
    s = settings(train=str(path), label_key="cell_type", test_split={"obs_key": "batch", "values": ["d2"]})
    with pytest.raises(DataError, match="data.test_split.obs_key: column 'batch' not in obs.*cell_type, donor"):
        split_cells(s)
    s = settings(train=str(path), label_key="cell_type", test_split={"obs_key": "donor", "values": ["d3", "d2"]})
    with pytest.raises(DataError) as info:
        split_cells(s)
    assert "data.test_split.values: 'd3' not found in obs['donor']" in str(info.value)
    assert "values that exist: d1, d2" in str(info.value)


def test_empty_splits_are_errors(tmp_path):
    path = write_h5ad(tmp_path / "t.h5ad", counts(30, 5), balanced_labels(30), obs={"donor": ["d1"] * 30})
    s = settings(train=str(path), label_key="cell_type", test_split={"obs_key": "donor", "values": ["d1"]})
    with pytest.raises(DataError, match="data.test_split: every labelled cell .* none left for training"):
        split_cells(s)

    test = write_h5ad(tmp_path / "q.h5ad", counts(6, 5), ["X", "Y"] * 3)
    s = settings(train=str(path), test=str(test), label_key="cell_type")
    with pytest.raises(DataError, match="data.test: the test split of .*q.h5ad is empty"):
        split_cells(s)


def test_single_class_left_after_dropping(tmp_path):
    path = write_h5ad(tmp_path / "t.h5ad", counts(23, 5), ["A"] * 20 + ["B"] * 3)
    with pytest.raises(DataError) as info:
        prepare_data(settings(train=str(path), label_key="cell_type"))
    msg = str(info.value)
    assert "data.label_key: 1 class(es) (A) left" in msg
    assert "min_cells_per_class=5" in msg


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


def test_validation_is_stratified_and_seeded(tmp_path):
    labels = ["A"] * 100 + ["B"] * 50 + ["C"] * 20
    path = write_h5ad(tmp_path / "t.h5ad", counts(170, 4), labels)
    s = settings(train=str(path), label_key="cell_type", val_fraction=0.2)
    a = split_cells(s)
    assert np.bincount(a.y_val).tolist() == [20, 10, 4]
    assert np.bincount(a.y_train).tolist() == [80, 40, 16]
    assert any("stratified by 'cell_type'" in n for n in a.notes)
    again = split_cells(s)
    np.testing.assert_array_equal(a.val, again.val)
    other = split_cells(dataclasses.replace(s, split_seed=1))
    assert not np.array_equal(a.val, other.val)


def test_unstratified_fallback_when_a_class_has_one_cell(tmp_path):
    labels = ["A"] * 30 + ["B"] * 30 + ["C"]
    path = write_h5ad(tmp_path / "t.h5ad", counts(61, 4), labels)
    split = split_cells(settings(train=str(path), label_key="cell_type", min_cells_per_class=1))
    assert split.classes == ["A", "B", "C"] and split.dropped_classes == {}
    assert any("NOT stratified (a class has fewer than 2 cells)" in n for n in split.notes)
    if 60 in split.val:  # C's only cell went to validation: say so
        assert any("no training cell after the validation carve-out: C" in n for n in split.notes)
    assert split.train.size + split.val.size == 61


def test_cells_without_label_are_ignored(tmp_path):
    labels = balanced_labels(30)
    labels[0] = None
    path = write_h5ad(tmp_path / "t.h5ad", counts(30, 4), labels)
    split = split_cells(settings(train=str(path), label_key="cell_type"))
    assert 0 not in set(split.train) | set(split.val)
    assert any("ignored 1 cells" in n for n in split.notes)


# --------------------------------------------------------------------------- cache


def test_cache_is_reused_and_keyed_by_inputs_and_settings(tmp_path, monkeypatch):
    path = write_h5ad(tmp_path / "t.h5ad", counts(60, 20), balanced_labels(60))
    cache = tmp_path / "cache"
    calls = []
    real = data._compute
    monkeypatch.setattr(data, "_compute", lambda *a, **k: calls.append(1) or real(*a, **k))
    s = settings(train=str(path), label_key="cell_type", n_top_genes=10)

    first = prepare_data(s, cache_dir=cache)
    assert prepare_data(s, cache_dir=cache) is first  # in-process memo
    assert len(calls) == 1 and not first.from_cache
    assert len(list(cache.glob("data-*.npz"))) == 1

    data.clear_memo()  # a new worker process
    again = prepare_data(s, cache_dir=cache)
    assert len(calls) == 1 and again.from_cache
    for name in ("X_train", "y_train", "X_val", "y_val"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    np.testing.assert_array_equal(again.indices["val"], first.indices["val"])
    assert (again.genes, again.classes, again.notes) == (first.genes, first.classes, first.notes)
    assert again.X_test is None and again.indices["test"] is None

    # origin / hint say where to get the data; they do not change the data.
    assert data.data_fingerprint(dataclasses.replace(s, origin="x"), hint="y") == first.fingerprint
    changed = dataclasses.replace(s, n_top_genes=5)
    assert data.data_fingerprint(changed) != first.fingerprint
    assert prepare_data(changed, cache_dir=cache).n_genes == 5
    assert len(calls) == 2

    write_h5ad(path, counts(60, 20, seed=9), balanced_labels(60))  # the file changed
    assert data.data_fingerprint(s) != first.fingerprint

    # A damaged entry is recomputed, not trusted.
    data.clear_memo()
    write_h5ad(path, counts(60, 20), balanced_labels(60))
    assert data.data_fingerprint(s) == first.fingerprint  # same content, same key
    for npz in cache.glob("data-*.npz"):
        npz.write_bytes(b"junk")
    assert not prepare_data(s, cache_dir=cache).from_cache
    assert len(calls) == 3


# --------------------------------------------------------------------------- real data


def test_baron_min_cells_per_class_drop_with_note(baron):
    p = prepare_data(settings(train=str(baron), label_key="cell_type1", n_top_genes=500))
    assert p.dropped_classes == {"t_cell": 4, "epsilon": 3, "schwann": 2}
    assert len(p.classes) == 11 and not set(p.dropped_classes) & set(p.classes)
    note = next(n for n in p.notes if n.startswith("dropped 3 class(es)"))
    assert "t_cell (4), epsilon (3), schwann (2)" in note and "9 training cells removed" in note
    assert len(p.y_train) + len(p.y_val) == 2142 - 9
    # Stratified: every class keeps its share (within one cell) in validation.
    pool = np.bincount(np.concatenate([p.y_train, p.y_val]), minlength=11)
    assert np.all(np.abs(np.bincount(p.y_val, minlength=11) - pool * 0.1) <= 1)


def test_baron_cross_donor_split(baron):
    s = settings(
        train=str(baron),
        label_key="cell_type1",
        test_split={"obs_key": "donor", "values": ["human4"]},
        n_top_genes=2000,
    )
    p = prepare_data(s)
    obs = ad.read_h5ad(baron, backed="r").obs
    donors = obs["donor"].astype(str).to_numpy()
    assert set(donors[p.indices["test"]]) == {"human4"}
    assert "human4" not in set(donors[np.concatenate([p.indices["train"], p.indices["val"]])])
    # Dropped on the training donors' counts (human1-3): t_cell 3, epsilon 3, schwann 2.
    assert p.dropped_classes == {"t_cell": 3, "epsilon": 3, "schwann": 2}
    assert len(p.y_test) == 306 - 1  # human4's one t_cell goes with its class
    assert p.X_train.shape[1] == p.X_test.shape[1] == len(p.genes) == 2000
    labels = obs["cell_type1"].astype(str).to_numpy()
    assert [p.classes[i] for i in p.y_test] == list(labels[p.indices["test"]])


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
