"""Benchmark: does starting the search from `deepsc-tune lr-find`'s range reach the grid's best sooner?

Per benchmark: run the LR range test (:func:`deepsc_tune.results._lr_find.run_lr_find`, one torch thread)
on the training cells with the search space's fixed settings, then run ``bench/compare.py``'s
``default`` strategy with that ``learning_rate`` range (and no enqueued guide configurations, which
may fall outside it). The grid runs and the shipped ranges' default-search runs are read from
``--shipped`` (default ``results/benchmarks/compare-confirm.json``: current code, 5 seeds, all four
benchmarks; its confirmation part is ignored), same seeds, same code path.

Writes ``results/benchmarks/lr_find_start.json`` and ``.md`` (plus one ``lr_find_start-NAME.json``
per benchmark with the full run records). A ``## Conclusion`` section already in the ``.md`` is
kept. From the repository root::

    python bench/lr_find_start.py --jobs 2                  # all four benchmarks, 5 seeds (~6 min on 2 shared cores)
    python bench/lr_find_start.py --benchmarks baron --seeds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))

import compare

from deepsc_tune.backends.builtin import TrainSettings
from deepsc_tune.config import load_search_space
from deepsc_tune.data import prepare_data
from deepsc_tune.results import run_lr_find

OUT = REPO / "results" / "benchmarks"
SHIPPED = OUT / "compare-confirm.json"
ALL = "pbmc68k,pbmc68k-transformer,baron,kang"


def lr_range(name: str) -> dict:
    import torch

    spec = compare.BENCHMARKS[name]
    space = load_search_space(spec.space, list(spec.overrides), fixed_only=True)
    data = prepare_data(space.data_settings, cache_dir=compare.DEFAULT_CACHE)
    settings = TrainSettings.from_dict({**dict(space.fixed), "device": "cpu"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # same thread count as the compared runs: reproducible
    try:
        result = run_lr_find(data, settings)
    finally:
        torch.set_num_threads(threads)
    shipped = load_search_space(spec.space, list(spec.overrides)).params["learning_rate"]
    return {
        "low": result.low,
        "high": result.high,
        "steepest_lr": result.steepest_lr,
        "min_loss_lr": result.min_loss_lr,
        "steps": len(result.learning_rates),
        "batch_size": settings.batch_size,
        "n_train": len(data.X_train),
        # the pass's training cost in epochs of the training cells (reach does not include it)
        "epochs_equivalent": len(result.learning_rates) * settings.batch_size / len(data.X_train),
        "shipped": {"low": shipped.low, "high": shipped.high},
        "fingerprint": data.fingerprint,
    }


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def _side(runs: list[dict]) -> dict:
    """Per-seed figures of one strategy's runs (sorted by seed)."""
    runs = sorted(runs, key=lambda r: r["seed"])
    reach = [r["epochs_to_reach_grid_best"] for r in runs]
    return {
        "seeds": [r["seed"] for r in runs],
        "epochs_to_reach_grid_best": reach,
        "seeds_reached": sum(x is not None for x in reach),
        "best_value": [r["best_value"] for r in runs],
        "best_value_mean": _mean([r["best_value"] for r in runs]),
        "test_macro_f1_mean": _mean([r["test_macro_f1"] for r in runs]),
        "total_epochs": [r["total_epochs"] for r in runs],
        "total_epochs_mean": _mean([r["total_epochs"] for r in runs]),
    }


def _median_reach(reach: list[int | None], cap: float) -> float:
    """Median epochs to the grid best, a seed that never reached it counted as ``cap``."""
    return statistics.median([cap if x is None else x for x in reach])


def run_benchmark(name: str, *, seeds: int, jobs: int, shipped_path: Path, shipped: dict) -> dict:
    found = lr_range(name)
    print(f"{name}: lr-find range {found['low']:.3g} .. {found['high']:.3g}", flush=True)
    old = shipped["data"].get(name, {}).get("fingerprint")
    if old != found["fingerprint"] or shipped["meta"].get("threads") != 1:
        # compare.py would silently retrain the grid: stop instead
        raise SystemExit(
            f"{shipped_path}: data.{name}.fingerprint or meta.threads differ from this run's; rerun compare.py"
        )
    grid = [r for r in shipped["runs"] if r["benchmark"] == name and r["strategy"] == "grid" and r["seed"] < seeds]
    base = [r for r in shipped["runs"] if r["benchmark"] == name and r["strategy"] == "default" and r["seed"] < seeds]
    if len(grid) < seeds or len(base) < seeds:
        raise SystemExit(
            f"{shipped_path}: runs: {name} has {len(grid)} grid and {len(base)} default runs; need {seeds}"
        )
    result = compare.main(
        [
            "--benchmarks",
            name,
            "--seeds",
            str(seeds),
            "--jobs",
            str(jobs),
            "--strategies",
            "grid,default",
            "--confirm",
            "off",
            "--reuse-grid",
            str(shipped_path),
            "--out",
            str(OUT / f"lr_find_start-{name}.json"),
            "--override",
            f"search.learning_rate.low={found['low']:.3g}",
            "--override",
            f"search.learning_rate.high={found['high']:.3g}",
            "--override",
            "study.enqueue=[]",
        ]
    )
    reused = [r for r in result["runs"] if r["strategy"] == "grid" and r.get("reused_from")]
    mine = [r for r in result["runs"] if r["strategy"] == "default"]
    return {
        "benchmark": name,
        "lr_find": found,
        "grid_reused": len(reused),
        "grid_best_value_mean": _mean([r["best_value"] for r in grid]),
        "grid_total_epochs": grid[0]["total_epochs"],
        "from_lr_find": _side(mine),
        "shipped_ranges": _side(base),
    }


