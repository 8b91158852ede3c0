"""Pilots on the real SLURM and Grid Engine test clusters (2 CPUs: pilots of one core each,
or one of two), through the engine, and on SLURM over the test sshd."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbridge import Engine, EngineSettings, Phase, Store
from jobbridge.backends.base import BackendContext
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.sge import SgeBackend
from jobbridge.backends.batch.slurm import SlurmBackend
from jobbridge.pilot import (
    Coordinator,
    CoordinatorSettings,
    PilotJob,
    PilotJobDescription,
    PilotJobService,
    WorkUnit,
    WorkUnitDescription,
    WorkUnitService,
)
from jobbridge.transport.ssh import SshTransport
from tests.conftest import cluster_env

SETTINGS = CoordinatorSettings(settle=1.0, refresh_interval=0.3, remote_interval=0.3)
START = 120.0
"""Seconds a pilot may take to start: the test clusters are shared with other tests."""


def make_backend(kind: str, data_dir: Path, **options: object) -> BatchBackend:
    facts = cluster_env(kind)
    settings: dict[str, object] = {"min_refresh_interval": 0.3, "accounting_delay": 10}
    if kind == "sge":
        settings.update(sge_root=facts["SGE_ROOT"], sge_cell=facts["SGE_CELL"])
    settings.update(options)
    cls: type[BatchBackend] = SlurmBackend if kind == "slurm" else SgeBackend
    return cls(kind, cls.Options.model_validate(settings), BackendContext(data_dir / "jobs"))


def remote_backend(data_dir: Path) -> BatchBackend:
    """SLURM through the test sshd, as the test user."""
    ssh = cluster_env("ssh")
    return make_backend(
        "slurm",
        data_dir,
        host=f"{ssh['JOBBRIDGE_TEST_SSH_USER']}@{ssh['JOBBRIDGE_TEST_SSH_HOST']}",
        port=int(ssh["JOBBRIDGE_TEST_SSH_PORT"]),
        identity_file=ssh["JOBBRIDGE_TEST_SSH_KEY"],
        known_hosts=ssh["JOBBRIDGE_TEST_SSH_KNOWN_HOSTS"],
    )


def make_engine(backend: BatchBackend, data_dir: Path) -> Engine:
    store = Store(f"sqlite:///{data_dir / 'jobbridge.db'}")
    return Engine(
        store,
        {backend.name: backend},
        settings=EngineSettings(refresh_interval=0.2),
        default_backend=backend.name,
    )


@pytest.fixture(params=["slurm", "sge"])
def kind(request: pytest.FixtureRequest) -> str:
    marker = getattr(pytest.mark, str(request.param))
    request.applymarker(marker)
    return str(request.param)


@pytest.fixture
def engine(isolated_data_dir: Path, kind: str) -> Iterator[Engine]:
    engine = make_engine(make_backend(kind, isolated_data_dir), isolated_data_dir)
    yield engine
    cancel_everything(engine)
    engine.close()


def cancel_everything(engine: Engine) -> None:
    for job in engine.store.active():
        with contextlib.suppress(Exception):
            engine.cancel(job.id)


@pytest.fixture
def coordinator(engine: Engine) -> Iterator[Coordinator]:
    coordinator = Coordinator(engine, SETTINGS)
    yield coordinator
    coordinator.close()


def start(pjs: PilotJobService, rm: str, count: int, cores: int = 1) -> list[PilotJob]:
    pilots = [
        pjs.create(rm, PilotJobDescription(total_cpu_count=cores, wall_time_limit=600))
        for _ in range(count)
    ]
    for pilot in pilots:
        assert pilot.wait_active(START), (pilot.state, pilot.state_detail)
    return pilots


def wait_for(condition: object, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def sleepers(count: int, seconds: float = 1.0) -> list[WorkUnitDescription]:
    return [WorkUnitDescription(executable="sleep", arguments=[str(seconds)])] * count


def test_a_thousand_units_a_failure_a_cancel_and_one_too_big(
    coordinator: Coordinator, engine: Engine, kind: str
) -> None:
    pjs = PilotJobService(coordinator=coordinator)
    pilots = start(pjs, engine.default_backend, 2)
    assert all(engine.get(p.job_id).native_id for p in pilots), "pilots are scheduler jobs"
    wus = WorkUnitService(coordinator=coordinator)
    wus.add(pjs)
    units = wus.submit_many(
        [WorkUnitDescription(executable="sh", arguments=["-c", "echo $JOBBRIDGE_UNIT_ID"])] * 1000
    )
    failing = wus.submit(
        WorkUnitDescription(executable="sh", arguments=["-c", "echo boom >&2; exit 3"])
    )
    sleeper = wus.submit(WorkUnitDescription(executable="sleep", arguments=["120"]))
    too_big = wus.submit(WorkUnitDescription(executable="true", total_cpu_count=2))
    assert isinstance(failing, WorkUnit) and isinstance(sleeper, WorkUnit)
    assert isinstance(too_big, WorkUnit)
    assert (too_big.state, too_big.state_detail) == (Phase.ERROR, "TOO_BIG")
    wait_for(lambda: sleeper.state is Phase.EXECUTING, what="the sleeper to run")
    sleeper.cancel()
    assert wus.wait(180)
    assert Counter(unit.state for unit in units) == {Phase.COMPLETED: 1000}
    assert {unit.pilot_id for unit in units} == {p.id for p in pilots}
    assert units[500].stdout.decode().strip() == units[500].id
    assert (failing.state, failing.exit_code, failing.stderr) == (Phase.ERROR, 3, b"boom\n")
    assert (sleeper.state, sleeper.state_detail) == (Phase.ABORTED, "CANCELLED")


def test_cancelled_and_killed_pilots_hand_their_units_back(
    coordinator: Coordinator, engine: Engine
) -> None:
    pjs = PilotJobService(coordinator=coordinator)
    first, second = start(pjs, engine.default_backend, 2)
    wus = WorkUnitService(coordinator=coordinator, retries=2)
    wus.add(pjs)

    units = wus.submit_many(sleepers(4, 3))  # long enough to be running when cancelled
    wait_for(
        lambda: any(u.state is Phase.EXECUTING and u.pilot_id == first.id for u in units),
        what="a unit running on the first pilot",
    )
    first.cancel()
    [third] = start(pjs, engine.default_backend, 1)  # in the core the first one gave back
    assert wus.wait(120)
    assert {u.state for u in units} == {Phase.COMPLETED}, [u.message for u in units]
    assert any(u.retried for u in units)
    assert all(u.pilot_id != first.id for u in units)

    more = wus.submit_many(sleepers(4, 2))
    wait_for(
        lambda: any(u.state is Phase.EXECUTING and u.pilot_id == second.id for u in more),
        what="a unit running on the second pilot",
    )
    os.kill(int(second.agent["pid"]), signal.SIGKILL)  # the test clusters run here
    assert wus.wait(120)
    assert {u.state for u in more} == {Phase.COMPLETED}, [u.message for u in more]
    moved = [u for u in more if u.retried]
    assert moved and all(u.pilot_id == third.id for u in moved)
    wait_for(lambda: second.state.is_final, what="the killed pilot to end")

    waiting = wus.submit_many(sleepers(4, 5))
    wait_for(lambda: any(u.state is Phase.EXECUTING for u in waiting), what="a running unit")
    third.cancel()
    assert wus.wait(60), "nothing may hang once every pilot is gone"
    assert {u.state_detail for u in waiting} == {"NO_PILOT"}


def test_two_core_units_and_a_coordinator_restart(
    engine: Engine, kind: str, isolated_data_dir: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    first = Coordinator(engine, SETTINGS)
    pjs = PilotJobService(coordinator=first)
    [pilot] = start(pjs, engine.default_backend, 1, cores=2)
    wus = WorkUnitService(coordinator=first)
    wus.add(pjs)
    script = f'echo "$JOBBRIDGE_UNIT_CORES"; sleep 0.2; echo "$JOBBRIDGE_UNIT_ID" >> "{ledger}"'
    descriptions = [
        WorkUnitDescription(
            executable="sh", arguments=["-c", script], total_cpu_count=2 if i % 4 == 0 else 1
        )
        for i in range(40)
    ]
    if kind == "slurm":
        descriptions.append(
            WorkUnitDescription(
                executable="sh",
                arguments=["-c", 'echo "task $SLURM_PROCID"'],
                number_of_processes=2,
                launcher="srun",
            )
        )
    units = wus.submit_many(descriptions)
    wait_for(lambda: ledger.exists() and len(ledger.read_text().split()) >= 5, what="progress")
    first.close()
    second = Coordinator(engine, SETTINGS)
    try:
        resumed = WorkUnitService(wus.id, coordinator=second)
        assert resumed.wait(120)
        done = resumed.work_units
        assert {u.state for u in done} == {Phase.COMPLETED}, [u.message for u in done]
        ran = ledger.read_text().split()
        assert Counter(ran) == {u.id: 1 for u in units[:40]}, "each unit ran once"
        assert [int(u.stdout.split()[0]) for u in done[:40]] == [d.cores for d in descriptions[:40]]
        if kind == "slurm":
            assert sorted(done[40].stdout.decode().split("\n")[:2]) == ["task 0", "task 1"]
        assert PilotJob(pilot.id, coordinator=second).state_detail == "ACTIVE"
    finally:
        second.close()


@pytest.mark.ssh
@pytest.mark.slurm
def test_a_pilot_on_slurm_over_ssh(isolated_data_dir: Path) -> None:
    backend = remote_backend(isolated_data_dir)
    assert isinstance(backend.transport, SshTransport)
    engine = make_engine(backend, isolated_data_dir)
    coordinator = Coordinator(engine, SETTINGS)
    try:
        pjs = PilotJobService(coordinator=coordinator)
        [pilot] = start(pjs, "slurm", 1, cores=2)
        assert pilot.agent["hosts"]
        wus = WorkUnitService(coordinator=coordinator)
        wus.add(pjs)
        units = wus.submit_many(
            [WorkUnitDescription(executable="sh", arguments=["-c", "whoami"])] * 200
        )
        failing = wus.submit(WorkUnitDescription(executable="sh", arguments=["-c", "exit 7"]))
        assert isinstance(failing, WorkUnit)
        assert wus.wait(120)
        assert Counter(u.state for u in units) == {Phase.COMPLETED: 200}
        assert units[0].stdout == b"jbtest\n"
        assert (failing.state, failing.exit_code) == (Phase.ERROR, 7)
        _, sandbox = backend.sandbox(engine.get(pilot.job_id))
        assert sandbox.startswith("/home/jbtest/")
        pilot.cancel()
        wait_for(lambda: pilot.state is Phase.ABORTED, what="the pilot to end")
    finally:
        coordinator.close()
        cancel_everything(engine)
        engine.close()


@pytest.mark.ssh
@pytest.mark.slurm
def test_a_pilot_from_a_url_over_ssh(isolated_data_dir: Path) -> None:
    ssh = cluster_env("ssh")
    backend = make_backend("slurm", isolated_data_dir)
    engine = make_engine(backend, isolated_data_dir)
    coordinator = Coordinator(engine, SETTINGS)
    try:
        pjs = PilotJobService(coordinator=coordinator)
        rm = (
            f"slurm+ssh://{ssh['JOBBRIDGE_TEST_SSH_USER']}@{ssh['JOBBRIDGE_TEST_SSH_HOST']}"
            f":{ssh['JOBBRIDGE_TEST_SSH_PORT']}"
        )
        context = {
            "identity_file": ssh["JOBBRIDGE_TEST_SSH_KEY"],
            "known_hosts": ssh["JOBBRIDGE_TEST_SSH_KNOWN_HOSTS"],
            "min_refresh_interval": 0.3,
        }
        pilot = pjs.create(rm, PilotJobDescription(total_cpu_count=1), context=context)
        assert engine.get(pilot.job_id).backend == rm
        assert pilot.wait_active(START)
        wus = WorkUnitService(coordinator=coordinator)
        wus.add(pjs)
        unit = wus.submit(WorkUnitDescription(executable="hostname"))
        assert isinstance(unit, WorkUnit) and unit.wait(60) is Phase.COMPLETED
        pilot.cancel()
    finally:
        coordinator.close()
        cancel_everything(engine)
        engine.close()
