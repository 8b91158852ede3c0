"""The SSH transport against the real test sshd on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbridge import CommandFailed, CommandTimeout, TransportError
from jobbridge.errors import ConnectionLost
from jobbridge.transport.ssh import SshTransport
from tests.batch_support import HOSTILE_ARGUMENTS, HOSTILE_VALUE
from tests.conftest import cluster_env

pytestmark = pytest.mark.ssh


@pytest.fixture
def ssh() -> dict[str, str]:
    return cluster_env("ssh")


@pytest.fixture
def control_dir() -> Iterator[str]:
    """Short, as socket paths must be."""
    directory = tempfile.mkdtemp(prefix="jbssh-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


def transport(ssh: dict[str, str], control_dir: str, **changes: object) -> SshTransport:
    settings: dict[str, object] = {
        "port": int(ssh["JOBBRIDGE_TEST_SSH_PORT"]),
        "identity_file": ssh["JOBBRIDGE_TEST_SSH_KEY"],
        "known_hosts": ssh["JOBBRIDGE_TEST_SSH_KNOWN_HOSTS"],
        "control_dir": control_dir,
        **changes,
    }
    destination = f"{ssh['JOBBRIDGE_TEST_SSH_USER']}@{ssh['JOBBRIDGE_TEST_SSH_HOST']}"
    return SshTransport(destination, **settings)  # type: ignore[arg-type]


def logins(ssh: dict[str, str]) -> int:
    return Path(ssh["JOBBRIDGE_TEST_SSH_LOG"]).read_text().count("Accepted publickey for jbtest")


def test_arguments_environment_and_directory_arrive_verbatim(
    ssh: dict[str, str], control_dir: str
) -> None:
    remote = transport(ssh, control_dir)
    try:
        program = (
            "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['TRICKY'],"
            " os.getcwd()]))"
        )
        result = remote.run(
            ["python3", "-c", program, *HOSTILE_ARGUMENTS],
            env={"TRICKY": HOSTILE_VALUE},
            cwd="/tmp",
        )
        assert json.loads(result.stdout) == [HOSTILE_ARGUMENTS, HOSTILE_VALUE, "/tmp"]
        assert remote.run(["cat"], stdin="through stdin\n").stdout == "through stdin\n"
    finally:
        remote.disconnect()


def test_failures_are_told_apart(ssh: dict[str, str], control_dir: str) -> None:
    remote = transport(ssh, control_dir)
    try:
        with pytest.raises(CommandFailed) as failed:
            remote.run(["sh", "-c", "echo nope >&2; exit 3"])
        assert failed.value.returncode == 3 and "nope" in failed.value.stderr
        assert remote.run(["false"], check=False).returncode == 1
        with pytest.raises(CommandTimeout):
            remote.run(["sleep", "5"], timeout=0.5)
    finally:
        remote.disconnect()


def test_files(ssh: dict[str, str], control_dir: str) -> None:
    remote = transport(ssh, control_dir)
    directory = f"/tmp/jobbridge-ssh-test-{os.getpid()}/with space"
    try:
        remote.make_dirs(directory)
        path = f"{directory}/it's a file"
        data = bytes(range(256)) * 4 + b"\nlast line\n"
        remote.write_bytes(path, data, mode=0o640)
        assert remote.exists(path)
        assert remote.read_bytes(path) == data
        assert remote.read_bytes(path, 10, 5) == data[10:15]
        assert remote.read_bytes(path, -10) == b"last line\n"
        assert remote.read_bytes(path, -10, 4) == b"last"
        with pytest.raises(FileNotFoundError):
            remote.read_bytes(f"{directory}/absent")
        many = remote.read_many([path, f"{directory}/absent"], limit=3)
        assert many == {path: data[:3]}
        mode = remote.run(["stat", "-c", "%a", path]).stdout.strip()
        assert mode == "640"
    finally:
        remote.remove_tree(os.path.dirname(directory))
        assert not remote.exists(directory)
        remote.disconnect()


def test_many_commands_share_one_connection(ssh: dict[str, str], control_dir: str) -> None:
    remote = transport(ssh, control_dir)
    before = logins(ssh)
    try:
        for _ in range(50):
            remote.run(["true"])
        remote.read_many(["/etc/hostname"])
    finally:
        remote.disconnect()
    assert logins(ssh) - before == 1


def test_a_killed_master_is_replaced(ssh: dict[str, str], control_dir: str) -> None:
    remote = transport(ssh, control_dir)
    try:
        remote.run(["true"])
        check = subprocess.run(
            [*remote.ssh_command()[:-1], "-O", "check", remote.host],
            capture_output=True,
            text=True,
            check=False,
        )
        pid = int(check.stderr.split("pid=")[1].split(")")[0])
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        assert remote.run(["echo", "back"]).stdout == "back\n"
    finally:
        remote.disconnect()


def master_pid(remote: SshTransport) -> int:
    check = subprocess.run(
        [*remote.ssh_command()[:-1], "-O", "check", remote.host],
        capture_output=True,
        text=True,
        check=False,
    )
    return int(check.stderr.split("pid=")[1].split(")")[0])


def kill_master_while(remote: SshTransport, seconds: float) -> threading.Thread:
    """Kill the master connection ``seconds`` from now, in the background."""

    def kill() -> None:
        time.sleep(seconds)
        os.kill(master_pid(remote), signal.SIGKILL)

    killer = threading.Thread(target=kill)
    killer.start()
    return killer


def test_a_command_cut_off_midway_is_not_run_again(
    ssh: dict[str, str], control_dir: str, tmp_path: Path
) -> None:
    """Only idempotent commands are repeated after a broken connection: a submission that
    lost its answer may have taken effect, and must be looked for instead."""
    remote = transport(ssh, control_dir)
    marks = f"/tmp/jb-marks-{os.getpid()}"
    try:
        remote.run(["rm", "-f", marks])
        killer = kill_master_while(remote, 0.5)
        with pytest.raises(ConnectionLost) as lost:
            remote.run(["sh", "-c", 'echo run >> "$1"; sleep 3', "sh", marks])
        killer.join()
        assert lost.value.may_have_run and lost.value.retryable
        time.sleep(0.2)
        assert remote.run(["cat", marks]).stdout == "run\n"  # once, not twice
        killer = kill_master_while(remote, 0.5)
        repeated = remote.run(
            ["sh", "-c", 'echo again >> "$1"; sleep 1', "sh", marks], idempotent=True
        )
        killer.join()
        assert repeated.returncode == 0
        assert remote.run(["cat", marks]).stdout == "run\nagain\nagain\n"
    finally:
        remote.run(["rm", "-f", marks], idempotent=True)
        remote.disconnect()


def test_a_control_dir_too_long_for_a_socket_is_refused(ssh: dict[str, str]) -> None:
    remote = transport(ssh, "/tmp/" + "x" * 80)
    with pytest.raises(TransportError, match="too long"):
        remote.run(["true"])
    os.rmdir("/tmp/" + "x" * 80)


def test_host_keys_are_checked(ssh: dict[str, str], tmp_path: Path, control_dir: str) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    remote = transport(ssh, control_dir, known_hosts=str(empty))
    with pytest.raises(TransportError, match="Host key verification failed") as refused:
        remote.run(["true"])
    assert refused.value.retryable is False


def test_an_unreachable_host_is_a_retryable_error(ssh: dict[str, str], control_dir: str) -> None:
    remote = transport(ssh, control_dir, port=1, connect_timeout=3)
    with pytest.raises(TransportError) as failed:
        remote.run(["true"])
    assert failed.value.retryable is True
    assert "refused" in str(failed.value)


def test_the_users_ssh_config_is_honoured(
    ssh: dict[str, str], tmp_path: Path, control_dir: str
) -> None:
    config = tmp_path / "config"
    config.write_text(
        "Host cluster-login\n"
        f"  HostName {ssh['JOBBRIDGE_TEST_SSH_HOST']}\n"
        f"  Port {ssh['JOBBRIDGE_TEST_SSH_PORT']}\n"
        f"  User {ssh['JOBBRIDGE_TEST_SSH_USER']}\n"
        f"  IdentityFile {ssh['JOBBRIDGE_TEST_SSH_KEY']}\n"
        f"  UserKnownHostsFile {ssh['JOBBRIDGE_TEST_SSH_KNOWN_HOSTS']}\n"
    )
    remote = SshTransport("cluster-login", config_file=str(config), control_dir=control_dir)
    try:
        assert remote.run(["whoami"]).stdout.strip() == ssh["JOBBRIDGE_TEST_SSH_USER"]
    finally:
        remote.disconnect()