def write_markdown(report: dict, path: Path) -> None:
    keep = ""
    if path.exists():
        text = path.read_text()
        if "\n## Conclusion" in text:
            keep = text[text.index("\n## Conclusion") :]
    lines = [
        "# Starting the search from lr-find's range vs the shipped ranges",
        "",
        (
            f"`{report['command']}` (commit {report['commit']}); the grid runs and the shipped ranges' "
            f"default-search runs are those of `{report['shipped']}` for the same seeds (made "
            f"{report['shipped_date']}, commit {report['shipped_commit']}). *reach*: epochs until the same "
            "seed's grid best validation value was first reached (None: never); *reached*: seeds that reached "
            "it. The lr-find runs start from lr-find's `learning_rate` range without the guide's enqueued "
            "configurations; the shipped runs use the shipped range with them. Validation chooses; test "
            "macro-F1 is only reported."
        ),
        "",
        (
            "| benchmark | learning_rate range | reach, per seed | reached | median reach | best val (mean) "
            "| grid best val (mean) | test macro-F1 (mean) | epochs (mean) | lr-find pass (epochs) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        found = r["lr_find"]
        for label, side, lo, hi in (
            ("lr-find", r["from_lr_find"], found["low"], found["high"]),
            ("shipped", r["shipped_ranges"], found["shipped"]["low"], found["shipped"]["high"]),
        ):
            reach = ", ".join(str(x) for x in side["epochs_to_reach_grid_best"])
            median = _median_reach(side["epochs_to_reach_grid_best"], float("inf"))
            cost = f"{found['epochs_equivalent']:.1f}" if label == "lr-find" else ""
            lines.append(
                f"| {r['benchmark']} | {label} {lo:.3g} .. {hi:.3g} | {reach} "
                f"| {side['seeds_reached']}/{len(side['seeds'])} | {median:g} | {side['best_value_mean']:.3f} "
                f"| {r['grid_best_value_mean']:.3f} | {side['test_macro_f1_mean']:.3f} "
                f"| {side['total_epochs_mean']:.0f} | {cost} |"
            )
    lines += [
        "",
        "*median reach* counts a seed that never reached the grid best as infinitely many epochs. "
        "*lr-find pass*: the range test's training steps x batch size / training cells, in epochs; "
        "not included in *reach*. "
        "The grid runs 8 configurations for the whole epoch budget ("
        + ", ".join(f"{r['benchmark']} {r['grid_total_epochs']}" for r in report["rows"])
        + " epochs).",
    ]
    path.write_text("\n".join(lines) + "\n" + keep)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", default=ALL, help=f"comma-separated subset of {ALL} (default all)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5, as in --shipped)")
    p.add_argument("--jobs", type=int, default=1, help="seeds run in parallel processes per benchmark (default 1)")
    p.add_argument(
        "--shipped",
        type=Path,
        default=SHIPPED,
        help=f"compare.py result holding the grid and shipped-range default runs (default {SHIPPED.relative_to(REPO)})",
    )
    args = p.parse_args()
    shipped = json.loads(args.shipped.read_text())
    rows = [
        run_benchmark(name, seeds=args.seeds, jobs=args.jobs, shipped_path=args.shipped, shipped=shipped)
        for name in args.benchmarks.split(",")
    ]
    try:
        shipped_name = str(args.shipped.resolve().relative_to(REPO))
    except ValueError:
        shipped_name = str(args.shipped)
    report = {
        "command": "python bench/lr_find_start.py " + " ".join(sys.argv[1:]),
        "commit": compare._git_commit(),
        "machine": compare._machine(),
        "shipped": shipped_name,
        "shipped_date": shipped["meta"]["date"],
        "shipped_commit": shipped["meta"]["commit"],
        "seeds": args.seeds,
        "jobs": args.jobs,
        "rows": rows,
    }
    (OUT / "lr_find_start.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, OUT / "lr_find_start.md")
    print(f"wrote {OUT / 'lr_find_start.md'}")


if __name__ == "__main__":
    main()
