"""The one guard for what a test needs from outside the repository: skip in a user's clone,
fail in CI (``CI=true``), which must provide it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

import pytest
from paths import REPO

#: ../shared/data beside the repository (its README lists the files).
SHARED_DATA = REPO.parent / "shared" / "data"
BARON = SHARED_DATA / "baron_human_pancreas.h5ad"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def missing(reason: str) -> NoReturn:
    """The one guard for what a test needs from outside the repository (the shared folder,
    PostgreSQL, DeepSC's environment, Chromium, a test extra): skipped with ``reason`` in a
    user's clone, failed in CI (``CI=true``), which must provide it."""
    if in_ci():
        pytest.fail(f"{reason}; CI must provide it", pytrace=False)
    pytest.skip(reason)


def shared_file(name: str) -> Path:
    """A real data file of ``../shared/data`` (its README), or :func:`missing`."""
    path = SHARED_DATA / name
    if not path.is_file():
        missing(f"real data not found: {path} (the shared data folder beside the repository)")
    return path
