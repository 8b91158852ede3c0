"""UWS 1.1 XML documents (namespace ``http://www.ivoa.net/xml/UWS/v1.0``), built with lxml in
the element order ``UWS.xsd`` requires."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from lxml import etree

from jobbridge.uws.models import JobRefView, JobView, ParameterView, ResultView, utc_text

__all__ = ["UWS_NS", "XLINK_NS", "job_document", "job_list_document", "parameters_document",
           "results_document"]  # fmt: skip

UWS_NS = "http://www.ivoa.net/xml/UWS/v1.0"
XLINK_NS = "http://www.w3.org/1999/xlink"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"
UWS_VERSION = "1.1"
_NSMAP = {"uws": UWS_NS, "xlink": XLINK_NS, "xsi": XSI_NS}


def _tag(name: str) -> str:
    return f"{{{UWS_NS}}}{name}"


def _root(name: str, *, versioned: bool) -> etree._Element:
    root = etree.Element(_tag(name), nsmap=_NSMAP)
    if versioned:
        root.set("version", UWS_VERSION)
    return root


def _child(parent: etree._Element, name: str, text: str | None = None) -> etree._Element:
    element = etree.SubElement(parent, _tag(name))
    if text is not None:
        element.text = text
    return element


def _nillable(parent: etree._Element, name: str, value: str | datetime | None) -> None:
    element = _child(parent, name)
    if value is None:
        element.set(f"{{{XSI_NS}}}nil", "true")
    else:
        element.text = utc_text(value) if isinstance(value, datetime) else value


def _serialize(root: etree._Element) -> bytes:
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def job_list_document(refs: Sequence[JobRefView]) -> bytes:
    root = _root("jobs", versioned=True)
    for ref in refs:
        element = _child(root, "jobref")
        element.set("id", ref.id)
        element.set(f"{{{XLINK_NS}}}href", ref.href)
        _child(element, "phase", ref.phase.value)
        if ref.run_id is not None:
            _child(element, "runId", ref.run_id)
        _nillable(element, "ownerId", ref.owner_id)
        _child(element, "creationTime", utc_text(ref.creation_time))
    return _serialize(root)


def job_document(job: JobView) -> bytes:
    root = _root("job", versioned=True)
    _child(root, "jobId", job.job_id)
    if job.run_id is not None:
        _child(root, "runId", job.run_id)
    _nillable(root, "ownerId", job.owner_id)
    _child(root, "phase", job.phase.value)
    _nillable(root, "quote", job.quote)
    _child(root, "creationTime", utc_text(job.creation_time))
    _nillable(root, "startTime", job.start_time)
    _nillable(root, "endTime", job.end_time)
    _child(root, "executionDuration", str(job.execution_duration))
    _nillable(root, "destruction", job.destruction)
    _fill_parameters(_child(root, "parameters"), job.parameters)
    _fill_results(_child(root, "results"), job.results)
    if job.error_summary is not None:
        summary = _child(root, "errorSummary")
        summary.set("type", job.error_summary.type)
        summary.set("hasDetail", "true" if job.error_summary.has_detail else "false")
        _child(summary, "message", job.error_summary.message)
    return _serialize(root)


def parameters_document(parameters: Sequence[ParameterView]) -> bytes:
    root = _root("parameters", versioned=False)
    _fill_parameters(root, parameters)
    return _serialize(root)


def results_document(results: Sequence[ResultView]) -> bytes:
    root = _root("results", versioned=False)
    _fill_results(root, results)
    return _serialize(root)


def _fill_parameters(parent: etree._Element, parameters: Sequence[ParameterView]) -> None:
    for parameter in parameters:
        element = _child(parent, "parameter", parameter.value)
        element.set("id", parameter.id)
        if parameter.by_reference:
            element.set("byReference", "true")


def _fill_results(parent: etree._Element, results: Sequence[ResultView]) -> None:
    for result in results:
        element = _child(parent, "result")
        element.set("id", result.id)
        element.set(f"{{{XLINK_NS}}}type", "simple")
        element.set(f"{{{XLINK_NS}}}href", result.href)
        if result.size is not None:
            element.set("size", str(result.size))
        if result.mime_type is not None:
            element.set("mime-type", result.mime_type)
