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
import sqlite3
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

from deepsc_tune import __version__  # noqa: E402
from deepsc_tune.data import DataSettings, prepare_data  # noqa: E402
from deepsc_tune.search_space import load_search_space  # noqa: E402

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
    "longer": {"overrides": ["study.n_trials=40", "finetune.epoch=30", "study.pruner={type: none}"],
               "configs": [ONE_THREAD, TWO_WORKERS]},
}


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_once(args: list[str], results: Path, overrides: list[str]) -> dict:
    """One `deepsc-tune run pbmc68k` in ``results`` (cache already warm); timings from the study."""
    load_before = _load()
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "deepsc_tune.cli", "run", NAME, *overrides, "--results-dir", str(results),
         *args],
        cwd=REPO, capture_output=True, text=True, timeout=900,
    )
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    if "database is locked" in proc.stdout + proc.stderr:
        raise SystemExit("'database is locked' in the output:\n" + proc.stdout + proc.stderr)
    study = optuna.load_study(study_name=NAME, storage=f"sqlite:///{results / NAME / 'study.db'}")
    trials = [t for t in study.trials if t.state.is_finished()]
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE,
                                                  optuna.trial.TrialState.PRUNED)]
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
        "mean_trial_s": round(statistics.mean(t.user_attrs.get("duration_s", 0) for t in trials), 3),
        "load_before": load_before,
        "load_after": _load(),
    }


def commit_cost(journal: str, n: int = 300) -> float:
    """Milliseconds per small committed write with ``journal_mode`` (synchronous as deepsc-tune sets it)."""
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        prepare_data(DataSettings.from_dict(space.data), cache_dir=cache)
        for repeat in range(args.repeats):
            for workload, spec in WORKLOADS.items():
                for config in spec["configs"]:
                    results = Path(tmp) / f"run{len(runs)}"
                    shutil.copytree(cache, results / "cache")  # every run starts with a warm cache
                    run = {"workload": workload, "config": config, "args": CONFIGS[config],
                           "overrides": spec["overrides"], "repeat": repeat,
                           **run_once(CONFIGS[config], results, spec["overrides"])}
                    print(json.dumps(run), flush=True)
                    runs.append(run)
    info = {
        "benchmark": "bench/workers.py",
        "date": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat(),
        "commit": _commit(),
        "deepsc_tune": __version__,
        "machine": {"cpu": _cpu_model(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_default_threads": torch.get_num_threads(), "optuna": optuna.__version__,
                    "python": platform.python_version()},
        "search_space": NAME,
        "repeats": args.repeats,
        "sqlite_commit_ms": {"delete": commit_cost("delete"), "wal": commit_cost("wal")},
        "runs": runs,
    }
    info["summary"] = summarise(runs)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=1) + "\n")
    write_markdown(args.out.with_suffix(".md"), info)
    print(args.out.with_suffix(".md").read_text())


if __name__ == "__main__":
    main()
