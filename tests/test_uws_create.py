"""Creating a UWS job: the job and the service's record of it are written in one transaction,
uploads are in place before, and control fields are checked before anything is written.
On a real local backend, over SQLite and PostgreSQL alike."""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from jobbridge import Engine, EngineSettings, JobSpec, Phase, Store
from jobbridge.backends.local import LocalBackend
from jobbridge.job import Job, new_job_id
from jobbridge.store.uws import UwsJobRecord, UwsStore
from jobbridge.uws import create_app
from jobbridge.uws.service import UwsService
from tests.uws_support import add_user, bearer, service_config

BASE = "http://testserver"


@pytest.fixture
def service(
    store_url: str, local_backend: LocalBackend, isolated_data_dir: Path
) -> Iterator[tuple[TestClient, Engine, UwsService]]:
    engine = Engine(
        Store(store_url), {"local": local_backend}, settings=EngineSettings(refresh_interval=0.1)
    )
    app = create_app(service_config(isolated_data_dir), engine=engine)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        client.headers.update(bearer(add_user(engine, "alice")))
        yield client, engine, app.state.uws.service
    engine.close()


def uploads(service: UwsService) -> list[str]:
    """Every file the service keeps for uploads, relative to its upload directory."""
    root = service.uploads_dir
    if not root.exists():
        return []
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def records(service: UwsService) -> list[str]:
    return [ref.job_id for ref in service.uws.job_list("sum", every_owner=True)]


