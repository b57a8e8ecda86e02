"""Tests of deepsc_tune.cli._progress: trial lines, and the live epoch line only on a terminal."""

import io

import optuna

from deepsc_tune.backends._interface import EpochMetrics
from deepsc_tune.cli._progress import Progress, format_params
from deepsc_tune.study._trial_record import trial_result


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _study_with_one_trial() -> tuple[optuna.Study, optuna.trial.FrozenTrial]:
    study = optuna.create_study(direction="maximize")
    trial = study.ask({"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-2, log=True)})
    trial.report(0.5, 1)
    trial.report(0.75, 2)
    study.tell(trial, 0.75)
    return study, study.trials[0]


def _epoch(epoch: int, acc: float) -> EpochMetrics:
    return EpochMetrics(epoch=epoch, val_accuracy=acc, val_macro_f1=acc, val_loss=1.0)


def test_off_a_terminal_only_trial_lines_are_written():
    study, trial = _study_with_one_trial()
    out = io.StringIO()
    p = Progress(metric="val_accuracy", stream=out)
    assert not p.live
    p.epoch(0, _epoch(1, 0.5))
    p.trial_done(study, trial)
    text = out.getvalue()
    assert "epoch" not in text and "\x1b" not in text and "\r" not in text
    assert text.splitlines() == [
        f"#  0 COMPLETE | learning_rate={trial.params['learning_rate']:.3g} | "
        f"val_accuracy 0.500 0.750 | {trial_result(trial).duration_s:.1f}s | best 0.7500 (#0)"
    ]


def test_on_a_terminal_the_epoch_line_is_live_and_erased_before_the_trial_line():
    study, trial = _study_with_one_trial()
    out = Terminal()
    p = Progress(metric="val_accuracy", stream=out)
    assert p.live
    p.epoch(0, _epoch(1, 0.5))
    p.epoch(0, _epoch(2, 0.75))
    assert "trial   0 epoch   2  val_accuracy 0.7500" in out.getvalue()
    p.trial_done(study, trial)
    text = out.getvalue()
    # The trial line is the last thing written, on a line of its own, after the live line's erase.
    assert text.endswith("best 0.7500 (#0)\n")
    last_line = text.rsplit("\x1b[", 1)[-1]
    assert "epoch" not in last_line.split("#  0", 1)[-1]
    p.close()  # nothing shown: a no-op
    assert out.getvalue() == text


def test_verbose_prints_every_epoch_as_a_line():
    out = Terminal()
    p = Progress(metric="val_accuracy", stream=out, verbose=True)
    assert not p.live
    p.epoch(3, _epoch(1, 0.5))
    p.epoch(3, _epoch(2, 0.6))
    assert out.getvalue().splitlines() == [
        "  trial   3 epoch   1  val_accuracy 0.5000",
        "  trial   3 epoch   2  val_accuracy 0.6000",
    ]


def test_format_params_is_short():
    assert format_params({"learning_rate": 0.000123456, "lr_scheduler_type": "cosine"}) == (
        "learning_rate=0.000123 lr_scheduler_type=cosine"
    )
