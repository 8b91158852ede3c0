"""What a process holds: the store keeps a spec's non-default fields only and reads it back
the same; jobs read from rows share what they can without changing what they say; a verb of
the command line loads only the modules it needs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import sqlalchemy as sa

from jobbridge import Job, JobSpec, Phase, Store, load_config
from jobbridge.job import new_job_id, utcnow
from jobbridge.store.schema import jobs
from tests.conftest import cluster_env

SPEC = JobSpec(
    executable="python3",
    arguments=["fit.py", "--steps", "100"],
    resources={"cores_per_process": 2, "walltime": "1:00:00"},
    depends_on=[],
    attributes={"slurm.constraint": "haswell"},
)


def job(spec: JobSpec = SPEC) -> Job:
    return Job(id=new_job_id(), spec=spec, backend="local", phase=Phase.QUEUED, created=utcnow())


def test_the_store_keeps_the_fields_a_spec_sets_and_reads_the_same_spec_back(
    store: Store,
) -> None:
    recorded = job()
    store.add([recorded])
    with store.reading() as conn:
        document = conn.execute(sa.select(jobs.c.spec).where(jobs.c.id == recorded.id)).scalar()
    assert document == {
        "executable": "python3",
        "arguments": ["fit.py", "--steps", "100"],
        "resources": {"cores_per_process": 2, "walltime": 3600},
        "attributes": {"slurm.constraint": "haswell"},
    }
    assert Store(store.url).get(recorded.id).spec == SPEC

    changed = SPEC.replace(inherit_environment=False, resources={"memory": "4G"})
    pending = job()
    store.add([pending.model_copy(update={"phase": Phase.PENDING})])
    assert store.replace_spec(pending.id, changed, Phase.PENDING) is not None
    read = Store(store.url).get(pending.id).spec
    assert read == changed and read.inherit_environment is False


def test_jobs_read_from_rows_say_every_field_is_set_and_copies_stay_apart(store: Store) -> None:
    first, second = job(), job()
    store.add([first, second])
    one, other = Store(store.url).get_many([first.id, second.id])
    assert one.model_fields_set == other.model_fields_set == set(Job.model_fields)
    copy = one.model_copy(update={"phase": Phase.EXECUTING})
    assert copy.phase is Phase.EXECUTING and one.phase is Phase.QUEUED
    assert other.model_fields_set == set(Job.model_fields)


HEAVY = (
    "fastapi",
    "uvicorn",
    "starlette",
    "jinja2",
    "lxml",
    "kubernetes",
    "alembic",
    "cryptography",
    "yaml",
    "httpx",
    "sqlalchemy.orm",
    "rich.progress",
    "jobbridge.uws",
    "jobbridge.pilot",
)

JOBBRIDGE = shutil.which("jobbridge", path=os.path.dirname(sys.executable)) or "jobbridge"
REPORT_MODULES = """
import atexit, json, sys
atexit.register(lambda: sys.stderr.write("MODULES " + json.dumps(sorted(sys.modules)) + "\\n"))
sys.argv = ["jobbridge", *sys.argv[1:]]
from jobbridge.cli import main
main()
"""


def modules_of(*argv: str) -> set[str]:
    done = subprocess.run(
        [sys.executable, "-c", REPORT_MODULES, *argv],
        capture_output=True, text=True, env=os.environ.copy(), check=False,
    )  # fmt: skip
    assert "MODULES " in done.stderr, done.stderr
    return set(json.loads(done.stderr.rsplit("MODULES ", 1)[1].splitlines()[0]))


@pytest.mark.parametrize(
    "argv",
    [
        ("list", "--limit", "1"),
        ("status", "nosuchjob000"),
        ("wait", "nosuchjob000", "--timeout", "0"),
        ("submit", "-q", "--", "true"),
    ],
)
def test_a_verb_on_local_jobs_loads_no_module_it_does_not_need(argv: tuple[str, ...]) -> None:
    Store(load_config().database_url).close()  # migrated once: later starts need no Alembic
    loaded = modules_of(*argv)
    assert "jobbridge.engine" in loaded, "the verb did not run"
    heavy = sorted(m for m in loaded if any(m == h or m.startswith(f"{h}.") for h in HEAVY))
    assert not heavy, heavy


@pytest.mark.parametrize(
    "argv",
    [
        ("list", "--json"),
        ("status", "--json", "nosuchjob000"),
        ("wait", "nosuchjob000", "--timeout", "0", "-q"),
        ("submit", "-q", "--", "true"),
    ],
)
def test_a_verb_that_draws_nothing_loads_no_rich(argv: tuple[str, ...]) -> None:
    loaded = modules_of(*argv)
    assert "jobbridge.engine" in loaded, "the verb did not run"
    assert "click" in loaded and "rich" not in loaded


@pytest.mark.slurm
def test_looking_at_slurm_jobs_loads_neither_jinja2_nor_an_unused_backend() -> None:
    cluster_env("slurm")
    submitted = subprocess.run(
        [JOBBRIDGE, "submit", "--backend", "slurm", "-q",
         "--attribute", "slurm.hold=true", "--", "true"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    try:
        for argv in (("list",), ("status", job_id), ("wait", job_id, "--timeout", "0", "-q")):
            loaded = modules_of(*argv)
            assert "jobbridge.backends.batch.slurm" in loaded, "the job's backend was not asked"
            unneeded = sorted(
                m
                for m in loaded
                if m == "jobbridge.backends.local"
                or any(m == h or m.startswith(f"{h}.") for h in HEAVY)
            )
            assert not unneeded, (argv, unneeded)
    finally:
        subprocess.run([JOBBRIDGE, "cancel", job_id], capture_output=True, check=False)
