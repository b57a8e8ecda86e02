"""The logistic-regression baseline every study is measured against (deepsc_tune.data._baseline)."""

from __future__ import annotations

import json

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.config._search_space import load_search_space
from deepsc_tune.data import _baseline as bl
from deepsc_tune.data._prepare import prepare_data

optuna.logging.set_verbosity(optuna.logging.ERROR)


@pytest.fixture(scope="module")
def pbmc():
    """scanpy's bundled pbmc68k_reduced, prepared exactly as the shipped search space's trials see it."""
    space = load_search_space("pbmc68k")
    return prepare_data(space.data_settings)


def test_fitted_on_the_training_cells_only_and_scored_on_validation(pbmc):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    record = bl.fit_baseline(
        pbmc.X_train,
        pbmc.y_train,
        pbmc.X_val,
        pbmc.y_val,
        n_classes=len(pbmc.classes),
        X_test=pbmc.X_test,
        y_test=pbmc.y_test,
    )
    reference = LogisticRegression(C=1.0, max_iter=1000).fit(pbmc.X_train, pbmc.y_train)
    assert record["accuracy"] == pytest.approx(accuracy_score(pbmc.y_val, reference.predict(pbmc.X_val)), abs=1e-6)
    assert record["test_accuracy"] == pytest.approx(
        accuracy_score(pbmc.y_test, reference.predict(pbmc.X_test)), abs=1e-6
    )
    assert record["n_train"] == len(pbmc.y_train) and record["n_val"] == len(pbmc.y_val)
    # A linear model separates PBMC types far above the majority class (0.339 here).
    majority = np.bincount(pbmc.y_val).max() / len(pbmc.y_val)
    assert record["accuracy"] > majority + 0.3
    assert 0 < record["macro_f1"] <= 1


def test_cached_by_fingerprint_beside_the_prepared_data(pbmc, tmp_path, monkeypatch):
    first = bl.baseline_for(pbmc, tmp_path)
    files = list(tmp_path.glob("baseline-*.json"))
    assert [f.name for f in files] == [f"baseline-{pbmc.fingerprint[:20]}.json"]
    assert json.loads(files[0].read_text())["fingerprint"] == pbmc.fingerprint

    def refit(*a, **k):
        raise AssertionError("refitted although a current cache entry exists")

    monkeypatch.setattr(bl, "fit_baseline", refit)
    assert bl.baseline_for(pbmc, tmp_path) == first
    # A damaged entry is refitted, never trusted.
    files[0].write_text("{not json")
    monkeypatch.undo()
    assert bl.baseline_for(pbmc, tmp_path)["accuracy"] == first["accuracy"]
    assert json.loads(files[0].read_text())["fingerprint"] == pbmc.fingerprint


def test_gain_over_seeds_and_the_sentence_without_gain():
    record = {"accuracy": 0.80, "macro_f1": 0.60}
    level, mean, sd = bl.baseline_gain(record, "val_accuracy", [0.85, 0.87, 0.83])
    assert level == 0.80 and mean == pytest.approx(0.05) and sd == pytest.approx(0.02)
    line = bl.baseline_line(record, "val_accuracy", [0.85, 0.87, 0.83])
    assert "+0.0500 ± 0.0200 over 3 seeds" in line and "does not beat" not in line
    worse = bl.baseline_line(record, "val_macro_f1", [0.55])
    assert "does not beat it (-0.0500" in worse
    assert bl.baseline_line(None, "val_accuracy", [0.9]) is None
    assert bl.baseline_line(record, "val_loss", [0.9]) is None


