"""What the service shows of a job, independent of XML or JSON."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_serializer

from jobbridge.phase import Phase

__all__ = [
    "ErrorSummaryView",
    "JobRefView",
    "JobView",
    "ParameterView",
    "ResultView",
    "utc_text",
]


def utc_text(moment: datetime) -> str:
    """ISO 8601 in UTC, ending in ``Z`` (as UWS wants), to the microsecond as stored (so
    that a time shown can be given back as AFTER)."""
    text = moment.astimezone(UTC).isoformat(timespec="microseconds")
    return text.replace("+00:00", "Z")


class _View(BaseModel):
    model_config = ConfigDict(frozen=True, populate_by_name=True)

    @field_serializer("*", when_used="json")
    def _times(self, value: object) -> object:
        return utc_text(value) if isinstance(value, datetime) else value


class ParameterView(_View):
    id: str
    value: str
    by_reference: bool = Field(False, serialization_alias="byReference")


class ResultView(_View):
    id: str
    href: str
    size: int | None = None
    mime_type: str | None = Field(None, serialization_alias="mime-type")


class ErrorSummaryView(_View):
    type: Literal["transient", "fatal"]
    has_detail: bool = Field(serialization_alias="hasDetail")
    message: str


class JobRefView(_View):
    id: str
    href: str
    phase: Phase
    run_id: str | None = Field(None, serialization_alias="runId")
    owner_id: str | None = Field(None, serialization_alias="ownerId")
    creation_time: datetime = Field(serialization_alias="creationTime")


class JobView(_View):
    job_id: str = Field(serialization_alias="jobId")
    run_id: str | None = Field(None, serialization_alias="runId")
    owner_id: str | None = Field(None, serialization_alias="ownerId")
    phase: Phase
    quote: datetime | None = None
    creation_time: datetime = Field(serialization_alias="creationTime")
    start_time: datetime | None = Field(None, serialization_alias="startTime")
    end_time: datetime | None = Field(None, serialization_alias="endTime")
    execution_duration: int = Field(serialization_alias="executionDuration")
    destruction: datetime | None = None
    parameters: list[ParameterView] = Field(default_factory=list)
    results: list[ResultView] = Field(default_factory=list)
    error_summary: ErrorSummaryView | None = Field(None, serialization_alias="errorSummary")
