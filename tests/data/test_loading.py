"""Tests for deepsc_tune.data._loading: input files resolved, read and checked, labels read;
errors name the key path, the file and how to get it."""

from __future__ import annotations

import dataclasses

import pytest
from data_helpers import balanced_labels, counts, settings, write_h5ad

from deepsc_tune.data._prepare import prepare_data
from deepsc_tune.data._split import split_cells
from deepsc_tune.errors import DataError

pytestmark = pytest.mark.usefixtures("fresh_data_memo")


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
