"""The UWS 1.1 binding through the real FastAPI app (TestClient), on a real local backend and
SQLite store; every XML document is validated against UWS.xsd 1.1."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobbridge import Engine, Phase
from jobbridge.uws import create_app
from tests.uws_support import NS, add_user, basic, bearer, service_config, valid_uws

BASE = "http://testserver"


@pytest.fixture
def app_engine(engine: Engine, isolated_data_dir: Path) -> Iterator[tuple[TestClient, Engine]]:
    app = create_app(service_config(isolated_data_dir), engine=engine)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        yield client, engine


@pytest.fixture
def alice(app_engine: tuple[TestClient, Engine]) -> TestClient:
    client, engine = app_engine
    client.headers.update(bearer(add_user(engine, "alice")))
    return client


def create(client: TestClient, **fields: str) -> str:
    response = client.post("/jobs/sum", data=fields)
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert location.startswith(f"{BASE}/jobs/sum/")
    return location


def finish(client: TestClient, url: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    phase = client.get(f"{url}/phase").text
    while phase in {"QUEUED", "EXECUTING"} and time.monotonic() < deadline:
        client.get(url, params={"WAIT": "5"})
        phase = client.get(f"{url}/phase").text
    return phase


def test_a_job_runs_with_its_parameters_and_serves_its_results(alice: TestClient) -> None:
    url = create(alice, count="10", scale="2", label="it's $(x) `y`", RUNID="run-1")
    job = valid_uws(alice.get(url).content)
    assert job.tag == f"{{{NS['uws']}}}job" and job.get("version") == "1.1"
    assert job.findtext("uws:phase", namespaces=NS) == "PENDING"
    assert job.findtext("uws:runId", namespaces=NS) == "run-1"
    assert job.findtext("uws:ownerId", namespaces=NS) == "alice"
    assert job.findtext("uws:creationTime", namespaces=NS).endswith("Z")
    params = {p.get("id"): p.text for p in job.iterfind("uws:parameters/uws:parameter", NS)}
    assert params == {"count": "10", "scale": "2.0", "label": "it's $(x) `y`"}
    assert alice.post(f"{url}/phase", data={"PHASE": "RUN"}).status_code == 303
    assert finish(alice, url) == "COMPLETED"
    results = valid_uws(alice.get(f"{url}/results").content)
    refs = {r.get("id"): r for r in results.iterfind("uws:result", NS)}
    assert set(refs) == {"total", "stdout"}
    total = refs["total"]
    assert total.get("mime-type") == "text/plain"
    href = total.get(f"{{{NS['xlink']}}}href")
    body = alice.get(href)
    assert body.text == "it's $(x) `y` 110\n"
    assert body.headers["content-type"].startswith("text/plain")
    assert int(total.get("size")) == len(body.content)
    part = alice.get(href, headers={"Range": "bytes=0-3"})
    assert part.status_code == 206 and part.content == b"it's"
    assert part.headers["content-range"] == f"bytes 0-3/{len(body.content)}"
    tail = alice.get(href, headers={"Range": "bytes=-4"})
    assert tail.content == b"110\n"
    assert alice.get(href, headers={"Range": "bytes=999-"}).status_code == 416


def test_phase_run_at_creation_and_the_job_document_in_json(alice: TestClient) -> None:
    url = create(alice, PHASE="RUN", count="3")
    assert finish(alice, url) == "COMPLETED"
    data = alice.get(url, headers={"Accept": "application/json"}).json()
    assert data["phase"] == "COMPLETED" and data["ownerId"] == "alice"
    assert data["creationTime"].endswith("Z") and data["endTime"].endswith("Z")
    assert [r["id"] for r in data["results"]] == ["total", "stdout"]
    listing = alice.get("/jobs/sum", headers={"Accept": "application/json"}).json()
    assert listing["version"] == "1.1"
    assert [j["id"] for j in listing["jobs"]] == [url.rsplit("/", 1)[1]]


def test_job_list_filters_phase_after_last_and_hides_archived(alice: TestClient) -> None:
    first = create(alice)
    time.sleep(0.01)
    second = create(alice, PHASE="RUN", count="2")
    time.sleep(0.01)
    third = create(alice)
    ids = [u.rsplit("/", 1)[1] for u in (first, second, third)]
    finish(alice, second)

    def listed(**params: str | list[str]) -> list[str]:
        root = valid_uws(alice.get("/jobs/sum", params=params).content)
        assert root.get("version") == "1.1"
        return [ref.get("id") for ref in root.iterfind("uws:jobref", NS)]

    assert listed() == ids
    assert listed(PHASE="PENDING") == [ids[0], ids[2]]
    assert listed(PHASE=["PENDING", "COMPLETED"]) == ids
    assert listed(LAST="2") == [ids[2], ids[1]]
    created = valid_uws(alice.get(first).content).findtext("uws:creationTime", namespaces=NS)
    assert listed(AFTER=created) == ids[1:]
    assert listed(PHASE="ARCHIVED") == []
    ref = valid_uws(alice.get("/jobs/sum").content).find("uws:jobref", NS)
    assert ref.get(f"{{{NS['xlink']}}}href") == first
    assert ref.findtext("uws:ownerId", namespaces=NS) == "alice"
    assert alice.get("/jobs/sum", params={"PHASE": "RUNNING"}).status_code == 400
    assert alice.get("/jobs/sum", params={"LAST": "-3"}).status_code == 400
    assert alice.get("/jobs/sum", params={"AFTER": "yesterday"}).status_code == 400


def test_parameters_change_only_while_pending(alice: TestClient) -> None:
    url = create(alice, count="5")
    assert alice.post(url, data={"count": "7"}).status_code == 303
    assert alice.post(f"{url}/parameters", data={"scale": "3"}).status_code == 303
    assert alice.put(f"{url}/parameters/label", content=b"sum").status_code == 303
    doc = valid_uws(alice.get(f"{url}/parameters").content)
    values = {p.get("id"): p.text for p in doc.iterfind("uws:parameter", NS)}
    assert values == {"count": "7", "scale": "3.0", "label": "sum"}
    assert alice.get(f"{url}/parameters/count").text == "7"
    bad = alice.post(url, data={"count": "many"})
    assert bad.status_code == 400 and "count" in bad.text
    assert alice.post(url, data={"colour": "red"}).status_code == 400
    alice.post(f"{url}/phase", data={"PHASE": "RUN"})
    assert finish(alice, url) == "COMPLETED"
    assert alice.post(url, data={"count": "9"}).status_code == 403
    assert (
        alice.post(f"{url}/executionduration", data={"EXECUTIONDURATION": "5"}).status_code == 403
    )
    assert alice.get(f"{url}/results/total").text == "sum 84\n"


def test_execution_duration_destruction_quote_owner_and_error(alice: TestClient) -> None:
    url = create(alice)
    assert alice.get(f"{url}/executionduration").text == "600"
    alice.post(f"{url}/executionduration", data={"EXECUTIONDURATION": "99999"})
    assert alice.get(f"{url}/executionduration").text == "3600"  # the definition's maximum
    alice.post(f"{url}/executionduration", data={"EXECUTIONDURATION": "30"})
    assert alice.get(f"{url}/executionduration").text == "30"
    assert (
        alice.post(f"{url}/executionduration", data={"EXECUTIONDURATION": "x"}).status_code == 400
    )
    when = datetime.now(UTC) + timedelta(days=2)
    text = when.strftime("%Y-%m-%dT%H:%M:%S.%f")  # as pyvo sends it: UTC, no zone
    assert alice.post(f"{url}/destruction", data={"DESTRUCTION": text}).status_code == 303
    shown = alice.get(f"{url}/destruction").text
    assert shown.endswith("Z") and shown.startswith(when.strftime("%Y-%m-%dT%H:%M:%S"))
    assert alice.post(f"{url}/destruction", data={"DESTRUCTION": "soon"}).status_code == 400
    assert alice.get(f"{url}/quote").text == ""
    assert alice.get(f"{url}/owner").text == "alice"
    assert alice.get(f"{url}/phase").headers["content-type"].startswith("text/plain")
    assert alice.get(f"{url}/error").status_code == 404
    response = alice.post(
        "/jobs/sum", data={"PHASE": "RUN"}, files={"numbers": ("n.txt", b"one\ntwo\n")}
    )
    failing = response.headers["location"]
    assert finish(alice, failing) == "ERROR"
    job = valid_uws(alice.get(failing).content)
    summary = job.find("uws:errorSummary", NS)
    assert summary is not None and summary.get("hasDetail") == "true"
    error = alice.get(f"{failing}/error")
    assert error.status_code == 200 and "exit code 1" in error.text
    assert "could not convert string to float" in error.text  # the end of its stderr


def test_abort_delete_and_illegal_actions(alice: TestClient) -> None:
    url = create(alice, PHASE="RUN", sleep="60")
    assert alice.post(f"{url}/phase", data={"PHASE": "ABORT"}).status_code == 303
    assert finish(alice, url) == "ABORTED"
    assert alice.post(f"{url}/phase", data={"PHASE": "RUN"}).status_code == 403
    again = alice.post(f"{url}/phase", data={"PHASE": "ABORT"})  # harmless, as UWS wants
    assert again.status_code == 303 and again.headers["location"] == url
    assert alice.post(f"{url}/phase", data={"PHASE": "SUSPEND"}).status_code == 400
    response = alice.post(url, data={"ACTION": "DELETE"})
    assert response.status_code == 303 and response.headers["location"] == f"{BASE}/jobs/sum"
    assert alice.get(url).status_code == 404
    other = create(alice)
    response = alice.delete(other)
    assert response.status_code == 303 and response.headers["location"] == f"{BASE}/jobs/sum"
    assert alice.get(other).status_code == 404
    assert alice.get("/jobs/sum/nosuchjob").status_code == 404
    assert alice.get("/jobs/nosuchdefinition").status_code == 404
    assert alice.post(url, data={"ACTION": "EXPLODE"}).status_code == 404


def test_uploads_are_parameters_by_reference(alice: TestClient) -> None:
    response = alice.post(
        "/jobs/sum",
        data={"PHASE": "RUN", "label": "file"},
        files={"numbers": ("my numbers.txt", b"1\n2\n3.5\n", "text/plain")},
    )
    assert response.status_code == 303
    url = response.headers["location"]
    assert finish(alice, url) == "COMPLETED"
    doc = valid_uws(alice.get(f"{url}/parameters").content)
    numbers = doc.find("uws:parameter[@id='numbers']", NS)
    assert numbers.get("byReference") == "true"
    assert numbers.text == f"{url}/parameters/numbers"
    assert alice.get(numbers.text).content == b"1\n2\n3.5\n"
    assert alice.get(f"{url}/results/total").text == "file 6.5\n"


def test_wait_blocks_until_the_phase_changes(alice: TestClient) -> None:
    url = create(alice, PHASE="RUN", sleep="1")
    deadline = time.monotonic() + 30
    phase = "QUEUED"
    while phase != "EXECUTING" and time.monotonic() < deadline:
        phase = valid_uws(alice.get(url, params={"WAIT": "10"}).content).findtext(
            "uws:phase", namespaces=NS
        )
    assert phase == "EXECUTING"
    begun = time.monotonic()
    job = valid_uws(alice.get(url, params={"WAIT": "-1"}).content)
    assert job.findtext("uws:phase", namespaces=NS) == "COMPLETED"
    assert time.monotonic() - begun < 15  # the configured max_wait is 30
    # a final job returns at once, whatever WAIT says
    begun = time.monotonic()
    alice.get(url, params={"WAIT": "20"})
    assert time.monotonic() - begun < 2
    # PHASE that is not the job's: no blocking either
    pending = create(alice)
    begun = time.monotonic()
    alice.get(pending, params={"WAIT": "20", "PHASE": "EXECUTING"})
    assert time.monotonic() - begun < 2
    assert alice.get(pending, params={"WAIT": "soon"}).status_code == 400


def test_users_see_only_their_own_jobs_and_admins_see_all(
    app_engine: tuple[TestClient, Engine],
) -> None:
    client, engine = app_engine
    alice_token = add_user(engine, "alice")
    bob_token = add_user(engine, "bob")
    root_token = add_user(engine, "root", admin=True)
    response = client.post("/jobs/sum", data={"count": "4"}, headers=bearer(alice_token))
    url = response.headers["location"]
    bob = bearer(bob_token)
    assert client.get("/jobs/sum", headers=bob).content.count(b"jobref") == 0
    for sub in [
        "",
        "/phase",
        "/executionduration",
        "/destruction",
        "/quote",
        "/error",
        "/parameters",
        "/parameters/count",
        "/results",
        "/results/total",
        "/owner",
    ]:
        assert client.get(url + sub, headers=bob).status_code in (403, 404), sub
    for sub, data in [
        ("", {"count": "1"}),
        ("", {"ACTION": "DELETE"}),
        ("/phase", {"PHASE": "RUN"}),
        ("/executionduration", {"EXECUTIONDURATION": "1"}),
        ("/destruction", {"DESTRUCTION": "2030-01-01T00:00:00Z"}),
        ("/parameters", {"count": "2"}),
    ]:
        assert client.post(url + sub, data=data, headers=bob).status_code in (403, 404), sub
    assert client.put(f"{url}/parameters/count", content=b"3", headers=bob).status_code == 403
    assert client.delete(url, headers=bob).status_code == 403
    assert client.get(url, headers=bearer(root_token)).status_code == 200
    listing = valid_uws(client.get("/jobs/sum", headers=bearer(root_token)).content)
    assert len(listing.findall("uws:jobref", NS)) == 1
    assert client.get(url, headers=basic("alice", alice_token)).status_code == 200
    assert client.get(url, headers=basic("bob", alice_token)).status_code == 401
    assert client.get(url).status_code == 401
    assert client.get(url, headers=bearer("forged")).status_code == 401
    assert engine.get(url.rsplit("/", 1)[1]).phase is Phase.PENDING


def test_anonymous_access_only_when_configured(engine: Engine, isolated_data_dir: Path) -> None:
    app = create_app(service_config(isolated_data_dir, anonymous=True), engine=engine)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        url = create(client)
        job = valid_uws(client.get(url).content)
        owner = job.find("uws:ownerId", NS)
        assert owner.get("{http://www.w3.org/2001/XMLSchema-instance}nil") == "true"


def test_destroyed_jobs_disappear_with_their_files(alice: TestClient) -> None:
    url = create(alice, PHASE="RUN", count="2")
    assert finish(alice, url) == "COMPLETED"
    soon = (datetime.now(UTC) + timedelta(seconds=1)).isoformat()
    alice.post(f"{url}/destruction", data={"DESTRUCTION": soon})
    deadline = time.monotonic() + 20
    while alice.get(url).status_code == 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert alice.get(url).status_code == 404
    assert valid_uws(alice.get("/jobs/sum").content).find("uws:jobref", NS) is None


def test_service_documents(alice: TestClient) -> None:
    schema = alice.get("/openapi.json").json()
    assert "/jobs/{definition}/{job_id}" in schema["paths"]
    assert b"UWS#1.1" in alice.get("/capabilities").content
    assert b"<vosi:available>true</vosi:available>" in alice.get("/availability").content
