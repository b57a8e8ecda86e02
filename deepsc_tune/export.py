"""The best configuration, ready to paste back into DeepSC (YAML block, override line, JSON)."""

from __future__ import annotations

import json
from typing import Any

import optuna
from optuna.trial import FrozenTrial

from deepsc_tune.search_space import dump_settings
from deepsc_tune.selection import Selection, pick_notes, pick_record, select

#: DeepSC's fine-tuning command, as its users type it.
DEEPSC_COMMAND = "python -m src.deepsc.finetune.finetune"
#: Settings that mean the same in DeepSC's config, exported with the searched ones.
DEEPSC_KEYS = ("lr_scheduler_type", "learning_rate", "warmup_ratio", "epoch", "batch_size", "grad_acc")
FORMATS = ("yaml", "hydra", "json")


def deepsc_settings(trial: FrozenTrial, *, backend: str = "builtin") -> tuple[dict[str, Any], list[str]]:
    """The trial's settings under DeepSC's names, and notes on what does not carry over.

    The built-in ``cosine`` is warmup + one cosine decay; DeepSC's ``cosine`` is warmup + warm
    restarts (``cosine_restarts`` here), so a built-in result names the shape it used.
    """
    settings = dict(trial.user_attrs.get("settings") or trial.params)
    keys = list(trial.params) + [k for k in DEEPSC_KEYS if k in settings and k not in trial.params]
    if backend == "builtin":
        keys = [k for k in keys if k in trial.params or k == "epoch"]
    out = {k: settings[k] for k in keys if k in settings}
    notes: list[str] = []
    kind = out.get("lr_scheduler_type")
    if backend == "builtin" and kind == "cosine_restarts":
        out["lr_scheduler_type"] = "cosine"
        notes.append("schedule: DeepSC's 'cosine' (warmup + warm restarts), tuned here as 'cosine_restarts'")
    elif backend == "builtin" and kind == "cosine":
        notes.append(
            "schedule: tuned as warmup + one cosine decay; DeepSC's 'cosine' adds warm restarts "
            "(search 'cosine_restarts' to tune that exact shape)"
        )
    if out.get("lr_scheduler_type") == "constant":
        out.pop("warmup_ratio", None)
    if backend == "builtin":
        notes.append("tuned on deepsc-tune's built-in fine-tuner; batch size and epochs may need scaling for DeepSC")
    return out, notes


def format_best(
    study: optuna.Study, trial: FrozenTrial, *, fmt: str = "yaml", backend: str = "builtin",
    selection: Selection | None = None,
) -> str:
    """Render the chosen trial as ``yaml`` (config block), ``hydra`` (override line) or ``json``.

    ``selection`` (default: :func:`deepsc_tune.selection.select` over the study's trials) adds
    the configuration's mean ± sd over seeds and whether it is ahead of the runner-up.
    """
    settings, notes = deepsc_settings(trial, backend=backend)
    metric = study.user_attrs.get("metric", "val_accuracy")
    u = trial.user_attrs
    if selection is None:
        selection = select(study.get_trials(deepcopy=False))
    header = [
        f"deepsc-tune best: study {study.study_name}, trial {trial.number}, "
        f"{metric} {trial.value:.4f} (best epoch {u.get('best_epoch')} of {u.get('epochs_run')})",
    ]
    header += pick_notes(selection, trial.number, metric=metric)
    if u.get("test_accuracy") is not None:
        f1 = u.get("test_macro_f1")
        header.append(
            f"test accuracy {u['test_accuracy']:.4f}"
            + (f" / macro-F1 {f1:.4f}" if f1 is not None else "")
            + " (reported only, never used for selection)"
        )
    header += notes
    if fmt == "json":
        return json.dumps(
            {
                "study": study.study_name,
                "trial": trial.number,
                "metric": metric,
                "value": trial.value,
                "deepsc": settings,
                "settings": u.get("settings"),
                "best_epoch": u.get("best_epoch"),
                "test_accuracy": u.get("test_accuracy"),
                "test_macro_f1": u.get("test_macro_f1"),
                **pick_record(selection, trial.number),
                "notes": notes,
            },
            indent=2,
        )
    comments = "".join(f"# {line}\n" for line in header)
    if fmt == "hydra":
        line = " ".join(f"{k}={_hydra_value(v)}" for k, v in settings.items())
        return f"{comments}{DEEPSC_COMMAND} {line}"
    return comments + "# for DeepSC's configs/finetune/finetune.yaml\n" + dump_settings(settings).rstrip()


def _hydra_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
