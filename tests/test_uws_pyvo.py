"""The service under a real uvicorn, driven by the real pyvo client; and restarted while its
jobs run."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from pyvo.dal import AsyncTAPJob, DALServiceError
from pyvo.io.uws import parse_job_list
from pyvo.utils.http import create_session

from jobbridge import Config, Engine, EngineSettings
from jobbridge.uws import create_app
from tests.uws_support import (
    RunningServer,
    add_user,
    bearer,
    service_config,
    valid_uws,
    wait_for_phase,
)


def fast_config(data_dir: Path) -> Config:
    config = service_config(data_dir)
    return config.model_copy(update={"engine": EngineSettings(refresh_interval=0.1)})


@pytest.fixture
def server(isolated_data_dir: Path) -> Iterator[tuple[RunningServer, str]]:
    config = fast_config(isolated_data_dir)
    engine = Engine.from_config(config)
    token = add_user(engine, "alice")
    with RunningServer(create_app(config, engine=engine)) as running:
        yield running, token
    engine.close()


def pyvo_session(token: str):  # type: ignore[no-untyped-def]
    session = create_session()
    session.headers.update(bearer(token))
    return session


def new_job(server: RunningServer, token: str, **fields: str) -> str:
    response = httpx.post(f"{server.url}/jobs/sum", data=fields, headers=bearer(token))
    assert response.status_code == 303
    return response.headers["location"]


def test_pyvo_runs_waits_and_fetches_results(server: tuple[RunningServer, str]) -> None:
    running, token = server
    session = pyvo_session(token)
    job = AsyncTAPJob(new_job(running, token, count="4", label="four"), session=session)
    assert job.phase == "PENDING"
    assert job.uws_version == "1.1"
    assert job.owner == "alice"
    job.execution_duration = 120
    assert job.execution_duration.sec == 120
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(days=3)
    job.destruction = when
    assert job.destruction.to_datetime(timezone=UTC) == when
    job.run()
    job.wait(timeout=60)
    assert job.phase == "COMPLETED"
    [total_uri, stdout_uri] = job.result_uris
    assert session.get(total_uri).text == "four 10\n"
    assert session.get(stdout_uri).text == "four 10\n"
    job.raise_if_error()
    job.delete()
    assert httpx.get(total_uri, headers=bearer(token)).status_code == 404


def test_pyvo_aborts_and_lists(server: tuple[RunningServer, str]) -> None:
    running, token = server
    session = pyvo_session(token)
    job = AsyncTAPJob(new_job(running, token, sleep="60"), session=session)
    job.run()
    job.wait(phases={"EXECUTING"}, timeout=30)
    job.abort()
    with pytest.raises(DALServiceError):
        job.wait(timeout=30)  # pyvo refuses to wait on an ABORTED job
    assert job.phase == "ABORTED"
    other = new_job(running, token)
    response = session.get(f"{running.url}/jobs/sum")
    valid_uws(response.content)
    jobs = parse_job_list(io.BytesIO(response.content))
    assert {(j.jobid, str(j.phase)) for j in jobs} == {
        (job.job_id, "ABORTED"),
        (other.rsplit("/", 1)[1], "PENDING"),
    }
    newest = parse_job_list(io.BytesIO(session.get(f"{running.url}/jobs/sum?LAST=1").content))
    assert [j.jobid for j in newest] == [other.rsplit("/", 1)[1]]


def test_a_restarted_service_keeps_every_job_and_its_final_phase(
    isolated_data_dir: Path,
) -> None:
    config = fast_config(isolated_data_dir)
    engine = Engine.from_config(config)
    token = add_user(engine, "alice")
    with RunningServer(create_app(config, engine=engine)) as first:
        port = first.port
        urls = [new_job(first, token, PHASE="RUN", sleep="1.5", count=str(n)) for n in range(4)]
        urls.append(new_job(first, token, PHASE="RUN", sleep="30"))
        waiting = new_job(first, token)
        client = httpx.Client(headers=bearer(token))
        assert wait_for_phase(client, urls[-1], {"EXECUTING"}) == "EXECUTING"
    engine.close()  # the service is gone; the local runners go on

    engine = Engine.from_config(config)
    with RunningServer(create_app(config, engine=engine), port=port) as second:
        client = httpx.Client(headers=bearer(token))
        client.post(f"{urls[-1]}/phase", data={"PHASE": "ABORT"})
        phases = [wait_for_phase(client, url, {"COMPLETED", "ABORTED", "ERROR"}) for url in urls]
        assert phases == ["COMPLETED"] * 4 + ["ABORTED"]
        assert client.get(f"{waiting}/phase").text == "PENDING"
        for n, url in enumerate(urls[:4]):
            assert client.get(f"{url}/results/total").text == f"total {n * (n + 1) // 2}\n"
        listed = valid_uws(client.get(f"{second.url}/jobs/sum").content)
        assert len(listed) == 6  # no job lost, none duplicated
    assert engine.store.count() == 6
    engine.close()
    time.sleep(0)  # nothing left running: every job ended
