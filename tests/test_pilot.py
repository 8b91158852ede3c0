"""Pilot jobs on the local backend, through the engine: late binding over several pilots,
multi-core units, failures, cancellation, faults (a cancelled pilot, a killed agent, a
restarted coordinator) and units that can never run; plus the pure parts."""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from jobbridge import Engine, EngineSettings, Phase, Store
from jobbridge.backends.local import LocalBackend, LocalOptions
from jobbridge.errors import ConfigError
from jobbridge.pilot import (
    Callback,
    Coordinator,
    CoordinatorSettings,
    PilotDescriptionError,
    PilotJob,
    PilotJobDescription,
    PilotJobService,
    WorkUnit,
    WorkUnitDescription,
    WorkUnitService,
)
from jobbridge.pilot import agent as agent_module
from jobbridge.pilot.description import parse_file_transfer
from jobbridge.pilot.mailbox import _unpack
from jobbridge.pilot.resources import parse_rm
from jobbridge.store.pilots import PilotStore

SETTINGS = CoordinatorSettings(settle=0.3, refresh_interval=0.2)
PYTHON38 = next(
    (
        path
        for path in ("/root/.pyenv/versions/3.8.18/bin/python3.8", "/usr/bin/python3.8")
        if os.path.exists(path)
    ),
    "python3.8",
)


@pytest.fixture
def coordinator(engine: Engine) -> Iterator[Coordinator]:
    coordinator = Coordinator(engine, SETTINGS)
    yield coordinator
    for row in coordinator.records.pilots(done=False):
        with contextlib.suppress(Exception):
            engine.cancel(row["job_id"])
    coordinator.close()


def start_pilots(
    coordinator: Coordinator, count: int, cores: int = 1, **fields: object
) -> tuple[PilotJobService, list[PilotJob]]:
    pjs = PilotJobService(coordinator=coordinator)
    pilots = [
        pjs.create("local", PilotJobDescription(total_cpu_count=cores, **fields))
        for _ in range(count)
    ]
    for pilot in pilots:
        assert pilot.wait_active(60), (pilot.state, pilot.state_detail)
    return pjs, pilots


def service(coordinator: Coordinator, pjs: PilotJobService, **options: object) -> WorkUnitService:
    wus = WorkUnitService(coordinator=coordinator, **options)  # type: ignore[arg-type]
    wus.add(pjs)
    return wus


def sh(script: str, **fields: object) -> WorkUnitDescription:
    return WorkUnitDescription(executable="sh", arguments=["-c", script], **fields)


