"""The files a DeepSC study's trials read, as DeepSC will see them.

DeepSC trains on ``data_path`` and, with ``seperated_train_eval_dataset: true`` (sic), evaluates
on ``data_path_eval``; labels come from ``obs[obs_celltype_col]`` (default ``celltype``), gene
names from ``var[var_name_in_h5ad]`` (default ``gene_name``), else ``var.index``. The values are
its config's, then ``finetune.overrides``, then fixed ``finetune:`` keys
(:func:`deepsc_tune.deepsc.effective_settings`). The baseline and the chance levels of a DeepSC
study are computed from these files, so they describe the cells DeepSC selects on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from deepsc_tune.errors import ConfigError

#: DeepSC's defaults for the label and gene-name columns.
DEFAULT_LABEL_COL = "celltype"
DEFAULT_GENE_COL = "gene_name"


class DeepscInputs(NamedTuple):
    """The training and validation files of a DeepSC study and the columns DeepSC reads."""

    train: Path
    val: Path | None  # None: DeepSC evaluates on 20 % of ``train`` it splits off itself
    label_col: str
    gene_col: str


def deepsc_inputs(settings: Any) -> DeepscInputs | None:
    """The files of a command-backend study running DeepSC (``None``: not DeepSC, or no
    ``data_path`` that exists). ``settings``: its :class:`~deepsc_tune.command_settings.CommandSettings`."""
    from deepsc_tune.deepsc import _truthy, effective_settings
    from deepsc_tune.deepsc_checkout import is_deepsc_command, load_deepsc_config

    if not is_deepsc_command(settings.command):
        return None
    cwd = Path(settings.cwd or ".")
    try:
        config = load_deepsc_config(cwd)
    except ConfigError:
        config = {}
    overrides = {str(k).removeprefix("+"): v for k, v in settings.overrides.items()}
    values = {k: s.value for k, s in effective_settings(config, overrides=overrides, fixed=settings.fixed).items()}

    def path(key: str) -> Path | None:
        value = values.get(key)
        if not isinstance(value, str) or not value:
            return None
        p = Path(os.path.expanduser(value))
        p = p if p.is_absolute() else cwd / p  # relative keys were made absolute when validated
        return p if p.is_file() else None

    train = path("data_path")
    if train is None:
        return None
    val = path("data_path_eval") if _truthy(values.get("seperated_train_eval_dataset")) else None
    return DeepscInputs(
        train=train,
        val=val,
        label_col=str(values.get("obs_celltype_col") or DEFAULT_LABEL_COL),
        gene_col=str(values.get("var_name_in_h5ad") or DEFAULT_GENE_COL),
    )
