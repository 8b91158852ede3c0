"""Engines for fault tests: small settings, several engines (threads or processes) on one
store, bounded waits with clear messages, and cleaning up what a failed test left queued."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from jobbridge import Engine, EngineSettings, Job, JobSpec, Phase, Store
from jobbridge.backends.base import Backend, BackendContext
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.options import connect
from jobbridge.backends.batch.sge import SgeBackend
from jobbridge.backends.batch.slurm import SlurmBackend
from tests.faults.counting import SGE_ENV, run_real

__all__ = [
    "BATCH_OPTIONS",
    "ENGINE_SETTINGS",
    "REFRESHER",
    "SUBMITTER",
    "EngineProcess",
    "Setup",
    "cancel_leftovers",
    "describe",
    "history",
    "keep_refreshing",
    "marker",
    "refresh_until",
    "settle",
    "spec_json",
    "submit_in_threads",
    "wait_until",
]

T = TypeVar("T")

ENGINE_SETTINGS: dict[str, Any] = {
    "refresh_interval": 0.2,
    "claim_timeout": 3,
    "retry_delay": 0.5,
    "max_backoff": 2,
    "submit_in_background": False,  # each handover's outcome is checked as it comes back
}
BATCH_OPTIONS: dict[str, Any] = {
    "min_refresh_interval": 0.2,
    "command_timeout": 3,
    "accounting_delay": 2,
    "lost_after": 5,
    "lost_after_misses": 2,
}
KINDS: dict[str, type[BatchBackend]] = {"slurm": SlurmBackend, "sge": SgeBackend}


def marker() -> str:
    """A prefix for the names of one test's jobs, so that counting sees only them."""
    return "f" + secrets.token_hex(3)


@dataclass
class Setup:
    """One store and one backend configuration that every engine of a test shares, in this
    process or in others."""

    data_dir: Path
    database_url: str
    kind: str = "slurm"
    backend_name: str = "cluster"
    options: dict[str, Any] = field(default_factory=lambda: dict(BATCH_OPTIONS))
    settings: dict[str, Any] = field(default_factory=lambda: dict(ENGINE_SETTINGS))
    jobs_dir: Path | None = None
    control_dir: Path | None = None
    """For a backend over SSH: a master connection of its own, in this directory, so that
    killing it disturbs no one else's."""

    @property
    def backend_jobs_dir(self) -> Path:
        return self.jobs_dir or self.data_dir / "jobs"

    def backend(self) -> BatchBackend:
        cls = KINDS[self.kind]
        options = cls.Options.model_validate(self.options)
        backend = cls(self.backend_name, options, BackendContext(self.backend_jobs_dir))
        if options.host is not None and self.control_dir is not None:
            backend.transport = connect(options, control_dir=str(self.control_dir))
        return backend

    def engine(self, backend: Backend | None = None) -> Engine:
        """A new engine with its own connections to the shared store and its own backend."""
        backend = backend or self.backend()
        return Engine(
            Store(self.database_url),
            {self.backend_name: backend},
            settings=EngineSettings.model_validate(self.settings),
            default_backend=self.backend_name,
        )

    def write_config(self) -> Path:
        """The same set-up as a configuration file, for engines in other processes."""
        lines = [
            f"data_dir = {_toml(str(self.data_dir))}",
            f"database_url = {_toml(self.database_url)}",
            f"default_backend = {_toml(self.backend_name)}",
            "[engine]",
            *(f"{key} = {_toml(value)}" for key, value in self.settings.items()),
            f"[backends.{self.backend_name}]",
            f"kind = {_toml(self.kind)}",
            *(f"{key} = {_toml(value)}" for key, value in self.options.items()),
        ]
        if self.jobs_dir is not None or self.control_dir is not None:
            raise NotImplementedError("engines in other processes use data_dir/jobs and the"
                                      " shared master connection")  # fmt: skip
        path = self.data_dir / "faults.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
        return path

    def process_env(self) -> dict[str, str]:
        env = {**os.environ, "JOBBRIDGE_CONFIG": str(self.write_config())}
        env.pop("JOBBRIDGE_DATABASE_URL", None)
        env["JOBBRIDGE_DATA_DIR"] = str(self.data_dir)
        if self.kind == "sge":
            env = {**SGE_ENV, **env}
        return env


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str | list):
        return json.dumps(value)
    raise TypeError(f"no TOML for {value!r}")


# -- engines in other processes ---------------------------------------------------------------

REFRESHER = textwrap.dedent(
    """
    import sys, time
    from jobbridge import Engine

    engine = Engine.from_config()
    print("ready", flush=True)
    deadline = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < deadline:
        try:
            engine.refresh()
        except Exception as error:
            print(f"refresh failed: {error!r}", file=sys.stderr, flush=True)
        time.sleep(0.1)
    engine.close()
    """
)

SUBMITTER = textwrap.dedent(
    """
    import json, sys
    from jobbridge import Engine, JobSpec

    engine = Engine.from_config()
    print("ready", flush=True)
    for spec in json.loads(sys.argv[1]):
        print(engine.submit(JobSpec.model_validate(spec)).id, flush=True)
    engine.close()
    """
)


