"""Search-space parsing: table-driven, YAML entry in, Optuna distribution or error out."""

from __future__ import annotations

import textwrap
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from paths import REPO

from deepsc_tune.config._search_space import (
    apply_overrides,
    build_search_space,
    list_search_spaces,
    load_search_space,
)
from deepsc_tune.errors import ConfigError

BASE = {
    "name": "demo",
    "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
    "finetune": {"epoch": 3},
}


def space_with(search: dict, study: dict | None = None, finetune: dict | None = None):
    raw = {**BASE, "search": search}
    if study is not None:
        raw["study"] = study
    if finetune is not None:
        raw["finetune"] = finetune
    return build_search_space(raw)


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{choices: [constant, cosine]}", CategoricalDistribution(["constant", "cosine"])),
        ("[constant, cosine]", CategoricalDistribution(["constant", "cosine"])),
        ("{low: 1.0e-5, high: 1.0e-3, log: true}", FloatDistribution(1e-5, 1e-3, log=True)),
        # PyYAML reads 1e-5 (no dot) as text: coerced, not silently a string
        ("{low: 1e-5, high: 1e-3, log: true}", FloatDistribution(1e-5, 1e-3, log=True)),
        ("{low: '1e-5', high: '1e-3', log: true}", FloatDistribution(1e-5, 1e-3, log=True)),
        ("{low: 0.0, high: 0.2, step: 0.05}", FloatDistribution(0.0, 0.2, step=0.05)),
        # a float setting of the fine-tuner stays float even when written as ints
        ("{low: 0, high: 1}", FloatDistribution(0.0, 1.0)),
    ],
)
def test_learning_rate_like_entries(entry, expected):
    name = "lr_scheduler_type" if "constant" in entry else "learning_rate"
    if "step" in entry or "high: 1}" in entry:
        name = "warmup_ratio"
    space = space_with({name: yaml.safe_load(entry)})
    assert space.params[name].distribution() == expected


@pytest.mark.parametrize(
    ("name", "entry", "expected"),
    [
        ("batch_size", {"choices": [16, 32, 64]}, CategoricalDistribution([16, 32, 64])),
        ("epoch", {"low": 2, "high": 8}, IntDistribution(2, 8)),
        ("epoch", {"low": 2, "high": 8, "step": 2}, IntDistribution(2, 8, step=2)),
        ("grad_acc", {"low": 1, "high": 16, "log": True}, IntDistribution(1, 16, log=True)),
        ("dropout", {"low": 0, "high": 0.5}, FloatDistribution(0.0, 0.5)),
    ],
)
def test_other_settings_can_be_searched(name, entry, expected):
    space = space_with({name: entry}, finetune={})
    assert space.params[name].distribution() == expected


