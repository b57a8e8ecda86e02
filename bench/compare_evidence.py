"""Why the shipped defaults are what they are: validation-only evidence from a compare.json.

Reads the per-trial curves that ``bench/compare.py`` records and prints, per benchmark:

1. **Late pruning** (``default``): trials pruned after at least 60 % of their epochs, the epochs
   they cost and how many had a validation value at least the selected trial's.
2. **Learning-rate bands** (``random``, never pruned, so every curve is complete): per band, the
   trials' best validation value, the mean of their last three epochs and the epoch-to-epoch
   standard deviation over the second half of training.
3. **Early epochs as a predictor** (``random``): Spearman correlation between the validation
   value after epoch 1, 2, 3, 5 and the trial's best.

Only validation values are used; test metrics are not read. Run from the repository root::

    python bench/compare_evidence.py results/benchmarks/compare-before.json
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

LATE_SHARE = 0.6
BANDS = ((1e-5, 3e-5), (3e-5, 1e-4), (1e-4, 3e-4), (3e-4, 1e-3), (1e-3, 3e-3), (3e-3, 1.0001e-2))


def _spearman(a: list[float], b: list[float]) -> float:
    from scipy.stats import spearmanr

    value = spearmanr(a, b).statistic
    return float(value) if value is not None and math.isfinite(value) else float("nan")


def late_pruning(runs: list[dict]) -> dict:
    """Trials of ``default`` pruned after LATE_SHARE of the epochs, and what they cost."""
    late = wasted = total = better = 0
    for run in runs:
        for t in run["trials"]:
            total += t["epochs"]
            if t["state"] == "PRUNED" and t["epochs"] >= LATE_SHARE * run["epoch"]:
                late += 1
                wasted += t["epochs"]
                better += max(t["curve"]) >= run["best_value"] - 1e-9
    return {
        "late_pruned_trials": late,
        "their_epochs": wasted,
        "all_epochs": total,
        "share": wasted / total if total else 0.0,
        "at_least_selected": better,
    }


def lr_bands(runs: list[dict]) -> list[dict]:
    """Validation statistics of complete trials per learning-rate band."""
    trials = [t for r in runs for t in r["trials"] if t["state"] == "COMPLETE"]
    out = []
    for lo, hi in BANDS:
        band = [t for t in trials if lo <= t["params"]["learning_rate"] < hi]
        if not band:
            continue
        half = len(band[0]["curve"]) // 2
        out.append(
            {
                "band": f"[{lo:.0e}, {hi:.0e})",
                "n": len(band),
                "best_val": statistics.fmean(t["value"] for t in band),
                "last3_val": statistics.fmean(statistics.fmean(t["curve"][-3:]) for t in band),
                "sd_second_half": statistics.fmean(statistics.pstdev(t["curve"][half:]) for t in band),
            }
        )
    return out


def early_epochs(runs: list[dict]) -> dict[int, float]:
    """Mean over seeds of Spearman(validation after epoch e, the trial's best)."""
    out = {}
    for e in (1, 2, 3, 5):
        rhos = [
            _spearman([t["curve"][e - 1] for t in r["trials"]], [t["value"] for t in r["trials"]])
            for r in runs
            if all(len(t["curve"]) >= e for t in r["trials"])
        ]
        rhos = [x for x in rhos if math.isfinite(x)]
        if rhos:
            out[e] = statistics.fmean(rhos)
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("path", type=Path, help="a compare.json written by bench/compare.py")
    args = p.parse_args(argv)
    result = json.loads(args.path.read_text())
    for name in result["meta"]["benchmarks"]:
        runs = [r for r in result["runs"] if r["benchmark"] == name]
        default = [r for r in runs if r["strategy"] == "default"]
        random = [r for r in runs if r["strategy"] == "random"]
        print(f"== {name} ({runs[0]['metric']}, {runs[0]['epoch']} epochs)")
        if default:
            lp = late_pruning(default)
            print(
                f"  default: {lp['late_pruned_trials']} trials pruned after >= {LATE_SHARE:.0%} of "
                f"their epochs cost {lp['their_epochs']} of {lp['all_epochs']} epochs "
                f"({lp['share']:.0%}); {lp['at_least_selected']} of them reached the selected "
                "trial's value"
            )
        if random:
            for b in lr_bands(random):
                print(
                    f"  random, learning_rate {b['band']}: n {b['n']:3d}  best val "
                    f"{b['best_val']:.4f}  last-3-epoch val {b['last3_val']:.4f}  "
                    f"sd over 2nd half {b['sd_second_half']:.4f}"
                )
            rho = early_epochs(random)
            print(
                "  random, Spearman(val after epoch e, best val): "
                + ", ".join(f"e={e}: {v:.2f}" for e, v in rho.items())
            )


if __name__ == "__main__":
    main()
