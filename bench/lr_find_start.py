"""Benchmark: does starting the search from `deepsc-tune lr-find`'s range reach the grid's best sooner?

Per benchmark: run the LR range test (:func:`deepsc_tune.lr_find.run_lr_find`) on the training
cells with the search space's fixed settings, then run ``bench/compare.py``'s ``default`` strategy
with that ``learning_rate`` range (and no enqueued guide configurations, which may fall outside
it), the grid runs reused from ``results/benchmarks/compare.json`` (same seeds, same code path).
The shipped ranges' figures are read from the same ``compare.json``.

Writes ``results/benchmarks/lr_find_start.json`` and ``.md``. From the repository root::

    python bench/lr_find_start.py                         # baron, 2 seeds (~5 min on 2 cores)
    python bench/lr_find_start.py --benchmarks baron,kang --seeds 5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "bench"))

import compare

from deepsc_tune.data import DataSettings, prepare_data
from deepsc_tune.lr_find import run_lr_find
from deepsc_tune.search_space import load_search_space
from deepsc_tune.train_settings import TrainSettings

OUT = REPO / "results" / "benchmarks"
SHIPPED = OUT / "compare.json"


def lr_range(name: str) -> dict:
    spec = compare.BENCHMARKS[name]
    space = load_search_space(spec.space, list(spec.overrides), fixed_only=True)
    data = prepare_data(DataSettings.from_dict(space.data), cache_dir=compare.DEFAULT_CACHE)
    settings = TrainSettings.from_dict({**dict(space.fixed), "device": "cpu"})
    result = run_lr_find(data, settings)
    shipped = load_search_space(spec.space, list(spec.overrides)).params["learning_rate"]
    return {
        "low": result.low,
        "high": result.high,
        "steepest_lr": result.steepest_lr,
        "min_loss_lr": result.min_loss_lr,
        "steps": len(result.learning_rates),
        "shipped": {"low": shipped.low, "high": shipped.high},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--benchmarks", default="baron")
    p.add_argument("--seeds", type=int, default=2)
    args = p.parse_args()
    shipped = json.loads(SHIPPED.read_text())
    rows = []
    for name in args.benchmarks.split(","):
        found = lr_range(name)
        print(f"{name}: lr-find range {found['low']:.3g} .. {found['high']:.3g}", flush=True)
        out = OUT / f"lr_find_start-{name}.json"
        result = compare.main(
            [
                "--benchmarks",
                name,
                "--seeds",
                str(args.seeds),
                "--strategies",
                "grid,default",
                "--reuse-grid",
                str(SHIPPED),
                "--out",
                str(out),
                "--override",
                f"search.learning_rate.low={found['low']:.3g}",
                "--override",
                f"search.learning_rate.high={found['high']:.3g}",
                "--override",
                "study.enqueue=[]",
            ]
        )
        mine = result["summary"][name]["strategies"]["default"]
        seeds = set(mine["seeds"])
        base = [
            r for r in shipped["runs"] if r["benchmark"] == name and r["strategy"] == "default" and r["seed"] in seeds
        ]
        rows.append(
            {
                "benchmark": name,
                "seeds": sorted(seeds),
                "lr_find": found,
                "from_lr_find": {
                    "epochs_to_reach_grid_best": mine["epochs_to_reach_grid_best"],
                    "best_value_mean": mine["best_value"]["mean"],
                    "test_macro_f1_mean": mine["test_macro_f1"]["mean"],
                    "total_epochs_mean": mine["total_epochs"]["mean"],
                },
                "shipped_ranges": {
                    "epochs_to_reach_grid_best": [r["epochs_to_reach_grid_best"] for r in base],
                    "best_value_mean": sum(r["best_value"] for r in base) / len(base),
                    "test_macro_f1_mean": sum(r["test_macro_f1"] for r in base) / len(base),
                    "total_epochs_mean": sum(r["total_epochs"] for r in base) / len(base),
                },
            }
        )
    (OUT / "lr_find_start.json").write_text(json.dumps(rows, indent=1) + "\n")
    lines = [
        "# Starting the search from lr-find's range vs the shipped ranges",
        "",
        (
            f"`python bench/lr_find_start.py --benchmarks {args.benchmarks} --seeds {args.seeds}`; "
            "the shipped ranges' runs are those of `results/benchmarks/compare.json` for the same seeds. "
            "*reach*: epochs until the same seed's grid best was first reached (None: never)."
        ),
        "",
        (
            "| benchmark | learning_rate range | reach, per seed | best val (mean) | test macro-F1 (mean) "
            "| epochs (mean) |"
        ),
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        f, s = r["from_lr_find"], r["shipped_ranges"]
        lines.append(
            f"| {r['benchmark']} | lr-find {r['lr_find']['low']:.3g} .. {r['lr_find']['high']:.3g} "
            f"| {f['epochs_to_reach_grid_best']} | {f['best_value_mean']:.3f} "
            f"| {f['test_macro_f1_mean']:.3f} | {f['total_epochs_mean']:.0f} |"
        )
        lines.append(
            f"| {r['benchmark']} | shipped {r['lr_find']['shipped']['low']:g} .. "
            f"{r['lr_find']['shipped']['high']:g} | {s['epochs_to_reach_grid_best']} "
            f"| {s['best_value_mean']:.3f} | {s['test_macro_f1_mean']:.3f} | {s['total_epochs_mean']:.0f} |"
        )
    (OUT / "lr_find_start.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT / 'lr_find_start.md'}")


if __name__ == "__main__":
    main()