def wait_for(condition: object, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- through the engine -------------------------------------------------------------------------


def test_a_thousand_units_over_two_pilots(coordinator: Coordinator, engine: Engine) -> None:
    pjs, pilots = start_pilots(coordinator, 2)
    wus = service(coordinator, pjs)
    units = wus.submit_many(
        [sh('echo "$JOBBRIDGE_UNIT_ID $JOBBRIDGE_PILOT_ID"') for _ in range(1000)]
    )
    assert wus.wait(120)
    assert Counter(unit.state for unit in units) == {Phase.COMPLETED: 1000}
    used = Counter(unit.pilot_id for unit in units)
    assert set(used) == {pilot.id for pilot in pilots}, used
    sample = units[123]
    assert sample.stdout.decode().split() == [sample.id, sample.pilot_id]
    assert sample.exit_code == 0
    # every state is in the store, and each pilot is an ordinary job
    rows = PilotStore(engine.store).units(service_id=wus.id)
    assert Counter(row["phase"] for row in rows) == {"COMPLETED": 1000}
    for pilot in pilots:
        job = engine.get(pilot.job_id)
        assert job.phase is Phase.EXECUTING
        assert job.spec.executable and "jobbridge_agent.py" in job.spec.arguments
        # no file per unit: each worker (one per core) keeps one stdout and one stderr file
        _, sandbox = engine.backend("local").sandbox(job)
        assert len(os.listdir(os.path.join(sandbox, agent_module.UNITS_DIR))) == 2


def test_two_core_units_only_where_they_fit(coordinator: Coordinator) -> None:
    pjs, _ = start_pilots(coordinator, 1, cores=2)
    wus = service(coordinator, pjs)
    units = wus.submit_many(
        [
            sh('echo "$JOBBRIDGE_UNIT_CORES"; sleep 0.3', total_cpu_count=2 if i % 3 == 0 else 1)
            for i in range(12)
        ]
    )
    assert wus.wait(60)
    assert all(unit.state is Phase.COMPLETED for unit in units)
    assert [int(unit.stdout) for unit in units] == [u.description.cores for u in units]
    # at no moment more than the pilot's two cores in use
    moments = sorted(
        [(unit.started, unit.description.cores) for unit in units]
        + [(unit.ended, -unit.description.cores) for unit in units],
        key=lambda item: (item[0], item[1]),
    )
    busy = peak = 0
    for _, change in moments:
        busy += change
        peak = max(peak, busy)
    assert peak == 2


def test_a_failing_unit_keeps_its_exit_code_and_output(coordinator: Coordinator) -> None:
    pjs, _ = start_pilots(coordinator, 1)
    wus = service(coordinator, pjs)
    unit = wus.submit(sh("echo partial; echo boom >&2; exit 3"))
    missing = wus.submit(WorkUnitDescription(executable="/no/such/program"))
    assert isinstance(unit, WorkUnit) and isinstance(missing, WorkUnit)
    assert unit.wait(30) is Phase.ERROR
    assert (unit.exit_code, unit.state_detail) == (3, "FAILED")
    assert (unit.stdout, unit.stderr) == (b"partial\n", b"boom\n")
    assert missing.wait(30) is Phase.ERROR
    assert (missing.exit_code, missing.state_detail) == (127, "EXEC_FAILED")
    assert "No such file" in (missing.message or "")


def test_files_directory_and_environment_of_a_unit(
    coordinator: Coordinator, tmp_path: Path
) -> None:
    pjs, _ = start_pilots(coordinator, 1)
    wus = service(coordinator, pjs)
    (tmp_path / "in.txt").write_text("1\n2\n3\n")
    unit = wus.submit(
        WorkUnitDescription(
            executable="sh",
            arguments=[
                "-c",
                'mkdir -p ../res; awk "{s+=\\$1} END {print s}" > ../res/sum.txt; pwd; echo "$WHO"',
            ],
            environment={"WHO": "it's me"},
            working_directory="work dir",
            input="in.txt",
            output="out.log",
            file_transfer=[
                f"{tmp_path / 'in.txt'} > work dir/in.txt",
                f"{tmp_path / 'sum.txt'} < res/sum.txt",
            ],
        )
    )
    assert isinstance(unit, WorkUnit)
    assert unit.wait(30) is Phase.COMPLETED, unit.message
    lines = unit.stdout.decode().splitlines()
    assert lines[0].endswith("/work dir") and lines[1] == "it's me"
    assert (tmp_path / "sum.txt").read_text() == "6\n"


def test_cancelling_a_unit(coordinator: Coordinator) -> None:
    pjs, _ = start_pilots(coordinator, 1)
    wus = service(coordinator, pjs)
    sleeper = wus.submit(WorkUnitDescription(executable="sleep", arguments=["60"]))
    waiting = wus.submit(WorkUnitDescription(executable="true"))
    assert isinstance(sleeper, WorkUnit) and isinstance(waiting, WorkUnit)
    wait_for(lambda: sleeper.state is Phase.EXECUTING, what="the unit to run")
    sleeper.cancel()
    assert sleeper.wait(30) is Phase.ABORTED
    assert sleeper.state_detail == "CANCELLED"
    assert waiting.wait(30) is Phase.COMPLETED  # its core was given back


def test_cancelling_a_pilot_reschedules_its_units_on_the_other(coordinator: Coordinator) -> None:
    pjs, (first, second) = start_pilots(coordinator, 2)
    wus = service(coordinator, pjs)
    units = wus.submit_many([WorkUnitDescription(executable="sleep", arguments=["1"])] * 8)
    wait_for(
        lambda: any(u.state is Phase.EXECUTING and u.pilot_id == first.id for u in units),
        what="a unit running on the first pilot",
    )
    first.cancel()
    assert wus.wait(60)
    assert all(unit.state is Phase.COMPLETED for unit in units), [u.message for u in units]
    rescheduled = [unit for unit in units if unit.retried]
    assert rescheduled and all(unit.pilot_id == second.id for unit in rescheduled)
    assert first.state is Phase.ABORTED


def test_an_agent_killed_hands_its_units_to_the_other_pilot(coordinator: Coordinator) -> None:
    pjs, (first, second) = start_pilots(coordinator, 2)
    wus = service(coordinator, pjs)
    units = wus.submit_many([WorkUnitDescription(executable="sleep", arguments=["1"])] * 6)
    wait_for(
        lambda: any(u.state is Phase.EXECUTING and u.pilot_id == first.id for u in units),
        what="a unit running on the first pilot",
    )
    os.kill(int(first.agent["pid"]), signal.SIGKILL)
    assert wus.wait(60)
    assert all(unit.state is Phase.COMPLETED for unit in units), [u.message for u in units]
    rescheduled = [unit for unit in units if unit.retried]
    assert rescheduled and all(unit.pilot_id == second.id for unit in rescheduled)
    assert first.state is Phase.ERROR


def test_a_unit_is_rescheduled_only_so_often(coordinator: Coordinator) -> None:
    pjs, (pilot,) = start_pilots(coordinator, 1)
    wus = service(coordinator, pjs, retries=0)
    unit = wus.submit(WorkUnitDescription(executable="sleep", arguments=["30"]))
    assert isinstance(unit, WorkUnit)
    wait_for(lambda: unit.state is Phase.EXECUTING, what="the unit to run")
    os.kill(int(pilot.agent["pid"]), signal.SIGKILL)
    assert unit.wait(30) is Phase.ERROR
    assert unit.state_detail == "PILOT_LOST"
    assert pilot.id in (unit.message or "") and "retries: 0" in (unit.message or "")


def test_a_restarted_coordinator_loses_no_unit(
    engine: Engine, local_backend: LocalBackend, isolated_data_dir: Path, tmp_path: Path
) -> None:
    ledger = tmp_path / "ledger"
    first = Coordinator(engine, SETTINGS)
    pjs, pilots = start_pilots(first, 2)
    wus = service(first, pjs)
    script = f'sleep 0.02; echo "$JOBBRIDGE_UNIT_ID" >> "{ledger}"'
    units = wus.submit_many([sh(script) for _ in range(300)])
    wait_for(lambda: ledger.exists() and len(ledger.read_text().split()) > 30, what="progress")
    first.close()  # mid-run; the pilots run on
    engine.close()

    store = Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}")
    backend = LocalBackend("local", LocalOptions(grace_period=1.0), local_backend.context)
    with Engine(store, {"local": backend}, settings=EngineSettings(refresh_interval=0.1)) as again:
        second = Coordinator(again, SETTINGS)
        try:
            resumed = WorkUnitService(wus.id, coordinator=second)
            assert resumed.wait(120)
            states = Counter(unit.state for unit in resumed.work_units)
            assert states == {Phase.COMPLETED: 300}, states
            assert [unit.id for unit in resumed.work_units] == [unit.id for unit in units]
            ran = ledger.read_text().split()
            assert Counter(ran) == {unit.id: 1 for unit in units}, "each unit ran exactly once"
            assert PilotJobService(pjs.id, coordinator=second).state == "ACTIVE"
            assert all(PilotJob(p.id, coordinator=second).state is Phase.EXECUTING for p in pilots)
        finally:
            for pilot in pilots:
                again.cancel(pilot.job_id)
            second.close()


