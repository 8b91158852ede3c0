"""UWS on pilots: job definitions whose backend is a pilot pool, through the service's HTTP
API on real local pilots: a job completes with its results, a failing one ends ERROR with
its exit code, an aborted one stops its unit, and a service restart loses nothing; and a pool
of pilots on the real SLURM."""

from __future__ import annotations

import contextlib
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobbridge import Config, Engine, EngineSettings, Phase, Store
from jobbridge.backends.base import BackendContext
from jobbridge.config import BackendConfig
from jobbridge.errors import JobbridgeError, LimitExceededError
from jobbridge.pilot import Coordinator
from jobbridge.pilot.pool import PilotPoolBackend, PilotPoolOptions
from jobbridge.spec import JobSpec
from jobbridge.store.pilots import PilotStore
from jobbridge.uws import create_app
from tests.conftest import cluster_env
from tests.test_batch_slurm import slurm_backend
from tests.uws_support import add_user, bearer, service_config

BASE = "http://testserver"

DEFINITIONS = {
    "hello": """
        parameters: {who: {type: string, required: true}}
        command: [sh, -c, 'echo "hello $1 from $$JOBBRIDGE_PILOT_ID"; echo 42 > total.txt', sh,
                  "${who}"]
        backend: quick
        execution_duration: {default: 60}
        results:
          - {glob: total.txt, name: total, media_type: text/plain}
          - {glob: stdout.txt, name: stdout, media_type: text/plain}
    """,
    "failing": """
        command: [sh, -c, 'echo "it went wrong" >&2; exit 3']
        backend: quick
        execution_duration: {default: 60}
    """,
    "slow": """
        parameters: {seconds: {type: int, default: 60}}
        command: [sh, -c, 'sleep "$1"; echo slept', sh, "${seconds}"]
        backend: quick
        execution_duration: {default: 120}
        results: [{glob: stdout.txt, name: stdout, media_type: text/plain}]
    """,
}


@pytest.fixture
def config(isolated_data_dir: Path, tmp_path: Path) -> Config:
    directory = tmp_path / "definitions"
    directory.mkdir()
    for name, text in DEFINITIONS.items():
        (directory / f"{name}.yaml").write_text(textwrap.dedent(text))
    base = service_config(isolated_data_dir, definitions_dir=str(directory))
    backends = dict(base.backends)
    backends["quick"] = BackendConfig.model_validate(
        {"kind": "pilot", "pilot_backend": "local", "pilots": 1, "cores": 2,
         "walltime": "1:00:00", "min_refresh_interval": 0.1}
    )  # fmt: skip
    return base.model_copy(update={"backends": backends})


@contextlib.contextmanager
def service(config: Config) -> Iterator[tuple[TestClient, Engine]]:
    engine = Engine.from_config(config)
    try:
        with TestClient(create_app(config, engine=engine), base_url=BASE) as client:
            client.follow_redirects = False
            yield client, engine
    finally:
        engine.close()


@pytest.fixture
def stop_pilots(config: Config) -> Iterator[None]:
    yield
    with contextlib.closing(Engine.from_config(config)) as engine:
        for row in PilotStore(engine.store).pilots(done=None):
            with contextlib.suppress(JobbridgeError):
                engine.cancel(row["job_id"])


def run(client: TestClient, definition: str, **fields: str) -> str:
    response = client.post(f"/jobs/{definition}", data={"PHASE": "RUN", **fields})
    assert response.status_code == 303, response.text
    return str(response.headers["location"])


