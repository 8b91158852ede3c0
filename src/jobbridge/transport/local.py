"""Commands and files on this machine."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from collections.abc import Mapping, Sequence

from jobbridge.errors import CommandFailed, CommandTimeout, ConnectionLost, TransportError
from jobbridge.transport.base import CommandResult, RemoteFile, Transport

__all__ = ["LocalTransport"]


class LocalTransport(Transport):
    def __init__(self) -> None:
        self.host = socket.gethostname()
        self._spawned: list[subprocess.Popen[bytes]] = []

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
        try:
            done = subprocess.run(
                list(argv),
                input=stdin.encode() if isinstance(stdin, str) else stdin,
                capture_output=True,
                timeout=timeout,
                env=None if env is None else {**os.environ, **env},
                cwd=cwd,
                stdin=None if stdin is not None else subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise CommandTimeout(argv, timeout or 0) from None
        except OSError as error:
            raise TransportError(f"cannot run {argv[0]}: {error}", retryable=False) from error
        out, err = (data.decode(errors="replace") for data in (done.stdout, done.stderr))
        if done.returncode < 0:
            raise ConnectionLost(f"{argv[0]} was killed by signal {-done.returncode}")
        if check and done.returncode != 0:
            raise CommandFailed(argv, done.returncode, out, err)
        return CommandResult(tuple(argv), done.returncode, out, err)

    def run_in(
        self,
        directory: str,
        files: Mapping[str, tuple[bytes, int]],
        argv: Sequence[str],
        *,
        feed: str | None = None,
        timeout: float | None = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> CommandResult:
        os.makedirs(directory, exist_ok=True)
        for name, (data, mode) in files.items():
            self.write_bytes(os.path.join(directory, name), data, mode=mode)
        stdin = None
        if feed:
            with open(os.path.join(directory, feed), "rb") as handle:
                stdin = handle.read()
        return self.run(argv, stdin=stdin, timeout=timeout, env=env, cwd=directory, check=False)

    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> None:
        self._reap()
        try:
            process = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env=None if env is None else dict(env),
                cwd=cwd,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as error:
            raise TransportError(f"cannot start {argv[0]}: {error}", retryable=False) from error
        self._spawned.append(process)

    def _reap(self) -> None:
        self._spawned = [p for p in self._spawned if p.poll() is None]

    def read_bytes(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        with open(path, "rb") as handle:
            if offset < 0:
                end = handle.seek(0, os.SEEK_END)
                handle.seek(max(0, end + offset))
            else:
                handle.seek(offset)
            return handle.read() if size is None else handle.read(size)

    def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        directory = os.path.dirname(path) or "."
        fd, temporary = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(temporary, mode)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise

    def make_dirs(self, path: str) -> None:
        try:
            os.mkdir(path)  # the common case in one call: a new directory in an existing one
        except OSError:
            os.makedirs(path, exist_ok=True)

    def remove_tree(self, path: str) -> None:
        if os.path.lexists(path):
            shutil.rmtree(path)

    def exists(self, path: str) -> bool:
        return os.path.exists(path)

    def list_files(self, directory: str) -> list[RemoteFile]:
        found = []
        for root, _dirs, files in os.walk(directory):
            for name in files:
                path = os.path.join(root, name)
                info = os.lstat(path)
                if stat.S_ISREG(info.st_mode):
                    relative = os.path.relpath(path, directory)
                    found.append(RemoteFile(relative, info.st_size, info.st_mtime))
        return found

    def real_path(self, path: str) -> str:
        return os.path.realpath(path)

    def put(self, local_path: str, remote_path: str) -> None:
        os.makedirs(os.path.dirname(remote_path) or ".", exist_ok=True)
        if os.path.isdir(local_path):
            shutil.copytree(local_path, remote_path, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(local_path, remote_path)

    def get(self, directory: str, names: Sequence[str], local_directory: str) -> None:
        for name in names:
            target = os.path.join(local_directory, name)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copy2(os.path.join(directory, name), target)

    def close(self) -> None:
        self._reap()
