"""Benchmark: what the study costs per trial, on SQLite and in memory.

A fine-tuner that returns at once (fixed per-epoch metrics, no training) runs through the real
objective and worker loop (:func:`deepsc_tune.study._study.run_study`), so each trial's wall time is the
overhead of recording it: asking the sampler, the per-epoch ``trial.report`` (the only write per
epoch), the result attributes, the trial file, the heartbeat and the start lock. Compared:

- ``sqlite``: the default storage, ``RESULTS_DIR/NAME/study.db`` (file on local disk);
- ``memory``: Optuna's ``InMemoryStorage`` (no database), the floor.

Writes ``results/benchmarks/trial_overhead.json`` and ``trial_overhead.md``. From the repository
root::

    python bench/trial_overhead.py            # 40 trials of 10 epochs per storage
    python bench/trial_overhead.py --quick    # 10 trials
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# --code DIR measures another checkout of the package (e.g. the commit before a change).
CODE = Path(sys.argv[sys.argv.index("--code") + 1]).resolve() if "--code" in sys.argv else REPO
sys.path.insert(0, str(CODE))
sys.path.insert(1, str(REPO / "bench"))

import optuna
from benchinfo import cpu_model, git_commit, load_average

from deepsc_tune.backends import EpochMetrics, FinetuneResult
from deepsc_tune.config import build_search_space
from deepsc_tune.study import open_storage, open_study, run_study

OUT = REPO / "results" / "benchmarks"


class InstantFinetuner:
    """Reports ``epoch`` epochs of fixed metrics without training."""

    def run(self, params, *, metric="val_accuracy", on_epoch=None, run_dir=None):
        history = []
        for epoch in range(1, int(params["epoch"]) + 1):
            m = EpochMetrics(
                epoch=epoch,
                val_accuracy=0.5 + 0.01 * epoch,
                val_macro_f1=0.4,
                val_loss=1.0,
                learning_rate=params["learning_rate"],
                train_loss=1.0,
                seconds=0.0,
            )
            history.append(m)
            if on_epoch is not None and on_epoch(m):
                return FinetuneResult(history, best_epoch=epoch, stopped=True)
        return FinetuneResult(
            history,
            best_epoch=len(history),
            test_accuracy=0.5,
            test_macro_f1=0.4,
            extra={"steps_per_epoch": 10, "schedule": {"lr_scheduler_type": "constant"}},
        )


def space(n_trials: int, epochs: int):
    return build_search_space(
        {
            "name": "overhead",
            "data": {"train": "builtin:pbmc68k_reduced", "label_key": "bulk_labels"},
            "finetune": {"epoch": epochs},
            "search": {"learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}},
            "study": {"n_trials": n_trials, "pruner": {"type": "none"}, "sampler": {"type": "tpe", "seed": 0}},
        }
    )


def measure(kind: str, *, n_trials: int, epochs: int, folder: Path) -> dict:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    sp = space(n_trials, epochs)
    if kind == "sqlite":
        storage = open_storage(f"sqlite:///{folder / 'study.db'}")
    else:
        storage = optuna.storages.InMemoryStorage()
    try:
        study = open_study(sp, storage=storage, study_name="overhead", record_dir=folder)
    except TypeError:  # a checkout from before record_dir
        study = open_study(sp, storage=storage, study_name="overhead")
    load0 = load_average()
    t0 = time.perf_counter()
    run_study(sp, InstantFinetuner(), study=study, trials_dir=folder / "trials")
    total = time.perf_counter() - t0
    durations = [t.duration.total_seconds() for t in study.get_trials() if t.duration is not None]
    return {
        "storage": kind,
        "trials": n_trials,
        "epochs": epochs,
        "seconds_total": round(total, 3),
        "ms_per_trial_loop": round(1000 * total / n_trials, 1),
        "ms_per_trial_median_inside": round(1000 * statistics.median(durations), 1),
        "load_before": load0,
        "load_after": load_average(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 trials per storage")
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--code", help="another checkout's root to measure (its deepsc_tune)")
    parser.add_argument("--name", default="trial_overhead", help="output file name (no suffix)")
    args = parser.parse_args()
    n = 10 if args.quick else args.trials
    rows = []
    for kind in ("memory", "sqlite"):
        with tempfile.TemporaryDirectory(prefix=f"overhead-{kind}-") as tmp:
            rows.append(measure(kind, n_trials=n, epochs=args.epochs, folder=Path(tmp)))
        print(json.dumps(rows[-1]), flush=True)
    meta = {
        "script": "bench/trial_overhead.py" + (" --quick" if args.quick else ""),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "optuna": optuna.__version__,
        "code": str(CODE),
        "code_commit": git_commit(CODE) if args.code else None,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.name}.json").write_text(json.dumps({**meta, "results": rows}, indent=1) + "\n")
    lines = [
        "# Per-trial overhead of the study",
        "",
        (
            f"`python {meta['script']}`"
            + (f" --code (commit {meta['code_commit']})" if args.code else "")
            + f" on {meta['date']} (commit {meta['commit']}): {meta['cpus']} x "
            f"{meta['cpu']}, Python {meta['python']}, Optuna {meta['optuna']}."
        ),
        "",
        (
            f"{n} trials of {args.epochs} epochs each through the real objective and worker loop with a "
            "fine-tuner that does not train: every millisecond here is bookkeeping. 'per trial' is the "
            "worker loop's wall time divided by the trials; 'inside' is Optuna's median trial duration."
        ),
        "",
        "| storage | per trial | inside the trial (median) | load average before |",
        "|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['storage']} | {r['ms_per_trial_loop']:.0f} ms | "
            f"{r['ms_per_trial_median_inside']:.0f} ms | {r['load_before'][0] if r['load_before'] else '-'} |"
        )
    (OUT / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT / args.name}.json and .md")


if __name__ == "__main__":
    main()
