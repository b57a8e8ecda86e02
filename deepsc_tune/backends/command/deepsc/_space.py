"""What a DeepSC checkout accepts, checked on a search space before any trial starts.

DeepSC's fine-tuner takes ~30 s to import and load data before it reads its config, so a
wrong key, an impossible schedule or an unwritable output folder found here saves that much
per failed trial (and a study's worth of failed trials). Facts are those of DeepSC at commit
``2416d85``; what is read from the checkout itself (entry module, Hydra config, output
folder) is in :mod:`deepsc_tune.backends.command.deepsc._checkout`, and this module checks a search space's
settings against it: Hydra keys, the cosine schedule's warmup, one GPU per trial, inputs.

Functions return findings, never raise for them:
:class:`~deepsc_tune.backends.command.deepsc._checkout.Problem` (the key of the search-space file, what is
wrong, what is expected and the fix) and notes (plain lines), so ``deepsc-tune validate``
lists everything at once. This module imports PyYAML only (no
torch, Hydra or Optuna).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepsc_tune.backends.command.deepsc._checkout import (
    CONFIG_FILE,
    FALLBACK_DEFAULTS,
    Findings,
    Problem,
    entry_module_problems,
    is_deepsc_command,
    load_deepsc_config,
    output_notes,
    unknown_keys,
)
from deepsc_tune.backends.command.deepsc._data import CellsError, deepsc_cells
from deepsc_tune.backends.command.deepsc._schedule import (
    SCHEDULE_CELLS,  # noqa: F401  (re-exported: DeepSC facts are read from here)
    _candidates,
    _num,
    planned_steps,
    real_step_findings,
    real_steps,
)
from deepsc_tune.errors import ConfigError

#: Scheduler types DeepSC accepts (anything else: ``Unknown lr_scheduler_type``).
SCHEDULER_TYPES = ("constant", "cosine")
#: Keys DeepSC's config has but its fine-tuner never reads (outputs go elsewhere).
UNREAD_OUTPUT_KEYS = ("ckpt_dir", "output_dir")

_T0_ERROR = "ValueError: Expected positive integer T_0"


@dataclass(frozen=True)
class Setting:
    """A DeepSC setting's effective value and where it comes from (a key or a config file)."""

    value: Any
    where: str


def effective_settings(
    config: Mapping[str, Any],
    *,
    overrides: Mapping[str, Any],
    fixed: Mapping[str, Any],
    source: str = str(CONFIG_FILE),
) -> dict[str, Setting]:
    """Top-level settings as DeepSC will see them: its config, then ``finetune.overrides``,
    then fixed ``finetune:`` keys (the order the command backend passes them)."""
    out = {k: Setting(v, f"{source}: {k}") for k, v in config.items()}
    out.update({k: Setting(v, f"finetune.overrides.{k}") for k, v in overrides.items()})
    out.update({k: Setting(v, f"finetune.{k}") for k, v in fixed.items()})
    return out


# ----------------------------------------------------------------------------- schedule


def total_steps(*, epoch: float, batch_size: float, grad_acc: float, world_size: float = 1) -> int:
    """Steps DeepSC's cosine schedule plans for:
    ``epoch * ceil(100000 / (batch_size * world_size * grad_acc))`` (cell_type_annotation.py:220);
    :func:`deepsc_tune.backends.command.deepsc._schedule.planned_steps`."""
    return planned_steps(epoch=epoch, batch_size=batch_size, grad_acc=grad_acc, world_size=world_size)


def _max_total_steps(
    settings: Mapping[str, Setting], search: Mapping[str, Any], *, n_train: int | None = None
) -> int | None:
    """The most steps a trial can have: DeepSC's planned ones, or real ones with ``n_train``
    (``None`` when a setting is not a number)."""
    ext: dict[str, float] = {}
    for name, pick in (("epoch", max), ("batch_size", min), ("grad_acc", min), ("num_device", min), ("num_nodes", min)):
        values = _candidates(name, settings, search)
        if values is None:
            values = [FALLBACK_DEFAULTS[name]]
        nums = [_num(v) for v in values]
        if any(n is None or n <= 0 for n in nums):
            return None
        ext[name] = pick(nums)
    world = ext["num_device"] * ext["num_nodes"]
    if n_train is not None:
        steps = real_steps(
            n_train,
            epoch=int(ext["epoch"]),
            batch_size=int(ext["batch_size"]),
            grad_acc=int(ext["grad_acc"]),
            world_size=int(world),
        )
        return steps  # 0: no optimizer step at all (real_step_findings says so)
    return total_steps(epoch=ext["epoch"], batch_size=ext["batch_size"], grad_acc=ext["grad_acc"], world_size=world)


