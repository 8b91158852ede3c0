"""Limits: request body size (413), bytes of files kept per user (413), jobs that have not
ended per user (429); each answer names its limit, and nothing is kept of a refused job."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from jobbridge import Engine
from jobbridge.uws import create_app
from tests.uws_support import add_user, bearer, service_config

BASE = "http://testserver"
Factory = Callable[..., tuple[TestClient, dict[str, str], dict[str, str]]]


@pytest.fixture
def make_service(engine: Engine, isolated_data_dir: Path) -> Iterator[Factory]:
    opened: list[Any] = []
    alice, bob = bearer(add_user(engine, "alice")), bearer(add_user(engine, "bob"))

    def make(**service: object) -> tuple[TestClient, dict[str, str], dict[str, str]]:
        app = create_app(service_config(isolated_data_dir, **service), engine=engine)
        client = TestClient(app, base_url=BASE, follow_redirects=False).__enter__()
        opened.append(client)
        return client, alice, bob

    yield make
    for client in opened:
        client.__exit__(None, None, None)


def kept(client: TestClient) -> list[Path]:
    root: Path = client.app.state.uws.service.uploads_dir  # type: ignore[attr-defined]
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_a_body_over_max_upload_bytes_is_413(make_service: Factory) -> None:
    client, alice, _ = make_service(max_upload_bytes=1000)
    files = {"numbers": ("n.txt", b"1\n" * 1000)}
    response = client.post("/jobs/sum", files=files, headers=alice)
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("text/plain")
    assert "max_upload_bytes" in response.text

    def chunks() -> Iterator[bytes]:  # no Content-Length: refused while it is read
        yield b"count=1&label="
        for _ in range(100):
            yield b"x" * 100

    streamed = client.post(
        "/jobs/sum", content=chunks(),
        headers={**alice, "Content-Type": "application/x-www-form-urlencoded"},
    )  # fmt: skip
    assert streamed.status_code == 413 and "max_upload_bytes" in streamed.text
    assert kept(client) == []
    assert (
        client.get("/jobs/sum", headers={**alice, "Accept": "application/json"}).json()["jobs"]
        == []
    )
    small = client.post("/jobs/sum", files={"numbers": ("n.txt", b"1\n")}, headers=alice)
    assert small.status_code == 303


def test_stored_bytes_per_user(make_service: Factory) -> None:
    client, alice, bob = make_service(max_stored_bytes=3000)
    first = client.post("/jobs/sum", files={"numbers": ("n", b"1\n" * 1000)}, headers=alice)
    assert first.status_code == 303
    second = client.post("/jobs/sum", files={"numbers": ("n", b"2\n" * 1000)}, headers=alice)
    assert second.status_code == 413 and "max_stored_bytes" in second.text
    assert len(kept(client)) == 1
    # another user has room of their own
    assert client.post("/jobs/sum", files={"numbers": ("n", b"3\n" * 1000)}, headers=bob)
    assert client.delete(first.headers["location"], headers=alice).status_code == 303
    again = client.post("/jobs/sum", files={"numbers": ("n", b"2\n" * 1000)}, headers=alice)
    assert again.status_code == 303


def test_active_jobs_per_user(make_service: Factory) -> None:
    client, alice, bob = make_service(max_active_jobs=2)
    urls = [client.post("/jobs/sum", headers=alice).headers["location"] for _ in range(2)]
    refused = client.post("/jobs/sum", headers=alice)
    assert refused.status_code == 429 and "max_active_jobs" in refused.text
    assert refused.headers["content-type"].startswith("text/plain")
    assert client.post("/jobs/sum", headers=bob).status_code == 303
    client.post(f"{urls[0]}/phase", data={"PHASE": "ABORT"}, headers=alice)  # ended: no count
    assert client.post("/jobs/sum", headers=alice).status_code == 303
