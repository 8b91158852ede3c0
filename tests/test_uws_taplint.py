"""STILTS ``taplint`` (the IVOA's own checker) against the real service under uvicorn: its
UWS stage runs on a job list laid out as a TAP service's ``/async``, its CPV and AVV stages
validate ``/capabilities`` and ``/availability``. No errors, no warnings."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbridge import Engine, EngineSettings
from jobbridge.uws import create_app
from tests.uws_support import RunningServer, free_port, service_config

ASYNC_DEFINITION = """\
name: async
description: A query-shaped job, for clients that test a TAP service's asynchronous side
parameters:
  LANG: {type: string}
  QUERY: {type: string}
  REQUEST: {type: string}
  FORMAT: {type: string}
  RESPONSEFORMAT: {type: string}
  MAXREC: {type: string}
  UPLOAD: {type: string}
command: [python3, -c, "import time; time.sleep(1)"]
"""


def stilts() -> str:
    found = shutil.which("stilts")
    if found is None:
        message = "stilts is not installed: run scripts/test-tools.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


@pytest.fixture
def server(isolated_data_dir: Path, tmp_path: Path) -> Iterator[str]:
    definitions = tmp_path / "definitions"
    definitions.mkdir()
    (definitions / "async.yaml").write_text(ASYNC_DEFINITION)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    config = service_config(
        isolated_data_dir, definitions_dir=str(definitions), anonymous=True,
        anonymous_job_urls=True, base_url=url,
    )  # fmt: skip
    config = config.model_copy(update={"engine": EngineSettings(refresh_interval=0.2)})
    engine = Engine.from_config(config)
    with RunningServer(create_app(config, engine=engine), port=port):
        yield url
    engine.close()


def test_taplint_finds_no_error_and_no_warning(server: str) -> None:
    command = [
        stilts(), "taplint", f"tapurl={server}/jobs", "stages=UWS CPV AVV", "report=EWISF",
        f"asyncurl={server}/jobs/async", f"capabilitiesurl={server}/capabilities",
        f"availabilityurl={server}/availability",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    report = done.stdout + done.stderr
    totals = re.search(r"Totals: Errors: (\d+); Warnings: (\d+)", report)
    assert totals is not None, report
    problems = [line for line in report.splitlines() if re.match(r"[EWF]-[A-Z]{3}-", line)]
    assert (totals.group(1), totals.group(2), problems) == ("0", "0", []), report
    for ran in ("S-CPV-VALI", "S-AVV-VALI", "I-UWS-CJOB", "I-UWS-POPA", "I-UWS-VUWS"):
        assert ran in report, f"{ran} missing:\n{report}"
    assert "runId=" in report  # RUNID through the parameters, which taplint checks
