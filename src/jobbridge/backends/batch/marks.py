"""The mark every batch submission carries, and reading it back.

A submission is marked where the scheduler's queue and its accounting both show it, so that
``BatchBackend.locate`` finds what a submission with an unknown outcome created. The mark is
the job's tag, ``jb-`` and jobbridge's id of the job (of its array, for a member); an array
member handed over alone adds its index (``jb-ARRAY.7``), so that it is found for that member
only. Most schedulers carry the mark at the end of the job's name: ``readable.jb-ID``.

``parse_located`` answers tag -> native ids; the submission of a lone member is noted as
``NATIVE#INDEX`` (see ``add_located``), which ``locate`` gives to the member with that index
alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from jobbridge.backends.batch.script import scheduler_name
from jobbridge.job import Job

__all__ = ["NAME_LIMIT", "Mark", "add_located", "marked_name", "split_located"]

NAME_LIMIT = 64
"""Characters of a marked job name at the most."""
_TAG = r"jb-[A-Za-z0-9_]+"
_A_TAG = re.compile(rf"^{_TAG}$")
_ENDING = re.compile(rf"(?:^|\.)(?P<tag>{_TAG})(?:\.(?P<index>\d+))?$")
_ALONE = "#"


@dataclass(frozen=True)
class Mark:
    """What one submission carries: the tag, and the index of a member handed over alone."""

    tag: str
    index: int | None = None

    @classmethod
    def of(cls, tag: str, job: Job, members: Sequence[Job]) -> Mark:
        """The mark of a submission of ``members``, ``job`` first."""
        alone = job.array_index is not None and len(members) == 1
        return cls(tag, job.array_index if alone else None)

    @classmethod
    def ending(cls, name: str) -> Mark | None:
        """The mark a job name ends with, if any."""
        found = _ENDING.search(name.strip())
        if found is None:
            return None
        index = found["index"]
        return cls(found["tag"], None if index is None else int(index))

    @property
    def reads_back(self) -> bool:
        """Whether ``ending`` can read the tag back."""
        return _A_TAG.match(self.tag) is not None

    def __str__(self) -> str:
        return self.tag if self.index is None else f"{self.tag}.{self.index}"


def marked_name(
    name: str, mark: Mark, *, limit: int = NAME_LIMIT, start: Callable[[str], str] | None = None
) -> str:
    """``name`` as the scheduler may show it, shortened so that with ``.MARK`` it takes at
    most ``limit`` characters. ``start`` mends a beginning the scheduler refuses (a digit,
    say): it is given the shortened name and may make it longer."""
    room = limit - len(str(mark)) - 1
    readable = scheduler_name(name, room)
    if start is not None:
        readable = start(readable)[:room]
    return f"{readable}.{mark}"


def add_located(found: dict[str, list[str]], mark: Mark | None, native_id: str) -> None:
    """Note ``native_id`` under the mark's tag, once; a lone member's as ``NATIVE#INDEX``."""
    if mark is None:
        return
    located = native_id if mark.index is None else f"{native_id}{_ALONE}{mark.index}"
    ids = found.setdefault(mark.tag, [])
    if located not in ids:
        ids.append(located)


def split_located(located: str) -> tuple[str, int | None]:
    """``NATIVE#INDEX`` as ``(NATIVE, INDEX)``; any other id as it is, with None."""
    native, alone, index = located.rpartition(_ALONE)
    if alone and index.isdigit():
        return native, int(index)
    return located, None
