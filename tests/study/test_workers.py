"""Several workers on one study: planning, the start lock, heartbeats, and `run --workers`
end to end (SQLite and PostgreSQL, a worker killed mid-trial, Ctrl-C)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from fakes import CurveFinetuner
from optuna.trial import TrialState
from paths import REPO
from sqlalchemy.engine import make_url

from deepsc_tune.config._search_space import build_search_space
from deepsc_tune.errors import ConfigError
from deepsc_tune.study._objective import epoch_history
from deepsc_tune.study._recovery import trial_id
from deepsc_tune.study._storage import default_storage_url, open_storage
from deepsc_tune.study._study import open_study, run_study, sampler_label, worker_seed
from deepsc_tune.study._trial_record import STALE_REASON, failure_reason, worker_of
from deepsc_tune.study._workers import WorkerPlan, describe_exit, parse_gpus, plan_workers

optuna.logging.set_verbosity(optuna.logging.ERROR)

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
#: A real pbmc68k study made tiny: 2 epochs of a 16-unit MLP, 24 trials.
TINY = ["finetune.epoch=2", "finetune.hidden=[16]", "study.n_trials=24"]


# ----------------------------------------------------------------------------- planning


@pytest.mark.parametrize(
    ("workers", "gpus", "threads", "cpus", "expected"),
    [
        (4, [], None, 2, [("w1", 1, None), ("w2", 1, None), ("w3", 1, None), ("w4", 1, None)]),
        (2, [], None, 16, [("w1", 8, None), ("w2", 8, None)]),
        (2, [], 3, 16, [("w1", 3, None), ("w2", 3, None)]),
        (None, ["0", "1"], None, 16, [("w1", 8, "0"), ("w2", 8, "1")]),
        (3, ["0", "1"], None, 12, [("w1", 4, "0"), ("w2", 4, "1"), ("w3", 4, "0")]),
        (None, [], None, 4, [("w1", 4, None)]),
    ],
)
def test_plan_workers(workers, gpus, threads, cpus, expected):
    plans = plan_workers(workers=workers, gpus=gpus, threads=threads, cpus=cpus)
    assert [(p.worker_id, p.threads, p.gpu) for p in plans] == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"workers": 0}, "--workers 0"), ({"workers": 2, "threads": 0}, "--threads 0")],
)
def test_plan_workers_rejects(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        plan_workers(**kwargs)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0", ["0"]), ("0,1, 2", ["0", "1", "2"]), ("GPU-5a1c,MIG-1/2", ["GPU-5a1c", "MIG-1/2"]), (None, [])],
)
def test_parse_gpus(text, expected):
    assert parse_gpus(text) == expected


@pytest.mark.parametrize("text", ["", "0,,1", "0,1,", "0 1"])
def test_parse_gpus_rejects(text):
    with pytest.raises(ConfigError, match="--gpus"):
        parse_gpus(text)


def test_worker_env_pins_gpu_and_threads():
    env = WorkerPlan("w2", threads=3, gpu="1").env({"PATH": "/bin", "CUDA_VISIBLE_DEVICES": "0,1"})
    assert env["CUDA_VISIBLE_DEVICES"] == "1" and env["OMP_NUM_THREADS"] == "3"
    assert env["PATH"] == "/bin" and env["PYTHONUNBUFFERED"] == "1"
    assert "CUDA_VISIBLE_DEVICES" not in WorkerPlan("w1", threads=1).env({})


def test_describe_exit():
    assert describe_exit(0) == "finished"
    assert describe_exit(130) == "interrupted"
    assert describe_exit(-9) == "killed by SIGKILL"
    assert describe_exit(1) == "stopped with exit code 1"


def test_worker_seeds_differ_but_a_lone_worker_keeps_the_study_seed():
    seeds = {worker_seed(0, f"w{k}") for k in range(1, 9)}
    assert len(seeds) == 8 and 0 not in seeds
    assert worker_seed(0, "w1") == worker_seed(0, "w1")  # stable across processes and machines
    assert worker_seed(7, None) == 7 and worker_seed(None, "w1") is None
    assert sampler_label("sqlite:///x/study.db", None) is None
    assert sampler_label("sqlite:///x/study.db", "w3") == "w3"
    assert sampler_label("postgresql://u@h/db", None)  # many machines, one command: distinct


# ----------------------------------------------------------------------------- in-process workers


def make_space(n_trials: int):
    return build_search_space(
        {
            "name": "sleepy",
            "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
            "finetune": {"epoch": 3},
            "search": {"learning_rate": {"low": 1e-5, "high": 1e-1, "log": True}},
            "study": {
                "n_trials": n_trials,
                "sampler": {"type": "tpe", "seed": 0},
                "pruner": {"type": "median", "n_startup_trials": 4},
                "enqueue": [{"learning_rate": 1e-4}],
            },
        }
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path):
    """``(url, study_name)`` on each kind of storage."""
    if request.param == "sqlite":
        return default_storage_url("sleepy", tmp_path), "sleepy"
    return request.getfixturevalue("postgres_study")


def check_study(study: optuna.Study, target: int, epochs: int) -> list[optuna.trial.FrozenTrial]:
    """Exactly ``target`` finished trials, nothing left running, every trial's record whole."""
    trials = study.get_trials()
    numbers = [t.number for t in trials]
    assert len(set(numbers)) == len(numbers) == len(trials)
    assert sorted(numbers) == list(range(len(trials)))
    finished = [t for t in trials if t.state in FINISHED]
    assert len(finished) == target, [(t.number, t.state.name) for t in trials]
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    for t in finished:
        u = t.user_attrs
        history = epoch_history(t, metric="val_accuracy")
        assert len(t.intermediate_values) == len(history) >= 1, t.number
        assert [h["epoch"] for h in history] == sorted(t.intermediate_values) == list(range(1, len(history) + 1))
        for h in history:
            assert t.intermediate_values[h["epoch"]] == pytest.approx(h["val_accuracy"])
        if t.state == TrialState.COMPLETE:
            assert len(t.intermediate_values) == epochs
            assert t.value == pytest.approx(max(t.intermediate_values.values()))
        assert worker_of(t).pid and "settings" not in u
    for t in trials:
        assert "locked" not in (failure_reason(t) or ""), failure_reason(t)
    return finished


