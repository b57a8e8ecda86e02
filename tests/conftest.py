"""Shared fixtures: a PostgreSQL server for the tests marked ``postgres``; DeepSC's checkout;
Baron pancreas and a fresh prepare_data memo for the data tests; the report tests' studies
(``report_studies.py``).

``.ci/run`` starts PostgreSQL on 127.0.0.1 and exports ``DEEPSC_TUNE_TEST_POSTGRES_URL``. In CI
(``CI=true``) a missing or unreachable server fails those tests; elsewhere they are skipped
with the reason, so a laptop without PostgreSQL still runs the rest of the suite.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from guards import BARON, missing, shared_file

# The report tests' studies: the real search (real_results) runs once per session.
from report_studies import real_copy, real_results, real_study, synthetic  # noqa: F401

POSTGRES_ENV = "DEEPSC_TUNE_TEST_POSTGRES_URL"
#: DeepSC at 2416d85 and at abcf2be, read only (the shared folder beside the repository).
CHECKOUT = Path(__file__).resolve().parents[1].parent / "shared" / "deepsc" / "DeepSC-2416d85"
CHECKOUT_ABCF2BE = CHECKOUT.parent / "DeepSC-abcf2be"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """The test server's URL (``postgresql+psycopg://...``), checked to accept connections."""
    url = os.environ.get(POSTGRES_ENV, "").strip()
    if not url:
        message = (
            f"{POSTGRES_ENV} is not set; .ci/run starts PostgreSQL on 127.0.0.1 and sets it "
            "(or export it to a server of your own)"
        )
        missing(message)
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT 1"))
    except Exception as e:  # the server is named but not there: say so, never skip quietly
        pytest.fail(f"{POSTGRES_ENV}: cannot connect: {str(e).splitlines()[0]}", pytrace=False)
    finally:
        engine.dispose()
    return url


@pytest.fixture
def postgres_study(postgres_url: str) -> Iterator[tuple[str, str]]:
    """``(url, study_name)``: a study name of its own in the shared test database, deleted after."""
    import optuna

    name = f"test-{uuid.uuid4().hex[:12]}"
    yield postgres_url, name
    storage = optuna.storages.RDBStorage(postgres_url)
    try:
        optuna.delete_study(study_name=name, storage=storage)
    except KeyError:
        pass
    finally:
        storage.engine.dispose()


@pytest.fixture(scope="module")
def checkout() -> Path:
    """DeepSC's real checkout at 2416d85 (tests/test_deepsc*.py); fails in CI when it is missing."""
    from deepsc_tune.backends.command.deepsc._checkout import ENTRY_FILE

    if not (CHECKOUT / ENTRY_FILE).is_file():
        missing(f"DeepSC checkout not found: {CHECKOUT} (the shared folder beside the repository)")
    return CHECKOUT


@pytest.fixture
def copy(checkout, tmp_path) -> Path:
    """A writable copy of the checkout, for simulating other commits."""
    dest = tmp_path / "DeepSC"
    shutil.copytree(checkout, dest)
    return dest


@pytest.fixture(scope="module")
def checkout_abcf2be() -> Path:
    """DeepSC's real checkout at abcf2be (run_cta); fails in CI when it is missing."""
    from deepsc_tune.backends.command.deepsc._commits import RUN_CTA_FILE

    if not (CHECKOUT_ABCF2BE / RUN_CTA_FILE).is_file():
        missing(f"DeepSC checkout not found: {CHECKOUT_ABCF2BE} (the shared folder beside the repository)")
    return CHECKOUT_ABCF2BE


@pytest.fixture
def copy_abcf2be(checkout_abcf2be, tmp_path) -> Path:
    """A writable copy of the abcf2be checkout, for simulating later commits."""
    dest = tmp_path / "DeepSC-abcf2be"
    shutil.copytree(checkout_abcf2be, dest)
    return dest


@pytest.fixture
def baron() -> Path:
    """Baron pancreas (../shared/data); fails in CI when it is missing."""
    return shared_file(BARON.name)


@pytest.fixture
def fresh_data_memo() -> Iterator[None]:
    """Each test sees prepare_data as a new process would (its own disk cache, if any, survives)."""
    from deepsc_tune.data._cache import clear_memo

    clear_memo()
    yield
    clear_memo()
