"""Benchmark: one-off preprocessing time and training throughput of the built-in fine-tuner.

Measures, on the Kang et al. 2018 PBMC file (``label_key: cell_type``, 2,000 HVGs):

- preprocessing with a cold cache (read, split, normalise, HVGs, densify, write the cache) and
  the warm reload from the disk cache (what every later process of a study pays);
- training throughput in training cells per second (the optimizer loop only; validation is
  timed separately) for the MLP and the gene-token transformer, ``batch_size 32, grad_acc 1``,
  on the CPU unless ``--device`` says otherwise.

Writes ``results/benchmarks/throughput.json`` (with machine information) and a short
``throughput.md`` next to it. Run from the repository root::

    python bench/throughput.py                       # both models
    python bench/throughput.py --skip-transformer    # quick

The machine's other load matters on small shared machines: the load average before and after
each measurement is recorded, and each figure is the median over epochs (best epoch also given).
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
sys.path.insert(0, str(REPO))

import torch  # noqa: E402
from benchinfo import cpu_model, git_commit, load_average  # noqa: E402

from deepsc_tune import __version__  # noqa: E402
from deepsc_tune.backends.builtin import TrainSettings, run_training  # noqa: E402

DEFAULT_DATA = REPO.parent / "shared" / "data" / "kang2018_pbmc_ifnb.h5ad"
MLP_TARGET_CELLS_PER_S = 15_000


def measure_preprocessing(data_path: Path, cache_dir: Path) -> tuple[object, dict]:
    from deepsc_tune.data import DataSettings
    from deepsc_tune.data import _cache as data_cache
    from deepsc_tune.data import _prepare as data_mod

    settings = DataSettings.from_dict({"train": str(data_path), "label_key": "cell_type", "n_top_genes": 2000})
    data_cache.clear_memo()
    load0 = load_average()
    t0 = time.perf_counter()
    prepared = data_mod.prepare_data(settings, cache_dir=cache_dir)
    cold = time.perf_counter() - t0
    data_cache.clear_memo()
    t0 = time.perf_counter()
    reloaded = data_mod.prepare_data(settings, cache_dir=cache_dir)
    warm = time.perf_counter() - t0
    shown = settings.to_dict()
    shown["train"] = os.path.relpath(shown["train"], REPO)  # no machine-specific absolute path
    return prepared, {
        "data_settings": shown,
        "cold_cache_seconds": round(cold, 3),
        "warm_cache_seconds": round(warm, 3),
        "warm_from_cache": bool(getattr(reloaded, "from_cache", False)),
        "n_train": int(prepared.X_train.shape[0]),
        "n_val": int(prepared.X_val.shape[0]),
        "n_test": None if prepared.X_test is None else int(prepared.X_test.shape[0]),
        "n_genes": int(prepared.X_train.shape[1]),
        "n_classes": len(prepared.classes),
        "notes": list(getattr(prepared, "notes", [])),
        "load_average_before": load0,
    }


def measure_training(prepared, settings: dict, *, label: str) -> dict:
    s = TrainSettings.from_dict(settings)
    load0 = load_average()
    t0 = time.perf_counter()
    result = run_training(prepared, s, log=lambda line: print(f"  [{label}] {line}", flush=True))
    wall = time.perf_counter() - t0
    n_train = prepared.X_train.shape[0]
    train_rates = [n_train / x for x in result.extra["train_seconds"]]
    epoch_rates = [n_train / m.seconds for m in result.history]
    return {
        "settings": s.to_dict(),
        "epochs": len(result.history),
        "n_parameters": result.extra["n_parameters"],
        "steps_per_epoch": result.extra["steps_per_epoch"],
        "train_cells_per_s_median": round(statistics.median(train_rates)),
        "train_cells_per_s_best": round(max(train_rates)),
        "train_cells_per_s_each_epoch": [round(r) for r in train_rates],
        "epoch_cells_per_s_median_incl_validation": round(statistics.median(epoch_rates)),
        "train_seconds_each_epoch": [round(x, 3) for x in result.extra["train_seconds"]],
        "wall_seconds": round(wall, 2),
        "final_val_accuracy": round(result.history[-1].val_accuracy, 4),
        "final_val_macro_f1": round(result.history[-1].val_macro_f1, 4),
        "device": result.device,
        "precision": result.extra["precision"],
        "load_average_before": load0,
        "load_average_after": load_average(),
    }


def write_markdown(report: dict, path: Path) -> None:
    pre, mlp, tr = report["preprocessing"], report.get("mlp"), report.get("transformer")
    m = report["machine"]
    lines = [
        "# Throughput of the built-in fine-tuner",
        "",
        f"`python bench/throughput.py` on {report['date']} (commit {report['git_commit']}): "
        f"{m['cpu_count']} x {m['cpu_model']}, torch {m['torch']}, "
        f"{m['torch_threads']} torch threads, device {report['device']}.",
        "",
        f"Data: `{Path(pre['data_settings']['train']).name}`, label `cell_type`, "
        f"{pre['n_genes']:,} HVGs, {pre['n_train']:,} training / {pre['n_val']:,} validation cells, "
        f"{pre['n_classes']} classes.",
        "",
        "| measurement | value |",
        "|---|---|",
        f"| preprocessing, cold cache | {pre['cold_cache_seconds']:.1f} s |",
        f"| reload from disk cache | {pre['warm_cache_seconds']:.2f} s |",
    ]
    if mlp:
        lines.append(
            f"| MLP {tuple(mlp['settings']['hidden'])}, batch 32: training | "
            f"{mlp['train_cells_per_s_median']:,} cells/s (median of {mlp['epochs']} epochs; "
            f"best {mlp['train_cells_per_s_best']:,}; target >= {MLP_TARGET_CELLS_PER_S:,}) |"
        )
        lines.append(
            f"| MLP: whole epoch incl. validation | {mlp['epoch_cells_per_s_median_incl_validation']:,} cells/s |"
        )
    one = report.get("mlp_one_thread")
    if one:
        lines.append(
            f"| MLP, one torch thread (`num_threads: 1`): training | {one['train_cells_per_s_median']:,} cells/s |"
        )
    if tr:
        st = tr["settings"]
        lines.append(
            f"| transformer (seq_len {st['seq_len']}, d_model {st['d_model']}, {st['n_layers']} "
            f"layers), batch 32: training | {tr['train_cells_per_s_median']:,} cells/s "
            f"({tr['train_seconds_each_epoch'][0]:.0f} s per epoch) |"
        )
    lines += [
        "",
        "Training throughput counts training cells through forward, backward and optimizer step "
        "(validation excluded); figures are medians over epochs. Load averages before/after "
        "each measurement are in `throughput.json`: on a small machine shared with other "
        "processes, torch's default of one thread per core collapses (a parallel region waits "
        "for its slowest thread), while `num_threads: 1` degrades gracefully. Parallel study "
        "workers should use `num_threads = cores // workers`.",
        "",
    ]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Kang 2018 .h5ad file")
    ap.add_argument("--out", type=Path, default=REPO / "results" / "benchmarks" / "throughput.json")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--mlp-epochs", type=int, default=5)
    ap.add_argument("--transformer-epochs", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--skip-transformer", action="store_true")
    args = ap.parse_args(argv)

    if not args.data.exists():
        print(f"data file not found: {args.data} (see ../shared/data/README.md)", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)

    report: dict = {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "deepsc_tune": __version__,
        "device": args.device,
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
    }
    with tempfile.TemporaryDirectory(prefix="deepsc-tune-bench-") as cache:
        print("preprocessing (cold cache)...", flush=True)
        prepared, report["preprocessing"] = measure_preprocessing(args.data, Path(cache))
    pre = report["preprocessing"]
    print(f"  cold {pre['cold_cache_seconds']} s, warm {pre['warm_cache_seconds']} s", flush=True)

    common = {
        "batch_size": 32,
        "grad_acc": 1,
        "device": args.device,
        "seed": 0,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
    }
    print("MLP...", flush=True)
    report["mlp"] = measure_training(prepared, {**common, "model": "mlp", "epoch": args.mlp_epochs}, label="mlp")
    report["mlp"]["target_cells_per_s"] = MLP_TARGET_CELLS_PER_S
    report["mlp"]["meets_target"] = report["mlp"]["train_cells_per_s_median"] >= MLP_TARGET_CELLS_PER_S
    if (os.cpu_count() or 1) > 1 and not args.threads:
        # One thread per process is what parallel study workers on a small machine should use,
        # and it degrades gracefully when the machine is busy (OpenMP threads do not).
        print("MLP, one torch thread...", flush=True)
        report["mlp_one_thread"] = measure_training(
            prepared,
            {**common, "model": "mlp", "epoch": args.mlp_epochs, "num_threads": 1},
            label="mlp/1 thread",
        )
    if not args.skip_transformer:
        print("transformer...", flush=True)
        report["transformer"] = measure_training(
            prepared,
            {
                **common,
                "model": "transformer",
                "seq_len": args.seq_len,
                "epoch": args.transformer_epochs,
                "learning_rate": 1e-4,
            },
            label="transformer",
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    write_markdown(report, args.out.with_suffix(".md"))
    print(f"wrote {args.out} and {args.out.with_suffix('.md')}")
    print(f"MLP {report['mlp']['train_cells_per_s_median']:,} cells/s (target {MLP_TARGET_CELLS_PER_S:,})")
    if "transformer" in report:
        print(f"transformer {report['transformer']['train_cells_per_s_median']:,} cells/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
