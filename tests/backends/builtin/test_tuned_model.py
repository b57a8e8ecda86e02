"""The tuned model kept under RESULTS_DIR/NAME/model and `deepsc-tune predict`.

pbmc68k (bundled with scanpy) for the command's behaviour; the study-like splits of
../shared/data (Baron donors 1-3 -> donor 4, Kang control -> stimulated) for the promise that
predicting the test cells reproduces the test accuracy the study recorded.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from pathlib import Path

import anndata
import numpy as np
import optuna
import pytest
from guards import shared_file
from optuna.trial import TrialState
from paths import REPO
from typer.testing import CliRunner

from deepsc_tune.backends._interface import EpochMetrics, FinetuneResult
from deepsc_tune.backends.builtin._tuned_model import (
    CARD_FILE,
    LABEL_COLUMN,
    PROBABILITIES_KEY,
    PROBABILITY_COLUMN,
    WEIGHTS_FILE,
    ModelKeeper,
    read_card,
)
from deepsc_tune.cli import app
from deepsc_tune.study._trial_record import trial_result

runner = CliRunner()
SHARED = REPO.parent / "shared" / "data"
SMALL = ["study.n_trials=4", "finetune.epoch=3"]


def cli(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def load(results: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{results / name / 'study.db'}")


def best_complete(study: optuna.Study):
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    return max(complete, key=lambda t: (t.value, -t.number))


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def one_line_error(result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and text in errors[0], result.output


@pytest.fixture(scope="module")
def pbmc(tmp_path_factory) -> Path:
    """A finished pbmc68k study with its split files (test.h5ad is the query)."""
    results = tmp_path_factory.mktemp("results")
    assert cli("run", "pbmc68k", "--results-dir", results, *SMALL).exit_code == 0
    split = cli("split", "pbmc68k", "--results-dir", results, *SMALL)
    assert split.exit_code == 0, split.output
    return results


@pytest.fixture
def results(pbmc, tmp_path) -> Path:
    dest = tmp_path / "results"
    shutil.copytree(pbmc, dest)
    return dest


def test_run_keeps_only_the_best_trials_model(pbmc):
    folder = pbmc / "pbmc68k" / "model"
    assert sorted(p.name for p in folder.iterdir()) == [CARD_FILE, WEIGHTS_FILE]
    assert not list((pbmc / "pbmc68k").glob("model.*"))  # no temporary or old folders left
    card = read_card(folder)
    best = best_complete(load(pbmc, "pbmc68k"))
    assert card["trial"] == best.number and card["value"] == best.value
    assert card["best_epoch"] == trial_result(best).best_epoch
    assert float(f"{card['test_accuracy']:.4g}") == trial_result(best).test_accuracy  # the study keeps 4 digits
    assert card["settings"]["learning_rate"] == best.params["learning_rate"]
    assert len(card["genes"]) == 765 and len(card["classes"]) >= 2
    assert card["data"]["normalize"] == "auto" and card["data"]["label_key"] == "bulk_labels"


def test_predict_reproduces_the_recorded_test_accuracy(results):
    query = results / "pbmc68k" / "split" / "test.h5ad"
    before = digest(query)
    result = cli("predict", "pbmc68k", query, "--results-dir", results, "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = results / "pbmc68k" / "split" / "test.predicted.h5ad"
    assert digest(query) == before  # the input is never written
    card = read_card(results / "pbmc68k" / "model")
    annotated = anndata.read_h5ad(out)
    truth = annotated.obs["bulk_labels"].astype(str).to_numpy()
    predicted = annotated.obs[LABEL_COLUMN].astype(str).to_numpy()
    assert np.mean(predicted == truth) == card["test_accuracy"]
    assert f"{card['test_accuracy']:.4f} on {annotated.n_obs} cells" in result.output
    proba = annotated.obsm[PROBABILITIES_KEY]
    assert proba.shape == (annotated.n_obs, len(card["classes"]))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    assert list(annotated.uns["deepsc_tune"]["classes"]) == card["classes"]
    np.testing.assert_allclose(annotated.obs[PROBABILITY_COLUMN], proba.max(axis=1), rtol=1e-6)
    assert "0 missing" in result.output


def test_predict_counts_missing_genes(results, tmp_path):
    query = anndata.read_h5ad(results / "pbmc68k" / "split" / "test.h5ad")
    card = read_card(results / "pbmc68k" / "model")
    drop = set(card["genes"][:10])
    keep = [g not in drop for g in query.raw.var_names]
    smaller = anndata.AnnData(X=query.raw.X[:, keep], obs=query.obs.copy(), var=query.raw.var[keep].copy())
    path = tmp_path / "fewer_genes.h5ad"
    smaller.write_h5ad(path)
    result = cli("predict", "pbmc68k", path, "--results-dir", results, "--out", tmp_path / "o.h5ad")
    assert result.exit_code == 0, result.output
    assert "10 of the model's 765 genes are missing" in result.output
    assert anndata.read_h5ad(tmp_path / "o.h5ad").uns["deepsc_tune"]["genes_missing"] == 10


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--out", "{query}"], 2, "is the query file itself"),
        (["--out", "{split}/exists.h5ad"], 2, "exists; choose another path or pass --overwrite"),
        (["--out", "{split}/x.csv"], 2, "does not end in .h5ad"),
        (["--device", "gpu"], 2, "--device gpu: expected auto, cpu, cuda or cuda:N"),
        (["--results-dir", "{tmp}/empty"], 1, "no tuned model in"),
        (["--out", "{tmp}/no/such/folder/o.h5ad"], 2, "does not exist; expected an existing folder"),
    ],
)
def test_predict_bad_input_is_one_line_and_changes_nothing(results, tmp_path, args, code, message):
    split = results / "pbmc68k" / "split"
    query = split / "test.h5ad"
    (split / "exists.h5ad").write_bytes(b"keep me")
    args = [a.format(query=query, split=split, tmp=tmp_path) for a in args]
    if "--results-dir" not in args:
        args += ["--results-dir", str(results)]
    study_before = [(t.number, t.state, t.value) for t in load(results, "pbmc68k").trials]
    files_before = {p.name: digest(p) for p in split.iterdir()}
    model_before = {p.name: digest(p) for p in (results / "pbmc68k" / "model").iterdir()}
    one_line_error(cli("predict", "pbmc68k", query, *args), code, message)
    assert [p.name for p in tmp_path.iterdir()] == ["results"]  # no folder or lock file made
    assert {p.name: digest(p) for p in split.iterdir()} == files_before
    assert {p.name: digest(p) for p in (results / "pbmc68k" / "model").iterdir()} == model_before
    assert [(t.number, t.state, t.value) for t in load(results, "pbmc68k").trials] == study_before


def test_predict_missing_query_is_one_line(results, tmp_path):
    one_line_error(
        cli("predict", "pbmc68k", tmp_path / "nope.h5ad", "--results-dir", results), 1, "query: file not found"
    )


def test_repeat_replaces_the_model_only_with_a_better_seed(results):
    result = cli("repeat", "pbmc68k", "--top", "1", "--seeds", "2", "--results-dir", results)
    assert result.exit_code == 0, result.output
    card = read_card(results / "pbmc68k" / "model")
    best = best_complete(load(results, "pbmc68k"))  # over search trials and repeats
    assert (card["trial"], card["value"]) == (best.number, best.value)


# ------------------------------------------------------------------ the keeper's rules


class _Data:
    def __init__(self) -> None:
        self.classes, self.genes, self.notes, self.fingerprint = ["a", "b"], ["g1", "g2"], ["n"], "f"


def _result(value: float, *, stopped: bool = False) -> FinetuneResult:
    import torch

    return FinetuneResult(
        history=[EpochMetrics(epoch=1, val_accuracy=value)],
        best_epoch=1,
        stopped=stopped,
        state={"w": torch.full((2,), value)},
    )


def _keeper(folder: Path, completed: dict[int, float]) -> ModelKeeper:
    return ModelKeeper(
        folder,
        study_name="s",
        metric="val_accuracy",
        data=_Data(),
        data_settings={"normalize": "auto"},
        completed=completed,
    )


def test_keeper_writes_only_improvements(tmp_path):
    folder = tmp_path / "model"
    keeper = _keeper(folder, {0: 0.5})  # a trial finished before any model was kept
    assert not keeper.offer(_result(0.5), settings={}, trial=1)  # a tie: the earlier trial stays
    assert not folder.exists()
    assert keeper.offer(_result(0.7), settings={}, trial=2)
    assert not keeper.offer(_result(0.9, stopped=True), settings={}, trial=3)  # pruned
    assert not keeper.offer(_result(0.6), settings={}, trial=4)
    assert read_card(folder)["trial"] == 2
    # Another process's keeper of the same study sees the kept model as the bar.
    other = _keeper(folder, {0: 0.5, 2: 0.7})
    assert not other.stale and not other.offer(_result(0.65), settings={}, trial=5)


def test_keeper_ignores_a_model_of_a_deleted_study(tmp_path):
    folder = tmp_path / "model"
    assert _keeper(folder, {}).offer(_result(0.9), settings={}, trial=0)
    fresh = _keeper(folder, {})  # same name, recreated: trial 0 is not a complete trial now
    assert fresh.stale
    assert fresh.offer(_result(0.3), settings={}, trial=0)
    assert math.isclose(read_card(folder)["value"], 0.3)


# ------------------------------------------------------------------ real data


def _needs(file: str) -> Path:
    return shared_file(file)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "file"), [("baron", "baron_human_pancreas.h5ad"), ("kang", "kang2018_pbmc_ifnb.h5ad")]
)
def test_predict_on_the_held_out_donor_or_condition_matches_the_study(tmp_path, name, file):
    data = _needs(file)
    results = tmp_path / "results"
    small = [f"data.train={data}", "study.n_trials=3", "finetune.epoch=2"]
    run = cli("run", name, "--results-dir", results, "--device", "cpu", *small)
    assert run.exit_code == 0, run.output
    split = cli("split", name, "--results-dir", results, *small)
    assert split.exit_code == 0, split.output
    query = results / name / "split" / "test.h5ad"
    predicted = cli("predict", name, query, "--results-dir", results, "--device", "cpu")
    assert predicted.exit_code == 0, predicted.output
    card = read_card(results / name / "model")
    best = best_complete(load(results, name))
    assert card["trial"] == best.number
    annotated = anndata.read_h5ad(results / name / "split" / "test.predicted.h5ad")
    label_key = card["data"]["label_key"]
    accuracy = np.mean(
        annotated.obs[LABEL_COLUMN].astype(str).to_numpy() == annotated.obs[label_key].astype(str).to_numpy()
    )
    assert accuracy == card["test_accuracy"] and float(f"{accuracy:.4g}") == trial_result(best).test_accuracy
    assert json.loads((results / name / "model" / CARD_FILE).read_text())["genes"] == card["genes"]


def test_transformer_model_round_trips(tmp_path):
    """The kept weights rebuild the gene-token transformer too (settings from model.json)."""
    results = tmp_path / "results"
    tiny = [
        "study.n_trials=2",
        "finetune.epoch=2",
        "finetune.model=transformer",
        "finetune.d_model=16",
        "finetune.n_heads=2",
        "finetune.n_layers=1",
        "finetune.seq_len=32",
        "finetune.num_bin=11",
    ]
    run = cli("run", "pbmc68k", "--results-dir", results, *tiny)
    assert run.exit_code == 0, run.output
    assert cli("split", "pbmc68k", "--results-dir", results, *tiny).exit_code == 0
    query = results / "pbmc68k" / "split" / "test.h5ad"
    out = cli("predict", "pbmc68k", query, "--results-dir", results, "--device", "cpu")
    assert out.exit_code == 0, out.output
    card = read_card(results / "pbmc68k" / "model")
    assert card["settings"]["model"] == "transformer"
    annotated = anndata.read_h5ad(results / "pbmc68k" / "split" / "test.predicted.h5ad")
    accuracy = np.mean(
        annotated.obs[LABEL_COLUMN].astype(str).to_numpy() == annotated.obs["bulk_labels"].astype(str).to_numpy()
    )
    assert accuracy == card["test_accuracy"]
