"""What an idle ``jobbridge serve`` costs: the CPU it burns with no active job (as a share of
one core) and its memory, then how fast it still hands a new job over after the idle spell.

    python benchmarks/serve_idle.py [--seconds 60]

Runs the real command in a process of its own (embedded defaults: local backend, SQLite in a
scratch data directory, the demo definitions), lets it settle, reads its CPU time from
/proc before and after ``--seconds`` of idleness, then creates a job with PHASE=RUN and times
until the job has left QUEUED. The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

DEFINITIONS = Path(__file__).parent.parent / "examples" / "definitions"
TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """User and system time of the process and its threads (not of its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def memory_mib(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {
        key: round(int(status.split(f"{key}:")[1].split()[0]) / 1024, 1)
        for key in ("VmRSS", "VmHWM")
    }


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def wait_until_up(url: str, server: subprocess.Popen[bytes], patience: float = 60) -> None:
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the service exited with status {server.returncode}")
        try:
            httpx.get(f"{url}/jobs/sum", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("the service did not come up")


def handover_seconds(url: str, token: str, patience: float = 60) -> float:
    """From a PHASE=RUN creation to the job's leaving QUEUED (its backend took it)."""
    with httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=30) as client:
        started = time.perf_counter()
        created = client.post(f"{url}/jobs/sum", data={"PHASE": "RUN", "count": "3"})
        assert created.status_code == 303, created.text
        job_url = created.headers["location"]
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            phase = client.get(f"{job_url}/phase").text
            if phase not in ("PENDING", "QUEUED"):
                return time.perf_counter() - started
            time.sleep(0.005)
    raise SystemExit("the job was not handed over")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60.0, help="idle time measured")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds before measuring")
    args = parser.parse_args()
    jobbridge = [sys.executable, "-c", "from jobbridge.cli import main; main()"]
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-") as scratch:
        env = {**os.environ, "JOBBRIDGE_DATA_DIR": scratch}
        for name in ("JOBBRIDGE_DATABASE_URL", "JOBBRIDGE_CONFIG"):
            env.pop(name, None)
        token = subprocess.run(
            [*jobbridge, "user", "add", "bench"], env=env, check=True, capture_output=True,
            text=True,
        ).stdout.strip()  # fmt: skip
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        argv = [*jobbridge, "serve", "--port", str(port), "--definitions", str(DEFINITIONS)]
        server = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
        try:
            wait_until_up(url, server)
            time.sleep(args.settle)
            before, started = cpu_seconds(server.pid), time.monotonic()
            time.sleep(args.seconds)
            used, elapsed = cpu_seconds(server.pid) - before, time.monotonic() - started
            memory = memory_mib(server.pid)
            thread_count = threads(server.pid)
            handover = handover_seconds(url, token)
        finally:
            server.terminate()
            server.wait(timeout=60)
    share = 100 * used / elapsed
    print(
        f"idle serve: {used * 1000:.0f} ms CPU in {elapsed:.0f} s ({share:.2f}% of a core),"
        f" RSS {memory['VmRSS']} MiB, {thread_count} threads;"
        f" a new job left QUEUED {handover * 1000:.0f} ms after its creation"
    )
    figures = {
        "idle_seconds": round(elapsed, 1),
        "idle_cpu_ms": round(used * 1000),
        "idle_cpu_percent_of_core": round(share, 3),
        "rss_mib": memory["VmRSS"],
        "peak_rss_mib": memory["VmHWM"],
        "threads": thread_count,
        "handover_after_idle_ms": round(handover * 1000, 1),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
