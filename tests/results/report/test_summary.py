"""report_summary.py: the summary table on a real small study and on a synthetic one."""

from __future__ import annotations

import optuna
import pytest
from optuna.trial import TrialState
from report_studies import REAL_EPOCHS, add, cos

from deepsc_tune.results._export import format_best
from deepsc_tune.results.report._summary import summary_data
from deepsc_tune.study._selection import best_search_trial
from deepsc_tune.study._trial_record import trial_result

optuna.logging.set_verbosity(optuna.logging.ERROR)


def test_summary_on_real_study(real_study):
    trials = real_study.get_trials()
    s = summary_data(real_study, trials)
    best = best_search_trial(real_study)
    assert s.best_number == best.number and s.best_value == best.value
    result = trial_result(best)
    assert s.val_accuracy == result.val_accuracy == float(f"{best.value:.4g}")  # the best epoch's
    assert s.test_accuracy == result.test_accuracy is not None
    assert s.test_macro_f1 == result.test_macro_f1 is not None
    assert s.epochs_set == REAL_EPOCHS
    assert s.counts["COMPLETE"] + s.counts["PRUNED"] == 8 and s.counts["FAIL"] == 0
    assert s.yaml_block == format_best(real_study, best, fmt="yaml")
    hydra = format_best(real_study, best, fmt="hydra")
    assert s.override_line == hydra.splitlines()[-1]
    assert s.override_line.startswith("python -m src.deepsc.finetune.finetune lr_scheduler_type=")


def test_summary_counts_and_failures(synthetic):
    add(synthetic, TrialState.WAITING, cos(5e-3, 0.02), repeat_of=5, repeat_seed=3, retry_of=11)
    s = summary_data(synthetic, synthetic.trials)
    assert (s.counts["COMPLETE"], s.counts["PRUNED"], s.counts["FAIL"]) == (5, 3, 1)
    assert (s.repeat_counts["COMPLETE"], s.repeat_counts["FAIL"], s.repeat_counts["WAITING"]) == (2, 1, 1)
    assert [(f.number, f.reason, f.retried_as) for f in s.failed] == [
        (6, "training diverged: loss is NaN", None),
        (11, "interrupted", 12),
    ]
    # Trial 3 has the highest single value (0.9), but trial 5 was confirmed over 3 seeds
    # (0.88, 0.84, 0.80): the confirmed configuration is chosen, by its mean.
    assert s.best_number == 5 and s.best_value == 0.88
    assert s.seeds == 3 and s.seeds_mean == pytest.approx(0.84) and s.seeds_sd == pytest.approx(0.04)
    assert s.seeds_test_accuracy == "0.8133 ± 0.0153"  # 0.83, 0.81, 0.80
    assert s.leader.startswith("not distinguishable from the runner-up (trial 3, -0.0600)")
