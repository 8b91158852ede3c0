"""Anonymous clients apart: each is known by a cookie the service signs, and sees and acts
on its own jobs only; with ``anonymous_job_urls`` a job's URL alone is its key."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from jobbridge import Engine
from jobbridge.uws import create_app
from jobbridge.uws.auth import COOKIE
from tests.uws_support import NS, add_user, bearer, service_config, valid_uws

BASE = "http://testserver"


def anonymous_app(engine: Engine, data_dir: Path, **service: object) -> FastAPI:
    return create_app(service_config(data_dir, anonymous=True, **service), engine=engine)


@pytest.fixture
def app(engine: Engine, isolated_data_dir: Path) -> FastAPI:
    return anonymous_app(engine, isolated_data_dir)


def client(app: FastAPI) -> TestClient:
    """A client with a cookie jar of its own. Only the first one is entered (which runs the
    service's start and stop); the others share the running service."""
    return TestClient(app, base_url=BASE, follow_redirects=False)


def listed(c: TestClient) -> list[str]:
    root = valid_uws(c.get("/jobs/sum").content)
    return [ref.get("id") for ref in root.iterfind("uws:jobref", NS)]


@pytest.fixture
def two(app: FastAPI) -> Iterator[tuple[TestClient, TestClient]]:
    with client(app) as a:
        yield a, client(app)


def test_anonymous_clients_do_not_see_or_touch_each_others_jobs(
    two: tuple[TestClient, TestClient],
) -> None:
    a, b = two
    url = a.post("/jobs/sum", data={"count": "3"}).headers["location"]
    job_id = url.rsplit("/", 1)[1]
    assert COOKIE in a.cookies
    assert listed(a) == [job_id]
    assert listed(b) == []
    for sub in ["", "/phase", "/parameters", "/owner"]:
        assert b.get(url + sub).status_code == 403, sub
    assert b.post(f"{url}/phase", data={"PHASE": "ABORT"}).status_code == 403
    assert b.post(url, data={"count": "4"}).status_code == 403
    assert b.post(url, data={"ACTION": "DELETE"}).status_code == 403
    assert b.delete(url).status_code == 403
    assert a.get(f"{url}/phase").text == "PENDING"
    job = valid_uws(a.get(url).content)
    owner = job.find("uws:ownerId", NS)
    assert owner.get("{http://www.w3.org/2001/XMLSchema-instance}nil") == "true"
    assert a.delete(url).status_code == 303


def test_a_forged_or_missing_cookie_is_a_new_client(
    app: FastAPI, two: tuple[TestClient, TestClient]
) -> None:
    a, _ = two
    url = a.post("/jobs/sum").headers["location"]
    client_id = a.cookies[COOKIE].split(".")[0]
    forger = client(app)
    forger.cookies.set(COOKIE, f"{client_id}.{'0' * 32}")
    assert forger.get(url).status_code == 403
    assert listed(forger) == []
    forger.cookies.clear()
    forger.cookies.set(COOKIE, client_id)
    assert forger.get(url).status_code == 403


def test_users_and_anonymous_clients_are_apart(
    engine: Engine, app: FastAPI, two: tuple[TestClient, TestClient]
) -> None:
    a, _ = two
    anonymous_url = a.post("/jobs/sum").headers["location"]
    alice = client(app)
    alice.headers.update(bearer(add_user(engine, "alice")))
    alice_url = alice.post("/jobs/sum").headers["location"]
    assert alice.get(anonymous_url).status_code == 403
    assert a.get(alice_url).status_code == 403
    assert listed(alice) == [alice_url.rsplit("/", 1)[1]]


def test_job_urls_as_keys_when_configured(engine: Engine, isolated_data_dir: Path) -> None:
    app = anonymous_app(engine, isolated_data_dir, anonymous_job_urls=True)
    with client(app) as a:
        b, alice = client(app), client(app)
        url = a.post("/jobs/sum").headers["location"]
        b.cookies.clear()
        assert b.get(url).status_code == 200  # the URL is the key
        assert listed(b) == []  # but it is listed to its own client only
        alice.headers.update(bearer(add_user(engine, "alice")))
        assert alice.get(url).status_code == 403  # a user is not an anonymous client


def test_limits_count_every_anonymous_client_together(
    engine: Engine, isolated_data_dir: Path
) -> None:
    """A client cannot escape a limit by dropping its cookie."""
    app = anonymous_app(engine, isolated_data_dir, max_active_jobs=2)
    with client(app) as a:
        b, c = client(app), client(app)
        assert a.post("/jobs/sum").status_code == 303
        assert b.post("/jobs/sum").status_code == 303
        assert c.post("/jobs/sum").status_code == 429


def test_without_anonymous_no_cookie_and_401(engine: Engine, isolated_data_dir: Path) -> None:
    app = create_app(service_config(isolated_data_dir), engine=engine)
    with client(app) as c:
        response = c.get("/jobs/sum")
        assert response.status_code == 401 and "set-cookie" not in response.headers
        assert response.headers["content-type"].startswith("text/plain")
        assert "Bearer" in response.headers["www-authenticate"]
