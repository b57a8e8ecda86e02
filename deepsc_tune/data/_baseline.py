"""A baseline to beat: logistic regression on the trials' own cells and features.

Published re-runs find that a linear model on log-normalised expression matches fine-tuned
single-cell foundation models on cell-type annotation (Boiarsky et al. 2023: hPancreas 0.973 /
0.718 accuracy / macro-F1 for logistic regression against 0.965 / 0.748 for scGPT fine-tuned;
Zheng68k 0.811 / 0.707 against scBERT's 0.766 / 0.675). A tuned fine-tuner that does not beat it
has not earned its GPU hours, so every study fits one, once:

* on the same prepared training cells and features the trials train on (HVGs and normalisation
  learned from the training split, :mod:`deepsc_tune.data._prepare`), never on the validation cells;
* scored on the same validation cells the search selects on, with the trials' own metrics
  (:func:`deepsc_tune.data._metrics.classification_metrics`); test cells are scored and reported
  only;
* cached beside the prepared data (``baseline-<fingerprint>.json``), so later runs and workers
  reuse it, and stored in the study as the user attribute :data:`BASELINE_ATTR`.

The stored record uses the metrics' bare names for validation (``accuracy``, ``macro_f1``) and
``test_`` names for the test cells.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deepsc_tune.utils import write_text

#: Study user attribute holding the baseline's record.
BASELINE_ATTR = "baseline"
#: Bump when the model or its settings change, so old cached records are refitted.
BASELINE_FORMAT = 1
#: What is fitted (shown in the record and the docs).
MODEL = "logistic regression (scikit-learn LogisticRegression, L2, C=1, lbfgs, max_iter=1000)"
#: Below this gain on validation the chosen configuration has not beaten the baseline.
NO_GAIN = 0.0


def fit_baseline(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_val: np.ndarray,
    y_val: np.ndarray,
    *,
    n_classes: int,
    X_test: np.ndarray | None = None,
    y_test: np.ndarray | None = None,
) -> dict[str, Any]:
    """Fit logistic regression on the training cells; validation (and test) metrics as a record."""
    from sklearn.linear_model import LogisticRegression

    from deepsc_tune.data._metrics import classification_metrics

    t0 = time.perf_counter()
    model = LogisticRegression(C=1.0, max_iter=1000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter: the record says what was fitted
        model.fit(X_train, y_train)
    val = classification_metrics(np.asarray(y_val), model.predict(X_val), n_classes=n_classes)
    record: dict[str, Any] = {
        "model": MODEL,
        "format": BASELINE_FORMAT,
        "n_train": len(y_train),
        "n_val": len(y_val),
        "accuracy": round(val["accuracy"], 6),
        "macro_f1": round(val["macro_f1"], 6),
    }
    if X_test is not None and y_test is not None and len(y_test):
        test = classification_metrics(np.asarray(y_test), model.predict(X_test), n_classes=n_classes)
        record.update(test_accuracy=round(test["accuracy"], 6), test_macro_f1=round(test["macro_f1"], 6))
    record["seconds"] = round(time.perf_counter() - t0, 2)
    return record


def baseline_for(data: Any, cache_dir: Path | None = None) -> dict[str, Any]:
    """The baseline of prepared data (:class:`~deepsc_tune.data._prepare.PreparedData`), cached by fingerprint."""
    path = None if cache_dir is None else Path(cache_dir) / f"baseline-{data.fingerprint[:20]}.json"
    if path is not None:
        cached = _read(path, data.fingerprint)
        if cached is not None:
            return cached
    record = fit_baseline(
        data.X_train,
        data.y_train,
        data.X_val,
        data.y_val,
        n_classes=len(data.classes),
        X_test=data.X_test,
        y_test=data.y_test,
    )
    record["fingerprint"] = data.fingerprint
    if path is not None:
        _write(path, record)
    return record


#: Genes the baseline of a DeepSC study keeps: the most variable of the training file's.
FILE_TOP_GENES = 2000


def baseline_for_files(inputs: Any, cache_dir: Path | None = None) -> dict[str, Any] | None:
    """The baseline of a DeepSC study, from the files DeepSC reads
    (:class:`~deepsc_tune.backends.command.deepsc._data.DeepscInputs`); ``None`` when DeepSC splits off its own
    validation cells (no ``data_path_eval`` read), as those cells are not known here.

    X is used as DeepSC uses it (log1p-scale values, as is), restricted to the genes both files
    have and to the :data:`FILE_TOP_GENES` most variable genes of the training file; labels are
    the classes both files hold (DeepSC intersects them).
    """
    if inputs.val is None:
        return None
    key = _file_key(inputs)
    path = None if cache_dir is None else Path(cache_dir) / f"baseline-{key[:20]}.json"
    if path is not None and (cached := _read(path, key)) is not None:
        return cached
    train, val = _read_h5ad(inputs.train, inputs), _read_h5ad(inputs.val, inputs)
    genes = [g for g in dict.fromkeys(train[1]) if g in set(val[1])]
    classes = sorted(set(train[2]) & set(val[2]))
    if not genes or len(classes) < 2:
        return None  # DeepSC itself would have nothing to learn; validate and the trials say why
    x_train, y_train = _subset(train, genes, classes)
    x_val, y_val = _subset(val, genes, classes)
    import pandas as pd

    from deepsc_tune.data._preprocess import dense, select_genes

    keep, _ = select_genes(x_train, pd.Index(genes), n_top_genes=FILE_TOP_GENES)
    record = fit_baseline(dense(x_train, keep), y_train, dense(x_val, keep), y_val, n_classes=len(classes))
    record.update(
        model=f"{MODEL}, on the {len(keep)} most variable genes of data_path",
        fingerprint=key,
        files={"data_path": str(inputs.train), "data_path_eval": str(inputs.val)},
    )
    if path is not None:
        _write(path, record)
    return record


def _file_key(inputs: Any) -> str:
    import hashlib

    parts = [BASELINE_FORMAT, inputs.label_col, inputs.gene_col, FILE_TOP_GENES]
    for p in (inputs.train, inputs.val):
        st = Path(p).stat()
        parts += [str(Path(p).absolute()), st.st_size, st.st_mtime_ns]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def _read_h5ad(path: Path, inputs: Any) -> tuple[Any, list[str], np.ndarray]:
    import anndata

    from deepsc_tune.errors import DataError

    adata = anndata.read_h5ad(path)
    if inputs.label_col not in adata.obs:
        raise DataError(
            f"{path}: obs has no column {inputs.label_col!r} (obs_celltype_col); it has {list(adata.obs)[:10]}"
        )
    genes = adata.var[inputs.gene_col] if inputs.gene_col in adata.var else adata.var_names
    return adata.X, [str(g) for g in genes], adata.obs[inputs.label_col].astype(str).to_numpy()


def _subset(part: tuple[Any, list[str], np.ndarray], genes: list[str], classes: list[str]) -> tuple[Any, np.ndarray]:
    x, names, labels = part
    first = {}
    for i, g in enumerate(names):
        first.setdefault(g, i)
    rows = np.flatnonzero(np.isin(labels, classes))
    cols = np.array([first[g] for g in genes])
    y = np.searchsorted(np.array(classes), labels[rows])
    return x[rows][:, cols], y


#: The record's keys stored in the study (the rest, such as the model's description and the
#: fingerprint, stays in the cache file, so that `optuna studies` lines stay short).
STUDY_KEYS = ("accuracy", "macro_f1", "test_accuracy", "test_macro_f1")


def record_baseline(study: Any, record: dict[str, Any] | None) -> None:
    """Store ``record``'s metrics in ``study`` once (a study keeps the baseline of its own data)."""
    if record is not None and BASELINE_ATTR not in study.user_attrs:
        study.set_user_attr(
            BASELINE_ATTR, {"model": "logistic_regression", **{k: record[k] for k in STUDY_KEYS if k in record}}
        )