def test_a_unit_no_pilot_can_fit_fails_at_once(coordinator: Coordinator) -> None:
    pjs = PilotJobService(coordinator=coordinator)
    pjs.create("local", PilotJobDescription(total_cpu_count=2))  # still starting: pending
    wus = service(coordinator, pjs)
    big = wus.submit(WorkUnitDescription(executable="true", total_cpu_count=3))
    assert isinstance(big, WorkUnit)
    assert (big.state, big.state_detail) == (Phase.ERROR, "TOO_BIG")
    assert "needs 3 cores" in (big.message or "") and "2 cores per node" in (big.message or "")


def test_units_fail_when_every_pilot_is_gone(coordinator: Coordinator) -> None:
    pjs, pilots = start_pilots(coordinator, 2)
    wus = service(coordinator, pjs)
    units = wus.submit_many([WorkUnitDescription(executable="sleep", arguments=["2"])] * 6)
    wait_for(lambda: any(u.state is Phase.EXECUTING for u in units), what="a running unit")
    pjs.cancel()
    assert wus.wait(30), "nothing may hang once every pilot is gone"
    assert {unit.state for unit in units} == {Phase.ERROR}
    assert {unit.state_detail for unit in units} == {"NO_PILOT"}
    assert "every pilot" in (units[-1].message or "")
    assert all(pilot.state is Phase.ABORTED for pilot in pilots)
    later = wus.submit(WorkUnitDescription(executable="true"))
    assert isinstance(later, WorkUnit) and later.state_detail == "NO_PILOT"


