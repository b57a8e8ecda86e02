"""Benchmark: how long the command line takes to answer, and how long the demo search takes.

Each command runs as a user runs it: a fresh ``python -m deepsc_tune.cli ...`` process, timed
from start to exit (wall clock).

- **cold**: the first run with an empty bytecode cache (``PYTHONPYCACHEPREFIX`` pointing at a
  new empty folder), so every module of deepsc-tune and of its dependencies is compiled again,
  as after installing. The OS file cache is not dropped (that needs root and would slow down
  everyone else on a shared machine), so a first run after a reboot can be slower still.
- **warm**: the median of ``--repeats`` further runs (bytecode cached).

The reference is ``python -c "import optuna"`` measured the same way: commands that load no data
should answer in about that time. The demo figure is the wall time of
``deepsc-tune run pbmc68k`` (the README's first command) in a fresh results folder.

Writes ``results/benchmarks/cli_latency.json`` and ``cli_latency.md``. From the repository root::

    python bench/cli_latency.py            # everything, ~2 minutes on 2 cores
    python bench/cli_latency.py --quick    # 2 warm repeats, demo with 5 trials of 3 epochs
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

from benchinfo import cpu_model, git_commit, load_average

OUT = REPO / "results" / "benchmarks"


def commands(results: Path) -> dict[str, list[str]]:
    """What a user types in the first minutes, ``results`` holding a finished pbmc68k study."""
    cli = [sys.executable, "-m", "deepsc_tune.cli"]
    r = ["--results-dir", str(results)]
    return {
        "python -c 'import optuna' (reference)": [sys.executable, "-c", "import optuna"],
        "deepsc-tune --help": [*cli, "--help"],
        "deepsc-tune list": [*cli, "list"],
        "deepsc-tune validate pbmc68k": [*cli, "validate", "pbmc68k"],
        "deepsc-tune run pbmc68k data.train=/missing.h5ad (first error)": [
            *cli,
            "run",
            "pbmc68k",
            "data.train=/nonexistent/x.h5ad",
            *r,
        ],
        "deepsc-tune status pbmc68k": [*cli, "status", "pbmc68k", *r],
        "deepsc-tune best pbmc68k": [*cli, "best", "pbmc68k", *r],
    }


def timed(argv: list[str], *, env: dict[str, str], cwd: Path) -> tuple[float, int]:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, check=False, env=env, cwd=cwd, capture_output=True, text=True)
    return time.perf_counter() - t0, proc.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 warm repeats, a 5-trial demo")
    parser.add_argument("--repeats", type=int, default=5, help="warm runs per command")
    parser.add_argument("--skip-demo", action="store_true", help="do not time `run pbmc68k`")
    args = parser.parse_args()
    repeats = 2 if args.quick else args.repeats

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    tmp = Path(tempfile.mkdtemp(prefix="cli-latency-"))
    results = tmp / "results"

    demo: dict | None = None
    demo_args = ["study.n_trials=5", "finetune.epoch=3"] if args.quick or args.skip_demo else []
    run = [sys.executable, "-m", "deepsc_tune.cli", "run", "pbmc68k", "--results-dir", str(results), *demo_args]
    load0 = load_average()
    seconds, code = timed(run, env=env, cwd=REPO)
    if code != 0:
        raise SystemExit(f"`{' '.join(run)}` failed with exit code {code}")
    if not args.skip_demo:
        demo = {
            "command": "deepsc-tune run pbmc68k " + " ".join(demo_args),
            "seconds": round(seconds, 1),
            "load_before": load0,
            "load_after": load_average(),
            "note": "first run: fresh results folder, preprocessing included",
        }

    rows = []
    for label, argv in commands(results).items():
        cold_env = {**env, "PYTHONPYCACHEPREFIX": str(tmp / f"pycache-{len(rows)}")}
        load_before = load_average()
        cold, code = timed(argv, env=cold_env, cwd=REPO)
        warm = [timed(argv, env=cold_env, cwd=REPO)[0] for _ in range(repeats)]
        rows.append(
            {
                "command": label,
                "exit_code": code,
                "cold_s": round(cold, 2),
                "warm_median_s": round(statistics.median(warm), 2),
                "warm_min_s": round(min(warm), 2),
                "warm_s": [round(w, 2) for w in warm],
                "load_before": load_before,
                "load_after": load_average(),
            }
        )
        print(f"{label:<45} cold {cold:5.2f} s  warm {statistics.median(warm):5.2f} s", flush=True)

    import torch  # only for the record

    meta = {
        "script": "bench/cli_latency.py" + (" --quick" if args.quick else ""),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "warm_repeats": repeats,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "cli_latency.json").write_text(json.dumps({**meta, "commands": rows, "demo": demo}, indent=1) + "\n")
    lines = [
        "# Command-line latency",
        "",
        (
            f"`python {meta['script']}` on {meta['date']} (commit {meta['commit']}): "
            f"{meta['cpus']} x {meta['cpu']}, Python {meta['python']}, torch {meta['torch']}."
        ),
        "",
        (
            "Wall time of a fresh process, start to exit. Cold: empty bytecode cache (as after "
            "installing; the OS file cache is not dropped). Warm: median of "
            f"{repeats} further runs, and the best of them (least disturbed by other processes). The load average is that of the whole machine ({os.cpu_count()} cores, "
            "shared): at a load above the core count every figure is stretched accordingly."
        ),
        "",
        "| command | exit code | cold | warm (median) | warm (best) | load average before |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| `{row['command']}` | {row['exit_code']} | {row['cold_s']:.1f} s | "
            f"{row['warm_median_s']:.1f} s | {row['warm_min_s']:.1f} s | "
            f"{row['load_before'][0] if row['load_before'] else '-'} |"
        )
    if demo:
        lines += [
            "",
            (
                f"Demo: `{demo['command'].strip()}` took {demo['seconds']:.0f} s "
                f"({demo['note']}; load average before {demo['load_before']})."
            ),
            "",
        ]
    (OUT / "cli_latency.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT / 'cli_latency.json'} and cli_latency.md")


if __name__ == "__main__":
    main()
