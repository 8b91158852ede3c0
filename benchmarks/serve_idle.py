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
import time

import httpx
from _serve import service


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
    with service() as server:
        time.sleep(args.settle)
        before, started = server.cpu_seconds(), time.monotonic()
        time.sleep(args.seconds)
        used, elapsed = server.cpu_seconds() - before, time.monotonic() - started
        memory = server.memory_mib()
        thread_count = server.threads()
        handover = handover_seconds(server.url, server.tokens[0])
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
