"""Memory of a ``jobbridge list`` process that refreshes N held SLURM jobs (its peak RSS),
next to a psij process polling the same jobs, where psij is installed.

    python benchmarks/memory.py [--jobs 1000]

Needs the SLURM test cluster (scripts/test-clusters.sh up slurm). Last line: JSON figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from jobbridge import Engine, JobSpec, load_config

HIGH_WATER = """
import atexit, sys
def report():
    status = open("/proc/self/status").read()
    sys.stderr.write("VmHWM " + status.split("VmHWM:")[1].split()[0] + "\\n")
atexit.register(report)
"""
"""Prints the process's own peak RSS at exit (VmHWM: unlike ru_maxrss, not inherited from
the process that spawned it)."""

CLI = (
    HIGH_WATER
    + """
sys.argv = ["jobbridge", *sys.argv[1:]]
from jobbridge.cli import main
main()
"""
)

PSIJ_POLL = (
    HIGH_WATER
    + """
import psij
from psij.executors.batch.slurm import SlurmExecutorConfig
config = SlurmExecutorConfig(initial_queue_polling_delay=3600, queue_polling_interval=3600)
executor = psij.JobExecutor.get_instance("slurm", config=config)
for native_id in sys.stdin.read().split():
    executor.attach(psij.Job(), native_id)
executor._queue_poll_thread._poll()
"""
)


def peak_mib(argv: list[str], env: dict[str, str], stdin: str = "") -> float:
    done = subprocess.run(
        argv, env=env, input=stdin, stdout=subprocess.DEVNULL, capture_output=False,
        stderr=subprocess.PIPE, text=True, check=True,
    )  # fmt: skip
    kib = int(done.stderr.rsplit("VmHWM ", 1)[1].split()[0])
    return round(kib / 1024, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-") as scratch:
        config = Path(scratch) / "jobbridge.toml"
        config.write_text('default_backend = "slurm"\n[backends.slurm]\nkind = "slurm"\n')
        env = {**os.environ, "JOBBRIDGE_DATA_DIR": scratch, "JOBBRIDGE_CONFIG": str(config)}
        env.pop("JOBBRIDGE_DATABASE_URL", None)
        with Engine.from_config(load_config(environ=env)) as engine:
            spec = JobSpec(executable="true", attributes={"slurm.hold": True})
            jobs = engine.submit_many([spec] * args.jobs)
            native_ids = [job.native_id or "" for job in jobs]
        ours = peak_mib([sys.executable, "-c", CLI, "list", "--limit", "1"], env)
        try:
            import psij  # noqa: F401

            reference: float | None = peak_mib(
                [sys.executable, "-c", PSIJ_POLL], env, "\n".join(native_ids)
            )
        except ImportError:
            reference = None
        for start in range(0, len(native_ids), 500):
            subprocess.run(["scancel", *native_ids[start : start + 500]], check=False)
    figures = {"jobs": args.jobs, "cli_list_peak_mib": ours, "psij_poll_peak_mib": reference}
    print(f"jobbridge list refreshing {args.jobs} jobs: {ours} MiB; psij: {reference} MiB")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
