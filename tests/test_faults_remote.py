"""Exactly once over SSH: SLURM on the 'remote' login node (the test sshd, as the test user)
while the master connection is killed, and while ssh clients are killed with their commands
in flight. Every job SLURM holds must be tracked by one jobbridge job, none submitted twice,
none failed for a broken connection."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobbridge import Engine, JobSpec, Phase
from jobbridge.transport.ssh import SshTransport
from tests.conftest import cluster_env
from tests.faults import (
    BATCH_OPTIONS,
    Chaos,
    Setup,
    Tally,
    cancel_leftovers,
    describe,
    kill_master,
    kill_ssh_clients,
    marker,
    refresh_until,
    remote_fault_bin,
    slurm_native_jobs,
    submit_in_threads,
    tally,
)

pytestmark = [pytest.mark.ssh, pytest.mark.slurm]
SETTLE = 120.0
"""Longest wait for jobs to reach their end (the cluster may be busy with others' jobs)."""


@pytest.fixture
def mark() -> str:
    return marker()


@pytest.fixture
def since() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def setup(isolated_data_dir: Path, mark: str) -> Iterator[Setup]:
    ssh = cluster_env("ssh")
    cluster_env("slurm")
    options = {
        **BATCH_OPTIONS,
        "host": f"{ssh['JOBBRIDGE_TEST_SSH_USER']}@{ssh['JOBBRIDGE_TEST_SSH_HOST']}",
        "port": int(ssh["JOBBRIDGE_TEST_SSH_PORT"]),
        "identity_file": ssh["JOBBRIDGE_TEST_SSH_KEY"],
        "known_hosts": ssh["JOBBRIDGE_TEST_SSH_KNOWN_HOSTS"],
        "command_timeout": 10,
    }
    # a master connection of this test's own: killing it disturbs no one else
    with tempfile.TemporaryDirectory(prefix="jbf-", dir="/tmp") as control:
        yield Setup(
            isolated_data_dir,
            f"sqlite:///{isolated_data_dir / 'jobbridge.db'}",
            options=options,
            control_dir=Path(control),
        )
        cancel_leftovers("slurm", mark)


def held(mark: str, index: int) -> JobSpec:
    return JobSpec(name=f"{mark}-{index}", executable="true", attributes={"slurm.hold": True})


def all_held(engine: Engine, ids: list[str], timeout: float) -> None:
    """Wait until every job shows HELD (it reached SLURM); fail at once if one ended."""

    def settled() -> bool:
        jobs = engine.store.get_many(ids)
        return all(job.phase is Phase.HELD for job in jobs) or any(
            job.phase.is_final for job in jobs
        )

    refresh_until(engine, settled, timeout, "the jobs never all reached SLURM")
    wrong = [job for job in engine.store.get_many(ids) if job.phase is not Phase.HELD]
    assert not wrong, f"not every job reached SLURM once the connection held:\n{describe(wrong)}"


def exactly_once(engine: Engine, ids: list[str], mark: str, since: datetime) -> Tally:
    counted = tally(engine.store.get_many(ids), slurm_native_jobs(since, mark))
    counted.assert_exactly_once()
    return counted


def test_killing_the_master_connection_during_fifty_submissions(
    setup: Setup, mark: str, since: datetime
) -> None:
    backend = setup.backend()
    transport = backend.transport
    assert isinstance(transport, SshTransport)
    with setup.engine(backend) as engine:
        with Chaos(lambda: kill_master(transport), interval=0.1) as chaos:
            jobs = submit_in_threads(engine, [held(mark, i) for i in range(50)], threads=5)
            ids = [job.id for job in jobs]
        assert chaos.done >= 2, "the master connection was never killed during the submissions"
        all_held(engine, ids, SETTLE)
        counted = exactly_once(engine, ids, mark, since)
    assert all(len(found) == 1 for found in counted.natives.values())


def test_killing_ssh_clients_in_flight_during_submissions(
    setup: Setup, mark: str, since: datetime
) -> None:
    with remote_fault_bin("jbtest", ["sbatch"]) as faults:
        # sbatch answers a moment after it acted: a wide window to cut the connection in
        hang = faults.hang_after("sbatch", 0.6, when=mark)
        with setup.engine() as engine:
            with Chaos(lambda: kill_ssh_clients(matching="sbatch"), interval=0.2) as chaos:
                jobs = submit_in_threads(engine, [held(mark, i) for i in range(20)], threads=4)
                ids = [job.id for job in jobs]
            assert chaos.done >= 3, f"only {chaos.done} ssh clients were killed in flight"
            assert hang.fired >= 1, "the wrapper on the remote PATH was not used"
            hang.remove()
            all_held(engine, ids, SETTLE)
            exactly_once(engine, ids, mark, since)
