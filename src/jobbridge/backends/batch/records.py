"""What reading a scheduler's answer one job record at a time needs: the error for one record
that cannot be read (no news for that job alone, never the answer as a whole), and how to
find the next record after a broken one."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

__all__ = ["UnreadableRecord", "each_record", "json_objects", "next_record"]

_Record = TypeVar("_Record")

_DECODER = json.JSONDecoder(strict=False)
"""Values copied from a job's environment may hold control characters."""


class UnreadableRecord(ValueError):
    """One job's record could not be read; ``key`` names the job as far as it can be told."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(problem)
        self.key = key


def next_record(text: str, start: int, opening: str) -> int | None:
    """Where the record after the one at ``start`` begins, in an answer that prints each
    record on lines of its own, every record's first line at one indentation starting with
    ``opening`` (a pattern): the next line so indented and so starting. None if there is
    none; ``ValueError`` if the record at ``start`` does not begin its line."""
    line_start = text.rfind("\n", 0, start) + 1
    indent = text[line_start:start]
    if indent.strip():
        raise ValueError("records are not one per line: a broken one cannot be skipped")
    found = re.compile("\n" + re.escape(indent) + opening).search(text, start + 1)
    return None if found is None else found.start() + 1 + len(indent)


def each_record(
    text: str, start: int, read: Callable[[str, int], tuple[_Record, int]], opening: str
) -> Iterator[_Record | UnreadableRecord]:
    """The records of an answer that is not valid as a whole, from ``start`` on to a closing
    bracket, separated by commas and space: ``read`` reads one at a position and says where
    it ends. After one that ``read`` finds broken (``UnreadableRecord``), reading resumes at
    the next line indented as that one and starting with ``opening`` (a pattern)."""
    position = start
    while True:
        while position < len(text) and (text[position].isspace() or text[position] == ","):
            position += 1
        if position >= len(text) or text[position] in "]}":
            return
        try:
            record, position = read(text, position)
        except UnreadableRecord as broken:
            yield broken
            following = next_record(text, position, opening)
            if following is None:
                return
            position = following
            continue
        yield record


def json_objects(
    text: str, start: int, key: Callable[[str, int], str]
) -> Iterator[Mapping[str, Any] | UnreadableRecord]:
    """The objects of a JSON array that is not valid as a whole, from ``start`` (just after
    its ``[``), each object's ``{`` opening a line at one indentation. ``key(text, position)``
    names the job of a broken object that begins at ``position``."""

    def read(text: str, position: int) -> tuple[Mapping[str, Any] | UnreadableRecord, int]:
        try:
            found, end = _DECODER.raw_decode(text, position)
        except json.JSONDecodeError as error:
            raise UnreadableRecord(key(text, position), f"broken JSON object: {error}") from error
        if not isinstance(found, dict):
            return UnreadableRecord(str(found)[:40], "a record that is no JSON object"), end
        return found, end

    return each_record(text, start, read, r"\{")
