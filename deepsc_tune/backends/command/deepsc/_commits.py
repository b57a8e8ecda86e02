"""Which DeepSC a checkout is, read from its files: the two commits whose cell-type fine-tuner runs.

DeepSC's fine-tuner moved between commits (``../shared/deepsc/README.md``):

- ``2416d85`` (2025-12-02): ``python -m src.deepsc.finetune.finetune``; the trainer
  (``cell_type_annotation.py``) writes checkpoints, logs and plots under a hard-coded folder
  plus a ``%Y%m%d_%H%M%S`` timestamp.
- ``abcf2be`` (2026-01-17): ``python -m src.deepsc.finetune.run_cta`` (renamed in ``cc84b98``);
  from ``b3348a3`` the trainer writes into Hydra's run directory (``HydraConfig``), which
  deepsc-tune sets to each trial's folder (``hydra.run.dir``).
- ``2227f88`` (newest): ``cell_type_annotation.py`` is deleted and ``run_cta.py`` still imports
  it, so cell-type fine-tuning cannot start.

:func:`detect_commit` tells them apart by the files they have (no git history is needed: users
download archives too); :func:`entry_module_problems` says, in one line, which commit to check
out or which module to run when the command and the checkout do not fit. This module imports
nothing beyond the standard library.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from deepsc_tune.utils import Problem

FINETUNE_DIR = Path("src/deepsc/finetune")
ENTRY_FILE = FINETUNE_DIR / "finetune.py"
RUN_CTA_FILE = FINETUNE_DIR / "run_cta.py"
TRAINER_FILE = FINETUNE_DIR / "cell_type_annotation.py"
#: Entry modules of 2416d85 (checkout root on ``PYTHONPATH``, or ``PYTHONPATH=src`` as DeepSC's
#: own scripts launch it with torchrun).
DEEPSC_MODULES = ("src.deepsc.finetune.finetune", "deepsc.finetune.finetune")
#: Entry modules of abcf2be.
RUN_CTA_MODULES = ("src.deepsc.finetune.run_cta", "deepsc.finetune.run_cta")
#: Outputs under a hard-coded folder + ``%Y%m%d_%H%M%S`` (2416d85), or in Hydra's run directory.
TIMESTAMPED = "timestamped"
HYDRA_RUN_DIR = "hydra"
# What the trainer of b3348a3 and later reads its output folder from.
_HYDRA_OUTPUT = "HydraConfig"


@dataclass(frozen=True)
class Commit:
    """A DeepSC commit whose cell-type fine-tuner deepsc-tune runs and tests."""

    name: str
    date: str
    modules: tuple[str, ...]
    entry_file: Path
    #: :data:`TIMESTAMPED` or :data:`HYDRA_RUN_DIR`: where the trainer writes.
    outputs: str

    @property
    def module(self) -> str:
        """The entry module as DeepSC's team runs it from the checkout root."""
        return self.modules[0]

    def describe(self) -> str:
        return f"{self.name} ({self.date}, python -m {self.module})"


COMMIT_2416D85 = Commit("2416d85", "2025-12-02", DEEPSC_MODULES, ENTRY_FILE, TIMESTAMPED)
COMMIT_ABCF2BE = Commit("abcf2be", "2026-01-17", RUN_CTA_MODULES, RUN_CTA_FILE, HYDRA_RUN_DIR)
#: The commits deepsc-tune supports, oldest first.
COMMITS = (COMMIT_2416D85, COMMIT_ABCF2BE)


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
    """Whether ``command`` runs DeepSC's cell-type fine-tuner: ``finetune`` (2416d85) or
    ``run_cta`` (abcf2be), as ``src.deepsc.…`` or ``deepsc.…``, with python or torchrun."""
    return entry_module(command) in (*DEEPSC_MODULES, *RUN_CTA_MODULES)


def commit_of_module(module: str | None) -> Commit | None:
    """The supported commit whose entry module ``module`` is."""
    return next((c for c in COMMITS if module in c.modules), None)


