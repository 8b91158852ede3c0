"""The OpenAPI 3.0 description of the service, written out rather than inferred: the UWS
binding takes its parameters from forms, query strings and multipart bodies, answers with
XML or JSON, redirects with 303 and says what is wrong in ``text/plain``, none of which the
route signatures show."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from jobbridge.phase import Phase
from jobbridge.uws.definitions import Definitions

__all__ = ["uws_openapi"]

Schema = dict[str, Any]

_XML = "application/xml"
_JSON = "application/json"
_TEXT = "text/plain"
_FORM = "application/x-www-form-urlencoded"
_MULTIPART = "multipart/form-data"
_PHASES = [phase.value for phase in Phase]


def _ref(kind: str, name: str) -> Schema:
    return {"$ref": f"#/components/{kind}/{name}"}


def _errors(*statuses: int) -> dict[str, Schema]:
    described = {
        400: "a malformed value; the message says which",
        401: "no or bad credentials",
        403: "another user's job, or an action its phase forbids",
        404: "no such job, definition, parameter or result",
        413: "a request body or the user's kept files over a limit (named in the message)",
        415: "a body that is neither a form nor multipart",
        429: "the user's jobs that have not ended are at the limit (max_active_jobs)",
    }
    codes = sorted({401, 404, *statuses})
    return {
        str(code): {"$ref": "#/components/responses/Error", "description": described[code]}
        for code in codes
    }


def _document(schema: str, description: str) -> Schema:
    return {
        "description": description,
        "content": {
            _XML: {"schema": {"description": "a UWS 1.1 document (UWS.xsd)"}},
            _JSON: {"schema": _ref("schemas", schema)},
        },
    }


def _text(description: str, schema: Schema | None = None) -> Schema:
    return {
        "description": description,
        "content": {_TEXT: {"schema": schema or {"type": "string"}}},
    }


def _form(
    properties: dict[str, Schema], *, files: bool, required: list[str] | None = None
) -> Schema:
    form: Schema = {
        "type": "object",
        "properties": properties,
        "additionalProperties": {"type": "string"},
    }
    if required:
        form["required"] = required
    content: Schema = {_FORM: {"schema": form}}
    if files:
        multipart = {**form, "additionalProperties": {"type": "string", "format": "binary"}}
        content[_MULTIPART] = {"schema": multipart}
    return {"required": False, "content": content}


def _query(name: str, schema: Schema, description: str, **extra: Any) -> Schema:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "schema": schema,
        "description": description,
        **extra,
    }


def _secret_operations() -> dict[str, Schema]:
    """The caller's own secrets (see ``uws.secrets``); no answer carries a value."""
    secret = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "kind": {"type": "string", "enum": ["env", "file"]},
            "created": {"type": "string", "format": "date-time"},
        },
    }
    fields: dict[str, Schema] = {
        "NAME": {"type": "string", "description": "letters, digits and _"},
        "KIND": {"type": "string", "enum": ["env", "file"], "default": "env"},
        "VALUE": {"type": "string", "description": "never shown again"},
    }
    listing = {"type": "object", "properties": {"secrets": {"type": "array", "items": secret}}}
    name = {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
    tags = ["secrets"]
    return {
        "/secrets": {
            "get": {
                "summary": "The names and kinds of the caller's secrets",
                "tags": tags,
                "responses": {
                    "200": {"description": "the list", "content": {_JSON: {"schema": listing}}},
                    **_errors(403),
                },
            },
            "post": {
                "summary": "Store a secret of the caller (replacing one of its name)",
                "tags": tags,
                "requestBody": {
                    **_form(fields, files=True, required=["NAME", "VALUE"]),
                    "required": True,
                },
                "responses": {
                    "201": {"description": "stored", "content": {_JSON: {"schema": secret}}},
                    **_errors(400, 403, 413, 415),
                },
            },
        },
        "/secrets/{name}": {
            "parameters": [name],
            "delete": {
                "summary": "Forget a secret of the caller",
                "tags": tags,
                "responses": {"204": {"description": "forgotten"}, **_errors(403)},
            },
        },
    }


_CONTROL: dict[str, Schema] = {
    "RUNID": {"type": "string", "maxLength": 256, "description": "the client's label"},
    "EXECUTIONDURATION": {"type": "integer", "minimum": 0, "description": "seconds; 0: none"},
    "DESTRUCTION": {"type": "string", "description": "ISO 8601; UTC if no zone is given"},
}


def _operations(definition_names: list[str]) -> dict[str, Schema]:
    definition = {
        "name": "definition",
        "in": "path",
        "required": True,
        "schema": {"type": "string", **({"enum": definition_names} if definition_names else {})},
    }
    job = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
    see_other = {"303": _ref("responses", "SeeOther")}
    on_job = [definition, job]

    def sub(getter: Schema, setter: Schema | None = None) -> Schema:
        item: Schema = {"parameters": on_job, "get": getter}
        if setter is not None:
            item["post"] = setter
        return item

    def value(summary: str, schema: Schema | None = None) -> Schema:
        return {
            "summary": summary,
            "tags": ["UWS job"],
            "responses": {"200": _text(summary, schema), **_errors(403)},
        }

    def setter(summary: str, field: str, schema: Schema) -> Schema:
        return {
            "summary": summary,
            "tags": ["UWS job"],
            "requestBody": {
                **_form({field: schema}, files=False, required=[field]),
                "required": True,
            },
            "responses": {**see_other, **_errors(400, 403, 413, 415)},
        }

    return {
        "/jobs/{definition}": {
            "parameters": [definition],
            "get": {
                "summary": "The caller's jobs of a definition (UWS job list)",
                "tags": ["UWS job list"],
                "parameters": [
                    _query(
                        "PHASE",
                        {"type": "array", "items": {"type": "string", "enum": _PHASES}},
                        "only jobs in these phases (ARCHIVED only when asked)",
                        style="form",
                        explode=True,
                    ),
                    _query(
                        "AFTER", {"type": "string"}, "only jobs created after this ISO 8601 time"
                    ),
                    _query(
                        "LAST",
                        {"type": "integer", "minimum": 1, "maximum": 2**31 - 1},
                        "the newest this many, newest first",
                    ),
                ],
                "responses": {"200": _document("JobList", "the job list"), **_errors(400)},
            },
            "post": {
                "summary": "Create a job; PHASE=RUN starts it",
                "tags": ["UWS job list"],
                "description": "Parameters of the definition by name; a file parameter as a"
                " multipart file or an http(s) URL, which is fetched by a job of its own.",
                "requestBody": _form(
                    {"PHASE": {"type": "string", "enum": ["RUN"]}, **_CONTROL}, files=True
                ),
                "responses": {**see_other, **_errors(400, 413, 415, 429)},
            },
        },
        "/jobs/{definition}/{job_id}": {
            "parameters": on_job,
            "get": {
                "summary": "A job; WAIT blocks until its phase changes",
                "tags": ["UWS job"],
                "parameters": [
                    _query(
                        "WAIT",
                        {"type": "integer", "minimum": -1, "maximum": 2**31 - 1},
                        "seconds to block while the job is PENDING, QUEUED or EXECUTING"
                        " (-1: as long as the service allows)",
                    ),
                    _query(
                        "PHASE",
                        {"type": "string", "enum": _PHASES},
                        "block only while the job is in this phase",
                    ),
                ],
                "responses": {"200": _document("Job", "the job"), **_errors(400, 403)},
            },
            "post": {
                "summary": "Change a job: parameters, RUNID, PHASE=RUN|ABORT, or ACTION=DELETE",
                "tags": ["UWS job"],
                "requestBody": _form(
                    {
                        "PHASE": {"type": "string", "enum": ["RUN", "ABORT"]},
                        "ACTION": {"type": "string", "enum": ["DELETE"]},
                        **_CONTROL,
                    },
                    files=True,
                ),
                "responses": {**see_other, **_errors(400, 403, 413, 415)},
            },
            "delete": {
                "summary": "Delete a job",
                "tags": ["UWS job"],
                "responses": {**see_other, **_errors(403)},
            },
        },
        "/jobs/{definition}/{job_id}/phase": sub(
            value("The job's phase", {"type": "string", "enum": _PHASES}),
            setter(
                "Run or abort the job (ABORT of an ended job changes nothing)",
                "PHASE",
                {"type": "string", "enum": ["RUN", "ABORT"]},
            ),
        ),
        "/jobs/{definition}/{job_id}/executionduration": sub(
            value("Seconds the job may run (0: no limit)"),
            setter(
                "Change the execution duration (PENDING only)",
                "EXECUTIONDURATION",
                _CONTROL["EXECUTIONDURATION"],
            ),
        ),
        "/jobs/{definition}/{job_id}/destruction": sub(
            value("When the job will be destroyed (ISO 8601, UTC)"),
            setter("Change the destruction time", "DESTRUCTION", _CONTROL["DESTRUCTION"]),
        ),
        "/jobs/{definition}/{job_id}/quote": sub(
            value("When the job is expected to end (may be empty)")
        ),
        "/jobs/{definition}/{job_id}/owner": sub(
            value("The job's owner (empty for anonymous clients)")
        ),
        "/jobs/{definition}/{job_id}/error": sub(
            {
                "summary": "What went wrong",
                "tags": ["UWS job"],
                "responses": {
                    "200": _text("the error and the end of the job's stderr"),
                    **_errors(403),
                },
            }
        ),
        "/jobs/{definition}/{job_id}/parameters": {
            "parameters": on_job,
            "get": {
                "summary": "The job's parameters",
                "tags": ["UWS job"],
                "responses": {"200": _document("Parameters", "the parameters"), **_errors(403)},
            },
            "post": {
                "summary": "Change parameters (PENDING only) and RUNID (any time)",
                "tags": ["UWS job"],
                "requestBody": _form({"RUNID": _CONTROL["RUNID"]}, files=True),
                "responses": {**see_other, **_errors(400, 403, 413, 415)},
            },
        },
        "/jobs/{definition}/{job_id}/parameters/{name}": {
            "parameters": [
                *on_job,
                {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "get": {
                "summary": "One parameter's value, or the uploaded file",
                "tags": ["UWS job"],
                "responses": {
                    "200": {
                        "description": "the value",
                        "content": {"*/*": {"schema": {"description": "the file as it is"}}},
                    },
                    **_errors(403),
                },
            },
            "put": {
                "summary": "Set one parameter (or RUNID) to the body's text",
                "tags": ["UWS job"],
                "requestBody": {
                    "required": True,
                    "content": {"*/*": {"schema": {"description": "the value, as UTF-8 text"}}},
                },
                "responses": {**see_other, **_errors(400, 403, 413)},
            },
        },
        "/jobs/{definition}/{job_id}/results": sub(
            {
                "summary": "The job's results",
                "tags": ["UWS job"],
                "responses": {"200": _document("Results", "the results"), **_errors(403)},
            }
        ),
        "/jobs/{definition}/{job_id}/results/{result_id}": {
            "parameters": [
                *on_job,
                {"name": "result_id", "in": "path", "required": True, "schema": {"type": "string"}},
            ],
            "get": {
                "summary": "One result file; HTTP Range is honoured",
                "tags": ["UWS job"],
                "parameters": [
                    {
                        "name": "Range",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": {
                        "description": "the file",
                        "content": {"*/*": {"schema": {"description": "the file as it is"}}},
                    },
                    "206": {
                        "description": "the range asked for",
                        "content": {"*/*": {"schema": {"description": "the file as it is"}}},
                    },
                    "416": {"description": "a range outside the file"},
                    **_errors(403),
                },
            },
        },
        "/jobs": {
            "get": {
                "summary": "The job definitions",
                "tags": ["definitions"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "the definitions, each a job list",
                        "content": {_JSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        },
        "/capabilities": {
            "get": {
                "summary": "VOSI capabilities",
                "tags": ["VOSI"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "VOSI capabilities",
                        "content": {_XML: {"schema": {"description": "a VOSI document"}}},
                    }
                },
            }
        },
        "/availability": {
            "get": {
                "summary": "VOSI availability",
                "tags": ["VOSI"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "VOSI availability",
                        "content": {_XML: {"schema": {"description": "a VOSI document"}}},
                    }
                },
            }
        },
    }


def _schemas() -> dict[str, Schema]:
    nullable_time = {
        "type": "string",
        "nullable": True,
        "description": "ISO 8601, UTC, ending in Z",
    }
    parameter = {
        "type": "object",
        "required": ["id", "value"],
        "properties": {
            "id": {"type": "string"},
            "value": {"type": "string"},
            "byReference": {"type": "boolean"},
        },
    }
    result = {
        "type": "object",
        "required": ["id", "href"],
        "properties": {
            "id": {"type": "string"},
            "href": {"type": "string"},
            "size": {"type": "integer", "nullable": True},
            "mime-type": {"type": "string", "nullable": True},
        },
    }
    return {
        "Parameters": {"type": "array", "items": parameter},
        "Results": {"type": "array", "items": result},
        "JobRef": {
            "type": "object",
            "required": ["id", "href", "phase", "creationTime"],
            "properties": {
                "id": {"type": "string"},
                "href": {"type": "string"},
                "phase": {"type": "string", "enum": _PHASES},
                "runId": {"type": "string", "nullable": True},
                "ownerId": {"type": "string", "nullable": True},
                "creationTime": {"type": "string"},
            },
        },
        "JobList": {
            "type": "object",
            "required": ["version", "jobs"],
            "properties": {
                "version": {"type": "string"},
                "jobs": {"type": "array", "items": _ref("schemas", "JobRef")},
            },
        },
        "Job": {
            "type": "object",
            "required": ["jobId", "phase", "creationTime", "executionDuration"],
            "properties": {
                "jobId": {"type": "string"},
                "runId": {"type": "string", "nullable": True},
                "ownerId": {"type": "string", "nullable": True},
                "phase": {"type": "string", "enum": _PHASES},
                "quote": nullable_time,
                "creationTime": {"type": "string"},
                "startTime": nullable_time,
                "endTime": nullable_time,
                "executionDuration": {"type": "integer"},
                "destruction": nullable_time,
                "parameters": _ref("schemas", "Parameters"),
                "results": _ref("schemas", "Results"),
                "errorSummary": {
                    "type": "object",
                    "nullable": True,
                    "properties": {
                        "type": {"type": "string", "enum": ["transient", "fatal"]},
                        "hasDetail": {"type": "boolean"},
                        "message": {"type": "string"},
                    },
                },
            },
        },
    }


def uws_openapi(app: FastAPI, definitions: Definitions, *, anonymous: bool) -> dict[str, Any]:
    if app.openapi_schema is not None:
        return app.openapi_schema
    security: list[dict[str, list[str]]] = [{"bearer": []}, {"basic": []}]
    if anonymous:
        security.append({})
    app.openapi_schema = {
        "openapi": "3.0.3",
        "info": {"title": app.title, "version": app.version, "description": app.description},
        "security": security,
        "paths": {**_operations(list(definitions)), **_secret_operations()},
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "a user's token"},
                "basic": {"type": "http", "scheme": "basic", "description": "user name and token"},
            },
            "responses": {
                "SeeOther": {
                    "description": "done; the job (the job list, after a deletion) is at Location",
                    "headers": {"Location": {"schema": {"type": "string"}, "required": True}},
                },
                "Error": _text("what is wrong, in one line"),
            },
            "schemas": _schemas(),
        },
    }
    return app.openapi_schema
