"""The backend registry: a search space's typed settings and each backend's behaviour by name."""

from __future__ import annotations

import sys

import pytest

from deepsc_tune.backends._registry import BACKENDS, get_backend
from deepsc_tune.backends.builtin._settings import TrainSettings
from deepsc_tune.backends.command._settings import CommandSettings
from deepsc_tune.config._search_space import build_search_space
from deepsc_tune.data._settings import DataSettings
from deepsc_tune.errors import ConfigError
from deepsc_tune.study._space_record import summary_attrs

DATA = {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"}


def test_registry_names_each_backends_schema_and_behaviour():
    assert set(BACKENDS) == {"builtin", "command"}
    builtin, command = get_backend("builtin"), get_backend("command")
    assert (builtin.settings, command.settings) == (TrainSettings, CommandSettings)
    assert builtin.in_process and not builtin.runs_program and builtin.check_space is None
    assert command.runs_program and not command.in_process and command.searchable is None
    assert "learning_rate" in builtin.searchable and builtin.param_types()["epoch"] is int


def test_search_space_carries_typed_settings():
    space = build_search_space({"name": "s", "data": {**DATA, "val_fraction": "0.2"}, "finetune": {"epoch": "3"}})
    assert space.data_settings == DataSettings.from_dict({**DATA, "val_fraction": 0.2})
    assert isinstance(space.settings, TrainSettings) and space.settings.epoch == 3
    assert space.fixed == {"epoch": 3}  # typed: trials store the validated value, not the text
    finetune = {"backend": "command", "command": [sys.executable, "train.py"], "epoch": "1e1"}
    space = build_search_space({"name": "c", "data": DATA, "finetune": finetune})
    assert isinstance(space.settings, CommandSettings) and space.fixed == {"epoch": 10.0}
    # one typed block: the settings and the fixed values are the block's own, not copies
    assert space.settings is space.finetune.settings and space.fixed is space.finetune.fixed
    assert space.fixed == space.settings.fixed
    assert summary_attrs(space)["epoch"] == 10.0  # the study's `epoch` attribute: the typed value


def test_unknown_backend_is_named():
    with pytest.raises(
        ConfigError, match=r"finetune.backend: unknown backend 'deepsc'; expected 'builtin' or 'command'"
    ):
        build_search_space({"name": "s", "data": DATA, "finetune": {"backend": "deepsc"}})
