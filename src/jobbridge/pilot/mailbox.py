"""The coordinator's side of an agent's mailbox: the ``in/`` and ``out/`` directories in the
pilot's sandbox (see ``agent``). One exchange sends one batch of units (written atomically),
removes the agent's files already recorded, and brings back the agent's new ones: on this
machine with plain file operations, elsewhere with one command over the backend's transport
(for SSH, one round trip on the shared master connection)."""

from __future__ import annotations

import contextlib
import os
import posixpath
from abc import ABC, abstractmethod
from collections.abc import Sequence

from jobbridge.errors import TransportError
from jobbridge.transport.base import Transport
from jobbridge.transport.local import LocalTransport

__all__ = ["Mailbox", "batch_name", "mailbox_for"]

_EXCHANGE = """cd -- "$1" 2>/dev/null || exit 44
mkdir -p in out || exit 45
name=$2; shift 2
if [ -n "$name" ]; then
  t=$(mktemp in/.tmp-XXXXXX) && cat > "$t" && mv -f -- "$t" "in/$name" || exit 45
fi
for f; do rm -f -- "out/$f"; done
for f in out/*.json; do
  [ -f "$f" ] || continue
  n=$(wc -c < "$f")
  printf '%s\\0%d\\n' "${f#out/}" "$n"
  cat -- "$f"
done
:"""
_NO_SANDBOX = 44


class Mailbox(ABC):
    def __init__(self, transport: Transport, root: str) -> None:
        self.transport = transport
        self.root = root

    @abstractmethod
    def exchange(
        self, name: str | None, batch: bytes | None, acks: Sequence[str]
    ) -> list[tuple[str, bytes]]:
        """Put ``batch`` into ``in/`` as ``name``, remove the ``acks`` from ``out/``, and
        return the files of ``out/`` (name, content), oldest first."""

    def read(self, relative: str, offset: int = 0, size: int | None = None) -> bytes:
        try:
            return self.transport.read_bytes(posixpath.join(self.root, relative), offset, size)
        except FileNotFoundError:
            return b""


class LocalMailbox(Mailbox):
    def __init__(self, transport: Transport, root: str) -> None:
        super().__init__(transport, root)
        self._made = False

    def exchange(
        self, name: str | None, batch: bytes | None, acks: Sequence[str]
    ) -> list[tuple[str, bytes]]:
        inbox = os.path.join(self.root, "in")
        outbox = os.path.join(self.root, "out")
        if name is not None and batch is not None:
            if not self._made:
                os.makedirs(inbox, exist_ok=True)
                self._made = True
            temporary = os.path.join(inbox, f".{name}.tmp")
            with open(temporary, "wb") as handle:
                handle.write(batch)
            os.replace(temporary, os.path.join(inbox, name))
        self._remove(acks)
        try:
            names = sorted(n for n in os.listdir(outbox) if n.endswith(".json") and n[0] != ".")
        except FileNotFoundError:
            return []
        found = []
        for found_name in names:
            try:
                with open(os.path.join(outbox, found_name), "rb") as handle:
                    found.append((found_name, handle.read()))
            except FileNotFoundError:
                continue
        return found

    def _remove(self, names: Sequence[str]) -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.root, "out", name))


class TransportMailbox(Mailbox):
    def exchange(
        self, name: str | None, batch: bytes | None, acks: Sequence[str]
    ) -> list[tuple[str, bytes]]:
        result = self.transport.run(
            ["sh", "-c", _EXCHANGE, "sh", self.root, name or "", *acks],
            stdin=batch if name is not None else None,
            timeout=120,
            check=False,
            idempotent=True,  # the same batch name again, and removals, change nothing
        )
        if result.returncode == _NO_SANDBOX:
            return []
        if result.returncode != 0:
            raise TransportError(
                f"mailbox exchange in {self.root} failed ({result.returncode}):"
                f" {result.stderr.strip()}"
            )
        return _unpack(result.stdout.encode("utf-8", errors="surrogateescape"))


def mailbox_for(transport: Transport, root: str) -> Mailbox:
    if isinstance(transport, LocalTransport):
        return LocalMailbox(transport, root)
    return TransportMailbox(transport, root)


def batch_name(sequence: int, token: str) -> str:
    """Names that sort in the order they were made, across coordinators."""
    return f"{sequence:020d}-{token}.json"


def _unpack(packed: bytes) -> list[tuple[str, bytes]]:
    """NAME NUL LENGTH LF BYTES, repeated."""
    found, position = [], 0
    while position < len(packed):
        nul = packed.index(b"\0", position)
        newline = packed.index(b"\n", nul)
        size = int(packed[nul + 1 : newline])
        found.append((packed[position:nul].decode(), packed[newline + 1 : newline + 1 + size]))
        position = newline + 1 + size
    return found
