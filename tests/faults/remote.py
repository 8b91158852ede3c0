"""Faults of the way to a remote login node: wrappers on the ssh test user's PATH, killing
the shared master connection, killing ssh clients while their commands run."""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import signal
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from jobbridge.transport.ssh import SshTransport
from tests.faults.wrappers import FaultBin

__all__ = [
    "Chaos",
    "kill_master",
    "kill_ssh_clients",
    "master_pid",
    "remote_fault_bin",
    "ssh_clients",
]

SSHD_DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin:/usr/games"


@contextlib.contextmanager
def remote_fault_bin(user: str, tools: Iterable[str]) -> Iterator[FaultBin]:
    """Wrappers first on the PATH of every new ssh session of ``user``.

    The test sshd reads ``~/.ssh/environment`` (``PermitUserEnvironment yes``) for every
    session, also those multiplexed over a master that was already up; the file is given
    back as it was afterwards."""
    root = Path(tempfile.mkdtemp(prefix="jobbridge-faults-", dir="/var/tmp"))
    faults = FaultBin(root, tools, shared=True)
    account = pwd.getpwnam(user)
    environment = Path(account.pw_dir) / ".ssh" / "environment"
    before = environment.read_text() if environment.exists() else None
    kept = [line for line in (before or "").splitlines() if not line.startswith("PATH=")]
    _write_owned(
        environment,
        "\n".join([*kept, f"PATH={faults.path_with_bin(SSHD_DEFAULT_PATH)}"]) + "\n",
        account,
    )
    try:
        yield faults
    finally:
        if before is None:
            environment.unlink(missing_ok=True)
        else:
            _write_owned(environment, before, account)
        subprocess.run(["rm", "-rf", str(root)], check=False)


def _write_owned(path: Path, text: str, account: pwd.struct_passwd) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    os.chown(partial, account.pw_uid, account.pw_gid)
    partial.chmod(0o600)
    partial.replace(path)


def master_pid(transport: SshTransport) -> int | None:
    """The pid of the master connection the transport's commands go through, if one is up."""
    check = subprocess.run(
        [*transport.ssh_command()[:-1], "-O", "check", transport.host],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    found = re.search(r"pid=(\d+)", check.stderr + check.stdout)
    return int(found[1]) if check.returncode == 0 and found else None


def kill_master(transport: SshTransport) -> bool:
    """SIGKILL the master connection (as a network drop would end it); False if none."""
    pid = master_pid(transport)
    if pid is None:
        return False
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
        return True
    return False


def ssh_clients(parent: int | None = None, matching: str = "") -> list[int]:
    """ssh client processes started by ``parent`` (this process by default) whose command
    line contains ``matching``: commands in flight."""
    parent = os.getpid() if parent is None else parent
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(fields[1]) != parent or not command or os.path.basename(command[0]) != b"ssh":
            continue
        if matching.encode() in b" ".join(command):
            found.append(int(entry.name))
    return found


def kill_ssh_clients(parent: int | None = None, matching: str = "") -> int:
    """SIGKILL the in-flight ssh clients; how many there were."""
    killed = 0
    for pid in ssh_clients(parent, matching):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed


class Chaos:
    """Runs ``action`` every ``interval`` seconds in a thread until stopped, and adds up
    what it returns (kills done)."""

    def __init__(self, action: Callable[[], int | bool], interval: float) -> None:
        self.action = action
        self.interval = interval
        self.done = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-chaos", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.done += int(self.action())

    def __enter__(self) -> Chaos:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