def detect_commit(cwd: Path | str) -> Commit | None:
    """Which supported commit the checkout ``cwd`` is, from its files; ``None`` if neither.

    ``finetune.py`` next to the trainer is 2416d85 (or an older commit of the same layout);
    ``run_cta.py`` next to a trainer that reads Hydra's run directory is abcf2be (or another
    commit from b3348a3 on). Anything else (2227f88, where the trainer is deleted; cc84b98,
    whose run_cta still wrote to the hard-coded folder) is no supported commit.
    """
    cwd = Path(cwd)
    trainer = _read(cwd / TRAINER_FILE)
    if trainer is None:
        return None
    if (cwd / ENTRY_FILE).is_file():
        return COMMIT_2416D85
    if (cwd / RUN_CTA_FILE).is_file() and _HYDRA_OUTPUT in trainer:
        return COMMIT_ABCF2BE
    return None


def _read(path: Path) -> str | None:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return None


def _found(cwd: Path) -> str:
    """What a checkout that is no supported commit holds instead, in a few words."""
    has_cta, has_trainer = (cwd / RUN_CTA_FILE).is_file(), (cwd / TRAINER_FILE).is_file()
    if has_cta and has_trainer:
        return (
            f"it has {RUN_CTA_FILE} but its {TRAINER_FILE.name} still writes to a hard-coded folder "
            "(a commit between cc84b98 and b3348a3, never tested)"
        )
    if has_cta:
        return (
            f"it has {RUN_CTA_FILE} but not {TRAINER_FILE.name}, which run_cta imports: DeepSC's "
            "newest commits (2227f88) cannot run cell-type fine-tuning at all"
        )
    if (cwd / ENTRY_FILE).is_file():
        return f"it has {ENTRY_FILE} but not {TRAINER_FILE.name}, which finetune.py imports"
    return f"it has neither {ENTRY_FILE.name} nor {RUN_CTA_FILE.name}: no cell-type fine-tuning"


def entry_module_problems(cwd: Path | str, command: Sequence[str]) -> list[Problem]:
    """Whether ``command``'s entry module is the one of the checkout's commit, in one problem
    line that names the commit to check out or the module to run. Empty for commands that are
    not DeepSC's fine-tuner."""
    module = entry_module(command)
    wanted = commit_of_module(module)
    if wanted is None:
        return []
    cwd = Path(cwd)
    if not (cwd / "src" / "deepsc").is_dir():
        return [
            Problem(
                "finetune.cwd",
                f"{str(cwd)!r} is not a DeepSC checkout (no src/deepsc/); expected the root of a clone "
                f"of MouYongli/DeepSC at {wanted.name} (git clone https://github.com/MouYongli/DeepSC && "
                f"git -C DeepSC checkout {wanted.name})",
            )
        ]
    have = detect_commit(cwd)
    if have == wanted:
        return []
    missing = "" if (cwd / wanted.entry_file).is_file() else f", but {wanted.entry_file} does not exist under {cwd}"
    checkout = f"git -C {cwd} checkout {wanted.name}"
    if have is None:
        message = f"runs {module}{missing}; {_found(cwd)}; expected DeepSC at {wanted.describe()}: {checkout}"
    else:
        message = (
            f"runs {module}{missing}; this checkout is DeepSC {have.name}, whose entry point is "
            f"{have.module}: expected finetune.command [python, -m, {have.module}] "
            f"(or {checkout} to run {module})"
        )
    return [Problem("finetune.command", message)]


__all__ = [
    "COMMITS",
    "COMMIT_2416D85",
    "COMMIT_ABCF2BE",
    "DEEPSC_MODULES",
    "ENTRY_FILE",
    "HYDRA_RUN_DIR",
    "RUN_CTA_FILE",
    "RUN_CTA_MODULES",
    "TIMESTAMPED",
    "TRAINER_FILE",
    "Commit",
    "commit_of_module",
    "detect_commit",
    "entry_module",
    "entry_module_problems",
    "is_deepsc_command",
]