def test_threads_sharing_a_study_stop_exactly_at_the_target(storage_url):
    """Four workers (threads, each with its own storage connection) race for the last slots."""
    url, name = storage_url
    space = make_space(n_trials=24)
    open_study(space, storage=open_storage(url), study_name=name)
    errors: list[BaseException] = []

    def worker(k: int) -> None:
        try:
            study = open_study(space, storage=open_storage(url), study_name=name, worker=f"w{k}")
            run_study(space, CurveFinetuner(epoch_seconds=0.01), study=study)
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors and not any(t.is_alive() for t in threads)
    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
    finished = check_study(study, target=24, epochs=3)
    assert len({worker_of(t).pid for t in finished}) == 1  # one process, four threads
    params = [t.params["learning_rate"] for t in study.get_trials()]
    assert len(set(params)) == len(params), "workers with distinct seeds propose distinct settings"


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_heartbeat_fails_and_requeues_a_silent_workers_trial(storage_url, monkeypatch):
    """A worker on another machine stops beating: after the grace period its trial is FAIL
    and its parameters run again, in a worker that was waiting for it."""
    monkeypatch.setenv("DEEPSC_TUNE_HEARTBEAT", "1")
    monkeypatch.setenv("DEEPSC_TUNE_GRACE", "3")
    url, name = storage_url
    space = make_space(n_trials=2)
    storage = open_storage(url)
    study = open_study(space, storage=storage, study_name=name)
    lost = study.ask()  # takes the enqueued learning_rate=1e-4
    lost.suggest_float("learning_rate", 1e-5, 1e-1, log=True)
    lost.set_user_attr("worker", {"host": "elsewhere", "pid": 12345, "started": "1"})
    storage.record_heartbeat(trial_id(storage, study, lost.number))  # one beat, then silence
    started = time.monotonic()
    run_study(space, CurveFinetuner(epoch_seconds=0.01), study=study)
    assert time.monotonic() - started >= 3  # not before the grace period
    dead = study.get_trials()[lost.number]
    assert dead.state == TrialState.FAIL and failure_reason(dead) == STALE_REASON
    retry = [t for t in study.get_trials() if t.user_attrs.get("retry_of") == lost.number]
    assert len(retry) == 1 and retry[0].state in FINISHED
    assert retry[0].params == dead.params and retry[0].user_attrs["retry_reason"] == STALE_REASON
    check_study(study, target=2, epochs=3)


# ----------------------------------------------------------------------------- the CLI, end to end


def start_workers(results: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "deepsc_tune.cli", "run", "pbmc68k", "--results-dir", str(results), *extra]
    return subprocess.Popen(
        cmd,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )


def finish(proc: subprocess.Popen, timeout: float) -> str:
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        raise AssertionError(f"still running after {timeout}s:\n{out}") from None
    return out


def read_until(proc: subprocess.Popen, predicate, timeout: float = 120) -> list[str]:
    """Lines until one satisfies ``predicate``; the process is killed if none does in time."""
    lines: list[str] = []
    timer = threading.Timer(timeout, lambda: os.killpg(proc.pid, signal.SIGKILL))
    timer.start()
    try:
        for line in proc.stdout:
            lines.append(line)
            if predicate(line):
                return lines
    finally:
        timer.cancel()
    raise AssertionError("never saw the expected line; output:\n" + "".join(lines))


def worker_pids(lines: list[str]) -> dict[str, int]:
    """``[w1] started: pid 123, ...`` -> ``{"w1": 123}``."""
    pids = {}
    for line in lines:
        if "] started: pid " in line:
            worker = line[1 : line.index("]")]
            pids[worker] = int(line.split("pid ")[1].split(",")[0])
    return pids


def load(results: Path) -> optuna.Study:
    return optuna.load_study(study_name="pbmc68k", storage=f"sqlite:///{results / 'pbmc68k' / 'study.db'}")


def check_cli_output(out: str, workers: int, target: int) -> None:
    assert "database is locked" not in out and "Traceback" not in out, out
    trial_lines = [line for line in out.splitlines() if line.startswith("[w") and " | " in line]
    assert len(trial_lines) >= target, out
    assert {line[:4] for line in trial_lines} <= {f"[w{k}]" for k in range(1, workers + 1)}
    assert f"{target}/{target} finished trials" in out


@pytest.mark.slow  # 30-55 s of real training and process supervision; CI runs it
def test_four_workers_on_sqlite(tmp_path):
    results = tmp_path / "results"
    out = finish(start_workers(results, "--workers", "4", *TINY), timeout=240)
    check_cli_output(out, workers=4, target=24)
    assert "starting 4 workers" in out and out.count("1 torch thread") == 4
    study = load(results)
    finished = check_study(study, target=24, epochs=2)
    assert len({worker_of(t).pid for t in finished}) >= 2


@pytest.mark.postgres
def test_four_workers_on_postgres(tmp_path, postgres_study):
    url, name = postgres_study
    results = tmp_path / "results"
    out = finish(start_workers(results, "--workers", "4", "--storage", url, "--study-name", name, *TINY), timeout=240)
    check_cli_output(out, workers=4, target=24)
    password = make_url(url).password
    assert not password or f":{password}@" not in out, "the storage password was printed"
    study = optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=False))
    check_study(study, target=24, epochs=2)


@pytest.fixture
def fresh_postgres_schema(postgres_url):
    """A storage URL on a new, empty database (no Optuna tables yet), dropped after.

    ``CREATE DATABASE`` when the test role may; otherwise a new schema, which has its own type
    namespace, where Optuna's table creation races exactly as on a new database.
    """
    import uuid

    import sqlalchemy

    fresh = f"fresh_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE DATABASE {fresh}"))
        drop = f"DROP DATABASE {fresh} WITH (FORCE)"
        url = make_url(postgres_url).set(database=fresh).render_as_string(hide_password=False)
    except sqlalchemy.exc.ProgrammingError:  # no CREATEDB right: a new schema instead
        with admin.connect() as conn:
            conn.execute(sqlalchemy.text(f"CREATE SCHEMA {fresh}"))
        drop = f"DROP SCHEMA {fresh} CASCADE"
        sep = "&" if "?" in postgres_url else "?"
        url = f"{postgres_url}{sep}options=-csearch_path%3D{fresh}"
    yield url
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text(drop))
    admin.dispose()