def schedule_problems(
    settings: Mapping[str, Setting | Any],
    search: Mapping[str, Any],
    *,
    enqueue: Sequence[Mapping[str, Any]] = (),
    n_train: int | None = None,
) -> Findings:
    """Schedules DeepSC cannot run, and searched ``warmup_ratio`` ranges clipped so it can.

    DeepSC's cosine uses ``warmup_steps = ceil(total_steps * warmup_ratio)`` and a restart
    period ``T_0 = 3 * warmup_steps``: a ``warmup_ratio <= 0`` gives ``T_0 = 0`` and every such
    trial fails with ``ValueError: Expected positive integer T_0`` after its start-up.

    Parameters
    ----------
    settings
        ``{key: Setting}`` from :func:`effective_settings` (plain values are accepted too).
    search
        The searched parameters (``ParamSpec``-like: ``kind``, ``choices``, ``low``, ``high``,
        ``step``, ``grid``, ``when``).
    enqueue
        The study's enqueued configurations (``study.enqueue``).
    n_train
        The cells DeepSC trains on, when ``data_path`` could be read: ``warmup_ratio`` is then a
        fraction of the real run's optimizer steps, which are checked too
        (:func:`deepsc_tune.backends.command.deepsc._schedule.real_step_findings`).

    Returns
    -------
    Findings
        Problems for a fixed or enqueued cosine configuration with ``warmup_ratio <= 0``, for
        searched choices or grid values ``<= 0``, and for scheduler types other than constant
        and cosine. A searched range whose low end is ``<= 0`` is clipped instead, to the
        smallest ratio that gives one warmup step, ``1 / steps`` (real steps with ``n_train``,
        else DeepSC's planned ones; on the stepped grid when ``step`` is set), with a note;
        ``lows`` holds the new low end.
    """
    settings = {k: v if isinstance(v, Setting) else Setting(v, f"finetune.{k}") for k, v in settings.items()}
    out = Findings()
    why = (
        f"warmup_ratio <= 0 gives 0 warmup steps with cosine, and DeepSC then fails every such "
        f"trial with {_T0_ERROR} after its start-up"
    )

    lr_spec = search.get("lr_scheduler_type")
    if lr_spec is not None:
        lr_values = list(lr_spec.choices or ()) if lr_spec.kind == "categorical" else []
        lr_where = "search.lr_scheduler_type"
    else:
        lr = settings.get("lr_scheduler_type", Setting(FALLBACK_DEFAULTS["lr_scheduler_type"], "default"))
        lr_values, lr_where = [lr.value], lr.where
    bad = [v for v in lr_values if v not in SCHEDULER_TYPES]
    if bad:
        out.problems.append(
            Problem(
                lr_where,
                (
                    f"{bad[0]!r}: DeepSC accepts only {' or '.join(SCHEDULER_TYPES)} (any other value fails "
                    "with Unknown lr_scheduler_type after its start-up)"
                ),
            )
        )
    cosine = "cosine" in lr_values

    spec = search.get("warmup_ratio")
    if spec is not None:
        when = spec.when.get("lr_scheduler_type") if spec.when else None
        if cosine and (when is None or "cosine" in when):
            _check_warmup_range(spec, settings, search, why, out, n_train=n_train)
    else:
        w = settings.get("warmup_ratio")
        if cosine and w is not None and _num(w.value) is not None and _num(w.value) <= 0:
            out.problems.append(
                Problem(
                    w.where, f"{w.value!r} with lr_scheduler_type cosine: {why}; expected a warmup_ratio > 0, e.g. 0.03"
                )
            )
    if n_train is not None:
        applies = spec is None or not spec.when or "cosine" in spec.when.get("lr_scheduler_type", ("cosine",))
        out.add(real_step_findings(settings, search, n_train=n_train, cosine=cosine and applies, enqueue=enqueue))
    fixed_lr = None if lr_spec is not None else lr_values[0]
    fixed_w = settings.get("warmup_ratio") if spec is None else None
    for i, entry in enumerate(enqueue):
        lr = entry.get("lr_scheduler_type", fixed_lr)
        w = entry.get("warmup_ratio", None if fixed_w is None else fixed_w.value)
        if lr == "cosine" and _num(w) is not None and _num(w) <= 0:
            key = "warmup_ratio" if "warmup_ratio" in entry else "lr_scheduler_type"
            out.problems.append(
                Problem(
                    f"study.enqueue[{i}].{key}",
                    (f"cosine with warmup_ratio {w!r}: {why}; expected a warmup_ratio > 0, e.g. 0.03"),
                )
            )
    return out


