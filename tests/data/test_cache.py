"""Tests for deepsc_tune.data._cache through prepare_data: the in-process memo, the disk cache and
the fingerprint that keys both."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from data_helpers import balanced_labels, counts, settings, write_h5ad

from deepsc_tune.data import _cache as data_cache
from deepsc_tune.data import _prepare as data
from deepsc_tune.data._prepare import prepare_data

pytestmark = pytest.mark.usefixtures("fresh_data_memo")


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

    data_cache.clear_memo()  # a new worker process
    again = prepare_data(s, cache_dir=cache)
    assert len(calls) == 1 and again.from_cache
    for name in ("X_train", "y_train", "X_val", "y_val"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))
    np.testing.assert_array_equal(again.indices["val"], first.indices["val"])
    assert (again.genes, again.classes, again.notes) == (first.genes, first.classes, first.notes)
    assert again.X_test is None and again.indices["test"] is None

    # origin / hint say where to get the data; they do not change the data.
    assert data_cache.data_fingerprint(dataclasses.replace(s, origin="x"), hint="y") == first.fingerprint
    changed = dataclasses.replace(s, n_top_genes=5)
    assert data_cache.data_fingerprint(changed) != first.fingerprint
    assert prepare_data(changed, cache_dir=cache).n_genes == 5
    assert len(calls) == 2

    write_h5ad(path, counts(60, 20, seed=9), balanced_labels(60))  # the file changed
    assert data_cache.data_fingerprint(s) != first.fingerprint

    # A damaged entry is recomputed, not trusted.
    data_cache.clear_memo()
    write_h5ad(path, counts(60, 20), balanced_labels(60))
    assert data_cache.data_fingerprint(s) == first.fingerprint  # same content, same key
    for npz in cache.glob("data-*.npz"):
        npz.write_bytes(b"junk")
    assert not prepare_data(s, cache_dir=cache).from_cache
    assert len(calls) == 3
