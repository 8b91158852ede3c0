"""The cheap paths of a job creation: a token the store confirmed is remembered for a while
(an unknown one is asked about every time, and refused), and creations that only write to
a SQLite store take turns in one lane, while those that take in files or start their job
do not wait for it."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from jobbridge import Engine, Store
from jobbridge.backends.local import LocalBackend
from jobbridge.store.uws import UwsStore
from jobbridge.uws import create_app
from jobbridge.uws.auth import KnownTokens
from jobbridge.uws.service import Upload
from tests.uws_support import add_user, basic, bearer, service_config

BASE = "http://testserver"


@pytest.fixture
def client(engine: Engine, isolated_data_dir: Path) -> Iterator[TestClient]:
    app = create_app(service_config(isolated_data_dir), engine=engine)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        yield client


def token_lookups(engine: Engine) -> list[str]:
    """Every statement that reads the users' table from now on (filled as they run)."""
    seen: list[str] = []

    def statement(*args: object) -> None:
        if "FROM uws_users" in str(args[2]):
            seen.append(str(args[2]))

    sa.event.listen(engine.store._engine, "before_cursor_execute", statement)
    return seen


def test_a_confirmed_token_is_not_asked_about_again(client: TestClient, engine: Engine) -> None:
    token = add_user(engine, "alice")
    lookups = token_lookups(engine)
    for _ in range(3):
        assert client.get("/jobs/sum", headers=bearer(token)).status_code == 200
    assert client.get("/jobs/sum", headers=basic("alice", token)).status_code == 200
    assert len(lookups) == 1
    assert client.get("/jobs/sum", headers=basic("bob", token)).status_code == 401
    for _ in range(2):
        assert client.get("/jobs/sum", headers=bearer("not-a-token")).status_code == 401
    assert len(lookups) == 3  # unknown tokens are asked about each time


def test_a_token_is_asked_about_again_once_its_time_is_up(store: Store) -> None:
    users = UwsStore(store)
    token = users.add_user("alice")
    tokens = KnownTokens(users, keep=0.3)
    asked: list[str] = []
    sa.event.listen(store._engine, "before_cursor_execute", lambda *a: asked.append(str(a[2])))

    async def user_name() -> str | None:
        user = await tokens.user(token)
        return None if user is None else user.name

    assert asyncio.run(user_name()) == "alice"
    assert asyncio.run(user_name()) == "alice"
    confirmed = len(asked)
    time.sleep(0.4)
    assert asyncio.run(user_name()) == "alice"
    assert len(asked) > confirmed


def test_which_creations_only_write(
    store_url: str, local_backend: LocalBackend, isolated_data_dir: Path
) -> None:
    engine = Engine(Store(store_url), {"local": local_backend})
    try:
        app = create_app(service_config(isolated_data_dir), engine=engine)
        service = app.state.uws.service
        upload = Upload("numbers", "numbers.txt", open(__file__, "rb"))  # noqa: SIM115
        with upload.stream:
            quick = service.only_writes("sum", [("count", "3"), ("RUNID", "r")], [])
            assert quick is (engine.store.dialect == "sqlite")
            assert not service.only_writes("sum", [("PHASE", "RUN")], [])
            assert not service.only_writes("sum", [("NUMBERS", "https://example.org/n")], [])
            assert not service.only_writes("sum", [], [upload])
            assert not service.only_writes("nope", [], [])
    finally:
        engine.close()


def test_creations_that_only_write_wait_for_their_lane(client: TestClient, engine: Engine) -> None:
    client.headers.update(bearer(add_user(engine, "alice")))
    lane = client.app.state.uws.creations  # type: ignore[attr-defined]
    assert lane is not None
    holder = object()
    client.portal.call(lane.acquire_on_behalf_of, holder)  # type: ignore[union-attr]
    statuses: list[int] = []
    waiting = threading.Thread(
        target=lambda: statuses.append(client.post("/jobs/sum", data={"count": "1"}).status_code)
    )
    try:
        waiting.start()
        started = client.post("/jobs/sum", data={"PHASE": "RUN", "sleep": "0"})
        assert started.status_code == 303  # not in the lane: served meanwhile
        waiting.join(0.5)
        assert statuses == []
    finally:
        client.portal.call(lane.release_on_behalf_of, holder)  # type: ignore[union-attr]
        waiting.join(30)
    assert statuses == [303]
