"""A job definition run on the real SLURM test cluster through the service, end to end:
HTTP in, sbatch, squeue/sacct, results read back from the job's directory, HTTP out."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobbridge import Engine
from jobbridge.uws import create_app
from tests.batch_support import running_engine
from tests.conftest import cluster_env
from tests.test_batch_slurm import slurm_backend
from tests.uws_support import (
    NS,
    RunningServer,
    add_user,
    bearer,
    service_config,
    valid_uws,
    wait_for_phase,
)

pytestmark = pytest.mark.slurm


@pytest.fixture
def slurm_service(isolated_data_dir: Path) -> Iterator[tuple[RunningServer, httpx.Client, Engine]]:
    cluster_env("slurm")
    for engine in running_engine(slurm_backend(isolated_data_dir), isolated_data_dir):
        client = httpx.Client(headers=bearer(add_user(engine, "alice")), timeout=60)
        app = create_app(service_config(isolated_data_dir), engine=engine)
        with RunningServer(app) as server:
            yield server, client, engine
        client.close()


def test_a_definition_runs_on_slurm_and_its_results_come_back(
    slurm_service: tuple[RunningServer, httpx.Client, Engine],
) -> None:
    server, client, engine = slurm_service
    response = client.post(
        f"{server.url}/jobs/sum",
        data={"PHASE": "RUN", "label": "on slurm; $(id)"},
        files={"numbers": ("numbers.txt", b"10\n20\n12\n")},
    )
    url = response.headers["location"]
    assert wait_for_phase(client, url, {"COMPLETED", "ERROR", "ABORTED"}, 120) == "COMPLETED"
    job = engine.get(url.rsplit("/", 1)[1])
    assert job.backend == "slurm" and job.native_id
    doc = valid_uws(client.get(url).content)
    hrefs = {
        r.get("id"): r.get(f"{{{NS['xlink']}}}href")
        for r in doc.iterfind("uws:results/uws:result", NS)
    }
    assert client.get(hrefs["total"]).text == "on slurm; $(id) 42\n"
    assert client.get(hrefs["total"], headers={"Range": "bytes=-3"}).content == b"42\n"


def test_the_execution_duration_is_the_slurm_time_limit(
    slurm_service: tuple[RunningServer, httpx.Client, Engine],
) -> None:
    server, client, engine = slurm_service
    response = client.post(
        f"{server.url}/jobs/sum", data={"EXECUTIONDURATION": "120", "sleep": "60"}
    )
    url = response.headers["location"]
    client.post(f"{url}/phase", data={"PHASE": "RUN"})
    assert wait_for_phase(client, url, {"EXECUTING"}, 120) == "EXECUTING"
    native = engine.get(url.rsplit("/", 1)[1]).native_id
    shown = subprocess.run(
        ["scontrol", "show", "job", str(native)], capture_output=True, text=True, check=True
    ).stdout
    assert "TimeLimit=00:02:00" in shown
    client.post(f"{url}/phase", data={"PHASE": "ABORT"})
    assert wait_for_phase(client, url, {"ABORTED", "COMPLETED", "ERROR"}, 60) == "ABORTED"