def test_a_unit_with_no_pilot_at_all_fails(coordinator: Coordinator) -> None:
    wus = WorkUnitService(coordinator=coordinator)
    unit = wus.submit(WorkUnitDescription(executable="true"))
    assert isinstance(unit, WorkUnit)
    assert (unit.state, unit.state_detail) == (Phase.ERROR, "NO_PILOT")
    assert "no pilot serves" in (unit.message or "")


def test_walltimes_of_units_and_pilots(coordinator: Coordinator) -> None:
    pjs, (pilot,) = start_pilots(coordinator, 1, wall_time_limit=120, drain_margin=5)
    wus = service(coordinator, pjs)
    too_long = wus.submit(WorkUnitDescription(executable="true", wall_time_limit=600))
    runaway = wus.submit(
        WorkUnitDescription(executable="sleep", arguments=["30"], wall_time_limit=1)
    )
    assert isinstance(too_long, WorkUnit) and isinstance(runaway, WorkUnit)
    assert runaway.wait(30) is Phase.ERROR
    assert runaway.state_detail == "TIMEOUT"
    assert (too_long.state, too_long.state_detail) == (Phase.QUEUED, "WAITING")
    pilot.cancel()
    assert too_long.wait(30) is Phase.ERROR and too_long.state_detail == "NO_PILOT"


def test_callbacks_on_state_and_state_detail(coordinator: Coordinator) -> None:
    pjs, _ = start_pilots(coordinator, 1)
    wus = service(coordinator, pjs)
    seen: list[tuple[str, object]] = []
    once: list[object] = []

    class Recorder(Callback):
        def cb(self, wu: object, member: str, value: object) -> bool:
            assert isinstance(wu, WorkUnit)
            seen.append((member, value))
            return True

    unit = wus.submit(WorkUnitDescription(executable="sleep", arguments=["0.3"]))
    assert isinstance(unit, WorkUnit)
    unit.set_callback("state", Recorder())
    unit.set_callback("state_detail", lambda wu, member, value: once.append(value) or False)
    assert unit.wait(30) is Phase.COMPLETED
    wait_for(lambda: ("state", Phase.COMPLETED) in seen, what="the last callback")
    assert [value for member, value in seen if member == "state"][-2:] == [
        Phase.EXECUTING,
        Phase.COMPLETED,
    ]
    assert len(once) == 1, "a callback returning False is removed"


def test_reinitialize_drains_the_old_pilot(coordinator: Coordinator, engine: Engine) -> None:
    pjs, (pilot,) = start_pilots(coordinator, 1)
    wus = service(coordinator, pjs)
    old_job = pilot.job_id
    pilot.reinitialize(PilotJobDescription(total_cpu_count=2))
    assert pilot.wait_active(60)
    assert pilot.job_id != old_job and pilot.description.total_cpu_count == 2
    units = wus.submit_many([WorkUnitDescription(executable="true")] * 20)
    assert wus.wait(60)
    assert {unit.pilot_id for unit in units} == {pilot.id}
    wait_for(lambda: engine.get(old_job).phase is Phase.COMPLETED, what="the old pilot to end")


