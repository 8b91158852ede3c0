"""What a Kubernetes Job and its pods say, as a jobbridge status (pure functions): Job
conditions and pod and container states mapped to phases and details."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from jobbridge.backends.kubernetes_api import JsonObject
from jobbridge.backends.kubernetes_manifest import CONTAINER
from jobbridge.job import JobStatus
from jobbridge.phase import Phase

__all__ = ["created", "job_status", "label"]

_IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"})
_BROKEN_CONTAINER_REASONS = frozenset(
    {"InvalidImageName", "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)


def job_status(
    native: JsonObject, pods: Sequence[JsonObject], now: datetime, pull_grace: float
) -> JobStatus:
    """What a Job and its pods say, as a jobbridge status (a pure function)."""
    status = native.get("status") or {}
    pod = max(pods, key=created) if pods else None
    container = _container_status(pod)
    started = _started(container) or _time((pod or {}).get("status", {}).get("startTime"))
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        ended = _ended(container) or _time(condition.get("lastTransitionTime"))
        if condition.get("type") == "Complete":
            return JobStatus(phase=Phase.COMPLETED, exit_code=0, started=started, ended=ended)
        if condition.get("type") == "Failed":
            return _failed(condition, pod, container, started, ended)
    if (native.get("metadata") or {}).get("deletionTimestamp"):
        return JobStatus(
            phase=Phase.ABORTED,
            detail="CANCELLED",
            message="its Kubernetes Job is being deleted",
            stop_native=True,
        )
    if pod is None:
        return JobStatus(phase=Phase.QUEUED)
    return _in_progress(pod, container, started, now, pull_grace)


def _failed(
    condition: JsonObject,
    pod: JsonObject | None,
    container: JsonObject | None,
    started: datetime | None,
    ended: datetime | None,
) -> JobStatus:
    reason = str(condition.get("reason") or "Failed")
    message = condition.get("message") or reason
    terminated = ((container or {}).get("state") or {}).get("terminated") or {}
    exit_code = terminated.get("exitCode")
    pod_reason = ((pod or {}).get("status") or {}).get("reason")
    if reason == "DeadlineExceeded":
        detail = "TIMEOUT"
    elif terminated.get("reason") == "OOMKilled":
        detail = "OUT_OF_MEMORY"
    elif pod_reason == "Evicted":
        detail = "EVICTED"
        message = ((pod or {}).get("status") or {}).get("message") or message
    elif pod_reason == "DeadlineExceeded":
        detail = "TIMEOUT"
    elif reason == "BackoffLimitExceeded":
        detail = "FAILED"
    else:
        detail = _word(reason)
    if terminated.get("message"):
        message = f"{message}; {terminated['message']}"
    return JobStatus(
        phase=Phase.ERROR,
        detail=detail,
        message=str(message),
        exit_code=exit_code if isinstance(exit_code, int) else None,
        started=started,
        ended=ended,
    )


def _in_progress(
    pod: JsonObject,
    container: JsonObject | None,
    started: datetime | None,
    now: datetime,
    pull_grace: float,
) -> JobStatus:
    pod_status = pod.get("status") or {}
    waiting = ((container or {}).get("state") or {}).get("waiting") or {}
    reason = waiting.get("reason")
    if reason in _IMAGE_PULL_REASONS or reason in _BROKEN_CONTAINER_REASONS:
        since = created(pod)
        if (now - since).total_seconds() >= pull_grace:
            detail = "IMAGE_PULL" if reason in _IMAGE_PULL_REASONS else _word(reason)
            return JobStatus(
                phase=Phase.ERROR,
                detail=detail,
                message=f"{reason}: {waiting.get('message') or ''}".strip(": "),
                stop_native=True,
            )
        return JobStatus(phase=Phase.QUEUED, detail=_word(reason), message=waiting.get("message"))
    phase = pod_status.get("phase")
    if phase in ("Running", "Succeeded", "Failed"):
        # a pod that ended before its Job's condition says so: still running for jobbridge
        return JobStatus(phase=Phase.EXECUTING, started=started)
    for condition in pod_status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return JobStatus(
                phase=Phase.QUEUED,
                detail=_word(condition.get("reason") or "Unschedulable"),
                message=condition.get("message"),
            )
    return JobStatus(phase=Phase.QUEUED)


def _container_status(pod: JsonObject | None) -> JsonObject | None:
    if pod is None:
        return None
    for status in (pod.get("status") or {}).get("containerStatuses") or []:
        if status.get("name") == CONTAINER:
            return dict(status)
    return None


def _started(container: JsonObject | None) -> datetime | None:
    state = (container or {}).get("state") or {}
    for key in ("running", "terminated"):
        if state.get(key):
            return _time(state[key].get("startedAt"))
    return None


def _ended(container: JsonObject | None) -> datetime | None:
    terminated = ((container or {}).get("state") or {}).get("terminated") or {}
    return _time(terminated.get("finishedAt"))


def created(item: JsonObject) -> datetime:
    return _time((item.get("metadata") or {}).get("creationTimestamp")) or datetime.min.replace(
        tzinfo=UTC
    )


def _time(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _word(reason: str) -> str:
    """``ImagePullBackOff`` -> ``IMAGE_PULL_BACK_OFF``: a detail in jobbridge's style."""
    out: list[str] = []
    for index, char in enumerate(reason):
        if char.isupper() and index and (reason[index - 1].islower()):
            out.append("_")
        out.append(char.upper())
    return "".join(out)


def label(item: JsonObject, key: str) -> str | None:
    labels = (item.get("metadata") or {}).get("labels") or {}
    value = labels.get(key)
    return value if isinstance(value, str) else None