def _check_warmup_range(
    spec: Any,
    settings: Mapping[str, Setting],
    search: Mapping[str, Any],
    why: str,
    out: Findings,
    *,
    n_train: int | None = None,
) -> None:
    where = "search.warmup_ratio"
    explicit = [("choices", spec.choices or ())] if spec.kind == "categorical" else []
    explicit.append(("grid", spec.grid or ()))
    for key, values in explicit:
        bad = [v for v in values if _num(v) is None or _num(v) <= 0]
        if bad:
            out.problems.append(Problem(f"{where}.{key}", f"{bad[0]!r}: {why}; expected values > 0"))
    if spec.kind == "categorical" or spec.low > 0:
        return
    total = _max_total_steps(settings, search, n_train=n_train)
    if total == 0:
        return  # the run never steps the optimizer: a problem of its own
    if total is None:
        out.problems.append(
            Problem(
                f"{where}.low",
                (
                    f"{spec.low!r}: {why}; expected low > 0 (epoch, batch_size or grad_acc is not a "
                    "number here, so deepsc-tune cannot clip the range itself)"
                ),
            )
        )
        return
    new_low = 1.0 / total
    if spec.step:
        new_low = spec.low + math.ceil(round((new_low - spec.low) / spec.step, 9)) * spec.step
    if n_train is not None and spec.kind != "int" and new_low > spec.high > 0:
        # Every value of (0, high] gives 1 warmup step of the real run: the range is one setting.
        out.lows["warmup_ratio"] = spec.high
        out.notes.append(
            f"search.warmup_ratio: low end {spec.low:g} clipped to the high end {spec.high:g}: every "
            f"warmup_ratio of the range gives 1 warmup step of the run's at most {total} real optimizer "
            f"steps ({n_train} training cells), so the range is one setting; widen it or train longer"
        )
        return
    if spec.kind == "int" or new_low > spec.high:
        out.problems.append(
            Problem(
                f"{where}.low",
                (
                    f"{spec.low!r}: {why}, and no value of [{spec.low}, {spec.high}] gives a warmup step; "
                    f"expected low >= {1.0 / total:.3g}"
                ),
            )
        )
        return
    out.lows["warmup_ratio"] = new_low
    if n_train is not None:
        steps = f"the run has at most {total} real optimizer steps here ({n_train} training cells)"
    else:
        steps = (
            "DeepSC's cosine plans epoch x ceil(100000 / (batch_size x num_device x grad_acc)) = "
            f"{total} steps here at most"
        )
    out.notes.append(
        f"search.warmup_ratio: low end {spec.low:g} clipped to {new_low:.4g}, the smallest ratio "
        f"that gives 1 warmup step ({why}; {steps})"
    )


def device_problems(settings: Mapping[str, Setting | Any], search: Mapping[str, Any]) -> list[Problem]:
    """``num_device`` or ``num_nodes`` other than 1 (fixed, override or searched): deepsc-tune
    gives each trial one GPU (``CUDA_VISIBLE_DEVICES``); parallel trials are ``run --gpus``."""
    problems = []
    for name in ("num_device", "num_nodes"):
        if name in search:
            problems.append(
                Problem(
                    f"search.{name}",
                    (
                        "cannot be searched: each trial runs on one GPU; expected a fixed "
                        f"{name}: 1 and trials in parallel with deepsc-tune run NAME --gpus 0,1,..."
                    ),
                )
            )
            continue
        s = settings.get(name)
        if s is None:
            continue
        value = s.value if isinstance(s, Setting) else s
        where = s.where if isinstance(s, Setting) else f"finetune.{name}"
        if _num(value) != 1:
            problems.append(
                Problem(
                    where,
                    (
                        f"{value!r}: each trial runs on one GPU (with several, DeepSC's printed metrics "
                        f"cover one shard only); expected {name}: 1, and trials in parallel with "
                        "deepsc-tune run NAME --gpus 0,1,..."
                    ),
                )
            )
    return problems


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.strip().lower() == "true")


