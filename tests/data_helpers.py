"""Small AnnData files and settings for the data tests (test_data*.py, test_preprocess.py,
test_deepsc_split.py): sparse counts, balanced labels, the expected log-normalised values."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepsc_tune.data._settings import DataSettings


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
