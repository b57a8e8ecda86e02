"""What deepsc-tune knows about a DeepSC checkout, checked before any trial starts.

DeepSC's fine-tuner takes ~30 s to import and load data before it reads its config, so a
wrong key, an impossible schedule or an unwritable output folder found here saves that much
per failed trial (and a study's worth of failed trials). Facts are those of DeepSC at commit
``2416d85``, the last commit whose cell-type fine-tuner deepsc-tune supports; they are read
from the checkout itself where it can be done without running it (config files, the
output folder in its source).

Functions return findings, never raise for them: :class:`Problem` (the key of the
search-space file, what is wrong, what is expected and the fix) and notes (plain lines), so
``deepsc-tune validate`` lists everything at once. This module imports PyYAML only (no
torch, Hydra or Optuna).
"""

from __future__ import annotations

import difflib
import getpass
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepsc_tune.errors import ConfigError
from deepsc_tune.schema import Problem

#: Entry modules of DeepSC's cell-type fine-tuner at 2416d85 (root on ``PYTHONPATH``, or
#: ``PYTHONPATH=src`` as DeepSC's own scripts launch it with torchrun).
DEEPSC_MODULES = ("src.deepsc.finetune.finetune", "deepsc.finetune.finetune")
#: The entry point of later commits (``b3348a3``), recognised so it can be refused clearly.
RUN_CTA_MODULES = ("src.deepsc.finetune.run_cta", "deepsc.finetune.run_cta")
#: The DeepSC commit deepsc-tune supports and tests against.
SUPPORTED_COMMIT = "2416d85"
ENTRY_FILE = Path("src/deepsc/finetune/finetune.py")
RUN_CTA_FILE = Path("src/deepsc/finetune/run_cta.py")
TRAINER_FILE = Path("src/deepsc/finetune/cell_type_annotation.py")
CONFIG_DIR = Path("configs/finetune")
CONFIG_FILE = CONFIG_DIR / "finetune.yaml"
#: DeepSC's cosine schedule counts steps for this many cells, whatever the data's size.
SCHEDULE_CELLS = 100_000
#: Scheduler types DeepSC accepts (anything else: ``Unknown lr_scheduler_type``).
SCHEDULER_TYPES = ("constant", "cosine")
#: 2416d85's values, used when the checkout's config cannot be read.
FALLBACK_DEFAULTS = {
    "epoch": 10,
    "batch_size": 32,
    "grad_acc": 20,
    "num_device": 1,
    "num_nodes": 1,
    "lr_scheduler_type": "constant",
    "warmup_ratio": 0.03,
}
#: Keys DeepSC's config has but its fine-tuner never reads (outputs go elsewhere).
UNREAD_OUTPUT_KEYS = ("ckpt_dir", "output_dir")

_BASE_DIR = re.compile(r"^[ \t]*base_dir\s*=\s*(?P<q>[\"'])(?P<path>[^\"'\n]+)(?P=q)", re.MULTILINE)
_T0_ERROR = "ValueError: Expected positive integer T_0"


@dataclass(frozen=True)
class Setting:
    """A DeepSC setting's effective value and where it comes from (a key or a config file)."""

    value: Any
    where: str


@dataclass
class Findings:
    """Problems (refuse), notes (print) and searched ranges whose low end must move up."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: ``{param: new_low}``: the search range is clipped there (see :func:`schedule_problems`).
    lows: dict[str, float] = field(default_factory=dict)

    def add(self, other: Findings) -> Findings:
        """Append ``other``'s findings to these; returns ``self``."""
        self.problems.extend(other.problems)
        self.notes.extend(other.notes)
        self.lows.update(other.lows)
        return self


# ----------------------------------------------------------------------------- entry point


def entry_module(command: Sequence[str]) -> str | None:
    """The Python module a command runs (``python -m M``, ``torchrun ... -m M``, or a
    ``.../deepsc/finetune/X.py`` script as a dotted name), or ``None``."""
    args = [str(a) for a in command]
    found: list[str] = []
    for i, arg in enumerate(args):
        if arg in ("-m", "--module") and i + 1 < len(args) and not args[i + 1].startswith("-"):
            found.append(args[i + 1])
        elif arg.startswith("-m") and len(arg) > 2 and not arg.startswith("--"):
            found.append(arg[2:])
        elif arg.endswith(".py") and "deepsc/finetune/" in arg.replace(os.sep, "/"):
            parts = Path(arg[:-3]).parts
            start = parts.index("src") if "src" in parts else parts.index("deepsc")
            found.append(".".join(parts[start:]))
    # python -m torch.distributed.run ... -m deepsc.finetune.finetune: the launcher comes first.
    known = [m for m in found if m in (*DEEPSC_MODULES, *RUN_CTA_MODULES)]
    return (known or found or [None])[0]