@pytest.mark.skipif(not os.path.exists(PYTHON38), reason="no Python 3.8 here")
def test_the_agent_runs_on_python_3_8(coordinator: Coordinator) -> None:
    pjs, (pilot,) = start_pilots(coordinator, 1, python=PYTHON38)
    assert pilot.agent["python"].startswith("3.8.")
    wus = service(coordinator, pjs)
    units = wus.submit_many([WorkUnitDescription(executable="true")] * 20)
    assert wus.wait(60) and {unit.state for unit in units} == {Phase.COMPLETED}


def test_a_pilot_service_reconnects_by_id(coordinator: Coordinator) -> None:
    pjs, pilots = start_pilots(coordinator, 1)
    again = PilotJobService(pjs.id, coordinator=coordinator)
    assert [p.id for p in again.pilot_jobs] == [p.id for p in pilots]
    assert again.pilot_jobs[0].state_detail == "ACTIVE"


# -- refusals and pure parts ----------------------------------------------------------------


def test_what_a_backend_cannot_honour_is_refused_by_name(coordinator: Coordinator) -> None:
    pjs = PilotJobService(coordinator=coordinator)
    cases = {
        "queue": PilotJobDescription(queue="long"),
        "project": PilotJobDescription(project="astro"),
        "candidate_hosts": PilotJobDescription(candidate_hosts=["node1"]),
        "processes_per_host": PilotJobDescription(total_cpu_count=4, processes_per_host=2),
        "executable": PilotJobDescription(executable="/bin/sh"),
        "interactive": PilotJobDescription(interactive=True),
    }
    for field, description in cases.items():
        with pytest.raises(PilotDescriptionError) as caught:
            pjs.create("local", description)
        assert caught.value.field == field, (field, str(caught.value))
        assert f"PilotJobDescription.{field}" in str(caught.value)
    assert pjs.pilot_jobs == []


def test_unit_descriptions_are_checked() -> None:
    with pytest.raises(PilotDescriptionError, match="number_of_processes"):
        WorkUnitDescription(executable="app", number_of_processes=2).check_own()
    with pytest.raises(PilotDescriptionError, match="executable"):
        WorkUnitDescription().check_own()
    with pytest.raises(PilotDescriptionError, match="queue"):
        WorkUnitDescription(executable="app", queue="long").check_own()
    description = WorkUnitDescription()
    description.executable = "/bin/date"  # TROY style, checked on assignment
    with pytest.raises(ValueError):
        description.number_of_processes = 0
    mpi = WorkUnitDescription(executable="app", number_of_processes=4, spmd_variation="mpi")
    mpi.check_own()
    assert (mpi.cores, mpi.wire("u")["launcher"]) == (4, "mpirun")


def test_file_transfers_read_as_saga_does() -> None:
    assert parse_file_transfer("a.txt > in/a.txt") == (
        "in",
        parse_file_transfer("a.txt -> in/a.txt")[1],
    )
    direction, transfer = parse_file_transfer("/tmp/out.txt < res/out.txt")
    assert (direction, transfer.source, transfer.target) == ("out", "res/out.txt", "/tmp/out.txt")
    with pytest.raises(ValueError):
        parse_file_transfer("nothing")


def test_resource_urls() -> None:
    assert parse_rm("local://") == ("local", {})
    assert parse_rm("fork://localhost") == ("local", {})
    assert parse_rm("slurm://") == ("slurm", {})
    assert parse_rm("sge+ssh://me@login.example.org") == ("sge", {"host": "me@login.example.org"})
    assert parse_rm("slurm+ssh://me@login:2222") == ("slurm", {"host": "me@login", "port": 2222})
    assert parse_rm("pbs://head") == ("pbspro", {"host": "head"})
    for bad in ("nothing", "slurm+rsh://x", "local+ssh://me@host", "sge+ssh://"):
        with pytest.raises(ConfigError):
            parse_rm(bad)


def test_mailbox_batches_unpack() -> None:
    packed = b'a.json\x002\n{}b.json\x0012\n{"x": "\x00"}'
    assert _unpack(packed) == [("a.json", b"{}"), ("b.json", b'{"x": "\x00"}')]


