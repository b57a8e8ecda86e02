"""Benchmark: deepsc-tune's default search against the usage guide's grid and random search.

On the same data, splits, fine-tuner settings and epochs, three strategies run per benchmark
and seed, with the library's own functions (:func:`build_search_space` with overrides,
:func:`open_study` / :func:`run_study` on an in-memory storage, :class:`BuiltinFinetuner` on data
prepared once per dataset):

``grid``
    DeepSC's usage guide by hand: ``learning_rate`` in {1e-5, 5e-5, 1e-4, 5e-4} x
    ``lr_scheduler_type`` in {constant, cosine (warmup_ratio 0.03)}; 8 trials, no pruning.
``random``
    Random search over the search space of the dataset's YAML, no pruning, no enqueued configs,
    as many trials as ``default``.
``default``
    The dataset's YAML as shipped: its sampler, pruner, ``n_trials`` and enqueued guide configs.

Seed ``s`` sets the sampler seed (``grid``: only the order of its trials) and the training seed
(``finetune.seed`` of the YAML + ``s``), so an enqueued guide configuration in ``default`` trains
exactly like the same configuration in ``grid`` of the same seed.

Per run it records the best validation value (the study metric of the YAML), the selected trial
(the best COMPLETE trial, as ``deepsc-tune export`` picks it) and its test metrics (reported,
never used), epochs trained, wall and CPU seconds, and the epochs needed to first reach the same
seed's grid best (trials in order, epochs of every trial counted, up to the epoch of the first
COMPLETE trial whose validation curve reaches it). A logistic-regression baseline is fitted per
dataset on the same prepared ``X_train`` and evaluated on ``X_test``.

Run from the repository root::

    nice -n 10 python bench/compare.py                 # full: results/benchmarks/compare.{json,md}
    python bench/compare.py --quick --out /tmp/q.json  # CI smoke run: pbmc68k, 2 seeds, small

With ``--confirm K,N`` (full runs: 3,3) the default search is then confirmed: its K best
configurations re-run with N further seeds (``study.confirm``), and every selection rule and
smaller ``(K, N)`` is replayed on the result (``bench/selection_eval.py``): the pick's test
metrics with and without confirmation, its extra epochs, and a held-out-seed validation value
that alone chooses the shipped ``confirm`` defaults (docs/benchmark.md, "Confirmation").

Progress goes to stdout (one line per strategy run; ``-v`` adds one per trial).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime as dt
import json
import math
import multiprocessing as mp
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import optuna  # noqa: E402
from selection_eval import repeat_records, variants  # noqa: E402

from deepsc_tune import __version__  # noqa: E402
from deepsc_tune.backends.builtin import BuiltinFinetuner  # noqa: E402
from deepsc_tune.cli import Progress  # noqa: E402
from deepsc_tune.config import (  # noqa: E402
    DEFAULT_STUDY,  # noqa: E402
    SearchSpace,
    build_search_space,
    parse_yaml,
    resolve_search_space_path,
)
from deepsc_tune.data import (  # noqa: E402
    PreparedData,
    classification_metrics,  # noqa: E402
    prepare_data,
)
from deepsc_tune.study import (  # noqa: E402  # noqa: E402
    best_search_trial,
    open_study,
    run_confirmation,  # noqa: E402
    run_study,
    search_trials,
    trial_result,
)

#: The usage guide's manual grid (its "LR range test" values x both schedules).
GRID_LEARNING_RATES = (1e-5, 5e-5, 1e-4, 5e-4)
GRID_SCHEDULERS = ("constant", "cosine")
GRID_WARMUP_RATIO = 0.03
STRATEGIES = ("grid", "random", "default")
#: Target of issue 7: the default search reaches the grid's best within this share of its epochs.
REACH_TARGET_SHARE = 0.5
#: Validation values are compared with this tolerance (float noise only; metrics are ratios).
EPS = 1e-9

DEFAULT_OUT = REPO / "results" / "benchmarks" / "compare.json"
DEFAULT_CACHE = REPO / "results" / "cache"

#: A transformer small enough for a 2-core CPU (about a second per epoch on pbmc68k).
SMALL_TRANSFORMER = (
    "finetune.model=transformer",
    "finetune.seq_len=64",
    "finetune.d_model=32",
    "finetune.n_layers=1",
    "finetune.n_heads=4",
)


@dataclass(frozen=True)
class Benchmark:
    """One dataset (a shipped search space) with one model."""

    name: str
    space: str
    overrides: tuple[str, ...] = ()
    needs_shared_data: bool = False


BENCHMARKS = {
    "pbmc68k": Benchmark("pbmc68k", "pbmc68k"),
    "pbmc68k-transformer": Benchmark("pbmc68k-transformer", "pbmc68k", SMALL_TRANSFORMER),
    "baron": Benchmark("baron", "baron", needs_shared_data=True),
    "kang": Benchmark("kang", "kang", needs_shared_data=True),
}
FULL = {"benchmarks": list(BENCHMARKS), "seeds": 5, "confirm": (3, 3)}
#: Quick mode keeps the script working in CI: small, not meant to be read as results.
QUICK = {
    "benchmarks": ["pbmc68k"],
    "seeds": 2,
    "overrides": ("finetune.epoch=4", "study.n_trials=6"),
    "confirm": (2, 2),
}


# ----------------------------------------------------------------------------- spaces


def load_raw(bench: Benchmark) -> tuple[dict[str, Any], str, Path]:
    """The benchmark's YAML as a dict, its text and path."""
    path = resolve_search_space_path(bench.space)
    text = path.read_text()
    return parse_yaml(text, source=str(path)), text, path


