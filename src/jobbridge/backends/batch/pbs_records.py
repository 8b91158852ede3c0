"""Reading what PBS Pro's and Torque's qstat print: Torque's XML, times, exit codes."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

__all__ = ["element_value", "int_or_none", "pbs_time", "shell_exit_code", "torque_jobs"]

_XML_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_PBS_TIME = "%a %b %d %H:%M:%S %Y"


def torque_jobs(output: str) -> list[dict[str, Any]]:
    """Each ``<Job>`` of ``qstat -x`` (one or more XML documents) as a dict; nested elements
    such as ``Resource_List`` become dicts of their own."""
    jobs = []
    # -V copies the submitter's environment into Variable_List, control characters included,
    # and qstat writes them as they are; XML 1.0 allows none of them
    cleaned = _XML_FORBIDDEN.sub("", output)
    for document in re.findall(r"<Data>.*?</Data>|<Data\s*/>", cleaned, flags=re.DOTALL):
        root = ElementTree.fromstring(document)  # noqa: S314 - the scheduler's own answer
        for element in root.iter("Job"):
            jobs.append({child.tag: element_value(child) for child in element})
    return jobs


def element_value(element: ElementTree.Element) -> object:
    if len(element):
        return {child.tag: child.text or "" for child in element}
    return element.text or ""


def int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def shell_exit_code(code: int | None) -> int | None:
    """PBS shows a job it killed with signal N as 256+N; a shell would say 128+N."""
    if code is not None and code >= 256:
        return 128 + code % 256
    return code


def pbs_time(value: object) -> datetime | None:
    """qstat prints times as ctime(3) does, in the server's local time."""
    if not value:
        return None
    try:
        return datetime.strptime(str(value).strip(), _PBS_TIME).astimezone(UTC)
    except ValueError:
        return None
