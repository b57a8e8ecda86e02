"""A CPU copy of DeepSC 2416d85 and small real data for it: shared by the tests that run DeepSC's
real fine-tuner (tests/test_deepsc_real.py) and bench/deepsc_overhead.py.

``copy_for_cpu`` copies ``../shared/deepsc/DeepSC-2416d85`` and changes ONE thing:
``Fabric(accelerator="cuda", ...)`` in ``src/deepsc/finetune/finetune.py`` becomes ``"cpu"``,
because these machines have no GPU (DeepSC hard-codes CUDA; bf16-mixed and DDP over gloo then run
on the CPU). Everything else is DeepSC's own code.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CHECKOUT = SHARED / "deepsc" / "DeepSC-2416d85"
BARON = SHARED / "data" / "baron_human_pancreas.h5ad"
#: Environment variable naming the Python of DeepSC's environment (.ci/deepsc-env.sh makes one).
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


def copy_for_cpu(dest: Path) -> Path:
    """Copy DeepSC 2416d85 to ``dest`` with the accelerator changed to the CPU; returns ``dest``."""
    shutil.copytree(CHECKOUT, dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o200)  # shared/ is read-only; the copy need not be
    entry = dest / "src" / "deepsc" / "finetune" / "finetune.py"
    text = entry.read_text()
    if text.count('accelerator="cuda"') != 1:
        raise RuntimeError(f"DeepSC's Fabric call in {entry} changed: update tests/deepsc_setup.py")
    entry.write_text(text.replace('accelerator="cuda"', 'accelerator="cpu"'))
    return dest


def write_data(folder: Path, *, n_train: int = 300, n_val: int = 100, seed: int = 0) -> dict[str, Path]:
    """Cells of four Baron pancreas types as DeepSC reads them (log1p of counts per 10k in X,
    ``var["gene_name"]``, ``obs["celltype"]``), train and validation files, and a gene map
    (``feature_name,id``) covering every gene."""
    import numpy as np
    import pandas as pd
    import scanpy as sc

    folder.mkdir(parents=True, exist_ok=True)
    adata = sc.read_h5ad(BARON)
    adata = adata[adata.obs["cell_type1"].isin(CELL_TYPES)]
    adata = adata[np.random.default_rng(seed).permutation(adata.n_obs)[: n_train + n_val]].copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.var["gene_name"] = adata.var_names.astype(str)
    adata.obs["celltype"] = adata.obs["cell_type1"].astype(str)
    paths = {"train": folder / "train.h5ad", "val": folder / "val.h5ad", "gene_map": folder / "gene_map.csv"}
    adata[:n_train].copy().write_h5ad(paths["train"])
    adata[n_train:].copy().write_h5ad(paths["val"])
    pd.DataFrame({"feature_name": adata.var_names, "id": np.arange(adata.n_vars)}).to_csv(paths["gene_map"], index=False)
    return paths


def tiny_space(deepsc: Path, python: str, data: dict[str, Path], *, name: str = "deepsc-tiny",
               study: dict[str, Any] | None = None, fixed: dict[str, Any] | None = None) -> dict[str, Any]:
    """A command-backend search space for the tiny model, as a user would write it."""
    return {
        "name": name,
        "data": {"train": str(data["train"]), "label_key": "celltype"},
        "finetune": {
            "backend": "command",
            "command": [python, "-m", "src.deepsc.finetune.finetune"],
            "cwd": str(deepsc),
            "env": {"WANDB_MODE": "disabled"},
            "grace_period": 5,
            "overrides": {
                "data_path": str(data["train"]),
                "data_path_eval": str(data["val"]),
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
        "study": {"metric": "val_macro_f1", "n_trials": 3, "sampler": {"type": "tpe", "seed": 0},
                  "pruner": {"type": "hyperband", "min_resource": 1}, **(study or {})},
    }