def finish(client: TestClient, url: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    phase = client.get(f"{url}/phase").text
    while phase in {"QUEUED", "EXECUTING"} and time.monotonic() < deadline:
        client.get(url, params={"WAIT": "5"})
        phase = client.get(f"{url}/phase").text
    return phase


def test_a_new_job_has_its_record_and_its_uploads_from_the_start(
    service: tuple[TestClient, Engine, UwsService],
) -> None:
    client, engine, uws = service
    response = client.post(
        "/jobs/sum", data={"RUNID": "r1"}, files={"numbers": ("n.txt", b"1\n2\n")}
    )
    assert response.status_code == 303, response.text
    job_id = response.headers["location"].rsplit("/", 1)[1]
    job = engine.get(job_id)
    record = uws.uws.get_job(job_id)
    assert record is not None and record.run_id == "r1" and record.owner == "alice"
    assert record.created == job.created
    upload = uws.uploads_dir / job_id / "numbers"
    assert upload.read_bytes() == b"1\n2\n"
    assert [t.source for t in job.spec.stage_in] == [str(upload)]
    [numbers] = [p for p in record.parameters if p.id == "numbers"]
    assert numbers.local_path == str(upload)
    # the spec it was created with is its final one: no second write changed it
    assert [(e.old_phase, e.new_phase) for e in engine.store.events(job_id)] == [
        (None, Phase.PENDING)
    ]
    assert uploads(uws) == [f"{job_id}/numbers"]


def test_a_failed_record_write_leaves_neither_job_nor_record_nor_upload(
    service: tuple[TestClient, Engine, UwsService], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, engine, uws = service
    kept = client.post("/jobs/sum", data={"count": "2"}).headers["location"].rsplit("/", 1)[1]
    add_job_within = uws.uws.add_job_within
    written: list[str] = []

    def violating(conn: sa.Connection, record: UwsJobRecord) -> None:
        written.append(record.job_id)
        # the job's row is in the transaction already; the record breaks a NOT NULL
        assert conn.execute(sa.text("SELECT count(*) FROM jobs")).scalar_one() == 2
        add_job_within(conn, record.model_copy(update={"definition": None}))

    monkeypatch.setattr(uws.uws, "add_job_within", violating)
    with pytest.raises(sa.exc.IntegrityError):
        client.post("/jobs/sum", data={"PHASE": "RUN"}, files={"numbers": ("n.txt", b"7\n")})
    assert len(written) == 1
    assert [job.id for job in engine.store.find()] == [kept]
    assert records(uws) == [kept]
    assert uws.uws.get_job(written[0]) is None
    assert uploads(uws) == []


def test_a_failing_write_of_any_kind_rolls_the_job_back(
    service: tuple[TestClient, Engine, UwsService], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, engine, uws = service

    def failing(conn: sa.Connection, record: UwsJobRecord) -> None:
        raise RuntimeError("the disk is full")

    monkeypatch.setattr(uws.uws, "add_job_within", failing)
    with pytest.raises(RuntimeError, match="disk is full"):
        client.post("/jobs/sum", data={"count": "3"})
    assert engine.store.count() == 0
    assert records(uws) == []


@pytest.mark.parametrize(
    ("fields", "complaint"),
    [
        ({"PHASE": "ABORT"}, "PHASE=ABORT"),
        ({"phase": "suspend"}, "only PHASE=RUN"),
        ({"PHASE": "ABORT", "EXECUTIONDURATION": "60"}, "PHASE=ABORT"),
        ({"PHASE": "RUN", "EXECUTIONDURATION": "soon"}, "EXECUTIONDURATION"),
        ({"PHASE": "RUN", "DESTRUCTION": "never"}, "DESTRUCTION"),
        ({"PHASE": "RUN", "colour": "red"}, "colour"),
    ],
)
def test_a_refused_creation_writes_nothing(
    service: tuple[TestClient, Engine, UwsService], fields: dict[str, str], complaint: str
) -> None:
    client, engine, uws = service
    kept = client.post("/jobs/sum", files={"numbers": ("n.txt", b"1\n")}).headers["location"]
    before = ([job.id for job in engine.store.find()], records(uws), uploads(uws))
    response = client.post("/jobs/sum", data=fields, files={"numbers": ("m.txt", b"2\n")})
    assert response.status_code == 400
    assert complaint in response.text
    assert ([job.id for job in engine.store.find()], records(uws), uploads(uws)) == before
    listing = client.get("/jobs/sum", headers={"Accept": "application/json"}).json()
    assert [job["id"] for job in listing["jobs"]] == [kept.rsplit("/", 1)[1]]


def test_phase_run_at_creation_in_any_case(
    service: tuple[TestClient, Engine, UwsService],
) -> None:
    client, _engine, _uws = service
    url = client.post("/jobs/sum", data={"phase": " run ", "count": "2"}).headers["location"]
    assert finish(client, url) == "COMPLETED"


@pytest.mark.parametrize("cancel_of_an_ended_job", ["raises", "returns the job"])
def test_abort_of_an_ended_job_is_harmless_however_the_engine_answers(
    service: tuple[TestClient, Engine, UwsService],
    monkeypatch: pytest.MonkeyPatch,
    cancel_of_an_ended_job: str,
) -> None:
    client, engine, _uws = service
    if cancel_of_an_ended_job == "returns the job":
        cancel = engine.cancel

        def lenient_cancel(job_id: str) -> Job:
            job = engine.get(job_id)
            return job if job.phase.is_final else cancel(job_id)

        monkeypatch.setattr(engine, "cancel", lenient_cancel)
    done = client.post("/jobs/sum", data={"PHASE": "RUN", "count": "2"}).headers["location"]
    assert finish(client, done) == "COMPLETED"
    again = client.post(f"{done}/phase", data={"PHASE": "ABORT"})
    assert again.status_code == 303 and again.headers["location"] == done
    assert client.get(f"{done}/phase").text == "COMPLETED"
    assert [e.new_phase for e in engine.store.events(done.rsplit("/", 1)[1])][-1] is (
        Phase.COMPLETED
    )

    running = client.post("/jobs/sum", data={"PHASE": "RUN", "sleep": "60"}).headers["location"]
    assert client.post(f"{running}/phase", data={"PHASE": "ABORT"}).status_code == 303
    assert finish(client, running) == "ABORTED"
    again = client.post(f"{running}/phase", data={"PHASE": "ABORT"})
    assert again.status_code == 303 and again.headers["location"] == running
    assert client.post(running, data={"PHASE": "ABORT"}).status_code == 303
    pending = client.post("/jobs/sum").headers["location"]
    assert client.post(f"{pending}/phase", data={"PHASE": "ABORT"}).status_code == 303
    assert client.get(f"{pending}/phase").text == "ABORTED"


def test_the_record_is_written_on_the_callers_connection(
    store_url: str, local_backend: LocalBackend
) -> None:
    """The store method on its own: nothing is written if the caller's transaction fails."""
    store = Store(store_url)
    try:
        users = UwsStore(store)
        engine = Engine(store, {"local": local_backend})
        job_id = new_job_id()

        def write(conn: sa.Connection, added: Sequence[Job]) -> None:
            assert [job.id for job in added] == [job_id]
            users.add_job_within(
                conn,
                UwsJobRecord(
                    job_id=job_id, definition="d", owner=None, run_id=None, parameters=(),
                    execution_duration=1, quote=None, created=added[0].created,
                ),
            )  # fmt: skip

        job = engine.create(JobSpec(executable="true"), job_id=job_id, also=write)
        record = users.get_job(job_id)
        assert record is not None and record.created == job.created
    finally:
        store.close()
