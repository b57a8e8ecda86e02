"""lr_find.py: the LR range test on pbmc68k, its suggestion, and bad input."""

from __future__ import annotations

import itertools
import json
import math
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.config._search_space import load_search_space
from deepsc_tune.results._lr_find import DIVERGE_FACTOR, suggest_range

runner = CliRunner()


def test_suggestion_on_a_synthetic_curve():
    lrs = [10 ** (-6 + 6 * i / 99) for i in range(100)]
    # flat, then falling fastest around 1e-3, lowest near 1e-1, then rising
    loss = [
        2.0 - 1.5 / (1 + math.exp(-4 * (math.log10(lr) + 3))) + (3 * (math.log10(lr) + 1) ** 2 if lr > 0.1 else 0.0)
        for lr in lrs
    ]
    steepest, lowest, note = suggest_range(lrs, loss)
    assert note is None
    assert 3e-4 < steepest < 3e-3 and 5e-2 < lowest < 2e-1
    flat = suggest_range(lrs, [1.0 + 1e-3 * i for i in range(100)])
    assert flat[0] is None and "never fell" in flat[2]


def test_lr_find_on_pbmc68k_suggests_a_usable_range(tmp_path):
    result = runner.invoke(
        app,
        [
            "lr-find",
            "pbmc68k",
            "--results-dir",
            str(tmp_path),
            "--steps",
            "60",
            "--min-lr",
            "1e-5",
            "--max-lr",
            "10",
            "--device",
            "cpu",
        ],
    )
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "pbmc68k" / "lr_find.json").read_text())
    assert (tmp_path / "pbmc68k" / "lr_find.html").stat().st_size > 100_000  # plotly inlined
    lrs, smoothed = doc["learning_rates"], doc["smoothed"]
    assert lrs[0] == pytest.approx(1e-5) and all(a < b for a, b in itertools.pairwise(lrs))
    assert doc["stopped_early"] == (len(lrs) < 60)
    if doc["stopped_early"]:  # it stops once the loss ran away
        assert smoothed[-1] > DIVERGE_FACTOR * min(smoothed) or not math.isfinite(doc["losses"][-1])
    assert 1e-5 <= doc["low"] < doc["high"] <= 10
    assert doc["low"] < doc["steepest_lr"] and doc["high"] < doc["min_loss_lr"]
    # the printed overrides give a valid search space with that range
    line = next(ln for ln in result.output.splitlines() if ln.startswith("use it"))
    overrides = [a for a in shlex.split(line.split("pbmc68k-lr", 1)[1])]
    space = load_search_space("pbmc68k", overrides)
    lr = space.params["learning_rate"]
    assert lr.low == pytest.approx(doc["low"], rel=1e-2) and lr.high == pytest.approx(doc["high"], rel=1e-2)
    # the study's report links the plot and repeats the suggestion
    run = runner.invoke(app, ["run", "pbmc68k", "--results-dir", str(tmp_path), "study.n_trials=2", "finetune.epoch=1"])
    assert run.exit_code == 0, run.output
    assert runner.invoke(app, ["report", "pbmc68k", "--results-dir", str(tmp_path)]).exit_code == 0
    page = (tmp_path / "pbmc68k" / "report.html").read_text()
    assert '<a href="lr_find.html">' in page and f"{doc['low']:.3g} to {doc['high']:.3g}" in page


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--min-lr", "1", "--max-lr", "0.1"], "--min-lr: expected less than --max-lr (0.1), got 1"),
        (["--min-lr", "0"], "--min-lr/--max-lr: expected positive rates"),
        (["--steps", "3"], "--steps: expected at least 10, got 3"),
        (["lerning_rate=1"], "did you mean 'learning_rate'"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args, message):
    result = runner.invoke(app, ["lr-find", "pbmc68k", "--results-dir", str(tmp_path), *args])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert message in result.output
    assert not (tmp_path / "pbmc68k").exists()  # nothing written


@pytest.mark.parametrize(
    "extra",
    [{"loss": "balanced", "grad_acc": 3, "batch_size": 16}, {"finetune_mode": "head_only", "hidden": [32, 16]}],
)
def test_range_test_trains_through_the_trials_own_step(extra):
    """lr-find and a trial share one training step: at a constant rate, one epoch of the range test
    gives the trial's own epoch loss (same seed, shuffle, balanced loss, grad_acc, freezing)."""
    import numpy as np
    from data_helpers import make_data
    from data_helpers import train_settings as settings

    from deepsc_tune.backends.builtin._schedules import ExponentialRange, steps_per_epoch
    from deepsc_tune.backends.builtin._train import run_range_test, run_training

    data = make_data(n_train=200)
    s = settings(epoch=1, lr_scheduler_type="constant", learning_rate=3e-3, **extra)
    trial = run_training(data, s, log=lambda line: None)
    per_epoch = steps_per_epoch(200, batch_size=s.batch_size, grad_acc=s.grad_acc)
    seen = []
    info = run_range_test(
        data,
        s,
        schedule=ExponentialRange(3e-3, 3e-3, per_epoch),
        steps=per_epoch,
        on_step=lambda lr, loss: seen.append((lr, loss)) and False,
    )
    assert len(seen) == per_epoch and all(lr == pytest.approx(3e-3) for lr, _ in seen)
    # Step losses are means over each group's cells; weight them back to the epoch mean.
    groups = [min(s.batch_size * s.grad_acc, 200 - i * s.batch_size * s.grad_acc) for i in range(per_epoch)]
    epoch_loss = float(np.dot([loss for _, loss in seen], groups) / 200)
    assert epoch_loss == pytest.approx(trial.history[0].train_loss, rel=1e-5)
    assert info["n_trainable"] == trial.extra["n_trainable"]
    if extra.get("finetune_mode") == "head_only":
        assert info["n_trainable"] < info["n_parameters"]


def test_range_test_rate_rises_exponentially():
    from deepsc_tune.backends.builtin._schedules import ExponentialRange

    r = ExponentialRange(1e-5, 1e-1, 5)
    assert [r.lr(k) for k in range(5)] == pytest.approx([1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
