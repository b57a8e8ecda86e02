"""A DeepSC checkout as deepsc-tune reads it without running it: entry module, Hydra config, output folder.

Facts are those of DeepSC at commit ``2416d85``, the last commit whose cell-type fine-tuner
deepsc-tune supports; they are read from the checkout itself where it can be done without
running it (config files, the output folder in its source). Functions return findings, never
raise for them: :class:`Problem` (the key of the search-space file, what is wrong, what is
expected and the fix) and notes (plain lines). The checks of a search space that build on
these are in :mod:`deepsc_tune.deepsc`. This module imports PyYAML only (no torch, Hydra or
Optuna).
"""

from __future__ import annotations

import difflib
import getpass
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

_BASE_DIR = re.compile(r"^[ \t]*base_dir\s*=\s*(?P<q>[\"'])(?P<path>[^\"'\n]+)(?P=q)", re.MULTILINE)


@dataclass
class Findings:
    """Problems (refuse), notes (print) and searched ranges whose ends must move in."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: ``{param: new_low}``: the search range is clipped there (see :func:`deepsc_tune.deepsc.schedule_problems`).
    lows: dict[str, float] = field(default_factory=dict)
    #: ``{param: new_high}``: the search range is clipped there (see
    #: :func:`deepsc_tune.deepsc_schedule.real_step_findings`).
    highs: dict[str, float] = field(default_factory=dict)

    def add(self, other: Findings) -> Findings:
        """Append ``other``'s findings to these; returns ``self``."""
        self.problems.extend(other.problems)
        self.notes.extend(other.notes)
        self.lows.update(other.lows)
        self.highs.update(other.highs)
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
        "epochs leaves E + 1; deepsc-tune removes those of trials that cannot be the best "
        "(finetune.keep_checkpoints: best, the default; all keeps every one)"
    )
    out.notes.append(
        "two trials that start in the same second (parallel workers, run --gpus) "
        "share one timestamped folder and overwrite each other's checkpoints"
    )
    if os.path.isabs(base) and (owner := _other_users_home(Path(base))) is not None:
        out.notes.append(
            f"DeepSC would write every trial's checkpoints under another user's home: {base} "
            f"(home of {owner!r}, hard-coded at {cwd / where}); you can write there only as root or "
            f"if that folder is shared. Change that line to a folder you own, or check out abcf2be, "
            "which writes into each trial's own folder"
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


def _other_users_home(folder: Path) -> str | None:
    """The user whose home ``folder`` is under (``/home/NAME/...``, ``/Users/NAME/...``), when it is
    not the current user's; ``None`` otherwise."""
    parts = folder.parts
    if len(parts) < 3 or parts[1] not in ("home", "Users"):
        return None
    owner = parts[2]
    mine = Path.home().resolve()
    if owner == _user() or folder.resolve().is_relative_to(mine):
        return None
    return owner


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
