"""recovery.py: trials of dead workers failed with a reason and re-queued.

The heartbeat path (a worker elsewhere stops beating) runs in tests/study/test_workers.py, with the
workers that wait for its retry; killed worker processes in tests/study/test_workers.py and
tests/test_faults.py.
"""

from __future__ import annotations

import subprocess
import sys

import optuna
import pytest
from fakes import make_space, study_curve
from optuna.trial import TrialState

from deepsc_tune.study._recovery import MAX_RETRIES, recover_orphaned_trials, requeue, requeue_lost_retries
from deepsc_tune.study._storage import default_storage_url, open_storage
from deepsc_tune.study._study import open_study, run_study
from deepsc_tune.study._trial_record import search_trials

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")


@pytest.fixture
def storage(tmp_path):
    return open_storage(default_storage_url("curve", tmp_path))


def test_orphaned_running_trial_is_failed_and_requeued(storage):
    space = make_space(n_trials=2)
    study = open_study(space, storage=storage, study_name="curve")
    # a trial left RUNNING by a process that no longer exists
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask(
        {
            "lr_scheduler_type": optuna.distributions.CategoricalDistribution(["constant", "cosine"]),
            "learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True),
        }
    )
    # the enqueued trial was taken by ask(); give it a dead worker
    import socket

    trial.set_user_attr("worker", {"host": socket.gethostname(), "pid": dead.pid, "started": "1"})
    number = trial.number
    assert recover_orphaned_trials(study, storage) == [number]
    frozen = study.get_trials()[number]
    assert frozen.state == TrialState.FAIL
    assert "died while the trial ran" in frozen.user_attrs["fail_reason"]
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert waiting and waiting[0].user_attrs["retry_of"] == number
    assert waiting[0].system_attrs["fixed_params"] == frozen.params  # Optuna's enqueue record
    run_study(space, study_curve(), study=study)
    assert len(search_trials(study, states=(TrialState.COMPLETE,))) == 2


def test_an_interrupted_trial_whose_retry_was_lost_is_requeued_once(storage):
    """A process killed between recording "interrupted" and queueing the retry: the next run
    queues it (once, with the trial's settings); other failures and retried trials are left alone."""
    study = optuna.create_study(study_name="lost", storage=storage, direction="maximize")
    dist = {"learning_rate": optuna.distributions.FloatDistribution(1e-5, 1e-1, log=True)}

    def failed(lr, reason, **attrs):
        trial = optuna.trial.create_trial(
            state=TrialState.FAIL,
            params={"learning_rate": lr},
            distributions=dist,
            user_attrs={"fail_reason": reason, **attrs},
        )
        study.add_trial(trial)
        return study.get_trials()[-1]

    lost = failed(1e-3, "interrupted (SIGTERM)")
    kept = failed(2e-3, "interrupted")
    requeue(study, kept, "interrupted")  # its worker got to re-queue it
    failed(3e-3, "training diverged: loss is NaN at epoch 1")
    failed(4e-3, "interrupted", retry_count=MAX_RETRIES)  # retried often enough already
    assert requeue_lost_retries(study) == [lost.number]
    retries = [t for t in study.get_trials() if t.state == TrialState.WAITING]
    assert [(t.user_attrs["retry_of"], t.system_attrs["fixed_params"]) for t in retries] == [
        (kept.number, {"learning_rate": 2e-3}),
        (lost.number, {"learning_rate": 1e-3}),
    ]
    assert retries[1].user_attrs["retry_reason"] == "interrupted (SIGTERM)"
    assert requeue_lost_retries(study) == []  # never queued twice


def test_live_workers_trials_are_left_alone(storage):
    space = make_space(n_trials=2)
    study = open_study(space, storage=storage, study_name="curve")
    trial = study.ask()
    from deepsc_tune.study._objective import worker_identity

    trial.set_user_attr("worker", worker_identity())
    assert recover_orphaned_trials(study, storage) == []
    assert study.get_trials()[trial.number].state == TrialState.RUNNING


def test_a_retry_keeps_what_marks_a_repeat_and_counts_retries(storage):
    study = open_study(make_space(n_trials=2), storage=storage, study_name="curve")
    trial = study.ask()  # takes the search space's enqueued configuration
    trial.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    for key, value in {"repeat_of": 0, "repeat_seed": 3, "retry_count": 1, "seed": 9}.items():
        trial.set_user_attr(key, value)
    study.tell(trial, state=TrialState.FAIL)
    failed = study.get_trials()[trial.number]
    requeue(study, failed, "interrupted")
    retry = study.get_trials(states=(TrialState.WAITING,))[-1]
    assert retry.user_attrs == {
        "retry_of": trial.number,
        "retry_reason": "interrupted",
        "retry_count": 2,
        "repeat_of": 0,
        "repeat_seed": 3,
        "enqueued": True,
    }
    assert MAX_RETRIES == 3
