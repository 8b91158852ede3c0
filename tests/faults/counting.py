"""Counting what the schedulers really hold, without asking jobbridge.

Every native job a test's jobs made is found by its name, in the queue and in the accounting
(``squeue``/``sacct``, ``qstat``/``qacct``), and compared with the store:

- ``duplicated``: jobbridge jobs with more than one native job;
- ``untracked``: native jobs whose jobbridge job does not carry their native id;
- ``lost``: jobbridge jobs ended ERROR/LOST while their native job COMPLETED;
- ``wrongly_failed``: jobbridge jobs ended ERROR or ABORTED while their native job
  COMPLETED, or ended so without ever having been handed over (the faults of these tests
  are passing ones: a job that never reached the scheduler should wait, not fail).

A native job belongs to a jobbridge job if its name ends with the job's mark (``.jb-<id>``),
or, failing that, if it is the job's (unique) name with or without a suffix.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from xml.etree import ElementTree

from jobbridge import Job, Phase
from tests.faults.wrappers import is_wrapper

__all__ = [
    "NativeJob",
    "Tally",
    "run_real",
    "sge_native_jobs",
    "slurm_native_jobs",
    "slurm_queue_state",
    "tag",
    "tally",
]

_SLACK = timedelta(minutes=2)
_FINAL_SLURM = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL")
SGE_ENV = {"SGE_ROOT": "/var/lib/gridengine", "SGE_CELL": "default"}


def tag(job: Job) -> str:
    """The mark every submission of ``job`` carries, as the contract defines it."""
    return f"jb-{job.array_id or job.id}"


@dataclass(frozen=True)
class NativeJob:
    native_id: str
    name: str
    state: str
    """The scheduler's word; COMPLETED for a job that ended with exit code 0."""


@dataclass
class Tally:
    duplicated: dict[str, list[str]] = field(default_factory=dict)
    """jobbridge id -> its native ids, for jobs with more than one."""
    untracked: list[str] = field(default_factory=list)
    """Native ids (with the job they belong to) that no jobbridge job carries."""
    lost: list[str] = field(default_factory=list)
    wrongly_failed: list[str] = field(default_factory=list)
    untagged: list[str] = field(default_factory=list)
    """Native jobs whose name does not end with their job's mark."""
    natives: dict[str, list[NativeJob]] = field(default_factory=dict)
    """jobbridge id -> every native job found for it."""

    @property
    def counts(self) -> dict[str, int]:
        return {
            "duplicated": len(self.duplicated),
            "untracked": len(self.untracked),
            "lost": len(self.lost),
            "wrongly_failed": len(self.wrongly_failed),
        }

    def assert_exactly_once(self) -> None:
        """All four counts are zero, or a report of what broke the invariant."""
        assert self.counts == dict.fromkeys(self.counts, 0), self.report()

    def report(self) -> str:
        return (
            f"exactly-once broken: {self.counts}\n"
            f"  duplicated: {self.duplicated}\n"
            f"  untracked: {self.untracked}\n"
            f"  lost: {self.lost}\n"
            f"  wrongly_failed: {self.wrongly_failed}"
        )


def tally(jobs: Sequence[Job], natives: Iterable[NativeJob]) -> Tally:
    """Compare the store's jobs with the native jobs found for them."""
    result = Tally()
    by_tag = {tag(job): job for job in jobs}
    by_name = {job.name: job for job in jobs}
    owned: dict[str, dict[str, NativeJob]] = {job.id: {} for job in jobs}
    for native in natives:
        job = _owner(native.name, by_tag, by_name)
        if job is None:
            continue
        if not native.name.endswith("." + tag(job)):
            result.untagged.append(f"{native.native_id} ({native.name!r})")
        known = owned[job.id].get(native.native_id)
        # the accounting's word on an ended job wins over the queue's
        if known is None or native.state in _FINAL_SLURM or native.state == "COMPLETED":
            owned[job.id][native.native_id] = native
    for job in jobs:
        found = owned[job.id]
        result.natives[job.id] = list(found.values())
        if len(found) > 1:
            result.duplicated[job.id] = sorted(found)
        for native_id in found:
            if native_id != job.native_id:
                result.untracked.append(f"{native_id} (job {job.id}, which has {job.native_id})")
        completed = any(native.state == "COMPLETED" for native in found.values())
        if job.phase is Phase.ERROR and job.detail == "LOST" and completed:
            result.lost.append(f"{job.id} ({job.native_id})")
        failed = job.phase in (Phase.ERROR, Phase.ABORTED)
        never_submitted = not found and job.native_id is None
        if failed and (completed or never_submitted):
            result.wrongly_failed.append(
                f"{job.id} {job.phase}/{job.detail}: {job.message!r}; native jobs:"
                f" {[(n.native_id, n.state) for n in found.values()]}"
            )
    return result