def is_deepsc_command(command: Sequence[str]) -> bool:
    """Whether ``command`` runs DeepSC's cell-type fine-tuner (``src.deepsc.finetune.finetune``
    or ``deepsc.finetune.finetune``, with python or torchrun; also the later ``run_cta``)."""
    return entry_module(command) in (*DEEPSC_MODULES, *RUN_CTA_MODULES)


def _module_file(cwd: Path, module: str) -> Path:
    parts = module.split(".")
    if parts[0] != "src":
        parts = ["src", *parts]
    return cwd.joinpath(*parts[:-1], parts[-1] + ".py")


def entry_module_problems(cwd: Path | str, command: Sequence[str]) -> list[Problem]:
    """Whether the entry module's file exists under ``cwd`` (the checkout), and if not, what
    was found instead and how to fix it. Empty for commands that are not DeepSC."""
    module = entry_module(command)
    if module not in (*DEEPSC_MODULES, *RUN_CTA_MODULES):
        return []
    cwd = Path(cwd)
    fix = f"check out {SUPPORTED_COMMIT} (git -C {cwd} checkout {SUPPORTED_COMMIT}) and run -m {DEEPSC_MODULES[0]}"
    if not (cwd / "src" / "deepsc").is_dir():
        return [
            Problem(
                "finetune.cwd",
                f"{str(cwd)!r} is not a DeepSC checkout (no src/deepsc/); "
                f"expected the root of a clone of MouYongli/DeepSC at {SUPPORTED_COMMIT}",
            )
        ]
    found = _module_file(cwd, module)
    if module in RUN_CTA_MODULES:
        if found.is_file():
            return [
                Problem(
                    "finetune.command",
                    f"runs {module} ({RUN_CTA_FILE}, the entry point "
                    f"of DeepSC after cc84b98, e.g. b3348a3), which deepsc-tune does not support "
                    f"or test; {fix}",
                )
            ]
    elif found.is_file():
        return []
    has_cta = (cwd / RUN_CTA_FILE).is_file()
    has_trainer = (cwd / TRAINER_FILE).is_file()
    if has_cta and has_trainer:
        instead = (
            f"found {RUN_CTA_FILE} instead (a checkout after cc84b98, like b3348a3): a "
            "different entry point, not supported or tested by deepsc-tune"
        )
    elif has_cta:
        instead = (
            f"found {RUN_CTA_FILE} but not {TRAINER_FILE.name}, which it imports: DeepSC's "
            "newest commits (2227f88) cannot run cell-type fine-tuning at all"
        )
    else:
        instead = (
            f"found neither it nor {RUN_CTA_FILE.name}: this checkout has no cell-type "
            "fine-tuning (DeepSC's newest commit, 2227f88, cannot run it)"
        )
    return [
        Problem(
            "finetune.command",
            f"runs {module}, but {found.relative_to(cwd)} does not exist under {cwd}; {instead}; {fix}",
        )
    ]


# ----------------------------------------------------------------------------- config


def load_deepsc_config(cwd: Path | str) -> dict[str, Any]:
    """DeepSC's fine-tuning config: ``configs/finetune/finetune.yaml`` merged with the groups of
    its ``defaults`` list (``model: deepsc`` -> ``configs/finetune/model/deepsc.yaml`` under
    ``model``), in Hydra's order (``_self_`` last unless listed). Interpolations such as
    ``${num_bin}`` are left as text; PyYAML reads ``4e-4`` as text too.

    Raises
    ------
    ConfigError
        A config file is missing or is not a YAML mapping (naming the file).
    """
    folder = Path(cwd) / CONFIG_DIR
    primary = _read_mapping(folder / "finetune.yaml")
    defaults = primary.pop("defaults", None) or []
    if "_self_" not in defaults:
        defaults = [*defaults, "_self_"]
    merged: dict[str, Any] = {}
    for entry in defaults:
        if entry == "_self_":
            _merge(merged, primary)
        elif isinstance(entry, str):
            _merge(merged, _read_mapping(folder / f"{entry}.yaml"))
        elif isinstance(entry, Mapping):
            for group, option in entry.items():
                group = str(group).removeprefix("optional ").strip()
                if option is None or group.startswith(("hydra", "override ")):
                    continue
                layer: dict[str, Any] = _read_mapping(folder / group / f"{option}.yaml")
                for part in reversed(group.split("/")):
                    layer = {part: layer}
                _merge(merged, layer)
    return merged


