"""study.confirm: after the search target, the K best configurations run again with N seeds."""

from __future__ import annotations

import json
import statistics
import threading

import optuna
import pytest
from fakes import CurveFinetuner
from optuna.trial import TrialState
from typer.testing import CliRunner

from deepsc_tune.cli import app
from deepsc_tune.config._search_space import build_search_space
from deepsc_tune.errors import ConfigError
from deepsc_tune.study._confirm import run_confirmation
from deepsc_tune.study._objective import read_trial_file
from deepsc_tune.study._repeat import top_trials
from deepsc_tune.study._storage import default_storage_url, open_storage
from deepsc_tune.study._study import open_study, run_study
from deepsc_tune.study._trial_record import count_states

optuna.logging.set_verbosity(optuna.logging.ERROR)

CONFIG = {
    "name": "curve",
    "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
    "finetune": {"epoch": 3, "seed": 7},
    "search": {
        "lr_scheduler_type": {"choices": ["constant", "cosine"]},
        "learning_rate": {"low": 1e-5, "high": 1e-1, "log": True},
    },
    "study": {
        "n_trials": 5,
        "sampler": {"type": "tpe", "seed": 0},
        "pruner": {"type": "median", "n_startup_trials": 0, "n_warmup_steps": 0},
        "confirm": {"top": 2, "seeds": 2},
    },
}


def falling_seed_curve(interrupt_seed=None) -> CurveFinetuner:
    """Peak 0.9 at 1e-3, shifted by the seed, falling after epoch 1 (the median pruner would stop
    it if it could); the first run with ``interrupt_seed`` is interrupted at epoch 2."""
    return CurveFinetuner(top=0.9, seed_shift=0.01, falling=True, test_gap=0.02, interrupt_seed=interrupt_seed)


def _repeats(study):
    return [t for t in study.get_trials() if "repeat_of" in t.user_attrs]


def _searched(tmp_path, config=CONFIG):
    space = build_search_space(config)
    url = default_storage_url("curve", tmp_path)
    rdb = open_storage(url)
    study = open_study(space, storage=rdb, study_name="curve")
    run_study(space, falling_seed_curve(), study=study)
    return space, study, rdb


def test_confirm_key_is_validated():
    for bad, message in [
        ({"top": 0, "seeds": 2}, "study.confirm.top: expected a positive integer, got 0"),
        ({"top": 2}, "study.confirm.seeds: missing; expected a positive integer"),
        ({"top": 2, "seeds": "two"}, "study.confirm.seeds: expected a positive integer, got 'two'"),
        ({"top": 2, "seeds": 1.5}, "study.confirm.seeds: expected a positive integer, got 1.5"),
        ({"top": True, "seeds": 1}, "study.confirm.top: expected a positive integer, got True"),
        ({"top": 1, "seeds": 1, "rule": "x"}, "study.confirm.rule: unknown key; expected one of top, seeds"),
        (3, "study.confirm: expected a mapping {top: K, seeds: N} or null, got 3"),
    ]:
        with pytest.raises(ConfigError) as err:
            build_search_space({**CONFIG, "study": {**CONFIG["study"], "confirm": bad}})
        assert message in str(err.value), bad
    space = build_search_space(CONFIG)
    assert space.confirm == {"top": 2, "seeds": 2}
    off = build_search_space({**CONFIG, "study": {**CONFIG["study"], "confirm": None}})
    assert off.confirm is None
    # confirm may be switched on for an existing study: it does not change what its trials mean
    assert off.sha256 == space.sha256


def test_confirm_repeats_the_best_unpruned_and_is_idempotent(tmp_path):
    space, study, rdb = _searched(tmp_path)
    before = count_states(study)
    best = [t.number for t in top_trials(study.get_trials(), top=2)]
    finetuner = falling_seed_curve()
    summary = run_confirmation(space, finetuner, study=study, storage=rdb)
    assert summary.queued == 4 and len(summary.ran) == 4 and summary.failed == []
    reps = _repeats(study)
    assert sorted((t.user_attrs["repeat_of"], t.user_attrs["repeat_seed"]) for t in reps) == sorted(
        (n, s) for n in best for s in (8, 9)
    )  # finetune.seed 7 -> seeds 8 and 9
    assert all(t.state == TrialState.COMPLETE and len(t.intermediate_values) == 3 for t in reps)  # never pruned
    assert [c["seed"] for c in finetuner.calls] == [t.user_attrs["repeat_seed"] for t in reps]  # ran with it
    assert count_states(study) == before  # no search trial added
    again = run_confirmation(space, falling_seed_curve(), study=study, storage=rdb)
    assert again.queued == 0 and again.ran == [] and len(study.get_trials()) == 5 + 4
    off = build_search_space({**CONFIG, "study": {**CONFIG["study"], "confirm": None}})
    assert run_confirmation(off, falling_seed_curve(), study=study, storage=rdb) is None


