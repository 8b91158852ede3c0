"""Reading what PBS Pro's and Torque's qstat print: PBS Pro's JSON, Torque's XML, times, exit
codes. One job whose record cannot be read is left out, never the answer as a whole."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any
from xml.etree import ElementTree

from jobbridge.backends.batch.records import UnreadableRecord, each_record

__all__ = [
    "Record",
    "element_value",
    "exit_status",
    "int_or_none",
    "pbs_time",
    "pbspro_document",
    "pbspro_jobs",
    "shell_exit_code",
    "torque_jobs",
    "torque_sanitised",
    "without_variable_lists",
]

_XML_FORBIDDEN = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f]")
_PBS_TIME = "%a %b %d %H:%M:%S %Y"
_DATA = re.compile(r"<Data>.*?</Data>|<Data\s*/>", re.DOTALL)
_JOB = re.compile(r"<Job>.*?</Job>", re.DOTALL)
_JOB_ID = re.compile(r"<Job_Id>\s*([^<\s]+)\s*</Job_Id>")
_DECODER = json.JSONDecoder(strict=False)
_VARIABLE_LIST = re.compile(
    r'^([ \t]*)("Variable_List")[ \t]*:[ \t]*\{.*?^\1\}', re.MULTILINE | re.DOTALL
)
_BARE_AMPERSAND = re.compile(r"&(?!(?:amp|lt|gt|quot|apos|#\d+|#x[0-9A-Fa-f]+);)")
_BARE_LESS_THAN = re.compile(r"<(?![A-Za-z_/?!])")
_TORQUE_VARIABLES = re.compile(r"<Variable_List>.*?</Variable_List>", re.DOTALL)


Record = tuple[str, Mapping[str, Any]] | UnreadableRecord
"""A job's id and its attributes, or why they could not be read."""


def pbspro_document(output: str) -> dict[str, Any]:
    """A whole ``qstat -F json`` answer (jobs or server); ``ValueError`` if it is none."""
    document = json.loads(output, strict=False)
    if not isinstance(document, dict):
        raise ValueError("not a qstat -F json answer")
    return document


def without_variable_lists(output: str) -> str:
    """The answer without its ``Variable_List`` objects. Released OpenPBS (up to 23.06)
    writes their values as they are: ``"N":005``, bare ``inf``, stray backslashes, whole
    exported bash functions; jobbridge reads nothing there. qstat prints each key on a line
    of its own, so an object ends at the first line that closes it at its key's indentation
    (its values are one level deeper)."""
    return _VARIABLE_LIST.sub(r"\1\2:\t{}", output)


def pbspro_jobs(output: str) -> Iterator[Record]:
    """Each job of ``qstat -f -F json``, read without the ``Variable_List`` values (see
    ``without_variable_lists``). Values may hold control characters (hence ``strict=False``);
    a job whose object is broken anyway comes as an ``UnreadableRecord``, and the jobs after
    it are still read."""
    if not output.strip():
        return
    output = without_variable_lists(output)
    try:
        document = pbspro_document(output)
    except json.JSONDecodeError:
        yield from _pbspro_job_by_job(output)
        return
    jobs = document.get("Jobs", {})
    if not isinstance(jobs, dict):
        raise ValueError("Jobs is no JSON object")
    for job_id, attributes in jobs.items():
        if isinstance(attributes, dict):
            yield str(job_id), attributes
        else:
            yield UnreadableRecord(str(job_id), "attributes are no JSON object")


def _pbspro_job_by_job(output: str) -> Iterator[Record]:
    """The jobs of an answer that is no valid JSON as a whole. PBS prints one job per key of
    ``Jobs``, each key on a line of its own at the same indentation: after a broken job,
    reading resumes at the next line so indented."""
    opening = re.search(r'"Jobs"\s*:\s*\{', output)
    if opening is None or not output.rstrip().endswith("}"):
        raise ValueError("no qstat -F json answer (or one cut short)")
    yield from each_record(output, opening.end(), _job_at, r'"[^"\n]*"\s*:')


