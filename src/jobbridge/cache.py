"""The job cache (REANA's ``cache_job``): a job that asks for it and matches an earlier
COMPLETED job of the same owner is not run again; it reuses that job's outputs.

Two jobs match when their keys do. The key is a SHA-256 over what decides a job's outputs:
its image, program, arguments, environment, directories and streams, prologue and epilogue,
launcher, workflow workspace, the names of its secrets (never their values), the outputs it
declares, and the content of every input: each ``stage_in`` source on this machine and each
declared ``inputs`` file on the resource, by the SHA-256 of its content. A changed input
gives another key; a job with an input that cannot be hashed (a URL, a missing file) is
never served from the cache. Only COMPLETED jobs are found, so a job that failed is never
reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from jobbridge.job import Job
from jobbridge.spec import JobSpec
from jobbridge.staging import URL_SCHEMES
from jobbridge.transport.base import Transport

__all__ = ["NotCacheable", "cache_key", "output_places", "reuse_outputs"]

_CHUNK = 1 << 20


class NotCacheable(Exception):
    """Why a job cannot be looked up in the cache (it then simply runs)."""


def cache_key(spec: JobSpec, transport: Transport | None) -> str:
    """The job's key; ``transport`` reaches the resource, where ``inputs`` are read."""
    material: dict[str, Any] = spec.model_dump(
        mode="json",
        include={
            "image", "executable", "arguments", "environment", "inherit_environment",
            "directory", "stdin", "stdout", "stderr", "prologue", "epilogue", "launcher",
            "workspace", "secrets", "stage_out",
        },
    )  # fmt: skip
    material["stage_in"] = [
        [transfer.target, _local_digest(transfer.source)] for transfer in spec.stage_in
    ]
    material["inputs"] = _remote_digests(spec, transport)
    text = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _local_digest(source: str) -> str:
    if urlsplit(source).scheme in URL_SCHEMES:
        raise NotCacheable(f"input {source} is a URL, whose content cannot be hashed here")
    path = Path(os.path.abspath(source))
    if path.is_dir():
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(str(file.relative_to(path)).encode() + b"\0")
            digest.update(_file_digest(file).encode())
        return "tree:" + digest.hexdigest()
    if not path.is_file():
        raise NotCacheable(f"input {source} does not exist")
    return _file_digest(path)


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _remote_digests(spec: JobSpec, transport: Transport | None) -> list[list[str]]:
    """SHA-256 of each declared input, with one command on the resource."""
    if not spec.inputs:
        return []
    base = spec.workspace or spec.directory
    paths = []
    for path in spec.inputs:
        if not posixpath.isabs(path):
            if base is None:
                raise NotCacheable(f"input {path} is relative, and the job has no workspace")
            path = posixpath.join(base, path)
        paths.append(posixpath.normpath(path))
    if transport is None:
        raise NotCacheable("the backend reaches no files to hash its inputs")
    result = transport.run(["sha256sum", "--", *paths], check=False, timeout=600, idempotent=True)
    digests = dict(_sha256sum_lines(result.stdout))
    missing = [path for path in paths if path not in digests]
    if result.returncode != 0 or missing:
        raise NotCacheable(f"input {missing[0] if missing else paths[0]} cannot be read")
    return [[path, digests[path]] for path in paths]


def _sha256sum_lines(text: str) -> list[tuple[str, str]]:
    pairs = []
    for line in text.splitlines():
        digest, sep, path = line.partition("  ")
        if sep and not digest.startswith("\\"):  # an escaped name: not one of ours to match
            pairs.append((path, digest))
    return pairs


def output_places(job: Job, results_dir: Path | None) -> list[str]:
    """Where the job's declared outputs land once brought back (see ``changes``)."""
    root = results_dir or Path.cwd()
    return [
        os.path.join(root / job.id, os.path.expanduser(transfer.target))
        for transfer in job.spec.stage_out
    ]


def reuse_outputs(source: Job, job: Job, results_dir: Path | None) -> list[str]:
    """Copy the earlier job's brought-back outputs into this job's places. Raise
    ``NotCacheable`` (copying nothing) if any of them is gone."""
    pairs = list(
        zip(output_places(source, results_dir), output_places(job, results_dir), strict=True)
    )
    gone = [old for old, _ in pairs if not os.path.exists(old)]
    if gone:
        raise NotCacheable(f"output {gone[0]} of job {source.id} is gone")
    copied = []
    for old, new in _distinct(pairs):
        os.makedirs(os.path.dirname(new) or ".", exist_ok=True)
        if os.path.isdir(old):
            shutil.copytree(old, new, symlinks=True, dirs_exist_ok=True)
        else:
            shutil.copy2(old, new)
        copied.append(new)
    return copied


def _distinct(pairs: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """An absolute target is the same place for both jobs: nothing to copy there."""
    return [(old, new) for old, new in pairs if os.path.abspath(old) != os.path.abspath(new)]
