"""A WAIT on a PostgreSQL store while the service's LISTEN connection is lost: the
reconnected listener wakes every waiting request (notifications may have been lost), and
each must look at its job again and, finding the phase unchanged, wait on, neither
answering early nor sleeping through the change that follows."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from jobbridge import Engine, EngineSettings, Store
from jobbridge.backends.local import LocalBackend
from jobbridge.uws import create_app
from jobbridge.uws.routes import ServiceContext
from tests.test_metrics import scrape, until, value
from tests.uws_support import RunningServer, add_user, bearer, service_config

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.parametrize("store_url", ["postgres"], indirect=True),
]


def test_a_wait_whose_listener_reconnects_looks_again_and_waits_on(
    store_url: str, isolated_data_dir: Path, local_backend: LocalBackend
) -> None:
    settings = EngineSettings(refresh_interval=0.1)
    with Engine(Store(store_url), {"local": local_backend}, settings=settings) as engine:
        app = create_app(service_config(isolated_data_dir), engine=engine)
        context: ServiceContext = app.state.uws
        headers = bearer(add_user(engine, "alice"))
        with (
            RunningServer(app) as server,
            httpx.Client(headers=headers, timeout=60) as client,
            httpx.Client(headers=headers, timeout=60) as waiting_client,
        ):
            until(lambda: context.listener is not None and context.listener.listening.is_set())
            listener = context.listener
            assert listener is not None and listener.backend_pid is not None
            job_url = client.post(f"{server.url}/jobs/sum").headers["location"]
            answer: dict[str, str] = {}

            def wait() -> None:
                document = waiting_client.get(job_url, params={"WAIT": "30"}).text
                answer["phase"] = document.split("<uws:phase>")[1].split("<")[0]

            waiting = threading.Thread(target=wait, daemon=True)
            waiting.start()
            until(lambda: value(scrape(client, server.url), "jobbridge_uws_waits_in_flight") == 1)

            connections = listener.connections
            killer = sa.create_engine(store_url)
            try:
                with killer.connect() as conn:
                    conn.execute(
                        sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": listener.backend_pid}
                    )
            finally:
                killer.dispose()
            until(lambda: listener.connections == connections + 1 and listener.listening.is_set())
            time.sleep(1.0)  # the wake-up that follows the reconnection has come and gone
            assert waiting.is_alive(), f"the WAIT answered early: {answer}"

            client.post(f"{job_url}/phase", data={"PHASE": "ABORT"})
            waiting.join(timeout=20)
            assert not waiting.is_alive()
            assert answer == {"phase": "ABORTED"}