@pytest.mark.parametrize(
    ("search", "message"),
    [
        (
            {"learning_rate": {"low": 1e-3, "high": 1e-5, "log": True}},
            "search.learning_rate: low (0.001) must be below high",
        ),
        (
            {"learning_rate": {"low": 0.0, "high": 1e-3, "log": True}},
            "search.learning_rate.low: log: true needs low > 0",
        ),
        ({"learning_rate": {"low": "abc", "high": 1e-3}}, "search.learning_rate.low: expected a number, got 'abc'"),
        ({"learning_rate": {"low": 1e-5}}, "search.learning_rate: missing high"),
        ({"learning_rate": {"low": 1e-5, "high": 1e-3, "lg": True}}, "search.learning_rate.lg: unknown key"),
        ({"learning_rate": 0.001}, "search.learning_rate: expected a mapping"),
        ({"lr_scheduler_type": {"choices": []}}, "search.lr_scheduler_type.choices: expected a non-empty list"),
        ({"lr_scheduler_type": {"choices": ["constant", "linear"]}}, "Unknown lr_scheduler_type: 'linear'"),
        (
            {"warmup_ratio": {"low": 0.0, "high": 0.2, "when": {"schedule": "cosine"}}},
            "search.warmup_ratio.when: refers to 'schedule', which is not a searched parameter",
        ),
        (
            {
                "lr_scheduler_type": ["constant", "cosine"],
                "warmup_ratio": {"low": 0.0, "high": 0.2, "when": {"lr_scheduler_type": "cosin"}},
            },
            "search.warmup_ratio.when: lr_scheduler_type can never be 'cosin'",
        ),
        ({"epoch": {"low": 2, "high": 5}}, "search.epoch: also fixed as finetune.epoch=3"),
        (
            {"learnig_rate": {"low": 1e-5, "high": 1e-3}},
            "search.learnig_rate: unknown setting for the builtin fine-tuner",
        ),
        ({"warmup_ratio": {"low": 0.0, "high": 2.0}}, "warmup_ratio"),
        ({"epoch": {"low": 1.5, "high": 4}}, "search.epoch.low: expected an integer"),
    ],
)
def test_bad_search_entries_are_named(search, message):
    finetune = {} if "epoch" in search and "also fixed" not in message else None
    with pytest.raises(ConfigError) as err:
        space_with(search, finetune=finetune)
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("study", "message"),
    [
        ({"metric": "test_accuracy"}, "study.metric: unknown metric 'test_accuracy'"),
        ({"n_trials": 0}, "study.n_trials: expected a positive integer, got 0"),
        ({"sampler": {"type": "bayes"}}, "study.sampler.type: unknown 'bayes'"),
        ({"sampler": {"type": "tpe", "n_startup": 3}}, "study.sampler.n_startup: not an argument of optuna TPESampler"),
        ({"pruner": {"type": "hyperband", "min_resources": 1}}, "study.pruner.min_resources: not an argument"),
        ({"enqueue": [{"learning_rate": 1.0}]}, "study.enqueue[0].learning_rate: 1.0 is outside the search range"),
        ({"enqueue": [{"momentum": 0.9}]}, "study.enqueue[0].momentum: not a searched parameter"),
        ({"colour": "red"}, "study.colour: unknown key"),
    ],
)
def test_bad_study_blocks_are_named(study, message):
    search = {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}}
    with pytest.raises(ConfigError) as err:
        space_with(search, study=study)
    assert message in str(err.value)


def test_all_problems_are_listed_together():
    with pytest.raises(ConfigError) as err:
        build_search_space(
            {
                **BASE,
                "extra": 1,
                "search": {"learning_rate": {"low": 1e-3, "high": 1e-5}},
                "study": {"metric": "loss"},
            }
        )
    text = str(err.value)
    assert "3 problems" in text
    for key in ("extra: unknown key", "search.learning_rate: low", "study.metric"):
        assert key in text


@pytest.mark.parametrize(
    ("sampler", "cls"),
    [
        ("tpe", optuna.samplers.TPESampler),
        ("random", optuna.samplers.RandomSampler),
        ("gp", optuna.samplers.GPSampler),
        ("grid", optuna.samplers.GridSampler),
    ],
)
def test_samplers(sampler, cls):
    search = {
        "lr_scheduler_type": ["constant", "cosine"],
        "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True, "grid": [1e-5, 1e-4, 1e-3]},
    }
    space = space_with(search, study={"sampler": {"type": sampler, "seed": 1}})
    assert isinstance(space.build_sampler(), cls)


