"""``jobbridge user add`` and ``jobbridge serve`` through the real command line."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx
from click.testing import CliRunner

from jobbridge.cli import cli
from tests.uws_support import DEFINITIONS, bearer, free_port


def test_user_add_prints_a_token_once_and_refuses_a_second_user_of_that_name() -> None:
    runner = CliRunner()
    first = runner.invoke(cli, ["user", "add", "dana", "--admin"])
    assert first.exit_code == 0, first.output
    token = first.output.strip()
    assert len(token) >= 40
    again = runner.invoke(cli, ["user", "add", "dana"])
    assert again.exit_code == 2 and "exists already" in again.output
    listed = runner.invoke(cli, ["user", "list"])
    assert listed.output == "dana (admin)\n"


def test_serve_starts_the_service_with_its_definitions(isolated_data_dir: Path) -> None:
    token = CliRunner().invoke(cli, ["user", "add", "erin"]).output.strip()
    port = free_port()
    jobbridge = str(Path(sys.executable).parent / "jobbridge")
    command = [jobbridge, "serve", "--port", str(port), "--definitions", str(DEFINITIONS)]
    server = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                response = httpx.get(f"{url}/jobs/sum", headers=bearer(token))
                break
            except httpx.ConnectError:
                assert time.monotonic() < deadline and server.poll() is None
                time.sleep(0.1)
        assert response.status_code == 200 and b"uws:jobs" in response.content
        assert httpx.get(f"{url}/jobs/sum").status_code == 401
    finally:
        server.terminate()
        server.wait(timeout=30)