def strategy_space(bench: Benchmark, strategy: str, *, seed: int, extra: tuple[str, ...] = ()) -> SearchSpace:
    """The search space one strategy runs for ``seed`` (overrides on the shipped YAML)."""
    raw, text, path = load_raw(bench)
    base_seed = int((raw.get("finetune") or {}).get("seed", 0))
    if strategy == "grid":
        # The grid is the usage guide's, whatever search or study settings are being tried.
        extra = tuple(o for o in extra if not o.startswith(("search.", "study.")))
    overrides = [*bench.overrides, *extra, f"finetune.seed={base_seed + seed}"]
    if strategy == "default":
        sampler = (raw.get("study") or {}).get("sampler")
        if isinstance(sampler, dict):
            overrides.append(f"study.sampler.seed={seed}")
        else:  # absent (DEFAULT_STUDY's) or a bare name such as `sampler: tpe`
            kind = sampler or DEFAULT_STUDY["sampler"]["type"]
            overrides.append(f"study.sampler={{type: {kind}, seed: {seed}}}")
    elif strategy == "random":
        overrides += [
            f"study.sampler={{type: random, seed: {seed}}}",
            "study.pruner={type: none}",
            "study.enqueue=[]",
        ]
    elif strategy == "grid":
        raw = copy.deepcopy(raw)
        search = raw.setdefault("search", {})
        search.pop("warmup_ratio", None)
        search["lr_scheduler_type"] = {"choices": list(GRID_SCHEDULERS)}
        search["learning_rate"] = {"choices": list(GRID_LEARNING_RATES)}
        n_trials = len(GRID_LEARNING_RATES) * len(GRID_SCHEDULERS)
        overrides += [
            f"finetune.warmup_ratio={GRID_WARMUP_RATIO}",
            f"study.sampler={{type: grid, seed: {seed}}}",
            "study.pruner={type: none}",
            "study.enqueue=[]",
        ]
        # The grid has 8 points whatever n_trials the YAML (or quick mode) asks for.
        overrides.append(f"study.n_trials={n_trials}")
    else:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {STRATEGIES}")
    return build_search_space(raw, text=text, path=path, overrides=overrides)


# ----------------------------------------------------------------------------- running


def _curve(trial: optuna.trial.FrozenTrial) -> list[float]:
    return [trial.intermediate_values[e] for e in sorted(trial.intermediate_values)]


def _epochs(trial: optuna.trial.FrozenTrial) -> int:
    return trial_result(trial).epochs_run


def epochs_to_reach(trials: list[dict[str, Any]], target: float, *, complete_only: bool = True) -> int | None:
    """Cumulative epochs, trials in order, until a trial's validation curve first reaches ``target``.

    Every trial's epochs count (pruned and failed ones too). With ``complete_only`` only a
    COMPLETE trial counts as reaching it, since the tool selects among those; otherwise a pruned
    trial's curve counts too. ``None``: never reached.
    """
    done = 0
    for t in sorted(trials, key=lambda t: t["number"]):
        if not complete_only or t["state"] == "COMPLETE":
            for i, v in enumerate(t["curve"]):
                if v >= target - EPS:
                    return done + i + 1
        done += t["epochs"]
    return None


def _round(x: Any, nd: int = 5) -> Any:
    return round(x, nd) if isinstance(x, float) and math.isfinite(x) else x


