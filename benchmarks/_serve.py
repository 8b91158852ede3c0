"""What the service benchmarks share: a real ``jobbridge serve`` in a process of its own, on
the embedded defaults (local backend, SQLite in a scratch data directory, the demo
definitions), with users added first, and the CPU time it uses as /proc tells it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

DEFINITIONS = Path(__file__).parent.parent / "examples" / "definitions"
JOBBRIDGE = [sys.executable, "-c", "from jobbridge.cli import main; main()"]
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Service:
    url: str
    pid: int
    tokens: list[str]
    data_dir: Path

    def cpu_seconds(self) -> float:
        """User and system time of the service and its threads (not of its children)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS

    def memory_mib(self) -> dict[str, float]:
        status = Path(f"/proc/{self.pid}/status").read_text()
        return {
            key: round(int(status.split(f"{key}:")[1].split()[0]) / 1024, 1)
            for key in ("VmRSS", "VmHWM")
        }

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/task"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_until_up(url: str, server: subprocess.Popen[bytes], patience: float = 60) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the service exited with status {server.returncode}")
        try:
            httpx.get(f"{url}/availability", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("the service did not come up")


@contextmanager
def service(users: int = 1, prepare: object = None) -> Iterator[Service]:
    """The service, with ``users`` users (bench0, bench1...) whose tokens it hands out.
    ``prepare``, if given, is called with the data directory before the service starts."""
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-") as scratch:
        env = {**os.environ, "JOBBRIDGE_DATA_DIR": scratch}
        for name in ("JOBBRIDGE_DATABASE_URL", "JOBBRIDGE_CONFIG"):
            env.pop(name, None)
        tokens = [
            subprocess.run(
                [*JOBBRIDGE, "user", "add", f"bench{n}"], env=env, check=True,
                capture_output=True, text=True,
            ).stdout.strip()
            for n in range(users)
        ]  # fmt: skip
        if callable(prepare):
            prepare(Path(scratch))
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [*JOBBRIDGE, "serve", "--port", str(port), "--definitions", str(DEFINITIONS)]
        server = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        try:
            _wait_until_up(url, server)
            yield Service(url, server.pid, tokens, Path(scratch))
        finally:
            server.terminate()
            server.wait(timeout=60)