def _owner(name: str, by_tag: Mapping[str, Job], by_name: Mapping[str, Job]) -> Job | None:
    stem, _, mark = name.rpartition(".")
    if mark in by_tag:
        return by_tag[mark]
    for candidate in (name, stem):
        if candidate in by_name:
            return by_name[candidate]
    return None


# -- SLURM ----------------------------------------------------------------------------------


def slurm_native_jobs(since: datetime, marker: str) -> list[NativeJob]:
    """Every SLURM job whose name contains ``marker``, from the queue and from the accounting
    (jobs submitted after ``since``)."""
    queue = run_real(["squeue", "-a", "--noheader", "--states=all", "--format=%i|%j|%T"])
    start = (since - _SLACK).astimezone().strftime("%Y-%m-%dT%H:%M:%S")
    accounting = run_real(
        ["sacct", "-a", "-X", "-n", "-P", "-S", start, "--format=JobIDRaw,JobName,State"]
    )
    found = []
    for text in (queue, accounting):
        for line in text.splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3 and marker in parts[1]:
                found.append(NativeJob(parts[0], parts[1], parts[2].split()[0]))
    return found


def slurm_queue_state(native_id: str) -> str | None:
    """The state word squeue gives one job now (None if it does not list it)."""
    listing = run_real(["squeue", "--noheader", "--states=all", f"--jobs={native_id}",
                        "--format=%i|%T"], check=False)  # fmt: skip
    for line in listing.splitlines():
        job_id, _, state = line.strip().partition("|")
        if job_id == native_id:
            return state
    return None


# -- Grid Engine ------------------------------------------------------------------------------


def sge_native_jobs(since: datetime, marker: str) -> list[NativeJob]:
    """Every Grid Engine job whose name contains ``marker``: ``qstat -xml`` for the queue,
    ``qacct`` for the jobs that started after ``since``."""
    env = {**SGE_ENV, **{k: v for k, v in os.environ.items() if k.startswith("SGE_")}}
    found = []
    root = ElementTree.fromstring(run_real(["qstat", "-xml", "-u", "*"], env))
    for entry in root.iter("job_list"):
        name = (entry.findtext("JB_name") or "").strip()
        if marker in name:
            number = (entry.findtext("JB_job_number") or "").strip()
            found.append(NativeJob(number, name, (entry.findtext("state") or "").strip()))
    stamp = (since - _SLACK).astimezone(UTC).strftime("%Y%m%d%H%M")
    accounting = run_real(["qacct", "-b", stamp, "-j"], {**env, "TZ": "UTC"}, check=False)
    for record in accounting.split("\n="):
        fields = dict(
            ([*line.split(None, 1), ""])[:2] for line in record.splitlines() if line.strip()
        )
        name = fields.get("jobname", "").strip()
        if marker in name and "jobnumber" in fields:
            failed = fields.get("failed", "1").split()[0]
            status = fields.get("exit_status", "1").split()[0]
            word = "COMPLETED" if failed == "0" and status == "0" else f"FAILED({failed}/{status})"
            found.append(NativeJob(fields["jobnumber"].strip(), name, word))
    return found


def run_real(argv: list[str], env: Mapping[str, str] | None = None, *, check: bool = True) -> str:
    """A scheduler command for the count itself, never through a fault wrapper."""
    done = subprocess.run(
        [_real(argv[0]), *argv[1:]],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )
    if check and done.returncode != 0:
        raise AssertionError(f"counting with {argv[0]} failed: {done.stderr.strip()}")
    return done.stdout


def _real(tool: str) -> str:
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(entry or ".") / tool
        if candidate.is_file() and os.access(candidate, os.X_OK) and not is_wrapper(candidate):
            return str(candidate)
    raise AssertionError(f"{tool} is not installed")
