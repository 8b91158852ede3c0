"""``/metrics`` after real jobs: the local backend runs some, a backend double refuses one
submission and fails a status query; the numbers scraped must be exactly those."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from jobbridge import Engine
from jobbridge.errors import BackendError
from jobbridge.uws import create_app
from jobbridge.uws.definitions import Definitions, JobDefinition, load_definitions
from tests.doubles import FakeBackend, FakeCluster
from tests.uws_support import (
    DEFINITIONS,
    RunningServer,
    add_user,
    bearer,
    service_config,
    wait_for_phase,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster()


@pytest.fixture
def server(
    engine: Engine, cluster: FakeCluster, isolated_data_dir: Path
) -> Iterator[RunningServer]:
    engine.add_backend(FakeBackend(cluster, "fake"))
    found = load_definitions(DEFINITIONS)
    remote = JobDefinition(name="remote", command=["true"], backend="fake")
    definitions = Definitions({**{d.name: d for d in found.values()}, "remote": remote})
    app = create_app(service_config(isolated_data_dir), engine=engine, definitions=definitions)
    with RunningServer(app) as running:
        yield running


def scrape(client: httpx.Client, url: str) -> Samples:
    response = client.get(f"{url}/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def create(client: httpx.Client, url: str, definition: str, **fields: str) -> str:
    response = client.post(f"{url}/jobs/{definition}", data=fields)
    assert response.status_code == 303, response.text
    return response.headers["location"]


def until(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.05)


def test_metrics_count_jobs_submissions_status_queries_and_waits(
    server: RunningServer, engine: Engine, cluster: FakeCluster
) -> None:
    url = server.url
    with httpx.Client(headers=bearer(add_user(engine, "alice")), timeout=60) as client:
        empty = scrape(client, url)
        assert value(empty, "jobbridge_jobs", phase="COMPLETED", backend="local") == 0
        assert value(empty, "jobbridge_jobs", phase="PENDING", backend="fake") == 0
        assert ("jobbridge_jobs", (("backend", "fake"), ("phase", "ARCHIVED"))) in empty

        # running for a second, the local jobs are seen by the service's status queries
        # too, not only through their pushes
        done = [create(client, url, "sum", PHASE="RUN", count=str(n), sleep="1") for n in (1, 2)]
        for job in done:
            assert wait_for_phase(client, job, {"COMPLETED", "ERROR"}) == "COMPLETED"
        pending = create(client, url, "sum")

        cluster.fail_submit = BackendError("sbatch: error: invalid partition specified: gpu")
        refused = create(client, url, "remote", PHASE="RUN")
        assert wait_for_phase(client, refused, {"ERROR"}) == "ERROR"
        cluster.fail_submit = None
        cluster.fail_status = 1
        queued = create(client, url, "remote", PHASE="RUN")
        until(lambda: cluster.status_calls >= 2)  # one failed, one answered since
        assert client.get(f"{queued}/phase").text == "QUEUED"

        # a WAIT on a PENDING job blocks until it changes or the time is up
        waiting = threading.Thread(
            target=lambda: client.get(pending, params={"WAIT": "20"}), daemon=True
        )
        waiting.start()
        until(lambda: value(scrape(client, url), "jobbridge_uws_waits_in_flight") == 1)
        samples = scrape(client, url)
        assert client.post(f"{pending}/phase", data={"PHASE": "ABORT"}).status_code == 303
        waiting.join(timeout=30)
        assert not waiting.is_alive()
        after = scrape(client, url)

    jobs = {
        (phase, backend): value(samples, "jobbridge_jobs", phase=phase, backend=backend)
        for phase in ("PENDING", "QUEUED", "COMPLETED", "ERROR", "ABORTED")
        for backend in ("local", "fake")
    }
    assert jobs == {
        ("PENDING", "local"): 1, ("QUEUED", "local"): 0, ("COMPLETED", "local"): 2,
        ("ERROR", "local"): 0, ("ABORTED", "local"): 0,
        ("PENDING", "fake"): 0, ("QUEUED", "fake"): 1, ("COMPLETED", "fake"): 0,
        ("ERROR", "fake"): 1, ("ABORTED", "fake"): 0,
    }  # fmt: skip
    assert value(after, "jobbridge_jobs", phase="ABORTED", backend="local") == 1
    assert value(after, "jobbridge_jobs", phase="PENDING", backend="local") == 0

    assert value(samples, "jobbridge_submission_attempts_total", backend="local") == 2
    assert value(samples, "jobbridge_submission_attempts_total", backend="fake") == 2
    outcomes = "jobbridge_submission_outcomes_total"
    assert value(samples, outcomes, backend="local", outcome="submitted") == 2
    assert value(samples, outcomes, backend="local", outcome="failed") == 0
    assert value(samples, outcomes, backend="fake", outcome="submitted") == 1
    assert value(samples, outcomes, backend="fake", outcome="failed") == 1

    assert value(samples, "jobbridge_status_query_failures_total", backend="fake") == 1
    assert value(samples, "jobbridge_status_query_failures_total", backend="local") == 0
    fake_queries = value(samples, "jobbridge_status_query_seconds_count", backend="fake")
    assert fake_queries >= 2 and fake_queries <= cluster.status_calls
    assert value(samples, "jobbridge_status_query_seconds_count", backend="local") >= 1

    assert value(samples, "jobbridge_uws_waits_in_flight") == 1
    assert value(after, "jobbridge_uws_waits_in_flight") == 0
    # each local job's runner pushed that it started and that it ended; the others never ran
    pushed = "jobbridge_push_messages_received_total"
    assert value(after, pushed, event="started") <= 2
    assert value(after, pushed, event="ended") <= 2
    with httpx.Client(timeout=60) as client:
        until(lambda: value(scrape(client, url), pushed, event="ended") == 2)
        until(lambda: value(scrape(client, url), pushed, event="started") == 2)
        assert value(scrape(client, url), "jobbridge_push_messages_refused_total") == 0


def test_status_queries_are_timed_through_the_engine_hook_not_by_wrapping_backends(
    engine: Engine, isolated_data_dir: Path
) -> None:
    backend = engine.backend("local")
    app = create_app(service_config(isolated_data_dir), engine=engine)
    with RunningServer(app):
        assert "status" not in vars(backend)
        assert len(engine.hooks.status_query) == 1
    assert engine.hooks.status_query == []