def _job_at(output: str, position: int) -> tuple[Record, int]:
    """The job whose key is at ``position``, and where its attributes end. A key that cannot
    be read leaves the rest unreadable too (``ValueError``)."""
    key, after = _DECODER.raw_decode(output, position)
    if not isinstance(key, str):
        raise ValueError(f"no job id at {position}")
    colon = _skip_space(output, after)
    if output[colon : colon + 1] != ":":
        raise ValueError(f"no ':' after job {key}")
    try:
        attributes, end = _DECODER.raw_decode(output, _skip_space(output, colon + 1))
    except json.JSONDecodeError as error:
        raise UnreadableRecord(key, f"broken JSON object: {error}") from error
    if not isinstance(attributes, dict):
        return UnreadableRecord(key, "attributes are no JSON object"), end
    return (key, attributes), end


def _skip_space(text: str, position: int) -> int:
    while position < len(text) and text[position].isspace():
        position += 1
    return position


def torque_jobs(output: str) -> Iterator[Record]:
    """Each ``<Job>`` of ``qstat -x`` (one or more XML documents) as a dict; nested elements
    such as ``Resource_List`` become dicts of their own. A ``<Job>`` that is no XML comes as
    an ``UnreadableRecord``; an answer without a whole ``<Data>`` raises ``ValueError``."""
    if not output.strip():
        return  # Torque before 6.1.0 printed nothing at all when there were no jobs
    cleaned = torque_sanitised(output)
    documents = _DATA.findall(cleaned)
    if not documents or len(documents) < cleaned.count("<Data"):
        raise ValueError("no qstat -x answer (or one cut short)")
    for document in documents:
        try:
            root = ElementTree.fromstring(document)  # noqa: S314 - the scheduler's own answer
        except ElementTree.ParseError:
            yield from _torque_job_by_job(document)
            continue
        for element in root.iter("Job"):
            yield _torque_record(element)


def torque_sanitised(output: str) -> str:
    """``qstat -x`` made well-formed where it can be. Torque writes values unescaped (an
    exported shell function's ``&&`` or ``<`` breaks the document), and ``-V`` copies the
    submitter's environment, control characters included, which XML 1.0 forbids: a bare
    ``&`` or a ``<`` that opens no tag is escaped, control characters are dropped."""
    cleaned = _XML_FORBIDDEN.sub("", output)
    cleaned = _BARE_AMPERSAND.sub("&amp;", cleaned)
    return _BARE_LESS_THAN.sub("&lt;", cleaned)


def _torque_job_by_job(document: str) -> Iterator[Record]:
    for chunk in _JOB.findall(document):
        try:
            # what is left broken is most likely in the copied environment, never read
            element = ElementTree.fromstring(_TORQUE_VARIABLES.sub("", chunk))  # noqa: S314
        except ElementTree.ParseError as error:
            found = _JOB_ID.search(chunk)
            key = found[1] if found else chunk[:60]
            yield UnreadableRecord(key, f"not XML: {error}")
            continue
        yield _torque_record(element)


def _torque_record(element: ElementTree.Element) -> Record:
    attributes = {child.tag: element_value(child) for child in element}
    job_id = str(attributes.get("Job_Id", "")).strip()
    if not job_id:
        return UnreadableRecord("?", "a <Job> without <Job_Id>")
    return job_id, attributes


def element_value(element: ElementTree.Element) -> object:
    if len(element):
        return {child.tag: child.text or "" for child in element}
    return element.text or ""


def int_or_none(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def exit_status(attributes: Mapping[str, Any], name: str) -> int | None:
    """The exit status attribute; None where there is none. One that is there but no number
    makes the record unreadable."""
    value = attributes.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or int_or_none(value) is None:
        raise ValueError(f"{name} {value!r} is no number")
    return int(str(value))


def shell_exit_code(code: int | None) -> int | None:
    """PBS shows a job it killed with signal N as 256+N; a shell would say 128+N."""
    if code is not None and code >= 256:
        return 128 + code % 256
    return code


def pbs_time(value: object) -> datetime | None:
    """qstat prints times as ctime(3) does, in its own time zone: jobbridge runs it with
    ``TZ=UTC`` (see ``PbsProBackend.status_environment``)."""
    if not value:
        return None
    try:
        return datetime.strptime(str(value).strip(), _PBS_TIME).replace(tzinfo=UTC)
    except ValueError:
        return None