class EngineProcess:
    """A Python process running jobbridge on a set-up's configuration (``REFRESHER``,
    ``SUBMITTER`` or any script), in a session of its own; killed on exit."""

    def __init__(self, setup: Setup, script: str, *arguments: str) -> None:
        self.log = setup.data_dir / f"process-{secrets.token_hex(3)}.log"
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self._out = self.log.with_suffix(".out")
        with self._out.open("wb") as out, self.log.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-c", script, *arguments],
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                env=setup.process_env(),
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def stdout(self) -> str:
        return self._out.read_text()

    @property
    def stderr(self) -> str:
        return self.log.read_text()

    def wait_ready(self, timeout: float = 30) -> None:
        wait_until(
            lambda: "ready" in self.stdout or self.process.poll() is not None,
            timeout,
            lambda: f"the engine process did not start: {self.stderr[-2000:]}",
        )
        assert "ready" in self.stdout, f"the engine process died at once: {self.stderr[-2000:]}"

    def wait(self, timeout: float) -> int:
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"the engine process did not end within {timeout:g} s: {self.stderr[-2000:]}"
            ) from None

    def kill(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def __enter__(self) -> EngineProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.kill()


def spec_json(specs: Iterable[JobSpec]) -> str:
    return json.dumps([spec.model_dump(mode="json", exclude_defaults=True) for spec in specs])


# -- waiting ------------------------------------------------------------------------------------


def wait_until(
    condition: Callable[[], T],
    timeout: float,
    message: str | Callable[[], str],
    interval: float = 0.1,
) -> T:
    """Poll ``condition`` until it returns something true; fail with ``message`` after
    ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            text = message() if callable(message) else message
            raise AssertionError(f"after {timeout:g} s: {text}")
        time.sleep(interval)


def submit_in_threads(
    engine: Engine, specs: Sequence[JobSpec], threads: int, timeout: float = 300
) -> list[Job]:
    """Submit ``specs`` from ``threads`` threads at once (each takes every n-th); the jobs
    as their submissions returned them, in the order of ``specs``. Fails if a submission
    raised: a fault must make a job wait, not the caller fail."""
    results: dict[int, Job] = {}
    errors: list[str] = []
    lock = threading.Lock()

    def submit(first: int) -> None:
        for index in range(first, len(specs), threads):
            try:
                job = engine.submit(specs[index])
            except Exception as error:
                with lock:
                    errors.append(f"{specs[index].name}: {error!r}")
                continue
            with lock:
                results[index] = job

    workers = [threading.Thread(target=submit, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout)
    assert not errors, f"submissions raised instead of waiting out the fault: {errors[:3]}"
    assert len(results) == len(specs), "submissions did not return in time"
    return [results[index] for index in range(len(specs))]


def refresh_until(
    engine: Engine,
    condition: Callable[[], bool],
    timeout: float,
    message: str | Callable[[], str],
) -> None:
    """Refresh the engine until ``condition`` holds; fail with ``message`` after ``timeout``."""

    def refreshed() -> bool:
        engine.refresh()
        return condition()

    wait_until(refreshed, timeout, message, interval=0.2)


def keep_refreshing(engine: Engine, seconds: float) -> None:
    """Let the engine work through a fault for a while."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        engine.refresh()
        time.sleep(0.2)


def describe(jobs: Iterable[Job]) -> str:
    return "\n".join(
        f"  {job.id} {job.name} native={job.native_id} {job.phase}/{job.detail}"
        f" exit={job.exit_code}: {job.message}"
        for job in jobs
    )


def settle(engine: Engine, ids: Sequence[str], timeout: float) -> list[Job]:
    """Wait (refreshing) until no job of ``ids`` is active; fail naming those that are."""
    jobs = engine.wait(ids, timeout=timeout)
    active = [job for job in jobs if job.phase.is_active]
    assert not active, f"still active after {timeout:g} s:\n{describe(active)}"
    return jobs


def history(store: Store, job_id: str) -> list[tuple[Phase, str | None, str | None]]:
    """The job's phases as its events recorded them: (phase, detail, message)."""
    return [(event.new_phase, event.detail, event.message) for event in store.events(job_id)]


# -- cleaning up --------------------------------------------------------------------------------


def cancel_leftovers(kind: str, mark: str, env: Mapping[str, str] | None = None) -> None:
    """Cancel the native jobs of a test (names containing ``mark``) that are still queued or
    running, so that a failed test leaves nothing behind."""
    if kind == "slurm":
        listing = run_real(["squeue", "-a", "--noheader", "--format=%i|%j"], check=False)
        ids = [line.split("|")[0] for line in listing.splitlines() if mark in line]
        if ids:
            run_real(["scancel", *ids], check=False)
    else:
        listing = run_real(["qstat", "-u", "*", "-r"], {**SGE_ENV, **(env or {})}, check=False)
        ids = _sge_ids_named(listing, mark)
        if ids:
            run_real(["qdel", *ids], {**SGE_ENV, **(env or {})}, check=False)


def _sge_ids_named(listing: str, mark: str) -> list[str]:
    ids, current = [], None
    for line in listing.splitlines():
        words = line.split()
        if words and words[0].isdigit():
            current = words[0]
        if current and "Full jobname:" in line and mark in line:
            ids.append(current)
    return ids