def test_every_view_of_a_study_shows_the_gain(tmp_path):
    runner = CliRunner()
    results = str(tmp_path / "results")
    out = runner.invoke(app, ["run", "pbmc68k", "study.n_trials=3", "finetune.epoch=2", "--results-dir", results])
    assert out.exit_code == 0, out.output
    assert "baseline: logistic regression on the same cells, validation accuracy" in out.output
    study = optuna.load_study(study_name="pbmc68k", storage=f"sqlite:///{tmp_path}/results/pbmc68k/study.db")
    record = study.user_attrs[bl.BASELINE_ATTR]
    assert record["accuracy"] > 0.5 and "test_accuracy" in record
    assert list((tmp_path / "results" / "cache").glob("baseline-*.json"))
    best_value = study.best_value
    expected = f"logistic regression reaches val_accuracy {record['accuracy']:.4f}"
    if best_value > record["accuracy"]:
        expected = f"logistic regression val_accuracy {record['accuracy']:.4f}; gain of the chosen configuration"
    assert expected in out.output  # the end of `run`
    gain = f"{best_value - record['accuracy']:+.4f}"
    for command in (["status", "pbmc68k"], ["best", "pbmc68k"]):
        shown = runner.invoke(app, [*command, "--results-dir", results])
        assert shown.exit_code == 0, shown.output
        assert expected in shown.output and gain in shown.output, command
    assert runner.invoke(app, ["report", "pbmc68k", "--results-dir", results]).exit_code == 0
    page = (tmp_path / "results" / "pbmc68k" / "report.html").read_text()
    assert "against baseline</th>" in page
    assert expected in page and gain in page
    # Run again: the baseline is kept, not refitted into a different record.
    again = runner.invoke(app, ["run", "pbmc68k", "study.n_trials=3", "finetune.epoch=2", "--results-dir", results])
    assert again.exit_code == 0 and "baseline: logistic regression on the same cells" not in again.output


@pytest.mark.skipif(not __import__("deepsc_setup").BARON.is_file(), reason="needs ../shared/data (Baron)")
def test_deepsc_study_baseline_from_the_files_deepsc_reads(tmp_path, monkeypatch):
    """A DeepSC study's baseline: trained on data_path, scored on data_path_eval, as DeepSC splits."""
    import deepsc_setup
    import yaml
    from sklearn.linear_model import LogisticRegression

    from deepsc_tune.backends.command.deepsc._data import deepsc_inputs

    monkeypatch.chdir(tmp_path)
    data = deepsc_setup.write_data(tmp_path / "data", n_cells=300)
    space = deepsc_setup.tiny_space(deepsc_setup.CHECKOUT, "python", data, split_dir=str(tmp_path / "split"))
    files = deepsc_setup.split(space, tmp_path / "split")
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(space))
    inputs = deepsc_inputs(load_search_space(str(tmp_path / "tiny.yaml")).settings)
    assert inputs is not None
    assert (inputs.train, inputs.val, inputs.label_col) == (files["train"], files["val"], "celltype")

    record = bl.baseline_for_files(inputs, tmp_path / "cache")
    import anndata

    train, val = anndata.read_h5ad(files["train"]), anndata.read_h5ad(files["val"])
    assert record["n_train"] == train.n_obs and record["n_val"] == val.n_obs
    # Independently: the same model on the same genes gives the same validation accuracy.
    import pandas as pd

    from deepsc_tune.data._preprocess import dense, select_genes

    keep, _ = select_genes(train.X, pd.Index(train.var_names), n_top_genes=bl.FILE_TOP_GENES)
    classes = sorted(set(train.obs["celltype"].astype(str)))
    y = lambda a: np.searchsorted(classes, a.obs["celltype"].astype(str).to_numpy())  # noqa: E731
    model = LogisticRegression(C=1.0, max_iter=1000).fit(dense(train.X, keep), y(train))
    assert record["accuracy"] == pytest.approx(float(np.mean(model.predict(dense(val.X, keep)) == y(val))), abs=1e-6)
    assert list((tmp_path / "cache").glob("baseline-*.json"))
    # Without a validation file DeepSC splits its own cells: no baseline rather than a wrong one.
    assert bl.baseline_for_files(inputs._replace(val=None)) is None