def _read_mapping(path: Path) -> dict[str, Any]:
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"{path}: cannot read DeepSC's config: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: malformed YAML: {str(e).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a YAML mapping, got {type(raw).__name__}")
    return raw


def _merge(into: dict[str, Any], layer: Mapping[str, Any]) -> None:
    for key, value in layer.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = dict(value) if isinstance(value, Mapping) else value


def _dotted(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key, value in config.items():
        name = f"{prefix}{key}"
        out.append(name)
        if isinstance(value, Mapping):
            out.extend(_dotted(value, name + "."))
    return out


def _has_key(config: Mapping[str, Any], key: str) -> bool:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def unknown_keys(
    config: Mapping[str, Any],
    keys: Mapping[str, str] | Iterable[str],
    new_keys: Iterable[str] = (),
    *,
    source: str = str(CONFIG_FILE),
) -> list[Problem]:
    """Keys Hydra would reject: not in ``config``, not ``+``-prefixed, not in ``new_keys``.

    Parameters
    ----------
    config
        From :func:`load_deepsc_config`.
    keys
        DeepSC keys (dotted: ``model.num_layers``) to pass, or ``{key: where}`` with where each
        is written in the search-space file (``finetune.overrides.data_pth``).
    new_keys
        Keys the user declared new to the config (passed as ``+key=value``).
    source
        The config's name in messages.

    Returns
    -------
    list[Problem]
        One per unknown key, with a did-you-mean when a known key is close. ``hydra.*`` keys
        (deepsc-tune passes ``hydra.run.dir``) and config-group paths (``a/b``) are not checked.
    """
    where = dict(keys) if isinstance(keys, Mapping) else {k: k for k in keys}
    new = {k.lstrip("+") for k in new_keys}
    known = _dotted(config)
    problems = []
    for key, place in where.items():
        if key.startswith("+") or key in new or key.split(".")[0] == "hydra" or "/" in key or "@" in key:
            continue
        if _has_key(config, key):
            continue
        leaf = [k for k in known if k.endswith("." + key)]
        close = leaf[:1] or difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}? " if close else ""
        problems.append(
            Problem(
                place,
                (
                    f"{key!r} is not a key of DeepSC's config ({source}), so Hydra would refuse it "
                    f"(\"Could not override '{key}'\") in every trial; {hint}a key new to the config "
                    "goes in finetune.new_keys (passed as +key=value)"
                ),
            )
        )
    return problems


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


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


def _candidates(name: str, settings: Mapping[str, Setting], search: Mapping[str, Any]) -> list[Any] | None:
    """Values a setting can take: a searched entry's choices/grid/ends, else the fixed value."""
    spec = search.get(name)
    if spec is None:
        setting = settings.get(name)
        return None if setting is None else [setting.value]
    values = list(spec.choices or ()) if spec.kind == "categorical" else [spec.low, spec.high]
    return values + list(spec.grid or ())


def total_steps(*, epoch: float, batch_size: float, grad_acc: float, world_size: float = 1) -> int:
    """Steps DeepSC's cosine schedule plans for:
    ``epoch * ceil(100000 / (batch_size * world_size * grad_acc))`` (cell_type_annotation.py)."""
    return int(epoch) * math.ceil(SCHEDULE_CELLS / (batch_size * world_size * grad_acc))


def _max_total_steps(settings: Mapping[str, Setting], search: Mapping[str, Any]) -> int | None:
    ext: dict[str, float] = {}
    for name, pick in (("epoch", max), ("batch_size", min), ("grad_acc", min), ("num_device", min), ("num_nodes", min)):
        values = _candidates(name, settings, search)
        if values is None:
            values = [FALLBACK_DEFAULTS[name]]
        nums = [_num(v) for v in values]
        if any(n is None or n <= 0 for n in nums):
            return None
        ext[name] = pick(nums)
    return total_steps(
        epoch=ext["epoch"],
        batch_size=ext["batch_size"],
        grad_acc=ext["grad_acc"],
        world_size=ext["num_device"] * ext["num_nodes"],
    )


