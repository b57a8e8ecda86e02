"""_pruning.py: the study's pruner never stops a repeat nor a trial at its last epoch; otherwise
the user's pruner decides."""

from __future__ import annotations

import optuna
from fakes import CurveFinetuner, make_space
from optuna.trial import TrialState

from deepsc_tune.config import build_search_space
from deepsc_tune.study._pruning import SparingPruner, sparing_pruner
from deepsc_tune.study._repeat import enqueue_repeats, plan_repeats, run_repeats
from deepsc_tune.study._storage import default_storage_url, open_storage
from deepsc_tune.study._study import open_study, run_study

optuna.logging.set_verbosity(optuna.logging.ERROR)


class AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study, trial):
        return True


def _trial(study, *, step, user_attrs=None):
    trial = study.ask()
    for key, value in (user_attrs or {}).items():
        trial.set_user_attr(key, value)
    for epoch in range(1, step + 1):
        trial.report(0.5, epoch)
    return next(t for t in study.get_trials(deepcopy=False) if t.number == trial.number)


def test_asks_the_wrapped_pruner_except_for_repeats_and_the_last_epoch():
    study = optuna.create_study(direction="maximize")
    pruner = SparingPruner(AlwaysPrune(), lambda t: 3)
    assert pruner.prune(study, _trial(study, step=1)) is True
    assert pruner.prune(study, _trial(study, step=3)) is False  # the last epoch: a finished result
    assert pruner.prune(study, _trial(study, step=1, user_attrs={"repeat_of": 0, "repeat_seed": 7})) is False
    assert pruner.prune(study, _trial(study, step=0)) is False  # nothing reported yet
    assert SparingPruner(AlwaysPrune(), lambda t: None).prune(study, _trial(study, step=5)) is True


def test_every_study_gets_it_and_a_searched_epoch_counts(tmp_path):
    """open_study wraps study.pruner; the last epoch is the trial's own `epoch` setting."""
    space = make_space(n_trials=3, epoch=4, pruner={"type": "median", "n_startup_trials": 0, "n_warmup_steps": 0})
    study = open_study(space, storage=open_storage(default_storage_url("curve", tmp_path)), study_name="curve")
    assert isinstance(study.pruner, SparingPruner)
    assert isinstance(study.pruner.wrapped, optuna.pruners.MedianPruner)
    config = space.config
    searched = build_search_space(
        {**config, "finetune": {}, "search": {**config["search"], "epoch": {"low": 2, "high": 6}}}
    )
    frozen = optuna.trial.create_trial(
        params={"epoch": 2, "learning_rate": 1e-3, "lr_scheduler_type": "constant"},
        distributions={
            "epoch": optuna.distributions.IntDistribution(2, 6),
            "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
            "lr_scheduler_type": optuna.distributions.CategoricalDistribution(["constant", "cosine"]),
        },
        value=0.5,
    )
    assert sparing_pruner(searched).last_epoch(frozen) == 2
    run_study(space, CurveFinetuner(falling=True), study=study)
    states = [t.state for t in study.get_trials()]
    assert TrialState.PRUNED in states  # a falling curve is pruned by the median rule


def test_a_study_loaded_with_plain_optuna_gets_the_rule_from_the_runner(tmp_path):
    """Repeats run on a study its caller loaded with optuna.load_study, with a pruner that stops
    everything, are still never pruned."""
    space = make_space(n_trials=4, epoch=4)
    url = default_storage_url("curve", tmp_path)
    run_study(
        space, CurveFinetuner(falling=True), study=open_study(space, storage=open_storage(url), study_name="curve")
    )
    plain = optuna.load_study(study_name="curve", storage=open_storage(url))
    plain.pruner = optuna.pruners.ThresholdPruner(lower=2.0)  # prunes every trial at its first epoch
    enqueue_repeats(plain, plan_repeats(plain.get_trials(), top=2, seeds=1, fixed=space.fixed))
    run_repeats(plain, space, CurveFinetuner(falling=True))
    assert isinstance(plain.pruner, SparingPruner) and isinstance(plain.pruner.wrapped, optuna.pruners.ThresholdPruner)
    repeats = [t for t in plain.get_trials() if "repeat_of" in t.user_attrs]
    assert len(repeats) == 2 and all(t.state == TrialState.COMPLETE for t in repeats)