def baseline_gain(
    baseline: dict[str, Any] | None, metric: str, values: Sequence[float]
) -> tuple[float, float, float | None] | None:
    """``(baseline value, mean gain, sd of the gain over seeds)`` on ``metric``, or ``None``."""
    if not isinstance(baseline, dict) or not values:
        return None
    level = baseline.get(metric.removeprefix("val_"))
    if not isinstance(level, (int, float)):
        return None
    gains = [float(v) - float(level) for v in values]
    mean = float(np.mean(gains))
    sd = float(np.std(gains, ddof=1)) if len(gains) > 1 else None
    return float(level), mean, sd


def baseline_line(baseline: dict[str, Any] | None, metric: str, values: Sequence[float]) -> str | None:
    """One sentence on the chosen configuration against logistic regression, on validation."""
    gain = baseline_gain(baseline, metric, values)
    if gain is None:
        return None
    level, mean, sd = gain
    mean = 0.0 if abs(mean) < 5e-5 else mean  # no "-0.0000"
    spread = f" ± {sd:.4f} over {len(values)} seeds" if sd is not None else ""
    if mean <= NO_GAIN:
        return (
            f"baseline: logistic regression reaches {metric} {level:.4f}; the chosen configuration "
            f"does not beat it ({mean:+.4f}{spread} on validation): a linear model on the same cells does as well"
        )
    return f"baseline: logistic regression {metric} {level:.4f}; gain of the chosen configuration {mean:+.4f}{spread}"


def _read(path: Path, fingerprint: str) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # missing or damaged: refit and overwrite
    ok = isinstance(record, dict) and record.get("fingerprint") == fingerprint
    return record if ok and record.get("format") == BASELINE_FORMAT else None


def _write(path: Path, record: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps(record, indent=1))  # parallel workers: whole or none