def test_the_agent_is_python_3_8_and_stdlib_only() -> None:
    source = Path(agent_module.__file__).read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    imported = {
        name.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for name in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])
    }
    assert imported <= {
        "__future__", "json", "os", "signal", "socket", "subprocess", "sys", "threading",
        "time", "typing", "collections", "contextlib",
    }, imported  # fmt: skip
    if os.path.exists(PYTHON38):
        compiled = subprocess.run(
            [PYTHON38, "-c", "import sys; compile(open(sys.argv[1]).read(), 'a', 'exec')",
             agent_module.__file__],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        assert compiled.returncode == 0, compiled.stderr


def test_the_pilot_tables_on_every_database(store: Store) -> None:
    records = PilotStore(store)
    now = datetime.now(UTC)
    records.add_unit_service("wus1", "ACTIVE", 2, now, "pool")
    records.add_pilot_service("pjs1", "ACTIVE", now)
    records.link("wus1", "pjs1")
    records.link("wus1", "pjs1")
    assert records.links("wus1") == ["pjs1"]
    rows = [
        {
            "id": f"u{i}",
            "service_id": "wus1",
            "seq": i + 1,
            "description": {"executable": "x"},
            "cores": 1,
            "phase": "QUEUED",
            "detail": "WAITING",
            "message": None,
            "exit_code": None,
            "pilot_id": None,
            "attempts": 0,
            "retried": 0,
            "created": now,
            "started": None,
            "ended": None,
        }
        for i in range(3)
    ]
    records.add_units(rows)
    assert records.next_seq("wus1") == 4
    records.update_units(
        [
            {
                **rows[0], "phase": "COMPLETED", "exit_code": 0, "ended": now, "attempts": 1,
                "output": {"out": ["units/worker-1-0.out", 10, 25]},
            }
        ]
    )  # fmt: skip
    assert [r["phase"] for r in records.units(service_id="wus1")] == [
        "COMPLETED",
        "QUEUED",
        "QUEUED",
    ]
    assert records.units_by_id(["u0"])["u0"]["output"] == {"out": ["units/worker-1-0.out", 10, 25]}
    records.ask_cancel("u1")
    asked = records.news(["wus1"], "SUBMITTED")
    assert [(r["id"], r["cancel_asked"]) for r in asked] == [("u1", True)]
    assert [r["id"] for r in records.units(active_only=True)] == ["u1", "u2"]
    records.unlink("wus1", "pjs1")
    assert records.links("wus1") == []


def test_the_agent_drains_near_its_walltime_and_hands_back_on_termination(
    tmp_path: Path,
) -> None:
    shutil.copy(agent_module.__file__, tmp_path / "jobbridge_agent.py")
    (tmp_path / "in").mkdir()
    units = [
        {"id": "short", "argv": ["sleep", "0.1"], "walltime": 1},
        {"id": "long", "argv": ["sleep", "60"], "walltime": 60},
        {"id": "running", "argv": ["sleep", "60"]},
    ]
    (tmp_path / "in" / "1.json").write_text(json.dumps({"units": units}))
    config = {"pilot": "p", "cores": 2, "walltime": 30, "drain_margin": 27, "flush": 0.01}
    agent = subprocess.Popen(
        [sys.executable, "-I", "-S", str(tmp_path / "jobbridge_agent.py"), json.dumps(config)]
    )
    try:
        wait_for(lambda: _agent_says(tmp_path)[0].get("draining"), what="draining")
        words = _agent_says(tmp_path)[1]
        assert ("short", "EXITED") in words and ("running", "RUNNING") in words
        assert ("long", "RETURNED") in words, words
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(10) == 143
    finally:
        agent.kill()
    status, words = _agent_says(tmp_path)
    assert ("running", "RETURNED") in words, "an unfinished unit is handed back"
    assert status["running"] == 0


def _agent_says(root: Path) -> tuple[dict[str, object], list[tuple[str, str]]]:
    status: dict[str, object] = {}
    words = []
    for path in sorted((root / "out").glob("*.json")):
        message = json.loads(path.read_text())
        status = message["agent"]
        words += [(update[0], update[2]) for update in message["updates"]]
    return status, words
