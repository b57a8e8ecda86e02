"""Benchmark: what a trial of DeepSC's real fine-tuner costs besides its epochs, and its disk.

Runs DeepSC at 2416d85 and at abcf2be (copies with the accelerator changed to the CPU, ``tests/deepsc_setup.py``)
through deepsc-tune's own command backend, with the tiny random-init model of the tests
(32-dim embeddings, 2 layers, 128 genes a cell) on real Baron pancreas cells, and measures:

- ``imports_s``: importing DeepSC's fine-tuning modules and what they pull in (lightning, hydra,
  scanpy, seaborn, wandb...) in a fresh interpreter, twice (the first may include a cold disk);
- whole trials of 1 and of ``--epochs`` epochs, alternating, through the backend (process start
  to exit): an epoch costs ``epoch_s = (T_long - T_1) / (epochs - 1)`` (training, evaluation,
  DeepSC's plots and its two checkpoints), and the rest of a trial is ``overhead_s = T_1 - epoch_s``
  (start-up, imports, data loading and model set-up, exit), whatever the machine's speed;
- the checkpoints DeepSC wrote per trial;
- disk before and after ``finetune.keep_checkpoints``: a ``--search``-trial search through
  ``deepsc-tune run`` (default ``keep_checkpoints: best``): the checkpoints its trials wrote
  (DeepSC announces each; all of one model's are the same size) against those left on disk.

Writes ``results/benchmarks/deepsc_overhead-<commit>.json`` and ``.md`` for each commit. Run from the repository root with
DeepSC's environment (``scripts/deepsc-env.sh VENV``)::

    python bench/deepsc_overhead.py --python VENV/bin/python                      # both commits
    python bench/deepsc_overhead.py --python VENV/bin/python --commit abcf2be --cells 1000 --epochs 4 --repeats 3

On a GPU the epochs shrink and the overhead does not, so the ratio here is a lower bound there.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from benchinfo import cpu_model, git_commit, load_average  # noqa: E402
from deepsc_setup import CHECKOUTS, PYTHON_ENV, copy_for_cpu, split, tiny_space, write_data  # noqa: E402

from deepsc_tune import __version__  # noqa: E402
from deepsc_tune.backends.command import CommandFinetuner, CommandSettings, checkout_pythonpath  # noqa: E402

#: The fine-tuner's modules and the model its config names (configs/finetune/model/deepsc.yaml).
MODEL_MODULES = {"2416d85": "deepsc.models.deepsc_experiment.model", "abcf2be": "deepsc.models.deepsc.model"}


def imports(commit: str) -> str:
    return (
        "import time; t = time.perf_counter(); "
        "import lightning, hydra, scanpy, seaborn, wandb; "
        "from deepsc.finetune.cell_type_annotation import CellTypeAnnotation; "
        f"from {MODEL_MODULES[commit]} import DeepSCClassifier; "
        "print(time.perf_counter() - t)"
    )


def time_imports(python: str, checkout: Path, commit: str) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(checkout_pythonpath(checkout)), "WANDB_MODE": "disabled"}
    out = subprocess.run(
        [python, "-c", imports(commit)], env=env, cwd=checkout, capture_output=True, text=True, check=True
    )
    return round(float(out.stdout.strip().splitlines()[-1]), 2)


def time_trial(finetuner: CommandFinetuner, params: dict, run_dir: Path) -> dict:
    start = time.monotonic()
    result = finetuner.run(params, run_dir=run_dir)
    seconds = time.monotonic() - start
    out_dir = result.extra.get("program_output_dir")
    ckpts = sorted(Path(out_dir, "checkpoints").glob("*.ckpt")) if out_dir else []
    return {
        "epochs": len(result.history),
        "seconds": round(seconds, 2),
        "checkpoints": len(ckpts),
        "checkpoint_bytes": sum(p.stat().st_size for p in ckpts),
        "val_accuracy": [m.val_accuracy for m in result.history],
    }


def search_disk(python: str, checkout: Path, data: dict, tmp: Path, *, commit: str, trials: int, epochs: int) -> dict:
    """A real ``trials``-trial search (``deepsc-tune run``, keep_checkpoints: best): checkpoints
    written by its trials against those kept."""
    import yaml

    from deepsc_tune.backends.command.deepsc import CHECKPOINTS_FILE, disk_usage

    work = tmp / f"search-{commit}"
    work.mkdir()
    space = tiny_space(
        checkout,
        python,
        data,
        split_dir=work / "split",
        name="bench-disk",
        commit=commit,
        fixed={"epoch": epochs},
        study={"n_trials": trials, "pruner": {"type": "none"}},
    )
    split(space, work / "split")
    (work / "space.yaml").write_text(yaml.safe_dump(space))
    cli = [sys.executable, "-c", "from deepsc_tune.cli import entry; entry()"]
    start = time.monotonic()
    subprocess.run(
        [*cli, "run", str(work / "space.yaml"), "--results-dir", str(work / "results")], cwd=work, check=True
    )
    seconds = time.monotonic() - start
    trial_dirs = sorted((work / "results" / "bench-disk" / "trials").glob("[0-9]*"))
    announced = sum(
        len(json.loads((d / CHECKPOINTS_FILE).read_text())["files"])
        for d in trial_dirs
        if (d / CHECKPOINTS_FILE).is_file()
    )
    kept_files, kept_bytes = disk_usage(trial_dirs)
    per_file = kept_bytes / kept_files if kept_files else 0
    return {
        "trials": len(trial_dirs),
        "epochs": epochs,
        "seconds": round(seconds, 1),
        "checkpoint_files_written": announced,
        "checkpoint_bytes_written": round(announced * per_file),
        "checkpoint_files_kept": kept_files,
        "checkpoint_bytes_kept": kept_bytes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", default=os.environ.get(PYTHON_ENV), help=f"DeepSC's Python (default ${PYTHON_ENV})")
    parser.add_argument("--cells", type=int, default=300, help="training cells (and a third as many for validation)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--commit", choices=sorted(CHECKOUTS), action="append", help="DeepSC commit (default: both)")
    parser.add_argument("--search", type=int, default=3, help="trials of the disk search (0: none)")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "deepsc_overhead")
    args = parser.parse_args()
    if not args.python:
        parser.error(f"give --python (DeepSC's environment, scripts/deepsc-env.sh) or set {PYTHON_ENV}")
    if args.epochs < 2:
        parser.error("--epochs must be at least 2 (an epoch's time comes from the gaps between epochs)")
    for commit in args.commit or sorted(CHECKOUTS):
        bench_commit(args, commit)


def bench_commit(args: argparse.Namespace, commit: str) -> None:
    with tempfile.TemporaryDirectory(prefix="deepsc-overhead-") as tmp:
        tmp = Path(tmp)
        checkout = copy_for_cpu(tmp / "DeepSC", commit)
        data = write_data(tmp / "data", n_cells=round(args.cells / 0.75))  # a quarter for validation
        load_before = load_average()
        imports_s = [time_imports(args.python, checkout, commit) for _ in range(2)]
        space = tiny_space(
            checkout, args.python, data, split_dir=tmp / "split", fixed={"epoch": args.epochs}, commit=commit
        )
        split(space, tmp / "split")
        settings, fixed = CommandSettings.from_dict(space["finetune"])
        finetuner = CommandFinetuner(settings)
        params = {**fixed, "lr_scheduler_type": "constant", "learning_rate": 1e-3}
        trials = []
        for i in range(args.repeats):
            for epochs in (1, args.epochs):
                run = {**params, "epoch": epochs}
                trials.append(time_trial(finetuner, run, tmp / f"trial{i}-{epochs}"))
        disk = (
            search_disk(args.python, checkout, data, tmp, commit=commit, trials=args.search, epochs=2)
            if args.search
            else None
        )
        load_after = load_average()

    short = [t["seconds"] for t in trials if t["epochs"] == 1]
    long = [t["seconds"] for t in trials if t["epochs"] == args.epochs]
    epoch = (statistics.median(long) - statistics.median(short)) / (args.epochs - 1)
    overhead = statistics.median(short) - epoch
    result = {
        "benchmark": "deepsc_overhead",
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "deepsc_tune_version": __version__,
        "commit": git_commit(),
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()},
        "load_average_before": load_before,
        "load_average_after": load_after,
        "deepsc_commit": f"{commit} (accelerator cpu)",
        "model": "random init, embedding_dim 32, 2 layers, 2 heads, sequence_length 128",
        "train_cells": args.cells,
        "val_cells": round(args.cells / 0.75) - args.cells,
        "batch_size": 32,
        "imports_s": imports_s,
        "trials": trials,
        "median_overhead_s": round(overhead, 2),
        "median_epoch_s": round(epoch, 2),
        "overhead_in_epochs": round(overhead / epoch, 2),
        "search_disk": disk,
    }
    out = args.out.with_name(f"{args.out.name}-{commit}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
    long_trial = next(t for t in trials if t["epochs"] == args.epochs)
    md = [
        "# Per-trial overhead of DeepSC's real fine-tuner",
        "",
        f"`python bench/deepsc_overhead.py --commit {commit} --cells {args.cells} --epochs {args.epochs} "
        f"--repeats {args.repeats} --search {args.search}`, "
        f"{result['date']}, commit {result['commit']}, {result['machine']['cpu']} ({result['machine']['cores']} cores), "
        f"load average {load_before} before, {load_after} after.",
        "",
        f"DeepSC {commit} on the CPU, {result['model']}; {args.cells} training and {result['val_cells']} "
        "validation Baron cells; batch size 32.",
        "",
        "| | seconds |",
        "|---|---|",
        f"| importing DeepSC's modules (fresh interpreter, 1st / 2nd) | {imports_s[0]} / {imports_s[1]} |",
        f"| a 1-epoch trial, start to exit (median of {args.repeats}) | {statistics.median(short):.1f} |",
        f"| a {args.epochs}-epoch trial (median of {args.repeats}) | {statistics.median(long):.1f} |",
        f"| one more epoch (training, evaluation, plots, 2 checkpoints) | {epoch:.1f} |",
        f"| **per-trial overhead** (start-up, imports, data, model, exit) | **{overhead:.1f}** ({overhead / epoch:.1f} epochs) |",
        "",
        f"DeepSC wrote {long_trial['checkpoints']} checkpoints for {args.epochs} epochs "
        f"({long_trial['checkpoint_bytes'] / 1e6:.0f} MB for this tiny model).",
        "",
    ]
    if disk is not None:
        md += [
            f"Disk of a {disk['trials']}-trial, {disk['epochs']}-epoch search (`deepsc-tune run`, "
            f"{disk['seconds']:.0f} s), `finetune.keep_checkpoints`:",
            "",
            "| | checkpoint files | MB |",
            "|---|---|---|",
            f"| written by the trials (what stays with `all`, and what stayed before) | "
            f"{disk['checkpoint_files_written']} | {disk['checkpoint_bytes_written'] / 1e6:.0f} |",
            f"| left on disk with `best` (the default): the chosen trial's | {disk['checkpoint_files_kept']} | "
            f"{disk['checkpoint_bytes_kept'] / 1e6:.0f} |",
            "",
        ]
    out.with_suffix(".md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
