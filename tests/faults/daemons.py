"""Stopping and starting SLURM daemons of the test cluster (``scripts/test-clusters.sh
stop-daemon|start-daemon``), and a small tmpfs for running out of space."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "DAEMONS",
    "daemon_stopped",
    "ensure_daemons_up",
    "fill",
    "small_tmpfs",
    "start_daemon",
    "stop_daemon",
]

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "test-clusters.sh"
LOCK = Path("/var/tmp/jobbridge-test/.lock")
"""The lock ``test-clusters.sh`` takes while it changes the services."""
DAEMONS = ("slurmctld", "slurmdbd")


def _cluster_script(command: str, daemon: str, timeout: float, *, locked: bool = False) -> None:
    if daemon not in DAEMONS:
        raise ValueError(f"{daemon} is not one of {DAEMONS}")
    env = {**os.environ, "JOBBRIDGE_TEST_CLUSTERS_LOCKED": "1" if locked else ""}
    done = subprocess.run(
        ["bash", str(SCRIPT), command, daemon],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )
    if done.returncode != 0:
        raise AssertionError(f"{SCRIPT.name} {command} {daemon} failed:\n{done.stderr}")


def stop_daemon(daemon: str) -> None:
    _cluster_script("stop-daemon", daemon, 60)


def start_daemon(daemon: str) -> None:
    """Start it and return once it answers (and, for slurmctld, the node takes jobs)."""
    _cluster_script("start-daemon", daemon, 150)


def ensure_daemons_up() -> None:
    """Start any of ``DAEMONS`` that is down (an earlier run killed before it could restart
    it); cheap when all answer."""
    for daemon in DAEMONS:
        start_daemon(daemon)


@contextlib.contextmanager
def daemon_stopped(daemon: str) -> Iterator[None]:
    """``daemon`` is down inside the block and up again after it, whatever happens. The
    test clusters' lock is held meanwhile, so that ``test-clusters.sh up`` run by anyone
    else waits instead of starting the daemon in the middle of the fault."""
    with _cluster_lock():
        _cluster_script("stop-daemon", daemon, 60, locked=True)
        try:
            yield
        finally:
            _cluster_script("start-daemon", daemon, 150, locked=True)


@contextlib.contextmanager
def _cluster_lock(timeout: float = 300) -> Iterator[None]:
    with LOCK.open("a") as handle:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{LOCK} stayed locked for {timeout:g} s") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def small_tmpfs(mount_point: Path, size: str = "4m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``mount_point`` (root only)."""
    mount_point.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise PermissionError(f"cannot mount a tmpfs at {mount_point}: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True, check=False)


def fill(directory: Path) -> Path:
    """Write a file that takes every free byte of ``directory``'s file system."""
    filler = directory / ".filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while os.write(fd, b"\0" * size) == size:
                    pass
    finally:
        os.close(fd)
    return filler
