"""The ``data:`` block: validated field by field, every problem named by its key path."""

from __future__ import annotations

import pytest
from data_helpers import settings

from deepsc_tune.data._settings import DataSettings, ObsSplit
from deepsc_tune.errors import ConfigError


def test_from_dict_defaults_and_round_trip():
    s = settings(train="builtin:pbmc68k_reduced", label_key="bulk_labels")
    assert (s.val_fraction, s.normalize, s.n_top_genes) == (0.1, "auto", None)
    assert (s.min_cells_per_class, s.split_seed, s.test, s.test_split) == (5, 0, None, None)
    full = settings(
        train="a.h5ad",
        label_key="y",
        test_split={"obs_key": "donor", "values": ["human4", 3]},
        n_top_genes=100,
        origin="from the lab's share",
    )
    assert full.test_split == ObsSplit("donor", ("human4", "3"))
    assert DataSettings.from_dict(full.to_dict()) == full


@pytest.mark.parametrize(
    ("key", "written", "parsed"),
    [
        ("val_fraction", "0.2", 0.2),
        ("val_fraction", "1e-1", 0.1),  # PyYAML reads 1e-1 as a string
        ("n_top_genes", "2000", 2000),
        ("n_top_genes", "2e3", 2000),
        ("n_top_genes", 2000.0, 2000),
        ("min_cells_per_class", "0", 0),
        ("split_seed", " 7 ", 7),
    ],
)
def test_from_dict_accepts_clean_numbers_written_as_text(key, written, parsed):
    s = settings(train="a.h5ad", label_key="y", **{key: written})
    assert getattr(s, key) == parsed


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"val_fraction": "abc"}, "data.val_fraction: expected a number in (0, 1), got 'abc'"),
        ({"val_fraction": 0}, "data.val_fraction: expected a number in (0, 1), got 0"),
        ({"val_fraction": 1.0}, "data.val_fraction: expected a number in (0, 1), got 1.0"),
        ({"val_fraction": True}, "data.val_fraction: expected a number in (0, 1), got True"),
        ({"val_fraction": "nan"}, "data.val_fraction: expected a number in (0, 1), got 'nan'"),
        ({"normalize": "zscore"}, "data.normalize: expected one of auto, log1p, none, got 'zscore'"),
        ({"n_top_genes": 0}, "data.n_top_genes: expected a positive integer"),
        ({"n_top_genes": 2.5}, "got 2.5"),
        ({"n_top_genes": "many"}, "data.n_top_genes: expected a positive integer (or unset for all genes), got 'many'"),
        ({"min_cells_per_class": -1}, "data.min_cells_per_class: expected an integer >= 0, got -1"),
        ({"split_seed": "x"}, "data.split_seed: expected an integer >= 0, got 'x'"),
        ({"foo": 1, "bar": 2}, "data.foo: unknown key; expected one of train, test, test_split, test_fraction"),
        ({"foo": 1, "bar": 2}, "data.bar: unknown key; expected one of train, test,"),
        ({"lable_key": "y"}, "data.lable_key: unknown key; did you mean 'label_key'"),
        ({"source": "x"}, "data.source: unknown key"),
        ({"test": "t.h5ad", "test_split": {"obs_key": "d", "values": ["x"]}}, "not both"),
        ({"test_split": {"obs_key": "donor"}}, "data.test_split.values: expected a non-empty list"),
        ({"test_split": {"obs_key": "donor", "values": []}}, "got []"),
        (
            {"test_split": {"obs_key": "d", "values": ["x"], "by": 1}},
            "data.test_split.by: unknown key; expected one of obs_key, values",
        ),
        ({"test_split": ["donor"]}, "data.test_split: expected a mapping"),
        ({"train": None}, "data.train: required"),
        ({"train": 3}, "data.train: expected a path to an .h5ad file or builtin:pbmc68k_reduced, got 3"),
        ({"train": "builtin:pbmc3k"}, "data.train: unknown built-in dataset 'builtin:pbmc3k'"),
        ({"label_key": None}, "data.label_key: required"),
        ({"origin": 5}, "data.origin: expected text"),
    ],
)
def test_from_dict_rejects_bad_values_naming_key_and_value(block, expected):
    d = {"train": "a.h5ad", "label_key": "y", **block}
    with pytest.raises(ConfigError) as info:
        DataSettings.from_dict(d)
    assert expected in str(info.value)


def test_from_dict_reports_every_problem_with_the_given_prefix():
    with pytest.raises(ConfigError) as info:
        DataSettings.from_dict({"train": "a.h5ad", "val_fraction": 2, "normalize": 1}, source="cfg")
    header, *lines = str(info.value).splitlines()
    assert header == "cfg: 3 problems:"
    assert {line.split(":")[0] for line in lines} == {
        "  - cfg.label_key",
        "  - cfg.val_fraction",
        "  - cfg.normalize",
    }
    with pytest.raises(ConfigError, match="data: expected a mapping"):
        DataSettings.from_dict(None)
