"""A DeepSC checkout as deepsc-tune reads it without running it: Hydra config, output folder.

Which commit a checkout is and its entry module are in :mod:`deepsc_tune.backends.command.deepsc._commits`
(re-exported here); this module reads the checkout's own Hydra config and where its trainer
writes: a hard-coded folder plus a timestamp at ``2416d85`` (read from its source), Hydra's run
directory at ``abcf2be``. Functions return findings, never raise for them: :class:`Problem`
(the key of the search-space file, what is wrong, what is expected and the fix) and notes
(plain lines). The checks of a search space that build on these are in
:mod:`deepsc_tune.backends.command.deepsc._space`. This module imports PyYAML only (no torch, Hydra or Optuna).
"""

from __future__ import annotations

import difflib
import getpass
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from deepsc_tune.backends.command.deepsc._commits import (
    COMMITS,
    DEEPSC_MODULES,
    ENTRY_FILE,
    HYDRA_RUN_DIR,
    RUN_CTA_FILE,
    RUN_CTA_MODULES,
    TRAINER_FILE,
    detect_commit,
    entry_module,
    entry_module_problems,
    is_deepsc_command,
)
from deepsc_tune.errors import ConfigError
from deepsc_tune.utils import Problem

CONFIG_DIR = Path("configs/finetune")
CONFIG_FILE = CONFIG_DIR / "finetune.yaml"

_BASE_DIR = re.compile(r"^[ \t]*base_dir\s*=\s*(?P<q>[\"'])(?P<path>[^\"'\n]+)(?P=q)", re.MULTILINE)


@dataclass
class Findings:
    """Problems (refuse), notes (print) and searched ranges whose ends must move in."""

    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    #: ``{param: new_low}``: the search range is clipped there (see :func:`deepsc_tune.backends.command.deepsc._space.schedule_problems`).
    lows: dict[str, float] = field(default_factory=dict)
    #: ``{param: new_high}``: the search range is clipped there (see
    #: :func:`deepsc_tune.backends.command.deepsc._schedule.real_step_findings`).
    highs: dict[str, float] = field(default_factory=dict)

    def add(self, other: Findings) -> Findings:
        """Append ``other``'s findings to these; returns ``self``."""
        self.problems.extend(other.problems)
        self.notes.extend(other.notes)
        self.lows.update(other.lows)
        self.highs.update(other.highs)
        return self


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


def timestamped_base(cwd: Path | str) -> tuple[str, str] | None:
    """``(folder, "file:line")`` of the hard-coded ``base_dir`` under which a 2416d85-style
    trainer makes one ``%Y%m%d_%H%M%S`` folder per run; ``None`` when the checkout's trainer has
    no such line (abcf2be writes into Hydra's run directory) or cannot be read."""
    try:
        source = (Path(cwd) / TRAINER_FILE).read_text(errors="replace")
    except OSError:
        return None
    match = _BASE_DIR.search(source)
    if match is None:
        return None
    return match.group("path"), f"{TRAINER_FILE}:{source.count(chr(10), 0, match.start()) + 1}"


def _checkpoint_note() -> str:
    return (
        "every epoch DeepSC saves two full checkpoints (model + optimizer state): "
        "epoch_N.ckpt, kept, and latest_checkpoint.ckpt, overwritten; a trial of E "
        "epochs leaves E + 1; deepsc-tune removes those of trials that cannot be the best "
        "(finetune.keep_checkpoints: best, the default; all keeps every one)"
    )