def test_interrupted_confirmation_resumes_without_duplicates(tmp_path):
    space, study, rdb = _searched(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        run_confirmation(space, falling_seed_curve(interrupt_seed=9), study=study, storage=rdb)
    failed = [t for t in _repeats(study) if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["repeat_seed"] == 9
    # Re-queued at once (as `run` does), keeping what makes it that repeat.
    retry = [t for t in _repeats(study) if t.state == TrialState.WAITING and t.user_attrs.get("retry_of")]
    assert [(t.user_attrs["retry_of"], t.user_attrs["repeat_seed"]) for t in retry] == [(failed[0].number, 9)]
    summary = run_confirmation(space, falling_seed_curve(), study=study, storage=rdb)
    done = [
        (t.user_attrs["repeat_of"], t.user_attrs["repeat_seed"])
        for t in _repeats(study)
        if t.state == TrialState.COMPLETE
    ]
    assert len(done) == 4 and len(set(done)) == 4  # each repeat once
    assert summary.queued == 0  # the interrupted one was re-queued: nothing to plan again
    assert len(_repeats(study)) == 5  # 4 complete + the interrupted FAIL, nothing duplicated


def _shared_confirmation(space, study, url, name):
    """Two workers (threads, each with its own storage) queue each repeat once and take turns."""
    finetuner = falling_seed_curve()
    errors = []

    def worker():
        try:
            rdb = open_storage(url)
            own = optuna.load_study(study_name=name, storage=rdb)
            run_confirmation(space, finetuner, study=own, storage=rdb)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    reps = _repeats(study)
    keys = [(t.user_attrs["repeat_of"], t.user_attrs["repeat_seed"]) for t in reps]
    assert len(keys) == 4 and len(set(keys)) == 4
    assert all(t.state == TrialState.COMPLETE for t in reps)
    assert len(study.get_trials()) == 5 + 4 and len(finetuner.calls) == 4


def test_workers_share_the_confirmation(tmp_path):
    space, study, _ = _searched(tmp_path)
    _shared_confirmation(space, study, default_storage_url("curve", tmp_path), "curve")


@pytest.mark.postgres
def test_workers_share_the_confirmation_on_postgres(postgres_study):
    url, name = postgres_study
    space = build_search_space(CONFIG)
    study = open_study(space, storage=open_storage(url), study_name=name)
    run_study(space, falling_seed_curve(), study=study)
    _shared_confirmation(space, study, url, name)


# ----------------------------------------------------------------------------- end to end


def _trials_snapshot(db):
    study = optuna.load_study(study_name="pbmc68k", storage=f"sqlite:///{db}")
    return [(t.number, t.state, t.params, t.value) for t in study.get_trials()]


def test_run_confirms_on_real_data_and_best_uses_the_mean(tmp_path):
    """pbmc68k, 3 trials of 2 epochs, confirm the best 2 with 1 seed; then best/status/export."""
    results = str(tmp_path / "results")
    db = tmp_path / "results" / "pbmc68k" / "study.db"
    runner = CliRunner()
    args = [
        "run",
        "pbmc68k",
        "--results-dir",
        results,
        "--threads",
        "1",
        "study.n_trials=3",
        "finetune.epoch=2",
        "finetune.hidden=[16]",
        "study.enqueue=[]",
        "study.pruner={type: none}",
    ]
    result = runner.invoke(app, [*args, "study.confirm={top: 2, seeds: 1}"])
    assert result.exit_code == 0, result.output
    assert "confirmation (study.confirm top 2, seeds 1): queued 2, ran 2 (0 failed)" in result.output
    study = optuna.load_study(study_name="pbmc68k", storage=f"sqlite:///{db}")
    reps = [t for t in study.get_trials() if "repeat_of" in t.user_attrs]
    assert len(reps) == 2 and all(t.state == TrialState.COMPLETE for t in reps)
    trials = db.parent / "trials"
    assert all(read_trial_file(trials, t.number)["settings"]["seed"] == 1 for t in reps)  # pbmc68k.yaml: seed 0

    snapshot = _trials_snapshot(db)
    again = runner.invoke(app, [*args, "study.confirm={top: 2, seeds: 1}"])
    assert again.exit_code == 0 and "queued 0, ran 0" in again.output
    assert _trials_snapshot(db) == snapshot  # idempotent

    bad = runner.invoke(app, [*args, "study.confirm={top: 0, seeds: 1}"])
    assert bad.exit_code == 2
    assert "study.confirm.top: expected a positive integer, got 0" in bad.output
    assert "Traceback" not in bad.output
    assert _trials_snapshot(db) == snapshot

    out = runner.invoke(app, ["best", "pbmc68k", "--results-dir", results, "--format", "json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    trials = {t.number: t for t in study.get_trials()}
    seeds = data["seeds"]
    assert seeds["n"] == 2 and seeds["trials"][0] == data["trial"]
    values = [trials[n].value for n in seeds["trials"]]
    assert seeds["mean"] == pytest.approx(statistics.fmean(values))
    assert seeds["sd"] == pytest.approx(statistics.stdev(values))
    # the chosen one has the highest mean among the two confirmed configurations
    means = {}
    for t in reps:
        n = t.user_attrs["repeat_of"]
        means[n] = statistics.fmean([trials[n].value, t.value])
    assert data["trial"] == max(means, key=lambda n: (means[n], -n))
    yaml_out = runner.invoke(app, ["best", "pbmc68k", "--results-dir", results])
    assert f"over seeds: {seeds['mean']:.4f} ± {seeds['sd']:.4f} (n=2)" in yaml_out.output
    status = runner.invoke(app, ["status", "pbmc68k", "--results-dir", results])
    assert status.exit_code == 0 and "ranking by mean val_accuracy over seeds" in status.output
    assert f"{data['trial']:>4}  {seeds['mean']:.4f} ± {seeds['sd']:.4f} (n=2)" in status.output
