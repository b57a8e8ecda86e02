"""Small AnnData files and settings for the data tests (test_data*.py, test_preprocess.py,
test_deepsc_split.py): sparse counts, balanced labels, the expected log-normalised values."""

from __future__ import annotations

import warnings
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepsc_tune.backends.builtin import TrainSettings
from deepsc_tune.data import DataSettings, PreparedData


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


def make_data(n_train=320, n_val=60, n_test=60, n_genes=30, n_classes=3, seed=0) -> PreparedData:
    """Log-counts from class-specific Poisson profiles: learnable, not trivial at epoch 1."""
    rng = np.random.default_rng(seed)
    profiles = rng.gamma(0.5, 2.0, size=(n_classes, n_genes))

    def draw(n):
        y = rng.integers(0, n_classes, n)
        return np.log1p(rng.poisson(profiles[y])).astype(np.float32), y.astype(np.int64)

    (xt, yt), (xv, yv), (xs, ys) = draw(n_train), draw(n_val), draw(n_test)
    return PreparedData(
        xt,
        yt,
        xv,
        yv,
        xs,
        ys,
        classes=[f"type{i}" for i in range(n_classes)],
        genes=[f"g{i}" for i in range(n_genes)],
        dropped_classes={},
        fingerprint="synthetic",
        notes=[],
        source={},
        indices={},
    )


def train_settings(**kw) -> TrainSettings:
    """The built-in fine-tuner's settings for a quick CPU run (``kw`` overrides)."""
    base = {"hidden": [16], "epoch": 2, "device": "cpu", "learning_rate": 1e-2}
    return TrainSettings.from_dict({**base, **kw})