def output_notes(
    cwd: Path | str, *, run_dir_override: str | None = "hydra.run.dir", config: Mapping[str, Any] | None = None
) -> Findings:
    """Where DeepSC itself writes checkpoints, logs and plots, and whether it can.

    At 2416d85 ``CellTypeAnnotation.setup_output_directory`` (cell_type_annotation.py:70)
    writes under a hard-coded folder plus a ``%Y%m%d_%H%M%S`` timestamp; the folder is read
    from the checkout's source, so a patched line is reported as it is. At abcf2be it writes
    into Hydra's run directory: the trial's folder when deepsc-tune passes ``hydra.run.dir``
    (``run_dir_override``, the default), else the config's own ``hydra.run.dir``.

    Returns
    -------
    Findings
        Notes (the folder, two full checkpoints per epoch, how parallel trials are kept apart,
        ``ckpt_dir``/``output_dir`` never read) and a problem when the folder cannot be created
        or written by the current user (every trial would then fail with PermissionError), with
        the fix.
    """
    cwd = Path(cwd)
    commit = detect_commit(cwd)
    if commit is not None and commit.outputs == HYDRA_RUN_DIR:
        return _hydra_output_notes(cwd, commit.name, run_dir_override, config)
    out = Findings()
    found = timestamped_base(cwd)
    if found is None:
        if (cwd / TRAINER_FILE).is_file():
            out.notes.append(
                f'could not find DeepSC\'s output folder (base_dir = "...") in {cwd / TRAINER_FILE}: '
                "check where setup_output_directory writes its checkpoints"
            )
        return out  # no trainer: entry_module_problems says what the checkout lacks
    base, where = found
    if not os.path.isabs(base):
        out.notes.append(
            f"DeepSC writes checkpoints, logs and plots to {base}/<YYYYmmdd_HHMMSS>/ "
            f"({where}), relative to the directory it runs in (the trial's folder)"
        )
    else:
        out.notes.append(
            f"DeepSC writes each trial's checkpoints, logs and plots to "
            f"{base}/<YYYYmmdd_HHMMSS>/ (hard-coded at {where}), not to the trial's "
            f"folder; its ckpt_dir and output_dir settings are never read"
        )
        out.notes.append(
            "trials run at the same time (run --workers/--gpus) would share that folder if they "
            "started in the same second: deepsc-tune starts them one at a time on this machine, each "
            "after the one before has named its folder, and fails a trial whose folder another trial "
            "already uses (DeepSC abcf2be writes into each trial's own folder instead)"
        )
    out.notes.append(_checkpoint_note())
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
                        "to a folder you own, or check out abcf2be, which writes into each trial's folder"
                    ),
                )
            )
    return out


def _hydra_output_notes(
    cwd: Path, commit: str, run_dir_override: str | None, config: Mapping[str, Any] | None
) -> Findings:
    out = Findings()
    if config is None:
        try:
            config = load_deepsc_config(cwd)
        except ConfigError:
            config = {}
    node: Any = config
    for part in ("hydra", "run", "dir"):
        node = node.get(part) if isinstance(node, Mapping) else None
    own = str(node) if node is not None else "outputs/${now:%Y-%m-%d}/${now:%H-%M-%S} (Hydra's default)"
    if run_dir_override == "hydra.run.dir":
        out.notes.append(
            f"DeepSC {commit} writes each trial's checkpoints, logs and plots into Hydra's run directory, "
            f"which deepsc-tune sets to the trial's folder (hydra.run.dir=results/STUDY/trials/NNNNN; "
            f"the config's own {own} is not used)"
        )
        out.notes.append(_checkpoint_note())
        return out
    fixed = own.split("${", 1)[0].rstrip("/") or "."
    out.notes.append(
        f"DeepSC {commit} writes into Hydra's run directory, and finetune.run_dir_override is "
        f"{run_dir_override!r}, so each trial writes to the config's hydra.run.dir {own} "
        f"({CONFIG_FILE}): trials starting in the same second share it"
    )
    out.notes.append(_checkpoint_note())
    blocked = _unwritable(Path(fixed)) if os.path.isabs(fixed) else None
    if blocked:
        out.problems.append(
            Problem(
                "finetune.run_dir_override",
                (
                    f"{run_dir_override!r}: DeepSC {commit} then writes to its config's hydra.run.dir {own} "
                    f"({cwd / CONFIG_FILE}), which user {_user()} cannot create or write ({blocked}), so every "
                    "trial would fail with PermissionError; expected run_dir_override: hydra.run.dir (the "
                    "default: each trial writes into its own folder)"
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


__all__ = [  # the commit's names, re-exported from deepsc_commits for the checks built on both
    "COMMITS",
    "CONFIG_FILE",
    "DEEPSC_MODULES",
    "ENTRY_FILE",
    "RUN_CTA_FILE",
    "RUN_CTA_MODULES",
    "TRAINER_FILE",
    "Findings",
    "Problem",
    "detect_commit",
    "entry_module",
    "entry_module_problems",
    "is_deepsc_command",
    "load_deepsc_config",
    "output_notes",
    "timestamped_base",
    "unknown_keys",
]


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


def deepsc_values(settings: Any, params: Mapping[str, Any], config: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """DeepSC's effective top-level settings for a run of the ``command`` backend: its config
    (``config``, else read from the checkout, else 2416d85's defaults), then
    ``finetune.overrides``, then ``params`` (fixed settings and the trial's values)."""
    if config is None:
        config = load_config(settings.cwd)
    return {**config, **settings.overrides, **params}


def load_config(cwd: Any) -> dict[str, Any]:
    """The checkout's ``configs/finetune/finetune.yaml`` (with its groups), else 2416d85's defaults."""
    try:
        return load_deepsc_config(Path(cwd or "."))
    except ConfigError:
        return dict(FALLBACK_DEFAULTS)
