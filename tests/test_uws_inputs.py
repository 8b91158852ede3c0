"""Bad input is a 4xx with a text/plain message, never a 500; RUNID travels wherever UWS
lets a parameter travel."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobbridge import Engine
from jobbridge.uws import create_app
from tests.uws_support import NS, add_user, bearer, service_config, valid_uws

BASE = "http://testserver"


@pytest.fixture
def alice(engine: Engine, isolated_data_dir: Path) -> Iterator[TestClient]:
    app = create_app(service_config(isolated_data_dir), engine=engine)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        client.headers.update(bearer(add_user(engine, "alice")))
        yield client


def plain_error(response: object, status: int) -> str:
    assert response.status_code == status, (response.status_code, response.text)  # type: ignore[attr-defined]
    content_type = response.headers["content-type"]  # type: ignore[attr-defined]
    assert content_type.startswith("text/plain"), content_type
    text: str = response.text  # type: ignore[attr-defined]
    assert text.strip() and "Traceback" not in text
    return text


def jobs(client: TestClient) -> list[str]:
    root = valid_uws(client.get("/jobs/sum").content)
    return [ref.get("id") for ref in root.iterfind("uws:jobref", NS)]


@pytest.mark.parametrize("last", [str(2**63), str(2**64 + 5), "0", "-1", "1e3", "x"])
def test_last_out_of_range_is_400(alice: TestClient, last: str) -> None:
    assert "LAST" in plain_error(alice.get("/jobs/sum", params={"LAST": last}), 400)


@pytest.mark.parametrize("wait", [str(2**63), "-2", "1.5"])
def test_wait_out_of_range_is_400(alice: TestClient, wait: str) -> None:
    url = alice.post("/jobs/sum").headers["location"]
    assert "WAIT" in plain_error(alice.get(url, params={"WAIT": wait}), 400)


@pytest.mark.parametrize(
    "when", ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "soon", "2026-13-01"]
)
def test_destruction_out_of_range_is_400(alice: TestClient, when: str) -> None:
    url = alice.post("/jobs/sum").headers["location"]
    assert "DESTRUCTION" in plain_error(
        alice.post(f"{url}/destruction", data={"DESTRUCTION": when}), 400
    )
    assert "DESTRUCTION" in plain_error(alice.post("/jobs/sum", data={"DESTRUCTION": when}), 400)
    assert jobs(alice) == [url.rsplit("/", 1)[1]]


@pytest.mark.parametrize("seconds", [str(2**63), "-5", "ten"])
def test_execution_duration_out_of_range_is_400(alice: TestClient, seconds: str) -> None:
    url = alice.post("/jobs/sum").headers["location"]
    response = alice.post(f"{url}/executionduration", data={"EXECUTIONDURATION": seconds})
    assert "EXECUTIONDURATION" in plain_error(response, 400)


def test_a_value_that_is_not_utf8_is_400(alice: TestClient) -> None:
    url = alice.post("/jobs/sum").headers["location"]
    response = alice.put(f"{url}/parameters/label", content=b"\xff\xfe\xc3")
    assert "UTF-8" in plain_error(response, 400)
    assert alice.get(f"{url}/parameters/label").status_code == 404  # unchanged: never set


def test_a_multipart_body_cut_short_is_400_and_creates_nothing(alice: TestClient) -> None:
    boundary = "b0undary"
    whole = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="count"\r\n\r\n7\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="numbers"; '
        f'filename="n.txt"\r\nContent-Type: text/plain\r\n\r\n1\n2\n3\n\r\n--{boundary}--\r\n'
    ).encode()
    headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    for cut in (len(whole) - 8, len(whole) - 20, len(whole) // 2):
        response = alice.post("/jobs/sum", content=whole[:cut], headers=headers)
        assert response.status_code == 400, (cut, response.text)
        assert response.headers["content-type"].startswith("text/plain")
    assert jobs(alice) == []
    assert alice.post("/jobs/sum", content=whole, headers=headers).status_code == 303


@pytest.mark.parametrize(
    ("content_type", "body"),
    [
        ("application/json", b'{"count": 3}'),
        ("text/plain", b"count=3"),
        ("application/xml", b"<count>3</count>"),
        (None, b"count=3"),
    ],
)
def test_bodies_other_than_forms_are_415(
    alice: TestClient, content_type: str | None, body: bytes
) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = alice.post("/jobs/sum", content=body, headers=headers)
    assert "form" in plain_error(response, 415)
    assert jobs(alice) == []
    url = alice.post("/jobs/sum").headers["location"]  # no body at all is fine
    plain_error(alice.post(f"{url}/parameters", content=body, headers=headers), 415)


def test_every_error_is_text_plain(alice: TestClient) -> None:
    url = alice.post("/jobs/sum").headers["location"]
    plain_error(alice.get("/jobs/nosuch"), 404)
    plain_error(alice.get(f"{url}x"), 404)
    plain_error(alice.get("/no/such/path"), 404)
    plain_error(alice.patch(url), 405)
    plain_error(alice.get("/jobs/sum", headers={"Authorization": "Bearer nope"}), 401)
    plain_error(alice.get("/jobs/sum", headers={"Authorization": "Digest x"}), 401)
    plain_error(alice.get("/jobs/sum", headers={"Authorization": "Basic !!"}), 401)
    plain_error(alice.post(url, data={"count": "many"}), 400)
    plain_error(alice.post(f"{url}/phase", data={"PHASE": "EXPLODE"}), 400)
    plain_error(alice.post(f"{url}/phase"), 400)
    alice.post(f"{url}/phase", data={"PHASE": "ABORT"})
    plain_error(alice.post(url, data={"count": "2"}), 403)


@pytest.mark.parametrize(
    "name",
    ["RUNID", "runid", "RunId"],
)
def test_runid_wherever_a_parameter_goes(alice: TestClient, name: str) -> None:
    url = alice.post("/jobs/sum", data={name: "made"}).headers["location"]

    def run_id() -> str | None:
        return valid_uws(alice.get(url).content).findtext("uws:runId", namespaces=NS)

    assert run_id() == "made"
    assert alice.post(f"{url}/parameters", data={name: "posted"}).status_code == 303
    assert run_id() == "posted"
    assert alice.post(url, data={name: "on the job"}).status_code == 303
    assert run_id() == "on the job"
    assert alice.put(f"{url}/parameters/{name}", content=b"put").status_code == 303
    assert run_id() == "put"
    # with a parameter, in one request
    response = alice.post(f"{url}/parameters", data={name: "both", "count": "5"})
    assert response.status_code == 303 and run_id() == "both"
    assert alice.get(f"{url}/parameters/count").text == "5"
    plain_error(alice.post(f"{url}/parameters", data={name: "x" * 300}), 400)
    plain_error(alice.post(f"{url}/parameters", data={name: "a\x01b"}), 400)
    plain_error(alice.post(f"{url}/parameters", data={"PHASE": "RUN"}), 400)
    alice.post(f"{url}/phase", data={"PHASE": "ABORT"})
    assert alice.post(f"{url}/parameters", data={name: "after"}).status_code == 303
    assert run_id() == "after"  # RUNID is the client's label: it may change at any time
