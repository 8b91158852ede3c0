"""Commands and files on a remote host over OpenSSH.

All traffic to one destination goes through one master connection (ControlMaster), which
stays up for ``control_persist`` seconds after its last use and is shared by every jobbridge
process of this user. The user's ``~/.ssh/config`` applies (aliases, ProxyJump, IdentityFile,
port); host keys are always checked, against ``known_hosts`` if one is given. Remote commands
are argument lists joined with POSIX shell quoting.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import shlex
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

from jobbridge.errors import CommandFailed, CommandTimeout, ConnectionLost, TransportError
from jobbridge.transport.base import CommandResult, RemoteFile, Transport

__all__ = ["SshTransport"]

_SSH_FAILED = 255
_NO_SUCH_FILE = 44
_SOCKET_PATH_MAX = 107
_NOT_RETRYABLE = ("Host key verification failed", "Permission denied", "Could not resolve")

_READ = """f=$1 offset=$2 size=$3
[ -f "$f" ] || exit 44
if [ "$offset" -lt 0 ]
then tail -c "${offset#-}" -- "$f"
else tail -c +"$((offset + 1))" -- "$f"
fi |
if [ -n "$size" ]; then head -c "$size"; else cat; fi"""
_WRITE = """umask 077
t=$(mktemp "$(dirname -- "$1")/.tmp-XXXXXX") &&
cat > "$t" && chmod "$2" "$t" && mv -f -- "$t" "$1" """
_READ_MANY = """limit=$1; shift
for f
do [ -f "$f" ] || continue
n=$(head -c "$limit" -- "$f" | wc -c)
printf '%s\\0%d\\n' "$f" "$n"; head -c "$n" -- "$f"
done; :"""
_LIST = """cd "$1" && find . -type f -printf '%P\\0%s\\0%T@\\0'"""
_TAR = """cd "$1" && shift && tar -cf - -- "$@" """
_UNTAR = """mkdir -p -- "$1" && tar -C "$1" -xpf - """
_SPAWN = """cd "$1" || exit 1; shift; setsid "$@" > /dev/null 2>&1 < /dev/null & """


class SshTransport(Transport):
    def __init__(
        self,
        destination: str,
        *,
        port: int | None = None,
        identity_file: str | None = None,
        known_hosts: str | None = None,
        config_file: str | None = None,
        connect_timeout: float = 15.0,
        control_persist: int = 600,
        control_dir: str | None = None,
        options: Sequence[str] = (),
    ) -> None:
        if not destination or destination.startswith("-"):
            raise ValueError(f"not an ssh destination: {destination!r}")
        self.host = destination
        self.port = port
        self.identity_file = identity_file
        self.known_hosts = known_hosts
        self.config_file = config_file
        self.connect_timeout = connect_timeout
        self.control_persist = control_persist
        self.control_dir = control_dir
        self.extra_options = list(options)

    # -- commands ---------------------------------------------------------------------------

    def run(
        self,
        argv: Sequence[str],
        *,
        stdin: str | bytes | None = None,
        timeout: float | None = 60.0,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
        check: bool = True,
        idempotent: bool = False,
    ) -> CommandResult:
        remote = _remote_command(argv, env=env, cwd=cwd)
        data = stdin.encode() if isinstance(stdin, str) else stdin
        code, out, err = self._ssh(remote, data, timeout, idempotent=idempotent)
        result = CommandResult(tuple(argv), code, out.decode(errors="replace"), err)
        if check and code != 0:
            raise CommandFailed(argv, code, result.stdout, err)
        return result

    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> None:
        command = list(argv) if env is None else ["env", "-i", *_assignments(env), *argv]
        self._shell(_SPAWN, cwd or ".", *command)

    # -- files ------------------------------------------------------------------------------

    def read_bytes(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        code, out, err = self._ssh(
            _sh(_READ, path, str(offset), "" if size is None else str(size)), None, 120,
            idempotent=True,
        )  # fmt: skip
        if code == _NO_SUCH_FILE:
            raise FileNotFoundError(path)
        if code != 0:
            raise TransportError(f"reading {path} on {self.host} failed: {err.strip()}")
        return out

    def read_many(self, paths: Sequence[str], limit: int = 4096) -> dict[str, bytes]:
        if not paths:
            return {}
        code, out, err = self._ssh(_sh(_READ_MANY, str(limit), *paths), None, 120, idempotent=True)
        if code != 0:
            raise TransportError(f"reading files on {self.host} failed: {err.strip()}")
        return _unpack(out)

    def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        code, _, err = self._ssh(_sh(_WRITE, path, f"{mode:o}"), data, 120, idempotent=True)
        if code != 0:
            raise TransportError(f"writing {path} on {self.host} failed: {err.strip()}")

    def make_dirs(self, path: str) -> None:
        self.run(["mkdir", "-p", "--", path], idempotent=True)

    def remove_tree(self, path: str) -> None:
        self.run(["rm", "-rf", "--", path], idempotent=True)

    def exists(self, path: str) -> bool:
        return self.run(["test", "-e", path], check=False, idempotent=True).returncode == 0

    def list_files(self, directory: str) -> list[RemoteFile]:
        code, out, err = self._ssh(_sh(_LIST, directory), None, 120, idempotent=True)
        if code != 0:
            raise TransportError(f"listing {directory} on {self.host} failed: {err.strip()}")
        fields = out.split(b"\0")
        return [
            RemoteFile(fields[i].decode(), int(fields[i + 1]), float(fields[i + 2]))
            for i in range(0, len(fields) - 2, 3)
        ]

    def real_path(self, path: str) -> str:
        return self.run(["realpath", "-m", "--", path], idempotent=True).stdout.rstrip("\n")

    def put(self, local_path: str, remote_path: str) -> None:
        """One tar stream over the shared connection."""
        parent = posixpath.dirname(remote_path) or "."
        with (
            self._stream(_sh(_UNTAR, parent), sending=True) as pipe,
            tarfile.open(fileobj=pipe, mode="w|") as archive,
        ):
            archive.add(local_path, arcname=posixpath.basename(remote_path))

    def get(self, directory: str, names: Sequence[str], local_directory: str) -> None:
        if not names:
            return
        with (
            self._stream(_sh(_TAR, directory, *names), sending=False) as pipe,
            tarfile.open(fileobj=pipe, mode="r|") as archive,
        ):
            archive.extractall(local_directory, filter="data")

    @contextlib.contextmanager
    def _stream(self, remote: str, *, sending: bool) -> Iterator[IO[bytes]]:
        """A pipe to or from a remote command, for data too big to hold in memory."""
        self.run(["true"], idempotent=True)  # connect (or reconnect) first: no stream replays
        process = subprocess.Popen(
            self.ssh_command(remote),
            stdin=subprocess.PIPE if sending else subprocess.DEVNULL,
            stdout=subprocess.DEVNULL if sending else subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        pipe = process.stdin if sending else process.stdout
        assert pipe is not None and process.stderr is not None
        try:
            yield pipe
        finally:
            pipe.close()
            error = process.stderr.read().decode(errors="replace")
            process.stderr.close()
            code = process.wait()
        if code != 0:
            raise TransportError(f"file transfer with {self.host} failed: {error.strip()}")

    # -- the connection ---------------------------------------------------------------------

    def ssh_command(self, remote: str | None = None) -> list[str]:
        """The ``ssh`` argument list that reaches the destination through the master."""
        options = [
            "-o", "BatchMode=yes",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={self._control_path()}",
            "-o", f"ControlPersist={self.control_persist}",
            "-o", f"ConnectTimeout={max(1, round(self.connect_timeout))}",
            "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=3",
        ]  # fmt: skip
        if self.config_file:
            options += ["-F", self.config_file]
        if self.port:
            options += ["-p", str(self.port)]
        if self.identity_file:
            options += ["-i", self.identity_file, "-o", "IdentitiesOnly=yes"]
        if self.known_hosts:
            options += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
            options += ["-o", "StrictHostKeyChecking=yes"]
        return ["ssh", *options, *self.extra_options, self.host, *([remote] if remote else [])]

    def close(self) -> None:
        """Leave the master running for other processes (ControlPersist ends it)."""

    def disconnect(self) -> None:
        """End the master connection now."""
        subprocess.run(
            [*self.ssh_command()[:-1], "-O", "exit", self.host],
            capture_output=True,
            timeout=10,
            check=False,
        )

    def _ssh(
        self, remote: str, stdin: bytes | None, timeout: float | None, *, idempotent: bool = False
    ) -> tuple[int, bytes, str]:
        """Run once; after a broken connection, once more on a new master, but only a command
        that never started or that may safely run twice."""
        for attempt in (1, 2):
            code, out, err = self._ssh_once(remote, stdin, timeout)
            if code < 0:
                lost = f"the ssh client for {self.host} was killed by signal {-code}"
                if idempotent and attempt == 1:
                    continue
                raise ConnectionLost(lost)
            # a mux client whose master died exits 255 without a word
            if code != _SSH_FAILED or not (_connection_trouble(err) or not err.strip()):
                return code, out, err
            refused = any(reason in err for reason in _NOT_RETRYABLE)
            never_started = refused or _never_connected(err)
            if attempt == 1 and not refused and (idempotent or never_started):
                self._forget_master()
                continue
            if never_started:
                raise TransportError(
                    f"ssh to {self.host} failed: {err.strip()}", retryable=not refused
                )
            raise ConnectionLost(
                f"the connection to {self.host} broke while the command may have been running:"
                f" {err.strip() or 'ssh exited 255 without a word'}"
            )
        raise AssertionError("unreachable")

    def _ssh_once(
        self, remote: str, stdin: bytes | None, timeout: float | None
    ) -> tuple[int, bytes, str]:
        argv = self.ssh_command(remote)
        try:
            done = subprocess.run(
                argv,
                input=stdin,
                stdin=None if stdin is not None else subprocess.DEVNULL,
                capture_output=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CommandTimeout(["ssh", self.host, remote], timeout or 0) from None
        except OSError as error:
            raise TransportError(f"cannot run ssh: {error}", retryable=False) from error
        return done.returncode, done.stdout, done.stderr.decode(errors="replace")

    def _shell(self, script: str, *arguments: str) -> None:
        code, _, err = self._ssh(_sh(script, *arguments), None, 60)
        if code != 0:
            raise TransportError(f"command on {self.host} failed: {err.strip()}")

    def _forget_master(self) -> None:
        """A master that died uncleanly leaves its socket behind; remove it to reconnect."""
        for socket in Path(self._control_dir()).glob("*"):
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(socket.lstat().st_mode):
                    probe = subprocess.run(
                        [*self.ssh_command()[:-1], "-O", "check", self.host],
                        capture_output=True,
                        timeout=10,
                        check=False,
                    )
                    if probe.returncode != 0:
                        socket.unlink()

    def _control_dir(self) -> str:
        directory = self.control_dir or os.path.join(
            tempfile.gettempdir(), f"jobbridge-ssh-{os.getuid()}"
        )
        os.makedirs(directory, mode=0o700, exist_ok=True)
        info = os.stat(directory)
        if info.st_uid != os.getuid() or info.st_mode & 0o077:
            raise TransportError(
                f"{directory} must belong to you and be private (mode 700)", retryable=False
            )
        return directory

    def _control_path(self) -> str:
        directory = self._control_dir()
        # %C is 40 characters and ssh adds about 17 while it sets the socket up
        if len(directory) + 58 > _SOCKET_PATH_MAX:
            raise TransportError(
                f"control_dir {directory!r} is too long for a socket path; choose a shorter one",
                retryable=False,
            )
        return os.path.join(directory, "%C")


def _remote_command(argv: Sequence[str], *, env: Mapping[str, str] | None, cwd: str | None) -> str:
    command = shlex.join(["env", *_assignments(env), *argv] if env else argv)
    return f"cd {shlex.quote(cwd)} && exec {command}" if cwd else f"exec {command}"


def _assignments(env: Mapping[str, str]) -> list[str]:
    return [f"{name}={value}" for name, value in env.items()]


def _sh(script: str, *arguments: str) -> str:
    return shlex.join(["sh", "-c", script, "sh", *arguments])


def _unpack(packed: bytes) -> dict[str, bytes]:
    """PATH NUL LENGTH LF BYTES, repeated."""
    found, position = {}, 0
    while position < len(packed):
        nul = packed.index(b"\0", position)
        newline = packed.index(b"\n", nul)
        size = int(packed[nul + 1 : newline])
        found[packed[position:nul].decode()] = packed[newline + 1 : newline + 1 + size]
        position = newline + 1 + size
    return found


def _never_connected(stderr: str) -> bool:
    """ssh said it could not reach the host at all: the command cannot have started."""
    return bool(_CONNECT_FAILED.search(stderr)) or "Could not resolve hostname" in stderr


_CONNECT_FAILED = re.compile(
    r"ssh: connect to host .*: (Connection refused|No route to host|Connection timed out"
    r"|Network is unreachable)|kex_exchange_identification|Connection closed by .* port \d+\s*$"
)


def _connection_trouble(stderr: str) -> bool:
    signs = (
        "ssh:",
        "Connection",
        "connection",
        "mux_client",
        "muxclient",
        "Control socket",
        "kex_",
        "Host key",
        "Permission denied",
        "Broken pipe",
        "timed out",
    )
    return any(sign in stderr for sign in signs)