def input_problems(settings: Mapping[str, Setting | Any]) -> list[Problem]:
    """Inputs DeepSC would fail on (after its start-up) or silently ignore.

    - ``data_path_eval`` set while ``seperated_train_eval_dataset`` (sic) is false, DeepSC's
      default: it then ignores the file and evaluates on 20 % of ``data_path`` it splits off
      itself, so the study would not select on the validation file;
    - absolute paths that do not exist: ``data_path``, ``data_path_eval`` (when read),
      ``csv_path`` (the gene map) and ``pretrained_model_path`` (when
      ``load_pretrained_model`` is true). DeepSC's defaults point at its authors' machine.
      Relative paths are left to the command backend, which resolves them.
    """
    settings = {k: v if isinstance(v, Setting) else Setting(v, f"finetune.{k}") for k, v in settings.items()}
    problems = []
    separated = _truthy(getattr(settings.get("seperated_train_eval_dataset"), "value", False))
    eval_path = settings.get("data_path_eval")
    if not separated and eval_path is not None and eval_path.where.startswith("finetune"):
        problems.append(
            Problem(
                eval_path.where,
                (
                    f"{eval_path.value!r} is ignored: seperated_train_eval_dataset is false (DeepSC's "
                    "default), so DeepSC evaluates on 20 % of data_path it splits off itself; expected "
                    "seperated_train_eval_dataset: true in finetune.overrides"
                ),
            )
        )
    checks = {
        "data_path": "the training .h5ad (deepsc-tune split writes it)",
        "csv_path": "DeepSC's gene map (CSV feature_name,id; not in DeepSC's repository)",
    }
    if separated:
        checks["data_path_eval"] = "the validation .h5ad (deepsc-tune split writes it)"
    if _truthy(getattr(settings.get("load_pretrained_model"), "value", False)):
        checks["pretrained_model_path"] = (
            "your pretrained checkpoint, or load_pretrained_model: false for a random-init model"
        )
    for key, expected in checks.items():
        s = settings.get(key)
        if s is None or not isinstance(s.value, str) or not os.path.isabs(os.path.expanduser(s.value)):
            continue
        if os.path.exists(os.path.expanduser(s.value)):
            continue
        if s.where.startswith("finetune"):
            problems.append(
                Problem(
                    s.where,
                    f"{s.value!r}: no such file, so every trial would fail after its start-up; expected {expected}",
                )
            )
        else:  # DeepSC's own default
            problems.append(
                Problem(
                    f"finetune.overrides.{key}",
                    (
                        f"not set, and DeepSC's default {s.value!r} ({s.where.split(':')[0]}) does not "
                        f"exist, so every trial would fail after its start-up; expected {expected}"
                    ),
                )
            )
    return problems


# ----------------------------------------------------------------------------- all at once


def check_command_space(
    *,
    cwd: Path | str,
    command: Sequence[str],
    overrides: Mapping[str, Any],
    fixed: Mapping[str, Any],
    new_keys: Iterable[str],
    search: Mapping[str, Any],
    enqueue: Sequence[Mapping[str, Any]] = (),
    run_dir_override: str | None = None,
) -> Findings:
    """Every check of this module for a command-backend space that runs DeepSC.

    Arguments are the ``finetune:`` block as :class:`~deepsc_tune.backends.command._finetuner.CommandSettings`
    reads it (``fixed``: its other keys), the ``search`` parameters and ``study.enqueue``.
    Empty findings when ``command`` is not DeepSC. Without a readable config the key check is
    replaced by one problem naming the file, and the schedule is checked on 2416d85's defaults.
    """
    out = Findings()
    if not is_deepsc_command(command):
        return out
    cwd = Path(cwd)
    out.problems.extend(entry_module_problems(cwd, command))
    try:
        config = load_deepsc_config(cwd)
    except ConfigError as e:
        if (cwd / "src" / "deepsc").is_dir():  # else entry_module_problems said it already
            out.problems.append(Problem("finetune.cwd", f"{e}; expected DeepSC's Hydra config there"))
        config = dict(FALLBACK_DEFAULTS)
    else:
        keys = {k: f"finetune.overrides.{k}" for k in overrides}
        keys.update({k: f"finetune.{k}" for k in fixed})
        keys.update({k: f"search.{k}" for k in search})
        if run_dir_override:
            keys.setdefault(run_dir_override, "finetune.run_dir_override")
        out.problems.extend(unknown_keys(config, keys, new_keys, source=str(cwd / CONFIG_FILE)))
    settings = effective_settings(config, overrides=overrides, fixed=fixed)
    inputs = input_problems(settings)
    n_train = None
    if not inputs:
        try:
            cells = deepsc_cells(settings)
        except CellsError as e:
            inputs.append(Problem(e.key, e.detail))
        else:
            n_train = None if cells is None else cells.n_train
    out.add(schedule_problems(settings, search, enqueue=enqueue, n_train=n_train))
    out.problems.extend(device_problems(settings, search))
    out.problems.extend(inputs)
    out.add(output_notes(cwd, run_dir_override=run_dir_override, config=config))
    for key in UNREAD_OUTPUT_KEYS:
        for where, given in (("finetune.overrides", overrides), ("finetune", fixed)):
            if key in given:
                out.notes.append(
                    f"{where}.{key}: DeepSC never reads {key}; its outputs go to the folder above (remove the key)"
                )
    return out