def phase_after(client: TestClient, url: str, waiting: set[str], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    phase = client.get(f"{url}/phase").text
    while phase in waiting and time.monotonic() < deadline:
        client.get(url, params={"WAIT": "2", "PHASE": phase})
        phase = client.get(f"{url}/phase").text
    return phase


def unit_phase(engine: Engine, job_id: str) -> str:
    return str(PilotStore(engine.store).units_by_id([job_id])[job_id]["phase"])


@pytest.mark.usefixtures("stop_pilots")
def test_jobs_of_a_definition_run_as_units_on_the_pools_pilots(config: Config) -> None:
    with service(config) as (client, engine):
        client.headers.update(bearer(add_user(engine, "alice")))
        url = run(client, "hello", who="world")
        assert phase_after(client, url, {"PENDING", "QUEUED", "EXECUTING"}) == "COMPLETED"
        job_id = url.rsplit("/", 1)[1]
        job = engine.get(job_id)
        assert job.backend == "quick" and job.exit_code == 0
        [pilot] = PilotStore(engine.store).pilots(done=False)
        assert pilot["service_id"] == engine.backend("quick").pilot_service_id  # type: ignore[attr-defined]
        assert unit_phase(engine, job_id) == "COMPLETED"
        stdout = client.get(f"{url}/results/stdout")
        assert stdout.text == f"hello world from {pilot['id']}\n"
        assert client.get(f"{url}/results/total").text == "42\n"

        failing = run(client, "failing")
        assert phase_after(client, failing, {"PENDING", "QUEUED", "EXECUTING"}) == "ERROR"
        ended = engine.get(failing.rsplit("/", 1)[1])
        assert ended.exit_code == 3 and ended.detail == "FAILED"
        assert "it went wrong" in client.get(f"{failing}/error").text

        slow = run(client, "slow")
        assert phase_after(client, slow, {"PENDING", "QUEUED"}) == "EXECUTING"
        slow_id = slow.rsplit("/", 1)[1]
        assert client.post(f"{slow}/phase", data={"PHASE": "ABORT"}).status_code == 303
        assert client.get(f"{slow}/phase").text == "ABORTED"
        deadline = time.monotonic() + 30
        while unit_phase(engine, slow_id) != "ABORTED":
            assert time.monotonic() < deadline, unit_phase(engine, slow_id)
            time.sleep(0.1)
        # the pool still has its one pilot, which ran all three
        assert len(PilotStore(engine.store).pilots(done=None)) == 1


@pytest.mark.usefixtures("stop_pilots")
def test_a_service_restart_loses_no_job_on_a_pool(config: Config) -> None:
    with service(config) as (client, engine):
        token = add_user(engine, "alice")
        client.headers.update(bearer(token))
        url = run(client, "slow", seconds="3")
        assert phase_after(client, url, {"PENDING", "QUEUED"}) == "EXECUTING"
        [before] = PilotStore(engine.store).pilots(done=False)
    with service(config) as (client, engine):
        client.headers.update(bearer(token))
        assert phase_after(client, url, {"EXECUTING"}) == "COMPLETED"
        assert client.get(f"{url}/results/stdout").text == "slept\n"
        [after] = PilotStore(engine.store).pilots(done=None)
        assert after["id"] == before["id"], "the service took its running pilot up again"


def test_a_pool_refuses_what_its_pilots_cannot_run(config: Config) -> None:
    with contextlib.closing(Engine.from_config(config)) as engine:
        pool = engine.backend("quick")
        assert isinstance(pool, PilotPoolBackend)
        with pytest.raises(LimitExceededError, match="cores of a pilot node"):
            pool.check(JobSpec(executable="true", resources={"cores_per_process": 3}))
        with pytest.raises(LimitExceededError, match="walltime of a pilot"):
            pool.check(JobSpec(executable="true", resources={"walltime": "2:00:00"}))
        with pytest.raises(JobbridgeError, match="queue"):
            pool.check(JobSpec(executable="true", queue="short"))
        job = engine.create(JobSpec(executable="true"), backend="quick")
        assert job.phase is Phase.PENDING


@pytest.mark.slurm
def test_a_pool_of_slurm_pilots_runs_a_definition(config: Config, isolated_data_dir: Path) -> None:
    cluster_env("slurm")
    pool = PilotPoolBackend(
        "quick",
        PilotPoolOptions.model_validate(
            {
                "pilot_backend": "slurm",
                "cores": 1,
                "walltime": "0:10:00",
                "min_refresh_interval": 0.1,
            }
        ),
        BackendContext(isolated_data_dir / "jobs"),
    )
    engine = Engine(
        Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}"),
        {"slurm": slurm_backend(isolated_data_dir), "quick": pool},
        settings=EngineSettings(refresh_interval=0.2),
        default_backend="slurm",
    )
    try:
        with TestClient(create_app(config, engine=engine), base_url=BASE) as client:
            client.follow_redirects = False
            client.headers.update(bearer(add_user(engine, "alice")))
            url = run(client, "hello", who="slurm")
            assert phase_after(client, url, {"PENDING", "QUEUED", "EXECUTING"}, 120) == "COMPLETED"
            [pilot] = PilotStore(engine.store).pilots(done=False)
            pilot_job = engine.get(pilot["job_id"])
            assert pilot_job.backend == "slurm" and pilot_job.native_id
            stdout = client.get(f"{url}/results/stdout").text
            assert stdout == f"hello slurm from {pilot['id']}\n"
            failing = run(client, "failing")
            assert phase_after(client, failing, {"PENDING", "QUEUED", "EXECUTING"}, 60) == "ERROR"
            assert engine.get(failing.rsplit("/", 1)[1]).exit_code == 3
    finally:
        for job in engine.store.active():
            with contextlib.suppress(JobbridgeError):
                engine.cancel(job.id)
        engine.close()


@pytest.mark.usefixtures("stop_pilots")
def test_another_process_submits_to_a_pool_and_aborts_through_the_store(config: Config) -> None:
    """Replicas: the engine that submits does not coordinate; the one that coordinates takes
    its units up and carries out its cancels, both through the store."""
    with (
        contextlib.closing(Engine.from_config(config)) as coordinating,
        contextlib.closing(Engine.from_config(config)) as other,
        Coordinator(coordinating),
    ):
        done = other.submit(JobSpec(executable="sh", arguments=["-c", "echo $JOBBRIDGE_JOB_ID"]),
                            backend="quick")  # fmt: skip
        slow = other.submit(JobSpec(executable="sleep", arguments=["60"]), backend="quick")
        [finished] = other.wait([done.id], timeout=60)
        assert finished.phase is Phase.COMPLETED, finished
        assert other.read_output(done.id) == f"{done.id}\n".encode()
        deadline = time.monotonic() + 60
        while other.get(slow.id).phase is not Phase.EXECUTING:
            assert time.monotonic() < deadline
            other.refresh()
            time.sleep(0.1)
        assert other.cancel(slow.id).phase is Phase.ABORTED
        while unit_phase(other, slow.id) != "ABORTED":
            assert time.monotonic() < deadline, unit_phase(other, slow.id)
            time.sleep(0.1)
