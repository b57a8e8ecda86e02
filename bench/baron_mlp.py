"""Baron cross-donor: the built-in MLP with default settings against logistic regression.

Train donors human1-3 (validation carved from them), test donor human4, 2,000 HVGs from the
training cells, log1p(CP10k) (search_spaces/baron.yaml). The MLP runs with the file's fixed
settings and DeepSC's default schedule (cosine, learning_rate 1e-4, warmup_ratio 0.03) over
several seeds; logistic regression (scikit-learn, default C) runs on the same features. Test
metrics are reported only; nothing here is selected on them.

    python bench/baron_mlp.py            # writes results/benchmarks/baron_mlp.json and .md
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from deepsc_tune.backends.builtin import BuiltinFinetuner
from deepsc_tune.config import load_search_space
from deepsc_tune.data import prepare_data

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    space = load_search_space(str(REPO / "search_spaces" / "baron.yaml"))
    data = prepare_data(space.data_settings, cache_dir=REPO / "results" / "cache")
    finetuner = BuiltinFinetuner(data)
    runs = []
    for seed in range(args.seeds):
        start = time.perf_counter()
        result = finetuner.run({**space.fixed, "seed": seed}, metric=space.metric)
        runs.append(
            {
                "seed": seed,
                "best_epoch": result.best_epoch,
                "val_macro_f1": result.best().val_macro_f1,
                "test_accuracy": result.test_accuracy,
                "test_macro_f1": result.test_macro_f1,
                "seconds": round(time.perf_counter() - start, 2),
            }
        )
        print(runs[-1], flush=True)

    clf = LogisticRegression(max_iter=3000).fit(data.X_train, data.y_train)
    pred = clf.predict(data.X_test)
    logreg = {
        "test_accuracy": float(accuracy_score(data.y_test, pred)),
        "test_macro_f1": float(f1_score(data.y_test, pred, average="macro", zero_division=0)),
    }

    def summary(key: str) -> dict[str, float]:
        values = [r[key] for r in runs]
        return {"mean": statistics.mean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0}

    result = {
        "benchmark": "Baron cross-donor (train human1-3, test human4), default MLP vs logistic regression",
        "settings": {**space.fixed, "lr_scheduler_type": "cosine", "learning_rate": 1e-4, "warmup_ratio": 0.03},
        "cells": {"train": len(data.X_train), "val": len(data.X_val), "test": len(data.X_test)},
        "genes": len(data.genes),
        "classes": data.classes,
        "data_notes": data.notes,
        "mlp_runs": runs,
        "mlp": {k: summary(k) for k in ("test_accuracy", "test_macro_f1", "val_macro_f1")},
        "logistic_regression": logreg,
        "machine": {"cpus": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version()},
        "date": time.strftime("%Y-%m-%d"),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "baron_mlp.json").write_text(json.dumps(result, indent=2))
    m, lr = result["mlp"], logreg
    (args.out / "baron_mlp.md").write_text(
        "# Baron cross-donor: default MLP vs logistic regression\n\n"
        f"Made by `python bench/baron_mlp.py` on {result['date']} ({args.seeds} seeds).\n\n"
        "| model | test accuracy | test macro-F1 |\n|---|---|---|\n"
        f"| built-in MLP, defaults (mean ± sd) | {m['test_accuracy']['mean']:.3f} ± {m['test_accuracy']['sd']:.3f}"
        f" | {m['test_macro_f1']['mean']:.3f} ± {m['test_macro_f1']['sd']:.3f} |\n"
        f"| logistic regression, same features | {lr['test_accuracy']:.3f} | {lr['test_macro_f1']:.3f} |\n"
    )
    print(json.dumps({"mlp": result["mlp"], "logistic_regression": logreg}, indent=2))


if __name__ == "__main__":
    main()
