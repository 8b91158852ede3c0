"""``jobbridge logs``: a job's stdout or stderr, whole, its last lines, or as it grows.

Only ``Engine.read_output`` is used, so it works for a job on any backend.
"""

from __future__ import annotations

import sys
import time
from typing import BinaryIO

import click

from jobbridge.backends.base import Stream
from jobbridge.cli.app import Session
from jobbridge.engine import Engine

__all__ = ["last_lines", "logs"]

_CHUNK = 1 << 20
_FIRST_TAIL_WINDOW = 8192
_FOLLOW_PAUSE = 0.5


def last_lines(data: bytes, count: int) -> tuple[bytes, bool]:
    """The last ``count`` lines of ``data``, and whether ``data`` held more than those."""
    if count <= 0:
        return b"", bool(data)
    start = len(data) - 1 if data.endswith(b"\n") else len(data)
    for _ in range(count):
        start = data.rfind(b"\n", 0, start)
        if start < 0:
            return data, False
    return data[start + 1 :], True


def _copy(engine: Engine, job_id: str, stream: Stream, offset: int, out: BinaryIO) -> int:
    """Write everything from ``offset`` on; return the offset after it."""
    while True:
        data = engine.read_output(job_id, stream, offset, _CHUNK)
        out.write(data)
        offset += len(data)
        if len(data) < _CHUNK:
            return offset


def _tail(engine: Engine, job_id: str, stream: Stream, count: int) -> bytes:
    """Read a window from the end, growing it until it holds ``count`` whole lines."""
    window = _FIRST_TAIL_WINDOW
    while True:
        data = engine.read_output(job_id, stream, -window)
        lines, more = last_lines(data, count)
        if more or len(data) < window:
            return lines
        window *= 4


def _catch_up_tail(engine: Engine, job_id: str, stream: Stream, count: int) -> tuple[bytes, int]:
    """The last ``count`` lines so far and the offset where following goes on."""
    offset, kept = 0, b""
    while True:
        data = engine.read_output(job_id, stream, offset, _CHUNK)
        offset += len(data)
        kept, _ = last_lines(kept + data, count)
        if len(data) < _CHUNK:
            return kept, offset


def _follow(engine: Engine, job_id: str, stream: Stream, tail: int | None, out: BinaryIO) -> None:
    offset = 0
    while True:
        engine.refresh(hand_over=False)
        job = engine.get(job_id)  # before reading: output written before the end is all there
        if tail is None:
            offset = _copy(engine, job_id, stream, offset, out)
        else:
            kept, offset = _catch_up_tail(engine, job_id, stream, tail)
            out.write(kept)
            tail = None
        out.flush()
        if not job.phase.is_active:
            return
        time.sleep(_FOLLOW_PAUSE)


@click.command()
@click.argument("job_id", metavar="ID")
@click.option("--stderr", "use_stderr", is_flag=True, help="The job's stderr, not its stdout.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing output until the job ends.")
@click.option("--tail", type=click.IntRange(min=0), metavar="N", help="Only the last N lines.")
@click.pass_obj
def logs(session: Session, job_id: str, use_stderr: bool, follow: bool, tail: int | None) -> None:
    """Write a job's output, byte for byte, to stdout."""
    engine = session.engine
    engine.get(job_id)
    stream: Stream = "stderr" if use_stderr else "stdout"
    out = sys.stdout.buffer
    if follow:
        try:
            _follow(engine, job_id, stream, tail, out)
        except KeyboardInterrupt:
            out.flush()
            click.get_current_context().exit(130)
    elif tail is not None:
        out.write(_tail(engine, job_id, stream, tail))
    else:
        _copy(engine, job_id, stream, 0, out)
    out.flush()
