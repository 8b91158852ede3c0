"""``/openapi.json`` describes the UWS API as it is: every request and response of the real
pyvo client's traffic (and of requests that go wrong) is validated against it with
openapi-core, so no status or media type goes undocumented. ``/docs`` needs nothing from
elsewhere."""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from openapi_core import OpenAPI
from openapi_core.contrib.requests import RequestsOpenAPIRequest, RequestsOpenAPIResponse
from openapi_spec_validator import validate
from pyvo.dal import AsyncTAPJob
from pyvo.utils.http import create_session

from jobbridge import Engine, EngineSettings
from jobbridge.uws import create_app
from tests.uws_support import RunningServer, add_user, bearer, service_config


@pytest.fixture
def server(isolated_data_dir: Path) -> Iterator[tuple[RunningServer, str]]:
    config = service_config(isolated_data_dir, max_upload_bytes=10_000, max_active_jobs=5)
    config = config.model_copy(update={"engine": EngineSettings(refresh_interval=0.1)})
    engine = Engine.from_config(config)
    token = add_user(engine, "alice")
    with RunningServer(create_app(config, engine=engine)) as running:
        yield running, token
    engine.close()


class ReadAgain(io.BytesIO):
    """The body, read once for the check, offered again to pyvo, which reads ``raw``."""

    def read(self, size: int | None = -1, decode_content: bool | None = None) -> bytes:
        return super().read(size)


class Checked:
    """A pyvo session whose every exchange is validated against the OpenAPI document."""

    def __init__(self, server: RunningServer, token: str) -> None:
        schema = httpx.get(f"{server.url}/openapi.json").json()
        validate(schema)
        self.openapi = OpenAPI.from_dict(schema)
        self.seen: list[tuple[str, str, int]] = []
        self.invalid_requests = False
        """While set, requests are meant to break the document's rules: only the responses
        are checked."""
        self.session = create_session()
        self.session.headers.update(bearer(token))
        self.session.hooks["response"].append(self._check)

    def _check(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        request = RequestsOpenAPIRequest(response.request)
        if not self.invalid_requests:
            self.openapi.validate_request(request)
        self.openapi.validate_response(request, RequestsOpenAPIResponse(response))
        response.raw = ReadAgain(response.content)
        template = re.sub(r"/jobs/sum/[a-z0-9]+", "/jobs/sum/{id}", response.request.path_url)
        self.seen.append((str(response.request.method), template, response.status_code))


def test_real_traffic_matches_the_openapi_document(server: tuple[RunningServer, str]) -> None:
    running, token = server
    checked = Checked(running, token)
    session = checked.session
    base = f"{running.url}/jobs/sum"
    created = session.post(base, data={"count": "4", "RUNID": "r"}, allow_redirects=False)
    job = AsyncTAPJob(created.headers["location"], session=session)
    assert job.phase == "PENDING"
    job.execution_duration = 60
    job.run()
    job.wait(timeout=60)
    assert job.phase == "COMPLETED"
    [total, _stdout] = job.result_uris
    assert session.get(total).text == "total 10\n"
    assert session.get(total, headers={"Range": "bytes=0-3"}).status_code == 206
    assert session.get(total, headers={"Range": "bytes=99-"}).status_code == 416
    session.get(f"{job.url}/parameters", headers={"Accept": "application/json"})
    session.get(f"{job.url}/parameters/count")
    session.get(job.url, headers={"Accept": "application/json"})
    session.get(base, params={"PHASE": ["COMPLETED", "PENDING"], "LAST": "3"})
    session.get(base, headers={"Accept": "application/json"})
    for sub in ("quote", "owner", "destruction", "executionduration"):
        session.get(f"{job.url}/{sub}")
    job.abort()  # ended already: harmless
    upload = session.post(base, files={"numbers": ("n.txt", b"1\n2\n")}, allow_redirects=False)
    session.put(f"{upload.headers['location']}/parameters/label", data=b"x")
    # what goes wrong is documented too
    checked.invalid_requests = True
    assert session.get(f"{base}/nosuch").status_code == 404
    assert session.get(base, params={"LAST": str(2**63)}).status_code == 400
    assert session.post(base, json={"count": 3}).status_code == 415
    assert session.post(base, files={"numbers": ("n", b"x" * 20_000)}).status_code == 413
    assert session.get(base, headers={"Authorization": "Bearer no"}).status_code == 401
    assert session.get(f"{job.url}/error").status_code == 404
    checked.invalid_requests = False
    done = session.post(f"{job.url}/parameters", data={"count": "2"}, allow_redirects=False)
    assert done.status_code == 403
    for _ in range(5):
        session.post(base, allow_redirects=False)
    assert session.post(base, allow_redirects=False).status_code == 429
    job.delete()
    statuses = {status for *_, status in checked.seen}
    assert {200, 206, 303, 400, 401, 403, 404, 413, 415, 416, 429} <= statuses
    for path in ("/capabilities", "/availability", "/jobs"):
        session.get(f"{running.url}{path}")


def test_the_document_has_no_status_the_service_never_sends(
    server: tuple[RunningServer, str],
) -> None:
    running, _token = server
    schema = httpx.get(f"{running.url}/openapi.json").json()
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if method == "parameters":
                continue
            assert "422" not in operation["responses"], (path, method)
            if method in ("post", "delete", "put") and path.startswith("/jobs"):
                assert "303" in operation["responses"], (path, method)
    job_list = schema["paths"]["/jobs/{definition}"]
    assert {p["name"] for p in job_list["get"]["parameters"]} == {"PHASE", "AFTER", "LAST"}
    assert set(job_list["post"]["requestBody"]["content"]) == {
        "application/x-www-form-urlencoded", "multipart/form-data",
    }  # fmt: skip
    job = schema["paths"]["/jobs/{definition}/{job_id}"]["get"]
    assert {p["name"] for p in job["parameters"]} == {"WAIT", "PHASE"}
    assert set(job["responses"]["200"]["content"]) == {"application/xml", "application/json"}
    assert set(schema["components"]["securitySchemes"]) == {"bearer", "basic"}


def test_docs_need_nothing_from_elsewhere(server: tuple[RunningServer, str]) -> None:
    running, _token = server
    page = httpx.get(f"{running.url}/docs")
    assert page.status_code == 200
    links = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page.text)
    assets = re.findall(r"""url: ?["']([^"']+)["']""", page.text)
    assert links and all(link.startswith("/") for link in [*links, *assets]), links + assets
    for link in links:
        assert httpx.get(f"{running.url}{link}").status_code == 200, link
    assert "swagger-ui-bundle.js" in page.text
    assert httpx.get(f"{running.url}/redoc").status_code == 404
