"""Shared fixtures. Every test gets its own data directory and store; real test servers
(PostgreSQL, SLURM, Grid Engine, sshd) are found through the files that
``scripts/test-clusters.sh up`` writes, and a missing one is a skip, or a failure under CI."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from jobbridge import Engine, EngineSettings, Store
from jobbridge.backends.base import BackendContext
from jobbridge.backends.local import LocalBackend, LocalOptions

CLUSTER_ENV_DIR = Path(os.environ.get("JOBBRIDGE_TEST_ENV_DIR", "/var/tmp/jobbridge-test"))


def cluster_env(service: str) -> dict[str, str]:
    """Connection facts of a test server, or skip (fail under CI) when it is not up."""
    path = CLUSTER_ENV_DIR / f"{service}.env"
    if path.exists():
        pairs = (line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)
        return {key.strip(): value.strip() for key, value in pairs}
    message = f"the {service} test server is not up: run scripts/test-clusters.sh up {service}"
    if os.environ.get("CI") == "true":
        pytest.fail(message + " (CI must run every test)")
    pytest.skip(message)


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data_dir = tmp_path / "data"
    monkeypatch.setenv("JOBBRIDGE_DATA_DIR", str(data_dir))
    monkeypatch.delenv("JOBBRIDGE_CONFIG", raising=False)
    monkeypatch.delenv("JOBBRIDGE_DATABASE_URL", raising=False)
    return data_dir


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    server = (
        os.environ.get("JOBBRIDGE_TEST_POSTGRES_URL")
        or cluster_env("postgres")["JOBBRIDGE_TEST_POSTGRES_URL"]
    )
    name = f"jobbridge_test_{secrets.token_hex(4)}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture
def store(store_url: str) -> Iterator[Store]:
    store = Store(store_url)
    yield store
    store.close()


@pytest.fixture
def local_backend(isolated_data_dir: Path) -> Iterator[LocalBackend]:
    backend = LocalBackend(
        "local", LocalOptions(grace_period=1.0), BackendContext(isolated_data_dir / "jobs")
    )
    yield backend
    backend.close()


@pytest.fixture
def engine(isolated_data_dir: Path, local_backend: LocalBackend) -> Iterator[Engine]:
    store = Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}")
    # the tests look at each handover's outcome as submit() returns it
    engine = Engine(
        store,
        {"local": local_backend},
        settings=EngineSettings(refresh_interval=0.1, submit_in_background=False),
    )
    yield engine
    engine.close()
