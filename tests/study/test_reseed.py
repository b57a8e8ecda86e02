"""Continuations explore: a resumed study, a raised target or a second process propose new
settings, while a seeded single-process run from scratch stays reproducible (deepsc_tune.study._reseed)."""

from __future__ import annotations

import threading

import optuna
import pytest
from fakes import make_space, study_curve

from deepsc_tune.study._reseed import PerTrialSeedSampler, trial_seed
from deepsc_tune.study._storage import default_storage_url, open_storage
from deepsc_tune.study._study import build_study_sampler, open_study, run_study

optuna.logging.set_verbosity(optuna.logging.ERROR)


def settings(study: optuna.Study) -> list[tuple]:
    return [tuple(sorted(t.params.items())) for t in study.get_trials() if not t.user_attrs.get("enqueued")]


def run_to(tmp_path, n_trials: int, name: str = "curve", sampler=None) -> optuna.Study:
    space = make_space(n_trials=n_trials, pruner={"type": "none"})
    if sampler:
        space = make_space(n_trials=n_trials)
        from dataclasses import replace

        space = replace(space, sampler_config=sampler)
    study = open_study(space, storage=open_storage(default_storage_url(name, tmp_path)), study_name=name)
    run_study(space, study_curve(), study=study)
    return study


@pytest.mark.parametrize("sampler", [None, {"type": "random", "seed": 3}])
def test_raised_target_proposes_new_settings(tmp_path, sampler):
    first = settings(run_to(tmp_path, 4, sampler=sampler))
    both = settings(run_to(tmp_path, 7, sampler=sampler))
    assert both[: len(first)] == first  # the stored trials are kept
    later = both[len(first) :]
    assert len(later) == 3 and not set(later) & set(first), (first, later)


def test_from_scratch_is_reproducible(tmp_path):
    a = settings(run_to(tmp_path / "a", 6))
    b = settings(run_to(tmp_path / "b", 6))
    assert a == b and len(set(a)) == len(a) == 5


def test_two_processes_at_once_do_not_duplicate(tmp_path):
    """Two lone workers (no --worker-id) on one SQLite study: both keep the study's seed."""
    space = make_space(n_trials=12)
    url = default_storage_url("curve", tmp_path)
    open_study(space, storage=open_storage(url), study_name="curve")

    def worker() -> None:
        study = open_study(space, storage=open_storage(url), study_name="curve", worker=None)
        run_study(space, study_curve(), study=study)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    study = optuna.load_study(study_name="curve", storage=open_storage(url, heartbeat=False))
    found = settings(study)
    assert len(found) == 11 and len(set(found)) == len(found), found


def test_trial_seeds_are_distinct_and_stable():
    seeds = [trial_seed(0, n) for n in range(1000)]
    assert len(set(seeds)) == 1000 and trial_seed(0, 5) == trial_seed(0, 5) != trial_seed(1, 5)


def test_sampler_wrapping():
    assert isinstance(build_study_sampler(make_space()), PerTrialSeedSampler)
    from dataclasses import replace

    qmc = replace(make_space(), sampler_config={"type": "qmc", "seed": 4})
    first = []
    for worker in ("w1", "w2"):  # QMC: every worker must share one seed (Optuna's rule)
        sampler = build_study_sampler(qmc, worker=worker)
        assert isinstance(sampler, optuna.samplers.QMCSampler)
        study = optuna.create_study(sampler=sampler)
        first.append(study.ask().suggest_float("x", 0, 1))
    assert first[0] == first[1]
    unseeded = replace(make_space(), sampler_config={"type": "tpe"})
    assert isinstance(build_study_sampler(unseeded), optuna.samplers.TPESampler)
