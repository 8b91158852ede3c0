"""How commands run and files move, wherever the backend's resource lives."""

from __future__ import annotations

import io
import tarfile
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

__all__ = ["FILES_NOT_WRITTEN", "CommandResult", "RemoteFile", "Transport"]

FILES_NOT_WRITTEN = 97
"""The exit status of ``run_in`` when its files could not be written: nothing was run."""


@dataclass(frozen=True)
class CommandResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


@dataclass(frozen=True)
class RemoteFile:
    """A regular file below a directory: its path relative to that directory."""

    path: str
    size: int
    mtime: float


class Transport(ABC):
    """Runs argument lists (never shell strings) and reads and writes files on one host."""

    host: str

    @abstractmethod
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
        """Run a command to its end, with ``env`` added to the environment it inherits.
        Raises ``CommandFailed`` on a non-zero exit if ``check``, ``CommandTimeout`` past
        ``timeout``, ``ConnectionLost`` if the way to it broke while it may have run, and
        ``TransportError`` if it cannot start. Only an ``idempotent`` command (a query, a
        read) is run again by the transport after a broken connection."""

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
        """Put small ``files`` (name -> (content, mode)) into ``directory`` (made if missing),
        then run ``argv`` there, with the file named ``feed`` on its standard input. In one
        round trip: the files travel as a tar archive to a fixed shell script. A non-zero exit
        is returned, not raised."""
        return self.run(
            ["sh", "-c", _RUN_IN, "jobbridge", directory, feed or "", *argv],
            stdin=_archive(files),
            timeout=timeout,
            env=env,
            check=False,
        )

    @abstractmethod
    def spawn(
        self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> None:
        """Start a command in a session of its own and return at once; it outlives us.
        ``env``, if given, is its whole environment."""

    @abstractmethod
    def read_bytes(self, path: str, offset: int = 0, size: int | None = None) -> bytes:
        """Read ``size`` bytes from ``offset`` (from the end if negative). Raises
        ``FileNotFoundError`` if there is no such file."""

    def read_many(self, paths: Sequence[str], limit: int = 4096) -> dict[str, bytes]:
        """The first ``limit`` bytes of each file that exists, in as few round trips as the
        transport can manage; missing files are left out."""
        found = {}
        for path in paths:
            try:
                found[path] = self.read_bytes(path, 0, limit)
            except FileNotFoundError:
                continue
        return found

    @abstractmethod
    def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> None:
        """Write a whole file atomically: readers see the old or the new content, never half."""

    @abstractmethod
    def make_dirs(self, path: str) -> None: ...

    @abstractmethod
    def remove_tree(self, path: str) -> None: ...

    @abstractmethod
    def exists(self, path: str) -> bool: ...

    @abstractmethod
    def list_files(self, directory: str) -> list[RemoteFile]:
        """Regular files below ``directory`` (symbolic links are not followed or listed)."""

    @abstractmethod
    def real_path(self, path: str) -> str:
        """``path`` with every symbolic link resolved (it need not exist)."""

    @abstractmethod
    def put(self, local_path: str, remote_path: str) -> None:
        """Copy a local file or directory tree to ``remote_path``, keeping times and modes."""

    @abstractmethod
    def get(self, directory: str, names: Sequence[str], local_directory: str) -> None:
        """Copy files named relative to ``directory`` into ``local_directory``, keeping times."""

    def close(self) -> None:  # noqa: B027 - a transport without connections has nothing to close
        pass


_RUN_IN = """mkdir -p -- "$1" && cd -- "$1" && tar -xf - || exit 97
feed=$2; shift 2
if [ -n "$feed" ]; then exec "$@" < "$feed"; else exec "$@" < /dev/null; fi"""


def _archive(files: Mapping[str, tuple[bytes, int]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, (data, mode) in files.items():
            member = tarfile.TarInfo(name)
            member.size, member.mode, member.mtime = len(data), mode, int(time.time())
            archive.addfile(member, io.BytesIO(data))
    return buffer.getvalue()