def schedule_problems(
    settings: Mapping[str, Setting | Any],
    search: Mapping[str, Any],
    *,
    enqueue: Sequence[Mapping[str, Any]] = (),
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

    Returns
    -------
    Findings
        Problems for a fixed or enqueued cosine configuration with ``warmup_ratio <= 0``, for
        searched choices or grid values ``<= 0``, and for scheduler types other than constant
        and cosine. A searched range whose low end is ``<= 0`` is clipped instead, to the
        smallest ratio that gives one warmup step, ``1 / total_steps`` (on the stepped grid
        when ``step`` is set), with a note; ``lows`` holds the new low end.
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
            _check_warmup_range(spec, settings, search, why, out)
    else:
        w = settings.get("warmup_ratio")
        if cosine and w is not None and _num(w.value) is not None and _num(w.value) <= 0:
            out.problems.append(
                Problem(
                    w.where, f"{w.value!r} with lr_scheduler_type cosine: {why}; expected a warmup_ratio > 0, e.g. 0.03"
                )
            )
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
    spec: Any, settings: Mapping[str, Setting], search: Mapping[str, Any], why: str, out: Findings
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
    total = _max_total_steps(settings, search)
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
    out.notes.append(
        f"search.warmup_ratio: low end {spec.low:g} clipped to {new_low:.4g}, the smallest ratio "
        f"that gives 1 warmup step ({why}; DeepSC's cosine plans epoch x ceil(100000 / "
        f"(batch_size x num_device x grad_acc)) = {total} steps here at most)"
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


# ----------------------------------------------------------------------------- outputs


def output_notes(cwd: Path | str) -> Findings:
    """Where DeepSC itself writes checkpoints, logs and plots, and whether it can.

    At 2416d85 ``CellTypeAnnotation.setup_output_directory`` (cell_type_annotation.py:70)
    writes under a hard-coded folder plus a ``%Y%m%d_%H%M%S`` timestamp; the folder is read
    from the checkout's source, so a patched line is reported as it is.

    Returns
    -------
    Findings
        Notes (the folder, two full checkpoints per epoch, trials starting in the same second
        sharing a folder, ``ckpt_dir``/``output_dir`` never read) and a problem when the folder
        cannot be created or written by the current user (every trial would then fail with
        PermissionError), with the fix.
    """
    cwd = Path(cwd)
    path = cwd / TRAINER_FILE
    out = Findings()
    try:
        source = path.read_text(errors="replace")
    except OSError:
        return out  # no trainer: entry_module_problems says what the checkout lacks
    match = _BASE_DIR.search(source)
    if match is None:
        out.notes.append(
            f'could not find DeepSC\'s output folder (base_dir = "...") in {path}: '
            "check where setup_output_directory writes its checkpoints"
        )
        return out
    base = match.group("path")
    line = source.count("\n", 0, match.start()) + 1
    where = f"{TRAINER_FILE}:{line}"
    if not os.path.isabs(base):
        out.notes.append(
            f"DeepSC writes checkpoints, logs and plots to {base}/<YYYYmmdd_HHMMSS>/ "
            f"({where}), relative to the directory it runs in"
        )
    else:
        out.notes.append(
            f"DeepSC writes each trial's checkpoints, logs and plots to "
            f"{base}/<YYYYmmdd_HHMMSS>/ (hard-coded at {where}), not to the trial's "
            f"folder; its ckpt_dir and output_dir settings are never read"
        )
    out.notes.append(
        "every epoch DeepSC saves two full checkpoints (model + optimizer state): "
        "epoch_N.ckpt, kept, and latest_checkpoint.ckpt, overwritten; a trial of E "
        "epochs leaves E + 1 on disk and nothing deletes them: plan disk space and "
        f"clear {base} between studies"
    )
    out.notes.append(
        "two trials that start in the same second (parallel workers, run --gpus) "
        "share one timestamped folder and overwrite each other's checkpoints"
    )
    if os.path.isabs(base):
        blocked = _unwritable(Path(base))
        if blocked:
            out.problems.append(
                Problem(
                    "finetune.cwd",
                    (
                        f"DeepSC ({cwd / where}) writes to {base}, which user {_user()} cannot create or "
                        f"write ({blocked}), so every trial would fail with PermissionError; create it "
                        f"writable (mkdir -p {base}, owned by you) or change that line in the checkout "
                        "to a folder you own"
                    ),
                )
            )
    return out


def _unwritable(folder: Path) -> str | None:
    """Why ``os.makedirs(folder)`` and writing in it would fail, or ``None``."""
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"{probe} is not writable"
    return None


def _user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # pragma: no cover - no passwd entry
        return str(os.getuid())


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

    Arguments are the ``finetune:`` block as :class:`~deepsc_tune.command.CommandSettings`
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
    out.add(schedule_problems(settings, search, enqueue=enqueue))
    out.problems.extend(device_problems(settings, search))
    out.problems.extend(input_problems(settings))
    out.add(output_notes(cwd))
    for key in UNREAD_OUTPUT_KEYS:
        for where, given in (("finetune.overrides", overrides), ("finetune", fixed)):
            if key in given:
                out.notes.append(
                    f"{where}.{key}: DeepSC never reads {key}; its outputs go to the folder above (remove the key)"
                )
    return out
