"""What reaching SLURM over SSH costs: 100 submissions and refreshes through the test sshd
on 127.0.0.1 against the same on this machine, in one run.

    python benchmarks/ssh_overhead.py [--jobs 100] [--refreshes 20]

Needs the SLURM and SSH test servers (scripts/test-clusters.sh up slurm ssh). Jobs are
submitted held and cancelled afterwards. Last line: JSON figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

from _slurm import slurm_engine

from jobbridge import JobSpec
from jobbridge.transport.ssh import SshTransport

ENV_FILE = Path("/var/tmp/jobbridge-test/ssh.env")


def ssh_options() -> dict[str, Any]:
    facts = dict(line.split("=", 1) for line in ENV_FILE.read_text().split())
    return {
        "host": f"{facts['JOBBRIDGE_TEST_SSH_USER']}@{facts['JOBBRIDGE_TEST_SSH_HOST']}",
        "port": int(facts["JOBBRIDGE_TEST_SSH_PORT"]),
        "identity_file": facts["JOBBRIDGE_TEST_SSH_KEY"],
        "known_hosts": facts["JOBBRIDGE_TEST_SSH_KNOWN_HOSTS"],
    }


def logins() -> int:
    facts = dict(line.split("=", 1) for line in ENV_FILE.read_text().split())
    return Path(facts["JOBBRIDGE_TEST_SSH_LOG"]).read_text().count("Accepted publickey")


def measure(jobs: int, refreshes: int, **options: Any) -> dict[str, float]:
    with slurm_engine(**options) as (engine, backend, _transport):
        if isinstance(backend.transport, SshTransport):
            backend.transport.disconnect()
        spec = JobSpec(executable="true", attributes={"slurm.hold": True})
        before = logins()
        started = time.perf_counter()
        for _ in range(jobs):
            engine.submit(spec)
        submit_seconds = time.perf_counter() - started
        times = []
        for _ in range(refreshes):
            tick = time.perf_counter()
            engine.refresh(force=True)
            times.append(time.perf_counter() - tick)
        connections = logins() - before
    return {
        "submit_ms_per_job": round(submit_seconds / jobs * 1000, 2),
        "refresh_ms": round(statistics.median(times) * 1000, 1),
        "ssh_connections": connections,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--refreshes", type=int, default=20)
    args = parser.parse_args()
    local = measure(args.jobs, args.refreshes)
    remote = measure(args.jobs, args.refreshes, **ssh_options())
    figures = {
        "jobs": args.jobs,
        "local": local,
        "ssh": remote,
        "submit_overhead_ms_per_job": round(
            remote["submit_ms_per_job"] - local["submit_ms_per_job"], 2
        ),
        "refresh_overhead_ms": round(remote["refresh_ms"] - local["refresh_ms"], 1),
    }
    print(
        f"submit: {local['submit_ms_per_job']} ms/job here, {remote['submit_ms_per_job']} ms/job "
        f"over ssh; refresh of {args.jobs}: {local['refresh_ms']} ms vs {remote['refresh_ms']} ms;"
        f" {remote['ssh_connections']} ssh connection(s)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