@pytest.mark.postgres
def test_four_workers_started_together_on_a_fresh_database(tmp_path, fresh_postgres_schema):
    """A SLURM array on a new database: four separate `run` commands at the same instant all
    survive Optuna's table creation and share the work (issue 11)."""
    url = fresh_postgres_schema
    results = tmp_path / "results"
    # The data cache is prepared once, so the four start their storage at the same moment.
    prep = subprocess.run(
        [sys.executable, "-m", "deepsc_tune.cli", "split", "pbmc68k", "--results-dir", str(results)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert prep.returncode == 0, prep.stderr
    args = ["--storage", url, "--study-name", "fresh", "finetune.epoch=2", "finetune.hidden=[16]", "study.n_trials=8"]
    procs = [start_workers(results, "--worker-id", f"s{k}", *args) for k in range(1, 5)]
    outs = [finish(p, timeout=240) for p in procs]
    for p, out in zip(procs, outs):
        assert p.returncode == 0 and "Traceback" not in out and "UniqueViolation" not in out, out
    storage = open_storage(url, heartbeat=False)
    check_study(optuna.load_study(study_name="fresh", storage=storage), target=8, epochs=2)
    storage.engine.dispose()


@pytest.mark.slow  # 30-55 s of real training and process supervision; CI runs it
def test_worker_killed_mid_trial_is_recovered_and_target_reached(tmp_path):
    results = tmp_path / "results"
    # Longer trials without pruning, so the kill lands inside a trial.
    args = [
        "--workers",
        "2",
        "-v",
        "finetune.epoch=30",
        "finetune.hidden=[16]",
        "study.n_trials=6",
        "study.pruner={type: none}",
    ]
    proc = start_workers(results, *args)
    lines = read_until(proc, lambda line: line.startswith("[w1]") and " epoch   2 " in line)
    pid = worker_pids(lines)["w1"]
    killed_trial = int(lines[-1].split("trial")[1].split()[0])
    os.kill(pid, signal.SIGKILL)
    out = "".join(lines) + finish(proc, timeout=240)
    assert proc.returncode == 0, out
    assert "[w1] worker killed by SIGKILL; the other workers take over its trial" in out
    study = load(results)
    dead = study.trials[killed_trial]
    assert dead.state == TrialState.FAIL
    assert f"worker process {pid} on " in dead.user_attrs["fail_reason"]
    assert "died while the trial ran" in dead.user_attrs["fail_reason"]
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == killed_trial]
    assert len(retry) == 1 and retry[0].params == dead.params and retry[0].state in FINISHED
    assert worker_of(retry[0]).pid != pid
    check_study(study, target=6, epochs=30)


@pytest.mark.slow  # 30-55 s of real training and process supervision; CI runs it
def test_ctrl_c_stops_all_workers_and_requeues_their_trials(tmp_path):
    results = tmp_path / "results"
    args = [
        "--workers",
        "2",
        "-v",
        "finetune.epoch=500",
        "finetune.hidden=[16]",
        "study.n_trials=4",
        "study.pruner={type: none}",
    ]
    proc = start_workers(results, *args)
    seen: set[str] = set()

    def both_training(line: str) -> bool:
        if " epoch " in line and line.startswith("[w"):
            seen.add(line[:4])
        return len(seen) == 2

    read_until(proc, both_training)
    proc.send_signal(signal.SIGINT)  # the terminal's Ctrl-C reaches the parent only
    out = finish(proc, timeout=60)
    assert proc.returncode == 130, out
    assert "stopping 2 worker(s)" in out and "run the same command to resume" in out
    assert "Traceback" not in out, out
    study = load(results)
    states = [t.state for t in study.trials]
    assert TrialState.RUNNING not in states
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(interrupted) == 2 and all(t.user_attrs["fail_reason"] == "interrupted" for t in interrupted)
    waiting = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.user_attrs["retry_of"] for t in waiting) == sorted(t.number for t in interrupted)


@pytest.mark.slow  # 30-55 s of real training and process supervision; CI runs it
def test_killed_parent_leaves_no_running_trials(tmp_path):
    """Without a parent to forward Ctrl-C, each worker notices and interrupts itself."""
    results = tmp_path / "results"
    args = [
        "--workers",
        "2",
        "-v",
        "finetune.epoch=500",
        "finetune.hidden=[16]",
        "study.n_trials=4",
        "study.pruner={type: none}",
    ]
    proc = start_workers(results, *args)
    lines = read_until(proc, lambda line: line.startswith("[w2]") and " epoch " in line)
    pids = worker_pids(lines)
    proc.kill()
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 60
    while any(Path(f"/proc/{pid}").exists() for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids.values()), "orphaned workers still run"
    study = load(results)
    assert TrialState.RUNNING not in [t.state for t in study.trials]
    interrupted = [t for t in study.trials if t.state == TrialState.FAIL]
    # "interrupted", or "interrupted (stdout closed)" when a worker's next line found the pipe gone
    assert interrupted and all(t.user_attrs["fail_reason"].startswith("interrupted") for t in interrupted)
