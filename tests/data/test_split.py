"""Tests for deepsc_tune.data._split: test cells from each source, class dropping, the seeded
stratified validation carve-out; tiny synthetic files for edge cases, Baron pancreas
(../shared/data) for the real thing."""

from __future__ import annotations

import dataclasses

import anndata as ad
import numpy as np
import pytest
from data_helpers import balanced_labels, counts, settings, write_h5ad

from deepsc_tune.data._prepare import prepare_data
from deepsc_tune.data._split import split_cells
from deepsc_tune.errors import DataError

pytestmark = pytest.mark.usefixtures("fresh_data_memo")


# --------------------------------------------------------------------------- errors


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


# --------------------------------------------------------------------------- validation


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


def test_subsample_is_stratified_seeded_and_keeps_the_test_cells():
    """data.subsample on scanpy's pbmc68k: at most N cells for training + validation, class shares
    kept, the same cells every time, the test cells untouched, and a fingerprint of its own."""
    from deepsc_tune.data._cache import data_fingerprint
    from deepsc_tune.data._settings import DataSettings

    block = {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels", "test_fraction": 0.2}
    full = split_cells(DataSettings.from_dict(block))
    small_settings = DataSettings.from_dict({**block, "subsample": 200})
    small = split_cells(small_settings)
    assert len(small.train) + len(small.val) == 200
    assert np.array_equal(small.test, full.test)  # test cells are only ever reported: all kept
    pool = np.concatenate([full.train, full.val])
    assert set(small.train) | set(small.val) <= set(pool)
    # stratified: every class's share within one cell of its share of the full pool
    full_counts = np.bincount(np.concatenate([full.y_train, full.y_val]), minlength=len(full.classes))
    small_counts = np.bincount(np.concatenate([small.y_train, small.y_val]), minlength=len(full.classes))
    assert np.all(np.abs(small_counts - full_counts * 200 / full_counts.sum()) <= 1.0)
    assert any("subsample: 200 of the" in n and "stratified by label" in n for n in small.notes)
    again = split_cells(small_settings)
    assert np.array_equal(again.train, small.train) and np.array_equal(again.val, small.val)
    other = split_cells(DataSettings.from_dict({**block, "subsample": 200, "split_seed": 1}))
    assert not np.array_equal(
        np.sort(np.concatenate([other.train, other.val])), np.sort(np.concatenate([small.train, small.val]))
    )
    assert data_fingerprint(small_settings) != data_fingerprint(DataSettings.from_dict(block))
    # unset: the key stays out of the settings, so studies made before keep their fingerprint
    assert "subsample" not in DataSettings.from_dict(block).to_dict()
    big = split_cells(DataSettings.from_dict({**block, "subsample": 10_000}))
    assert np.array_equal(big.train, full.train) and any("all kept" in n for n in big.notes)


@pytest.mark.parametrize("value", [0, -5, 2.5, "many"])
def test_subsample_bad_values(value):
    from deepsc_tune.data._settings import DataSettings
    from deepsc_tune.errors import ConfigError

    with pytest.raises(ConfigError, match=r"data\.subsample: .*a positive number of cells"):
        DataSettings.from_dict({"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels", "subsample": value})
