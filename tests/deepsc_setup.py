"""A CPU copy of DeepSC (2416d85 or abcf2be) and small real data for it: shared by the tests that
run DeepSC's real fine-tuner (tests/backends/command/deepsc/test_real_deepsc.py) and bench/deepsc_overhead.py.

``copy_for_cpu`` copies ``../shared/deepsc/DeepSC-<commit>`` and changes ONE thing:
``Fabric(accelerator="cuda", ...)`` in the entry module (``src/deepsc/finetune/finetune.py:25``
at 2416d85, ``src/deepsc/finetune/run_cta.py:22`` at abcf2be) becomes ``"cpu"``, because these
machines have no GPU (DeepSC hard-codes CUDA; bf16-mixed and DDP over gloo then run on the CPU).
Everything else is DeepSC's own code.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CHECKOUT = SHARED / "deepsc" / "DeepSC-2416d85"
#: The two commits whose cell-type fine-tuner runs: their shared copies and entry modules.
CHECKOUTS = {"2416d85": CHECKOUT, "abcf2be": SHARED / "deepsc" / "DeepSC-abcf2be"}
MODULES = {"2416d85": "src.deepsc.finetune.finetune", "abcf2be": "src.deepsc.finetune.run_cta"}
BARON = SHARED / "data" / "baron_human_pancreas.h5ad"
#: Environment variable naming the Python of DeepSC's environment (scripts/deepsc-env.sh makes one).
PYTHON_ENV = "DEEPSC_TUNE_TEST_DEEPSC_PYTHON"
#: A tiny random-init DeepSC (DeepSC's own keys): 32-dim embeddings, 2 layers, 128 genes a cell.
TINY_MODEL = {
    "load_pretrained_model": False,
    "pretrained_model_path": None,
    "sequence_length": 128,
    "model.embedding_dim": 32,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.gene_embedding_participate_til_layer": 1,
}
CELL_TYPES = ("alpha", "beta", "ductal", "acinar")


def deepsc_loop_steps(n_train: int, *, epoch: int, batch_size: int, grad_acc: int) -> int:
    """Optimizer steps of DeepSC's training loop, re-enacted (cell_type_annotation.py:751-764 and
    440-449 at 2416d85 and abcf2be): a DataLoader without drop_last over ``n_train`` cells,
    ``is_accumulating = (i + 1) % grad_acc != 0`` for batch ``i`` of an epoch, one
    ``optimizer.step()`` (and ``scheduler.step()``) whenever it is not accumulating."""
    steps = 0
    for _ in range(epoch):
        batches = [range(n_train)[i : i + batch_size] for i in range(0, n_train, batch_size)]
        for i, _batch in enumerate(batches):
            if (i + 1) % grad_acc == 0:
                steps += 1
    return steps


def write_labels(path: Path, labels: list[str], *, column: str = "celltype") -> Path:
    """A small .h5ad DeepSC could read: ``labels`` under ``obs[column]``, 5 genes of counts."""
    from data_helpers import counts, write_h5ad

    return write_h5ad(path, counts(len(labels), 5), labels, label_key=column)


def copy_for_cpu(dest: Path, commit: str = "2416d85") -> Path:
    """Copy DeepSC at ``commit`` (a key of :data:`CHECKOUTS`) to ``dest`` with the accelerator
    changed to the CPU; returns ``dest``."""
    shutil.copytree(CHECKOUTS[commit], dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)  # shared/ is read-only; the copy need not be
    entry = dest.joinpath(*MODULES[commit].split(".")[:-1], MODULES[commit].split(".")[-1] + ".py")
    text = entry.read_text()
    if text.count('accelerator="cuda"') != 1:
        raise RuntimeError(f"DeepSC's Fabric call in {entry} changed: update tests/deepsc_setup.py")
    entry.write_text(text.replace('accelerator="cuda"', 'accelerator="cpu"'))
    return dest


def write_data(folder: Path, *, n_cells: int = 400, seed: int = 0) -> dict[str, Path]:
    """A user's data for DeepSC: ``cells.h5ad``, raw counts of four Baron pancreas cell types
    (label ``cell_type1``), and DeepSC's gene map (``gene_map.csv``, ``feature_name,id``) covering
    every gene. ``deepsc-tune split`` turns the cells into what DeepSC reads."""
    import numpy as np
    import pandas as pd
    import scanpy as sc

    folder.mkdir(parents=True, exist_ok=True)
    adata = sc.read_h5ad(BARON)
    adata = adata[adata.obs["cell_type1"].isin(CELL_TYPES)]
    adata = adata[np.sort(np.random.default_rng(seed).permutation(adata.n_obs)[:n_cells])].copy()
    paths = {"cells": folder / "cells.h5ad", "gene_map": folder / "gene_map.csv"}
    adata.write_h5ad(paths["cells"])
    pd.DataFrame({"feature_name": adata.var_names, "id": np.arange(adata.n_vars)}).to_csv(
        paths["gene_map"], index=False
    )
    return paths


def split(space: dict[str, Any], out: Path) -> dict[str, Path]:
    """What ``deepsc-tune split --out OUT`` writes for ``space`` (the library call)."""
    from deepsc_tune.backends.command.deepsc._split import deepsc_options, write_deepsc_split
    from deepsc_tune.data._settings import DataSettings

    result = write_deepsc_split(DataSettings.from_dict(space["data"]), out, **deepsc_options(space["finetune"]))
    return result.paths


def tiny_space(
    deepsc: Path,
    python: str,
    data: dict[str, Path],
    *,
    split_dir: Path | str = "split",
    name: str = "deepsc-tune-tiny",
    study: dict[str, Any] | None = None,
    fixed: dict[str, Any] | None = None,
    commit: str = "2416d85",
) -> dict[str, Any]:
    """A command-backend search space for the tiny model, as a user would write it: the data
    block for ``deepsc-tune split`` (a quarter of the cells for validation) and DeepSC's
    overrides reading what split writes into ``split_dir`` (relative: where deepsc-tune runs);
    ``commit`` chooses the entry module (``deepsc`` must be a copy of that commit)."""
    return {
        "name": name,
        "data": {"train": str(data["cells"]), "label_key": "cell_type1", "val_fraction": 0.25, "split_seed": 0},
        "finetune": {
            "backend": "command",
            "command": [python, "-m", MODULES[commit]],
            "cwd": str(deepsc),
            "env": {"WANDB_MODE": "disabled"},
            "grace_period": 5,
            "overrides": {
                "data_path": f"{split_dir}/train.h5ad",
                "data_path_eval": f"{split_dir}/val.h5ad",
                "seperated_train_eval_dataset": True,
                "csv_path": str(data["gene_map"]),
                "obs_celltype_col": "celltype",
                "num_device": 1,
                **TINY_MODEL,
            },
            "epoch": 2,
            "batch_size": 32,
            "grad_acc": 1,
            "seed": 0,
            **(fixed or {}),
        },
        "search": {
            "lr_scheduler_type": {"choices": ["constant", "cosine"]},
            "learning_rate": {"low": 1e-4, "high": 1e-2, "log": True},
            "warmup_ratio": {"low": 0.01, "high": 0.2, "when": {"lr_scheduler_type": "cosine"}},
        },
        "study": {
            "metric": "val_macro_f1",
            "n_trials": 3,
            "sampler": {"type": "tpe", "seed": 0},
            "pruner": {"type": "hyperband", "min_resource": 1},
            **(study or {}),
        },
    }
