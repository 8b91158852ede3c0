"""A job's sandbox (its directory on the resource): files into it before the job runs, out of
it after, and looks inside while it runs. No path may lead out of the sandbox."""

from __future__ import annotations

import os
import posixpath
import tempfile
from collections.abc import Sequence
from typing import BinaryIO
from urllib.parse import urlsplit

from jobbridge.errors import SpecError
from jobbridge.spec import FileTransfer
from jobbridge.transport.base import Transport

__all__ = [
    "URL_SCHEMES",
    "free",
    "get_results",
    "inside",
    "peek",
    "stage_in",
    "stage_out",
    "validate_data",
]

URL_SCHEMES = ("http", "https", "ftp")
"""Sources fetched on the resource itself, with curl."""


def inside(sandbox: str, relative: str, what: str) -> str:
    """The path of ``relative`` in the sandbox; anything that would lead out is refused."""
    normal = posixpath.normpath(relative) if relative else ""
    if not normal or posixpath.isabs(relative) or normal == ".." or normal.startswith("../"):
        raise SpecError(f"{what} {relative!r} must be a relative path inside the job's directory")
    return posixpath.join(sandbox, normal)


def _resolved_inside(transport: Transport, sandbox: str, path: str, what: str) -> str:
    real, root = transport.real_path(path), transport.real_path(sandbox)
    if real != root and not real.startswith(root.rstrip("/") + "/"):
        raise SpecError(f"{what} {path!r} leads out of the job's directory (to {real})")
    return real


def validate_data(transfers: Sequence[FileTransfer]) -> list[str]:
    """Why each input that cannot be staged is refused (gc3libs' validate_data); empty if
    every one is a local file or directory, or a URL the resource can fetch."""
    problems = []
    for transfer in transfers:
        scheme = urlsplit(transfer.source).scheme
        if scheme and scheme not in URL_SCHEMES and not os.path.isabs(transfer.source):
            problems.append(
                f"{transfer.source}: {scheme}:// is not one of {', '.join(URL_SCHEMES)}"
            )
        elif not scheme and not os.path.exists(transfer.source):
            problems.append(f"{transfer.source}: no such local file")
    return problems


def stage_in(transport: Transport, sandbox: str, transfers: Sequence[FileTransfer]) -> None:
    for transfer in transfers:
        target = inside(sandbox, transfer.target, "stage_in target")
        if urlsplit(transfer.source).scheme in URL_SCHEMES:
            transport.run(
                ["curl", "--fail", "--silent", "--show-error", "--location", "--create-dirs",
                 "--output", target, "--", transfer.source],
                timeout=3600,
            )  # fmt: skip
        else:
            transport.put(os.path.abspath(transfer.source), target)


def stage_out(
    transport: Transport, sandbox: str, transfers: Sequence[FileTransfer], local_root: str
) -> list[str]:
    """Copy each source out of the sandbox to its local target (relative to ``local_root``)."""
    copied = []
    for transfer in transfers:
        source = inside(sandbox, transfer.source, "stage_out source")
        _resolved_inside(transport, sandbox, source, "stage_out source")
        target = os.path.join(local_root, os.path.expanduser(transfer.target))
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        with tempfile.TemporaryDirectory(dir=os.path.dirname(target) or ".") as landing:
            name = posixpath.basename(source)
            transport.get(posixpath.dirname(source), [name], landing)
            os.replace(os.path.join(landing, name), target)
        copied.append(target)
    return copied


def get_results(
    transport: Transport,
    sandbox: str,
    download_dir: str,
    *,
    overwrite: bool = False,
    changed_only: bool = True,
) -> list[str]:
    """Copy the sandbox's files into ``download_dir`` (which must exist), as gc3libs does:
    files missing locally are always copied; existing ones only with ``overwrite``, and then,
    with ``changed_only``, only if their size differs or the remote one is newer. Symbolic
    links are never followed. Returns the relative paths copied."""
    if not os.path.isdir(download_dir):
        raise FileNotFoundError(f"download directory {download_dir} does not exist")
    wanted = []
    for remote in transport.list_files(sandbox):
        local = os.path.join(download_dir, remote.path)
        if not os.path.lexists(local):
            wanted.append(remote.path)
        elif overwrite:
            info = os.stat(local)
            # tar keeps whole seconds, so compare at that grain
            changed = info.st_size != remote.size or int(remote.mtime) > int(info.st_mtime)
            if changed or not changed_only:
                wanted.append(remote.path)
    transport.get(sandbox, wanted, download_dir)
    return wanted


def peek(
    transport: Transport,
    sandbox: str,
    remote_file: str,
    local_file: str | BinaryIO,
    offset: int = 0,
    size: int | None = None,
) -> int:
    """Copy ``size`` bytes (all, if None) from ``offset`` of a sandbox file; a negative offset
    counts from the end. Returns how many bytes were written."""
    path = _resolved_inside(transport, sandbox, inside(sandbox, remote_file, "file"), "file")
    data = transport.read_bytes(path, offset, size)
    if isinstance(local_file, str):
        with open(local_file, "wb") as handle:
            handle.write(data)
    else:
        local_file.write(data)
    return len(data)


def free(transport: Transport, sandbox: str) -> None:
    transport.remove_tree(sandbox)
