"""Benchmark: trials per minute with 1 and 2 local workers (`deepsc-tune run --workers N`).

Runs ``pbmc68k`` end to end through the CLI, each run in a fresh results folder whose data
cache is warm, on two workloads:

- ``shipped``: the search space as shipped (20 trials, 10 epochs, Hyperband pruning, MLP);
- ``longer``: ``study.n_trials=40 finetune.epoch=30 study.pruner={type: none}`` (every trial
  runs 30 epochs, so the work is the same whatever the sampler proposes);

and these configurations: 1 worker with torch's default threads (what a plain
``deepsc-tune run pbmc68k`` does; shipped workload only), 1 worker with ``--threads 1``, and
2 workers (``--workers 2``: one torch thread each on a 2-core machine).

Reported per run: wall time of the command (process start, imports, study set-up included),
the search phase (first trial start to last trial end, from the study), trials and epochs
per minute. Pruning stops trials at different epochs depending on what the sampler proposed,
and parallel workers see other trials, so epochs per minute is the fairer throughput figure.

Also measures what one SQLite commit costs with the default rollback journal and with the
write-ahead log deepsc-tune uses (a trial commits several times per epoch).

Writes ``results/benchmarks/workers.json`` and ``workers.md``. Run from the repository root::

    python bench/workers.py               # 2 repeats of each configuration
    python bench/workers.py --repeats 1   # quicker

The machine may be shared: load averages before and after each run are recorded.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import optuna  # noqa: E402
import torch  # noqa: E402
from benchinfo import cpu_model, git_commit, load_average  # noqa: E402

from deepsc_tune import __version__  # noqa: E402
from deepsc_tune.config import load_search_space  # noqa: E402
from deepsc_tune.data import prepare_data  # noqa: E402
from deepsc_tune.study import open_storage, trial_result  # noqa: E402

NAME = "pbmc68k"
DEFAULT_THREADS = "1 worker, default threads"
ONE_THREAD = "1 worker, --threads 1"
TWO_WORKERS = "2 workers (1 thread each)"
CONFIGS = {
    DEFAULT_THREADS: [],
    ONE_THREAD: ["--threads", "1"],
    TWO_WORKERS: ["--workers", "2"],
}
#: The shipped space as is; and longer trials without pruning, where start-up weighs less.
WORKLOADS = {
    "shipped": {"overrides": [], "configs": [DEFAULT_THREADS, ONE_THREAD, TWO_WORKERS]},
    "longer": {
        "overrides": ["study.n_trials=40", "finetune.epoch=30", "study.pruner={type: none}"],
        "configs": [ONE_THREAD, TWO_WORKERS],
    },
}


def run_once(args: list[str], results: Path, overrides: list[str]) -> dict:
    """One `deepsc-tune run pbmc68k` in ``results`` (cache already warm); timings from the study."""
    load_before = load_average()
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "deepsc_tune.cli", "run", NAME, *overrides, "--results-dir", str(results), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    if "database is locked" in proc.stdout + proc.stderr:
        raise SystemExit("'database is locked' in the output:\n" + proc.stdout + proc.stderr)
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{results / NAME / 'study.db'}")
    trials = [t for t in study.trials if t.state.is_finished()]
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    first = min(t.datetime_start for t in trials)
    last = max(t.datetime_complete for t in trials)
    search = (last - first).total_seconds()
    epochs = sum(len(t.intermediate_values) for t in trials)
    return {
        "wall_s": round(wall, 2),
        "search_s": round(search, 2),
        "trials": len(finished),
        "failed": len(trials) - len(finished),
        "epochs": epochs,
        "trials_per_min_wall": round(60 * len(finished) / wall, 1),
        "trials_per_min_search": round(60 * len(finished) / search, 1),
        "epochs_per_min_search": round(60 * epochs / search, 1),
        "mean_trial_s": round(statistics.mean(trial_result(t).duration_s or 0 for t in trials), 3),
        "load_before": load_before,
        "load_after": load_average(),
    }


def commit_cost(*, wal: bool, writes: int = 200) -> float:
    """Milliseconds per Optuna write (an epoch's report or history) on a fresh SQLite study.

    ``wal``: opened as deepsc-tune opens it (write-ahead log, ``synchronous=NORMAL``);
    otherwise SQLite's default rollback journal, which waits for an fsync at every commit.
    """
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'study.db'}"
        storage = (
            open_storage(url, heartbeat=False)
            if wal
            else optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 120}})
        )
        trial = optuna.create_study(storage=storage).ask()
        started = time.perf_counter()
        for i in range(writes // 2):
            trial.report(0.5, i)
            trial.set_user_attr("history", [{"epoch": j, "val_accuracy": 0.5} for j in range(i % 10 + 1)])
        elapsed = time.perf_counter() - started
        storage.engine.dispose()
    return round(1000 * elapsed / writes, 2)


def summarise(runs: list[dict]) -> list[dict]:
    out = []
    for workload, spec in WORKLOADS.items():
        for config in spec["configs"]:
            mine = [r for r in runs if r["workload"] == workload and r["config"] == config]
            out.append(
                {
                    "workload": workload,
                    "config": config,
                    "repeats": len(mine),
                    **{
                        key: round(statistics.median(r[key] for r in mine), 1)
                        for key in (
                            "wall_s",
                            "search_s",
                            "trials_per_min_wall",
                            "trials_per_min_search",
                            "epochs_per_min_search",
                        )
                    },
                    "wall_range_s": [min(r["wall_s"] for r in mine), max(r["wall_s"] for r in mine)],
                    "search_range_s": [min(r["search_s"] for r in mine), max(r["search_s"] for r in mine)],
                }
            )
    return out


def _pick(summary: list[dict], workload: str, config: str) -> dict:
    return next(s for s in summary if s["workload"] == workload and s["config"] == config)


def write_markdown(path: Path, info: dict) -> None:
    rows = "\n".join(
        f"| {s['workload']} | {s['config']} | {s['trials_per_min_wall']} | {s['trials_per_min_search']} | "
        f"{s['epochs_per_min_search']} | {s['wall_s']} s ({s['wall_range_s'][0]:.1f}-{s['wall_range_s'][1]:.1f}) | "
        f"{s['search_s']} s ({s['search_range_s'][0]:.1f}-{s['search_range_s'][1]:.1f}) |"
        for s in info["summary"]
    )
    m = info["machine"]
    ratios = []
    for workload in WORKLOADS:
        one, two = _pick(info["summary"], workload, ONE_THREAD), _pick(info["summary"], workload, TWO_WORKERS)
        ratios.append(
            f"- {workload}: 2 workers vs 1 worker (`--threads 1`): "
            f"{two['epochs_per_min_search'] / one['epochs_per_min_search']:.2f}x epochs/min in the search "
            f"phase, {two['trials_per_min_wall'] / one['trials_per_min_wall']:.2f}x trials/min for the "
            "whole command"
        )
    default = _pick(info["summary"], "shipped", DEFAULT_THREADS)
    one = _pick(info["summary"], "shipped", ONE_THREAD)
    loads = [r["load_before"][0] for r in info["runs"] if r["load_before"]]
    newline = "\n"
    wal_ms = " / ".join(str(x) for x in info["sqlite_write_ms"]["wal"])
    journal_ms = " / ".join(str(x) for x in info["sqlite_write_ms"]["rollback_journal"])
    text = f"""# Local workers: trials per minute on `{NAME}`

`python bench/workers.py` on {info["date"]} (commit {info["commit"]}): {m["cpus"]} x {m["cpu"]},
torch {m["torch"]} ({m["torch_default_threads"]} threads by default), optuna {m["optuna"]}, SQLite
in WAL mode. Workloads: `shipped` is `{NAME}` as shipped (20 trials, 10 epochs, Hyperband, MLP
(256, 128) on 448 training cells); `longer` adds `{" ".join(WORKLOADS["longer"]["overrides"])}`.
Medians of {info["repeats"]} run(s); 1-minute load average before the runs {min(loads):.1f} to
{max(loads):.1f}: the machine is shared with other work, so single figures vary by tens of percent.

| workload | configuration | trials/min (whole command) | trials/min (search phase) | epochs/min (search phase) | wall (range) | search phase (range) |
|---|---|---|---|---|---|---|
{rows}

{newline.join(ratios)}

The search phase runs from the first trial's start to the last trial's end; the whole command
adds start-up (imports, cached data, study) and, with workers, the children's own start-up.

What limits it:
- **Cores.** Two cores: two single-threaded workers fill them; more workers only queue. Other
  processes on the machine take their share.
- **Torch threads.** One process with torch's default {m["torch_default_threads"]} threads took
  {default["search_range_s"][0]:.1f} to {default["search_range_s"][1]:.1f} s for the shipped search phase,
  one thread {one["search_range_s"][0]:.1f} to {one["search_range_s"][1]:.1f} s: on so small a model a second
  thread saves nothing, and when another process holds a core the two threads wait on each
  other (the slow runs). `--workers N` therefore gives each worker `cores // N` threads.
- **Start-up.** Each worker is a fresh Python process: importing torch, scikit-learn, scanpy and
  Optuna and loading the cached data take several seconds (two at once on two busy cores: about
  6 s before the first trial), after the parent has prepared data and study (about 4 s). On the
  shipped study, whose trials take a fraction of a second, that start-up outweighs the faster
  search phase; on longer studies it is paid once.
- **SQLite writes.** A trial writes twice per epoch (reported value, history) and a few times
  more at its start and end. One such write took {wal_ms} ms in WAL mode with
  `synchronous=NORMAL`, as deepsc-tune opens SQLite, and {journal_ms} ms with SQLite's default
  rollback journal, which waits for an fsync at every commit (3 measurements each; fsync time
  grows with other disk traffic on the machine). Workers also serialise briefly on the start
  lock and re-read the study before each trial.
- **Heartbeats.** One write per running trial every 10 s: negligible here.
- **The tail.** With a fixed target the last trials cannot be shared out: a worker that finds the
  remaining budget held by running trials waits (polling every 0.5 s) instead of overshooting.
"""
    path.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "workers.json")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    space = load_search_space(NAME, [])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        prepare_data(space.data_settings, cache_dir=cache)
        for repeat in range(args.repeats):
            for workload, spec in WORKLOADS.items():
                for config in spec["configs"]:
                    results = Path(tmp) / f"run{len(runs)}"
                    shutil.copytree(cache, results / "cache")  # every run starts with a warm cache
                    run = {
                        "workload": workload,
                        "config": config,
                        "args": CONFIGS[config],
                        "overrides": spec["overrides"],
                        "repeat": repeat,
                        **run_once(CONFIGS[config], results, spec["overrides"]),
                    }
                    print(json.dumps(run), flush=True)
                    runs.append(run)
    info = {
        "benchmark": "bench/workers.py",
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "commit": (git_commit() or "unknown"),
        "deepsc_tune": __version__,
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "torch_default_threads": torch.get_num_threads(),
            "optuna": optuna.__version__,
            "python": platform.python_version(),
        },
        "search_space": NAME,
        "repeats": args.repeats,
        "sqlite_write_ms": {
            "rollback_journal": [commit_cost(wal=False) for _ in range(3)],
            "wal": [commit_cost(wal=True) for _ in range(3)],
        },
        "runs": runs,
    }
    info["summary"] = summarise(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=1) + "\n")
    write_markdown(args.out.with_suffix(".md"), info)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
