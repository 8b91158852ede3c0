"""Peak memory of command-line processes that refresh N active jobs (``list``, ``status``,
``wait``), next to reference processes measured in the same run: a bare interpreter, one that
only imports SQLAlchemy, one that imports SQLAlchemy and pydantic, one that also defines one
pydantic model (the floor of any process with a store and a job model), and, on SLURM where
psij is installed, a psij poll of the same jobs.

    python benchmarks/cli_memory.py [--jobs 1000] [--backend local|slurm]

``local`` runs N ``sleep`` jobs on this machine; ``slurm`` submits N held jobs to the test
cluster (scripts/test-clusters.sh up slurm). Every figure is the process's own peak resident
set (VmHWM, read at exit: unlike ru_maxrss it is not inherited from the process that spawned
it), in MiB. The last line is a JSON object of the figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from jobbridge import Engine, JobSpec, load_config
from jobbridge.errors import JobbridgeError

HIGH_WATER = """
import atexit, sys
def report():
    status = open("/proc/self/status").read()
    sys.stderr.write("VmHWM " + status.split("VmHWM:")[1].split()[0] + "\\n")
atexit.register(report)
"""

CLI = (
    HIGH_WATER + "sys.argv = ['jobbridge', *sys.argv[1:]]\nfrom jobbridge.cli import main\nmain()\n"
)

REFERENCES = {
    "python_pass": "pass",
    "import_sqlalchemy": "import sqlalchemy",
    "import_sqlalchemy_pydantic": "import sqlalchemy, pydantic",
    # ``import pydantic`` loads its parts on demand; the first model loads BaseModel's
    # machinery and builds a schema, which every process with a model pays
    "import_sqlalchemy_pydantic_model": (
        "import sqlalchemy\nfrom pydantic import BaseModel\nclass Model(BaseModel):\n    x: int"
    ),
}

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

SPECS = {
    "local": JobSpec(executable="sleep", arguments=["3600"]),
    "slurm": JobSpec(executable="true", attributes={"slurm.hold": True}),
}


def peak_mib(argv: list[str], env: dict[str, str], stdin: str = "") -> float:
    done = subprocess.run(
        argv, env=env, input=stdin, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        text=True, check=False,
    )  # fmt: skip
    if "VmHWM " not in done.stderr:
        raise SystemExit(f"{argv[2:]} failed ({done.returncode}): {done.stderr}")
    kib = int(done.stderr.rsplit("VmHWM ", 1)[1].split()[0])
    return round(kib / 1024, 1)


def psij_reference(env: dict[str, str], native_ids: list[str]) -> float | None:
    try:
        import psij  # noqa: F401
    except ImportError:
        return None
    return peak_mib([sys.executable, "-c", PSIJ_POLL], env, "\n".join(native_ids))


def stop_all(engine: Engine, backend: str, native_ids: list[str]) -> None:
    if backend == "slurm":
        for start in range(0, len(native_ids), 500):
            subprocess.run(["scancel", *native_ids[start : start + 500]], check=False)
        return
    for job in engine.store.active():
        with contextlib.suppress(JobbridgeError):
            engine.cancel(job.id)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--backend", choices=sorted(SPECS), default="local")
    args = parser.parse_args()
    figures: dict[str, object] = {"jobs": args.jobs, "backend": args.backend}
    with tempfile.TemporaryDirectory(prefix="jobbridge-bench-") as scratch:
        config = Path(scratch) / "jobbridge.toml"
        config.write_text(
            f'default_backend = "{args.backend}"\n'
            f'[backends.{args.backend}]\nkind = "{args.backend}"\nmax_jobs_in_flight = 100000\n'
        )
        env = {**os.environ, "JOBBRIDGE_DATA_DIR": scratch, "JOBBRIDGE_CONFIG": str(config)}
        env.pop("JOBBRIDGE_DATABASE_URL", None)
        with Engine.from_config(load_config(environ=env)) as engine:
            jobs = engine.submit_many([SPECS[args.backend]] * args.jobs)
            native_ids = [job.native_id or "" for job in jobs]
            first = jobs[0].id
            try:
                for name, code in REFERENCES.items():
                    figures[f"{name}_mib"] = peak_mib(
                        [sys.executable, "-c", HIGH_WATER + code], env
                    )
                cli = [sys.executable, "-c", CLI]
                verbs = {
                    "list": ["list", "--limit", "1"],
                    "status": ["status", first],
                    "wait": ["wait", first, "--timeout", "0", "-q"],
                }
                for verb, argv in verbs.items():
                    figures[f"cli_{verb}_mib"] = peak_mib([*cli, *argv], env)
                if args.backend == "slurm":
                    figures["psij_poll_mib"] = psij_reference(env, native_ids)
            finally:
                stop_all(engine, args.backend, native_ids)
    listing = ", ".join(f"{key} {value}" for key, value in figures.items())
    print(f"peak RSS (MiB) with {args.jobs} active {args.backend} jobs: {listing}")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