def run_strategy(
    bench: Benchmark,
    strategy: str,
    *,
    seed: int,
    data: PreparedData,
    threads: int | None,
    extra: tuple[str, ...],
    verbose: bool,
    confirm: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Run one strategy's study for one seed and summarise it.

    ``confirm`` ``(K, N)``: after the search, confirm the default strategy's K best
    configurations with N further seeds and replay every selection variant (selection_eval.py).
    """
    space = strategy_space(bench, strategy, seed=seed, extra=extra)
    # The search itself runs unconfirmed (as the shipped YAML may not); confirmation follows.
    space = dataclasses.replace(space, confirm=None)
    defaults = {"num_threads": threads} if threads else {}
    finetuner = BuiltinFinetuner(data, defaults=defaults)
    storage = optuna.storages.InMemoryStorage()
    study = open_study(
        space, storage=storage, study_name=f"{bench.name}-{strategy}-{seed}", data_fingerprint=data.fingerprint
    )
    progress = (
        Progress(metric=space.metric, verbose=False, prefix=f"[{bench.name} s{seed} {strategy}] ") if verbose else None
    )
    wall0, cpu0 = time.perf_counter(), time.process_time()
    run_study(space, finetuner, study=study, progress=progress)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    confirmation = None
    if confirm and strategy == "default":
        cwall0 = time.perf_counter()
        run_confirmation(
            dataclasses.replace(space, confirm={"top": confirm[0], "seeds": confirm[1]}),
            finetuner,
            study=study,
            progress=progress,
        )
        every = study.get_trials(deepcopy=False)
        confirmation = {
            "top": confirm[0],
            "seeds": confirm[1],
            "wall_s": round(time.perf_counter() - cwall0, 2),
            "repeats": [
                {k: _round(v) if isinstance(v, float) else v for k, v in r.items()} for r in repeat_records(every)
            ],
            "variants": [
                {k: _round(v) for k, v in r.items()}
                for r in variants(every, k_max=confirm[0], n_max=confirm[1], fixed=space.fixed)
            ],
        }

    trials = []
    for t in search_trials(study):
        trials.append(
            {
                "number": t.number,
                "state": t.state.name,
                "params": {k: _round(v, 8) for k, v in t.params.items()},
                "enqueued": bool(t.user_attrs.get("enqueued", False)),
                "epochs": _epochs(t),
                "curve": [_round(v) for v in _curve(t)],
                "value": _round(t.value) if t.value is not None else None,
                "best_epoch": trial_result(t).best_epoch,
                "best_val_accuracy": _round(trial_result(t).val_accuracy),
                "best_val_macro_f1": _round(trial_result(t).val_macro_f1),
                "test_accuracy": _round(trial_result(t).test_accuracy),
                "test_macro_f1": _round(trial_result(t).test_macro_f1),
            }
        )
    best = best_search_trial(study)
    states = {s: sum(1 for t in trials if t["state"] == s) for s in ("COMPLETE", "PRUNED", "FAIL")}
    return {
        "benchmark": bench.name,
        "strategy": strategy,
        "seed": seed,
        "metric": space.metric,
        "n_trials": space.n_trials,
        "epoch": int(space.fixed.get("epoch", 10)),
        "sampler": space.sampler_config,
        "pruner": space.pruner_config,
        "enqueue": space.enqueue,
        "states": states,
        "total_epochs": sum(t["epochs"] for t in trials),
        "wall_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "best_value": _round(best.value),
        "selected": {
            "number": best.number,
            "params": {k: _round(v, 8) for k, v in best.params.items()},
            "best_epoch": trial_result(best).best_epoch,
        },
        "test_accuracy": _round(trial_result(best).test_accuracy),
        "test_macro_f1": _round(trial_result(best).test_macro_f1),
        "trials": trials,
        "confirmation": confirmation,
    }


def run_job(
    job: tuple[str, int, tuple[str, ...], int | None, bool, tuple[str, ...], tuple[int, int] | None],
) -> list[dict[str, Any]]:
    """The strategies of one benchmark and seed (grid first: the others are measured against it)."""
    name, seed, extra, threads, verbose, strategies, confirm = job
    bench = BENCHMARKS[name]
    data = _DATA[name]
    out = []
    grid_best = None
    for strategy in ("grid", *(s for s in strategies if s != "grid")):
        rec = _REUSED_GRID.get((name, seed)) if strategy == "grid" else None
        if rec is None:
            rec = run_strategy(
                bench, strategy, seed=seed, data=data, threads=threads, extra=extra, verbose=verbose, confirm=confirm
            )
        if strategy == "grid":
            grid_best = rec["best_value"]
            rec["grid_epochs"] = rec["total_epochs"]
        rec["grid_best_value"] = grid_best
        rec["epochs_to_reach_grid_best"] = epochs_to_reach(rec["trials"], grid_best)
        rec["epochs_to_reach_grid_best_any"] = epochs_to_reach(rec["trials"], grid_best, complete_only=False)
        reach = rec["epochs_to_reach_grid_best"]
        st = rec["states"]
        print(
            f"[{name} seed {seed}] {strategy:<7} {rec['n_trials']:>2} trials "
            f"({st['COMPLETE']} complete, {st['PRUNED']} pruned, {st['FAIL']} failed), "
            f"{rec['total_epochs']:>4} epochs, {rec['wall_s']:7.1f} s | best {rec['metric']} "
            f"{rec['best_value']:.4f} (#{rec['selected']['number']} "
            f"{_fmt_params(rec['selected']['params'])}) | test acc {rec['test_accuracy']:.4f} "
            f"F1 {rec['test_macro_f1']:.4f} | grid best {grid_best:.4f} reached after "
            f"{reach if reach is not None else 'never'} epochs",
            flush=True,
        )
        for v in (rec.get("confirmation") or {}).get("variants", []):
            if v["rule"] == "best_epoch" and (v["top"], v["seeds"]) in ((0, 0), confirm):
                print(
                    f"[{name} seed {seed}] select best_epoch K={v['top']} N={v['seeds']}: "
                    f"#{v['number']} val {v['val']:.4f} (n={v['n']}) | test acc "
                    f"{v['test_accuracy']:.4f} F1 {v['test_macro_f1']:.4f} | +{v['extra_epochs']} epochs",
                    flush=True,
                )
        out.append(rec)
    return out


def _fmt_params(params: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


#: Prepared data per benchmark, filled in the parent before the workers fork.
_DATA: dict[str, PreparedData] = {}
#: Grid runs taken from an earlier result (``--reuse-grid``), by (benchmark, seed).
_REUSED_GRID: dict[tuple[str, int], dict[str, Any]] = {}


def load_reusable_grid(
    path: Path, *, names: list[str], data: dict[str, PreparedData], extra: tuple[str, ...], threads: int | None
) -> None:
    """Take grid runs from an earlier result when data and the grid's settings are the same.

    The grid is deterministic on the CPU for a given seed, thread count, data and settings, so
    trying other defaults need not retrain it; committed results are always made without this.
    """
    old = json.loads(Path(path).read_text())
    if old["meta"].get("threads") != threads:
        return
    for rec in old["runs"]:
        name = rec["benchmark"]
        if rec["strategy"] != "grid" or name not in names:
            continue
        if old["data"].get(name, {}).get("fingerprint") != data[name].fingerprint:
            continue
        space = strategy_space(BENCHMARKS[name], "grid", seed=rec["seed"], extra=extra)
        if int(space.fixed.get("epoch", 10)) == rec["epoch"] and space.metric == rec["metric"]:
            _REUSED_GRID[(name, rec["seed"])] = {**rec, "reused_from": str(path)}


def prepare(bench: Benchmark, *, cache_dir: Path) -> PreparedData:
    """Load and preprocess the benchmark's dataset once (disk cache shared with the CLI)."""
    space = strategy_space(bench, "default", seed=0)
    settings = space.data_settings
    return prepare_data(settings, cache_dir=cache_dir, hint=space.source)


# ----------------------------------------------------------------------------- baseline


def logistic_regression(data: PreparedData) -> dict[str, Any]:
    """scikit-learn's LogisticRegression on the prepared training cells, scored on the test cells.

    Same features and split as the fine-tuner (the validation cells are not used for fitting),
    scored with :func:`deepsc_tune.backends.builtin._evaluation.classification_metrics`, the fine-tuner's own metrics.
    """
    from sklearn.linear_model import LogisticRegression

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # lbfgs convergence chatter
        model = LogisticRegression(max_iter=2000)
        model.fit(data.X_train, data.y_train)
    test = classification_metrics(data.y_test, model.predict(data.X_test), n_classes=len(data.classes))
    val = classification_metrics(data.y_val, model.predict(data.X_val), n_classes=len(data.classes))
    return {
        "model": "sklearn LogisticRegression(max_iter=2000): C=1, lbfgs",
        "test_accuracy": _round(test["accuracy"]),
        "test_macro_f1": _round(test["macro_f1"]),
        "val_accuracy": _round(val["accuracy"]),
        "val_macro_f1": _round(val["macro_f1"]),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def describe_data(data: PreparedData) -> dict[str, Any]:
    import numpy as np

    n_test = 0 if data.X_test is None else len(data.X_test)
    absent = []
    if data.y_test is not None:
        counts = np.bincount(data.y_test, minlength=len(data.classes))
        absent = [c for c, n in zip(data.classes, counts) if n == 0]
    return {
        "n_train": len(data.X_train),
        "n_val": len(data.X_val),
        "n_test": n_test,
        "n_genes": len(data.genes),
        "n_classes": len(data.classes),
        "classes_absent_from_test": absent,
        "notes": list(data.notes),
        "fingerprint": data.fingerprint,
    }


# ----------------------------------------------------------------------------- summary


def _stats(values: list[float | None]) -> dict[str, Any]:
    xs = [v for v in values if v is not None]
    if not xs:
        return {"mean": None, "sd": None, "min": None, "max": None, "n": 0}
    return {
        "mean": _round(statistics.fmean(xs)),
        "sd": _round(statistics.stdev(xs)) if len(xs) > 1 else 0.0,
        "min": _round(min(xs)),
        "max": _round(max(xs)),
        "n": len(xs),
    }


def _median_with_misses(values: list[int | None]) -> float | None:
    """Median where "not reached" ranks above every number; ``None`` when the median is a miss."""
    xs = sorted(values, key=lambda v: math.inf if v is None else v)
    n = len(xs)
    if n == 0:
        return None
    lo, hi = xs[(n - 1) // 2], xs[n // 2]
    if lo is None or hi is None:
        return None
    return (lo + hi) / 2


def summarise(runs: list[dict[str, Any]], benchmarks: list[str]) -> dict[str, Any]:
    """Per benchmark and strategy: mean/spread over seeds, and the issue's two targets."""
    out: dict[str, Any] = {}
    for name in benchmarks:
        per: dict[str, Any] = {}
        for strategy in STRATEGIES:
            rs = sorted(
                (r for r in runs if r["benchmark"] == name and r["strategy"] == strategy), key=lambda r: r["seed"]
            )
            if not rs:
                continue
            grid_epochs = [
                next(
                    g["total_epochs"]
                    for g in runs
                    if g["benchmark"] == name and g["strategy"] == "grid" and g["seed"] == r["seed"]
                )
                for r in rs
            ]
            reach = [r["epochs_to_reach_grid_best"] for r in rs]
            share = [None if e is None else e / g for e, g in zip(reach, grid_epochs)]
            per[strategy] = {
                "seeds": [r["seed"] for r in rs],
                "metric": rs[0]["metric"],
                "n_trials": rs[0]["n_trials"],
                "best_value": _stats([r["best_value"] for r in rs]),
                "test_accuracy": _stats([r["test_accuracy"] for r in rs]),
                "test_macro_f1": _stats([r["test_macro_f1"] for r in rs]),
                "total_epochs": _stats([float(r["total_epochs"]) for r in rs]),
                "pruned": _stats([float(r["states"]["PRUNED"]) for r in rs]),
                "wall_s": _stats([r["wall_s"] for r in rs]),
                "cpu_s": _stats([r["cpu_s"] for r in rs]),
                "epochs_to_reach_grid_best": reach,
                "epochs_to_reach_grid_best_any": [r["epochs_to_reach_grid_best_any"] for r in rs],
                "reached": sum(e is not None for e in reach),
                "median_epochs_to_reach": _median_with_misses(reach),
                "median_share_of_grid_epochs": _median_with_misses(share),
                "grid_epochs": grid_epochs,
            }
        targets = {}
        if "default" in per and "grid" in per:
            d, g = per["default"], per["grid"]
            share = d["median_share_of_grid_epochs"]
            targets = {
                "reach_within_half_grid_epochs": share is not None and share <= REACH_TARGET_SHARE,
                "median_share_of_grid_epochs": share,
                "test_macro_f1_at_least_grid": (d["test_macro_f1"]["mean"] or 0)
                >= (g["test_macro_f1"]["mean"] or 0) - EPS,
                "test_macro_f1_default_minus_grid": _round(
                    (d["test_macro_f1"]["mean"] or 0) - (g["test_macro_f1"]["mean"] or 0)
                ),
            }
        out[name] = {
            "strategies": per,
            "targets": targets,
            "selection": summarise_selection(
                [r for r in runs if r["benchmark"] == name and r["strategy"] == "default"]
            ),
        }
    return out


def summarise_selection(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per selection variant (rule, K, N) of the default strategy: statistics over seeds."""
    groups: dict[tuple[str, int, int], list[dict[str, Any]]] = {}
    for r in sorted(runs, key=lambda r: r["seed"]):
        for v in (r.get("confirmation") or {}).get("variants", []):
            groups.setdefault((v["rule"], v["top"], v["seeds"]), []).append(v)
    out = []
    for (rule, k, n), vs in groups.items():
        fresh = [v["val_fresh"] for v in vs]
        out.append(
            {
                "rule": rule,
                "top": k,
                "seeds": n,
                "n_runs": len(vs),
                "val": _stats([v["val"] for v in vs]),
                "val_fresh": _stats(fresh),
                "val_fresh_missing": sum(f is None for f in fresh),
                "test_accuracy": _stats([v["test_accuracy"] for v in vs]),
                "test_macro_f1": _stats([v["test_macro_f1"] for v in vs]),
                "test_accuracy_all": _stats([v["test_accuracy_all"] for v in vs]),
                "test_macro_f1_all": _stats([v["test_macro_f1_all"] for v in vs]),
                "extra_epochs": _stats([float(v["extra_epochs"]) for v in vs]),
                "distinguishable": sum(bool(v["distinguishable"]) for v in vs),
            }
        )
    return out


def write_markdown(result: dict[str, Any], path: Path) -> None:
    path.write_text(render_markdown(result))


def _ms(s: dict[str, Any], nd: int = 3) -> str:
    if s["mean"] is None:
        return "-"
    return f"{s['mean']:.{nd}f} ± {s['sd']:.{nd}f}"


def render_selection(result: dict[str, Any]) -> list[str]:
    """Tables of the pick with and without confirmation, per rule, and the validation evidence."""
    confirm = result["meta"].get("confirm")
    if not confirm or not any(res.get("selection") for res in result["summary"].values()):
        return []
    kmax, nmax = confirm
    lines = [
        "",
        f"## Selection with and without confirmation (default strategy, up to K={kmax}, N={nmax})",
        "",
        "The default search's pick per selection rule: *K, N* = confirm the K best configurations "
        "(by search value) with N more seeds, 0, 0 = no confirmation. *val*: the score it was "
        "picked on (mean over its seeds); *test*: mean over the seeds it was picked on; *test, all "
        f"seeds*: mean over all its runs in the study; *held-out val*: its study metric on extra "
        f"seed {nmax}, which variants with N < {nmax} did not see (blank: not computed). "
        "*indist.*: seeds where the leader was not distinguishable from the runner-up.",
        "",
        "| benchmark | rule | K, N | val | held-out val | test acc | test macro-F1 "
        "| test macro-F1, all seeds | extra epochs | indist. |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    shown = {(0, 0), (1, min(2, nmax)), (kmax, max(1, nmax - 1)), (kmax, nmax)}
    for name, res in result["summary"].items():
        for v in res.get("selection") or []:
            if (v["top"], v["seeds"]) not in shown:
                continue
            fresh = "" if v["val_fresh"]["n"] < v["n_runs"] else _ms(v["val_fresh"])
            lines.append(
                f"| {name} | {v['rule']} | {v['top']}, {v['seeds']} | {_ms(v['val'])} | {fresh} "
                f"| {_ms(v['test_accuracy'])} | {_ms(v['test_macro_f1'])} | {_ms(v['test_macro_f1_all'])} "
                f"| {v['extra_epochs']['mean']:.0f} | {v['n_runs'] - v['distinguishable']}/{v['n_runs']} |"
            )
        g = res["strategies"].get("grid")
        lr = result["baselines"].get(name)
        if g:
            lines.append(
                f"| {name} | grid | - | {_ms(g['best_value'])} | | {_ms(g['test_accuracy'])} "
                f"| {_ms(g['test_macro_f1'])} | | - | |"
            )
        if lr:
            lines.append(
                f"| {name} | logistic regression | - | | | {lr['test_accuracy']:.3f} "
                f"| {lr['test_macro_f1']:.3f} | | - | |"
            )
    lines += [
        "",
        f"### Validation evidence for the defaults (held-out seed {nmax}, every K and N < {nmax})",
        "",
        "| benchmark | rule | K, N | held-out val of the pick | seeds with a held-out value | extra epochs |",
        "|---|---|---|---|---|---|",
    ]
    for name, res in result["summary"].items():
        for v in res.get("selection") or []:
            if v["seeds"] < nmax:
                lines.append(
                    f"| {name} | {v['rule']} | {v['top']}, {v['seeds']} | {_ms(v['val_fresh'])} "
                    f"| {v['n_runs'] - v['val_fresh_missing']}/{v['n_runs']} | {v['extra_epochs']['mean']:.0f} |"
                )
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    """The results table (and targets) as Markdown."""
    meta = result["meta"]
    lines = [
        "# deepsc-tune's default search vs the usage guide's grid vs random search",
        "",
        f"`{meta['command']}` on {meta['date']} (commit {meta['commit']}), "
        f"{meta['machine']}, {meta['jobs']} job(s) x {meta['threads']} torch thread(s); "
        f"{meta['seeds']} seeds; {meta['wall_s']:.0f} s in all.",
        "",
        "Mean ± sd over seeds. *best val*: the study metric (column *metric*) of the selected trial "
        "(best COMPLETE trial); *test*: that trial's test metrics at its best epoch (never used "
        "for selection). *epochs*: epochs trained by the whole strategy. *reach*: epochs until the "
        "same seed's grid best was first reached by a completed trial, median over seeds "
        '("never" when most seeds missed) and how many seeds reached it. Wall time on a shared '
        "CPU: compare epochs first.",
        "",
        "| benchmark | strategy | metric | trials | best val | test acc | test macro-F1 | epochs "
        "| pruned | wall s | reach grid best (median epochs, share of grid's) | seeds reached |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, res in result["summary"].items():
        if not res["strategies"]:
            continue  # a partial save before this benchmark's first job finished
        for strategy, s in res["strategies"].items():
            med = s["median_epochs_to_reach"]
            share = s["median_share_of_grid_epochs"]
            reach = "never" if med is None else f"{med:g} ({share:.0%})"
            lines.append(
                f"| {name} | {strategy} | {s['metric']} | {s['n_trials']} | {_ms(s['best_value'])} "
                f"| {_ms(s['test_accuracy'])} | {_ms(s['test_macro_f1'])} "
                f"| {s['total_epochs']['mean']:.0f} | {s['pruned']['mean']:.1f} "
                f"| {s['wall_s']['mean']:.0f} | {reach} | {s['reached']}/{len(s['seeds'])} |"
            )
        lr = result["baselines"].get(name)
        if lr:
            metric = next(iter(res["strategies"].values()))["metric"]
            lines.append(
                f"| {name} | logistic regression | {metric} | - | {lr[metric]:.3f} "
                f"| {lr['test_accuracy']:.3f} | {lr['test_macro_f1']:.3f} | - | - "
                f"| {lr['seconds']:.0f} | - | - |"
            )
    lines += [
        "",
        "## Targets (issue 7)",
        "",
        "| benchmark | default reaches grid best within 50 % of grid epochs (median share) "
        "| default test macro-F1 >= grid's (difference of means) |",
        "|---|---|---|",
    ]
    for name, res in result["summary"].items():
        t = res["targets"]
        if not t:
            continue
        share = t["median_share_of_grid_epochs"]
        lines.append(
            f"| {name} | {'met' if t['reach_within_half_grid_epochs'] else 'MISSED'} "
            f"({'never' if share is None else f'{share:.0%}'}) "
            f"| {'met' if t['test_macro_f1_at_least_grid'] else 'MISSED'} "
            f"({t['test_macro_f1_default_minus_grid']:+.3f}) |"
        )
    lines += render_selection(result)
    lines += ["", "## Data", ""]
    for name, d in result["data"].items():
        lines.append(
            f"- **{name}**: {d['n_train']} train / {d['n_val']} val / {d['n_test']} test cells, "
            f"{d['n_genes']} genes, {d['n_classes']} classes"
            + (
                f"; classes with no test cell: {', '.join(d['classes_absent_from_test'])}"
                if d["classes_absent_from_test"]
                else ""
            )
        )
        for note in d["notes"]:
            lines.append(f"  - {note}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- main


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "deepsc_tune", "search_spaces"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def _machine() -> str:
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return f"{os.cpu_count()} x {model}, torch {torch.__version__}, optuna {optuna.__version__}"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: pbmc68k only, 2 seeds, 4 epochs, 6 trials (minutes -> seconds)",
    )
    p.add_argument("--benchmarks", help=f"comma-separated subset of {', '.join(BENCHMARKS)}")
    p.add_argument("--seeds", type=int, help="number of seeds (full: 5, quick: 2)")
    p.add_argument("--jobs", type=int, default=1, help="benchmark x seed jobs run in parallel processes (default 1)")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads per job (default 1; fixed so that runs are reproducible)"
    )
    p.add_argument(
        "--strategies",
        default=",".join(STRATEGIES),
        help="comma-separated subset of grid,random,default (grid always runs)",
    )
    p.add_argument(
        "--reuse-grid",
        type=Path,
        default=None,
        help="take grid runs from an earlier compare.json (same data, epochs, metric): "
        "for trying other defaults quickly; never for committed results",
    )
    p.add_argument(
        "--override",
        action="append",
        default=[],
        help="extra override for every strategy, e.g. study.n_trials=10 (repeatable)",
    )
    p.add_argument(
        "--confirm",
        default=None,
        help="K,N: confirm the default search's K best configurations with N more seeds and "
        "compare selection rules (full: 3,3; quick: 2,2; 'off' to skip)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"JSON output; the Markdown table goes next to it (default {DEFAULT_OUT.relative_to(REPO)})",
    )
    p.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help="preprocessed-data cache")
    p.add_argument("-v", "--verbose", action="store_true", help="one line per trial")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    mode = QUICK if args.quick else FULL
    names = args.benchmarks.split(",") if args.benchmarks else list(mode["benchmarks"])
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; expected some of {list(BENCHMARKS)}")
    shared = REPO.parent / "shared" / "data"
    skipped = [n for n in names if BENCHMARKS[n].needs_shared_data and not shared.is_dir()]
    for n in skipped:
        print(f"skipping {n}: {shared} is absent (see the data README)", flush=True)
    names = [n for n in names if n not in skipped]
    n_seeds = args.seeds or mode["seeds"]
    extra = tuple(mode.get("overrides", ())) + tuple(args.override)
    out = args.out or (DEFAULT_OUT.with_name("compare-quick.json") if args.quick else DEFAULT_OUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    t0 = time.perf_counter()
    data_info, baselines = {}, {}
    for name in names:
        bench = BENCHMARKS[name]
        _DATA[name] = prepare(bench, cache_dir=args.cache_dir)
        data_info[name] = describe_data(_DATA[name])
        key = bench.space  # the baseline depends on the data only
        if key not in baselines:
            baselines[key] = logistic_regression(_DATA[name])
            lr = baselines[key]
            print(
                f"[{name}] logistic regression: test acc {lr['test_accuracy']:.4f} macro-F1 "
                f"{lr['test_macro_f1']:.4f}, {lr['seconds']:.1f} s",
                flush=True,
            )
    baselines = {n: baselines[BENCHMARKS[n].space] for n in names}

    if args.reuse_grid:
        load_reusable_grid(args.reuse_grid, names=names, data=_DATA, extra=extra, threads=args.threads)
        print(f"reusing {len(_REUSED_GRID)} grid runs from {args.reuse_grid}", flush=True)
    strategies = tuple(s for s in args.strategies.split(",") if s)
    if any(s not in STRATEGIES for s in strategies):
        raise SystemExit(f"unknown strategy in {args.strategies!r}; expected some of {STRATEGIES}")
    confirm = mode.get("confirm") if args.confirm is None else _parse_confirm(args.confirm)
    jobs = [(n, s, extra, args.threads, args.verbose, strategies, confirm) for s in range(n_seeds) for n in names]
    meta = {
        "command": "python bench/compare.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _git_commit(),
        "machine": _machine(),
        "deepsc_tune_version": __version__,
        "quick": args.quick,
        "benchmarks": names,
        "seeds": n_seeds,
        "jobs": args.jobs,
        "threads": args.threads,
        "extra_overrides": list(extra),
        "strategies": list(strategies),
        "reuse_grid": str(args.reuse_grid) if args.reuse_grid else None,
        "confirm": list(confirm) if confirm else None,
        "grid": {
            "learning_rate": list(GRID_LEARNING_RATES),
            "lr_scheduler_type": list(GRID_SCHEDULERS),
            "warmup_ratio": GRID_WARMUP_RATIO,
        },
        "load_before": _load(),
    }
    runs: list[dict[str, Any]] = []

    def save(final: bool) -> dict[str, Any]:
        meta["wall_s"] = round(time.perf_counter() - t0, 1)
        meta["load_after"] = _load()
        result = {
            "meta": meta,
            "data": data_info,
            "baselines": baselines,
            "summary": summarise(runs, names),
            "runs": runs,
            "complete": final,
        }
        out.write_text(json.dumps(result, indent=1) + "\n")
        write_markdown(result, out.with_suffix(".md"))
        return result

    if args.jobs > 1:
        with mp.get_context("fork").Pool(args.jobs) as pool:
            for recs in pool.imap_unordered(run_job, jobs):
                runs.extend(recs)
                save(final=False)
    else:
        for job in jobs:
            runs.extend(run_job(job))
            save(final=False)
    result = save(final=True)
    print(f"wrote {out} and {out.with_suffix('.md')} ({meta['wall_s']:.0f} s)", flush=True)
    for name, res in result["summary"].items():
        t = res["targets"]
        if t:
            print(
                f"[{name}] targets: reach {'met' if t['reach_within_half_grid_epochs'] else 'MISSED'}"
                f" (median share {t['median_share_of_grid_epochs']}), test macro-F1 "
                f"{'met' if t['test_macro_f1_at_least_grid'] else 'MISSED'} "
                f"({t['test_macro_f1_default_minus_grid']:+.4f})",
                flush=True,
            )
    return result


def _parse_confirm(text: str) -> tuple[int, int] | None:
    if text == "off":
        return None
    try:
        k, n = (int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"--confirm {text!r}: expected K,N (two positive integers) or off") from None
    if k < 1 or n < 1:
        raise SystemExit(f"--confirm {text!r}: expected K,N (two positive integers) or off")
    return k, n


def _load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


if __name__ == "__main__":
    main()