def test_grid_needs_values_for_continuous_params():
    with pytest.raises(ConfigError, match="search.learning_rate: the grid sampler needs"):
        space_with({"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}}, study={"sampler": {"type": "grid"}})


@pytest.mark.parametrize(
    ("pruner", "cls"),
    [
        ("hyperband", optuna.pruners.HyperbandPruner),
        ("successive_halving", optuna.pruners.SuccessiveHalvingPruner),
        ("median", optuna.pruners.MedianPruner),
        ("none", optuna.pruners.NopPruner),
    ],
)
def test_pruners(pruner, cls):
    space = space_with({"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}}, study={"pruner": {"type": pruner}})
    assert isinstance(space.build_pruner(), cls)


def test_conditional_parameter_only_suggested_when_active():
    space = space_with(
        {
            "warmup_ratio": {"low": 0.0, "high": 0.2, "when": {"lr_scheduler_type": "cosine"}},
            "lr_scheduler_type": ["constant", "cosine"],
            "learning_rate": {"low": 1e-5, "high": 1e-3, "log": True},
        }
    )
    # the condition's parameter is ordered first even though written after
    assert list(space.params)[0] == "lr_scheduler_type"
    constant = space.suggest(optuna.trial.FixedTrial({"lr_scheduler_type": "constant", "learning_rate": 1e-4}))
    assert constant == {"lr_scheduler_type": "constant", "learning_rate": 1e-4}
    cosine = space.suggest(
        optuna.trial.FixedTrial({"lr_scheduler_type": "cosine", "learning_rate": 1e-4, "warmup_ratio": 0.05})
    )
    assert cosine["warmup_ratio"] == 0.05


@pytest.mark.parametrize(
    ("overrides", "path", "value"),
    [
        (["data.train=/x/train.h5ad"], ("data", "train"), "/x/train.h5ad"),
        (["finetune.epoch=5"], ("finetune", "epoch"), 5),
        (["learning_rate=3e-4"], ("finetune", "learning_rate"), "3e-4"),  # YAML text, coerced later
        (["study.n_trials=20"], ("study", "n_trials"), 20),
        (["search.learning_rate.high=0.01"], ("search", "learning_rate", "high"), 0.01),
        (["finetune.hidden=[64, 32]"], ("finetune", "hidden"), [64, 32]),
    ],
)
def test_overrides(overrides, path, value):
    config = apply_overrides(
        {"data": {"train": "a"}, "finetune": {"epoch": 1}, "search": {"learning_rate": {"low": 1e-5, "high": 1e-3}}},
        overrides,
    )
    node = config
    for key in path:
        node = node[key]
    assert node == value


@pytest.mark.parametrize("bad", ["epoch", "=5", "data.train.x=1"])
def test_bad_overrides(bad):
    with pytest.raises(ConfigError, match="override"):
        apply_overrides({"data": {"train": "a"}}, [bad])


def test_override_changes_hash_but_n_trials_does_not():
    path = "pbmc68k"
    base = load_search_space(path)
    assert load_search_space(path, ["study.n_trials=3"]).sha256 == base.sha256
    assert load_search_space(path, ["finetune.epoch=4"]).sha256 != base.sha256


def test_shipped_search_spaces_are_valid():
    names = list_search_spaces()
    for expected in ("hpancreas", "myeloid", "zheng", "segerstolpe", "pbmc68k"):
        assert expected in names
    for name in names:
        space = load_search_space(name)
        assert {"lr_scheduler_type", "learning_rate", "warmup_ratio"} <= set(space.params)
        assert space.params["learning_rate"].log
        assert space.enqueue, f"{name}: the usage guide's configs should run first"
    assert load_search_space("segerstolpe").data["normalize"] == "log1p"


def test_malformed_yaml_names_file_and_line(tmp_path: Path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        textwrap.dedent("""\
        name: bad
        data:
          train: x.h5ad
          label_key: [unclosed
        """)
    )
    with pytest.raises(ConfigError) as err:
        load_search_space(str(bad))
    assert str(bad) in str(err.value) and "malformed YAML" in str(err.value) and "line" in str(err.value)


def test_unknown_name_lists_known(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown search space 'nope'.*pbmc68k"):
        load_search_space("nope")
    with pytest.raises(ConfigError, match="search-space file not found: missing.yaml"):
        load_search_space("missing.yaml")


def test_fixed_settings_are_stored_with_their_types(tmp_path):
    """PyYAML reads 1e-4 as the string '1e-4': the fixed settings trials start from (and store)
    hold the validated float, not the text."""
    import yaml

    from deepsc_tune.config._search_space import load_search_space

    d = yaml.safe_load((REPO / "search_spaces" / "pbmc68k.yaml").read_text())
    d["finetune"].update(learning_rate="1e-4", weight_decay="1e-5", epoch="3")
    del d["search"]["learning_rate"]
    d["study"]["enqueue"] = []
    path = tmp_path / "typed.yaml"
    path.write_text(yaml.safe_dump(d))
    space = load_search_space(str(path))
    settings = space.settings_for({"lr_scheduler_type": "constant"})
    assert settings["learning_rate"] == 1e-4 and isinstance(settings["learning_rate"], float)
    assert settings["weight_decay"] == 1e-5 and settings["epoch"] == 3 and isinstance(settings["epoch"], int)
    assert settings["hidden"] == [256, 128]
