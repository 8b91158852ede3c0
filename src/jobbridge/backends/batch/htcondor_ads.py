"""Reading HTCondor's job ClassAds as ``condor_q -json`` and ``condor_history -json`` print
them: one job's state, exit code and times, what its hold codes mean, and a late-materializing
cluster's jobs that the schedd has not created yet."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from jobbridge.backends.batch.native import NativeState, epoch_or_none
from jobbridge.backends.batch.records import UnreadableRecord, json_objects

__all__ = [
    "HOLD_CODES",
    "SYSTEM_HOLDS",
    "HTCondorState",
    "ad_and_state",
    "is_int",
    "json_ads",
    "unmaterialized",
]

_JOB_STATUS = {
    1: "Idle",
    2: "Running",
    3: "Removed",
    4: "Completed",
    5: "Held",
    6: "TransferringOutput",
    7: "Suspended",
}

HOLD_CODES = {
    1: "UserRequest",
    3: "JobPolicy",
    5: "JobPolicyUndefined",
    6: "FailedToCreateProcess",
    7: "UnableToOpenOutput",
    8: "UnableToOpenInput",
    12: "TransferOutputError",
    13: "TransferInputError",
    14: "IwdError",
    15: "SubmittedOnHold",
    21: "StartdHeldJob",
    26: "SystemPolicy",
    34: "JobOutOfResources",
    46: "JobDurationExceeded",
    47: "JobExecuteExceeded",
}
"""The names of the HoldReasonCode values jobbridge shows as a held job's detail."""

SYSTEM_HOLDS: Mapping[int, str] = {
    6: "FAILED_TO_START",
    7: "OUTPUT_UNWRITABLE",
    8: "INPUT_UNREADABLE",
    12: "TRANSFER_FAILED",
    13: "TRANSFER_FAILED",
    14: "IWD_ERROR",
    34: "OUT_OF_MEMORY",
    46: "TIMEOUT",
    47: "TIMEOUT",
}
"""Holds that HTCondor itself puts on a job that failed (HoldReasonCode): the job would sit
held until someone looked; jobbridge ends it ERROR with the reason and removes it."""

_AD_START = re.compile(r"^\{", re.MULTILINE)
_CLUSTER_FIELD = re.compile(r'"ClusterId"\s*:\s*(\d+)')


@dataclass(frozen=True)
class HTCondorState(NativeState):
    """A job as condor_q or condor_history shows it; a held job also says why."""

    hold_code: int | None = None


def json_ads(output: str) -> Iterator[Mapping[str, Any] | UnreadableRecord]:
    """``-json`` prints a JSON array of job ClassAds, or nothing when no job matches. An ad
    whose JSON is broken comes as an ``UnreadableRecord`` and the ads after it are still
    read; ``ValueError`` if the answer as a whole is none."""
    if not output.strip():
        return
    try:
        ads = json.loads(output)
    except json.JSONDecodeError:
        yield from _ad_by_ad(output)
        return
    if not isinstance(ads, list):
        raise ValueError("expected a JSON array of job ClassAds")
    for ad in ads:
        yield ad if isinstance(ad, dict) else UnreadableRecord("?", "an ad that is no object")


def _ad_by_ad(output: str) -> Iterator[Mapping[str, Any] | UnreadableRecord]:
    """The ads of an answer that is no valid JSON as a whole: each begins with a ``{`` at the
    start of a line."""
    text = output.strip()
    if not (text.startswith("[") and text.endswith("]")) or not _AD_START.search(text):
        raise ValueError("no JSON array of job ClassAds (or one cut short)")
    yield from json_objects(output, output.index("[") + 1, _cluster_at)


def _cluster_at(output: str, position: int) -> str:
    found = _CLUSTER_FIELD.search(output, position)
    return found[1] if found else "?"


def is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def ad_and_state(ad: Mapping[str, Any]) -> tuple[str, tuple[Mapping[str, Any], HTCondorState]]:
    job_id = _job_id(ad)
    return job_id, (ad, _state(ad, job_id))


def _job_id(ad: Mapping[str, Any]) -> str:
    cluster, proc = ad.get("ClusterId"), ad.get("ProcId")
    if not is_int(cluster) or not is_int(proc):
        raise UnreadableRecord(f"{cluster}.{proc}", "no ClusterId or ProcId")
    return f"{cluster}.{proc}"


def _state(ad: Mapping[str, Any], job_id: str) -> HTCondorState:
    status = ad.get("JobStatus")
    if not isinstance(status, int) or isinstance(status, bool):
        raise UnreadableRecord(job_id, f"JobStatus {status!r} is no number")
    word = _JOB_STATUS.get(status, f"JobStatus={status}")
    code = ad.get("ExitCode")
    if word == "Completed" and code is not None and not is_int(code):
        raise UnreadableRecord(job_id, f"ExitCode {code!r} is no number")
    ended = None
    if word in ("Completed", "Removed"):
        ended = _time(ad.get("CompletionDate")) or _time(ad.get("EnteredCurrentStatus"))
    reason = ad.get("HoldReason") if word == "Held" else ad.get("RemoveReason")
    hold_code = ad.get("HoldReasonCode") if word == "Held" else None
    return HTCondorState(
        word=word,
        reason=reason if isinstance(reason, str) and reason else None,
        exit_code=_exit_code(ad) if word == "Completed" else None,
        started=_time(ad.get("JobCurrentStartDate")) or _time(ad.get("JobStartDate")),
        ended=ended,
        hold_code=hold_code if isinstance(hold_code, int) else None,
    )


def _exit_code(ad: Mapping[str, Any]) -> int | None:
    if ad.get("ExitBySignal") is True and isinstance(ad.get("ExitSignal"), int):
        return 128 + int(ad["ExitSignal"])
    code = ad.get("ExitCode")
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _time(value: object) -> datetime | None:
    return epoch_or_none(str(value)) if isinstance(value, int) else None


def unmaterialized(cluster: int, ads: Sequence[Mapping[str, Any]]) -> dict[str, NativeState]:
    """Jobs of a late-materializing cluster (``max_materialize``) that the schedd has not
    created yet: in no queue or history, but counted by the cluster ad that every job of the
    cluster carries. The schedd creates them in ProcId order, from JobMaterializeNextProcId
    (or, if that is not shown, after the highest one in the queue) up to TotalSubmitProcs."""
    factory = [ad for ad in ads if isinstance(ad.get("JobMaterializeLimit"), int)]
    total = factory[0].get("TotalSubmitProcs") if factory else None
    if not isinstance(total, int):
        return {}
    following = factory[0].get("JobMaterializeNextProcId")
    if not isinstance(following, int):
        following = 1 + max(int(ad["ProcId"]) for ad in ads)
    waiting = HTCondorState(word="Unmaterialized")
    return {f"{cluster}.{proc}": waiting for proc in range(following, total)}
