"""A job's secrets as a Kubernetes Secret: made before its Job, owned by the Job once it
exists (so that deleting the Job deletes it), and deleted when the job ends or goes.

No value leaves this module except in the Secret's body: an error names the Secret and the
API server's status, never the server's message, which could quote what it was sent.
"""

from __future__ import annotations

import logging

from jobbridge.backends.kubernetes_api import JsonObject, KubeApi, KubeError, KubeRefused
from jobbridge.backends.kubernetes_manifest import JOB_ID_LABEL
from jobbridge.errors import SubmissionError, SubmitOutcome

__all__ = ["delete_secret", "own_secret", "put_secret"]

log = logging.getLogger(__name__)

_REFUSING_STATUSES = frozenset({400, 403, 404, 405, 413, 415, 422})


def put_secret(api: KubeApi, namespace: str, job_id: str, body: JsonObject) -> None:
    """Create the Secret, or replace the one an earlier attempt for this job left behind."""
    name = body["metadata"]["name"]
    try:
        try:
            api.create_secret(namespace, body)
        except KubeRefused as error:
            if error.status != 409:
                raise
            if api.read_secret_labels(namespace, name).get(JOB_ID_LABEL) != job_id:
                raise SubmissionError(
                    f"a Secret named {name} exists and is not this job's", SubmitOutcome.REFUSED
                ) from None
            api.replace_secret(namespace, name, body)
    except KubeRefused as error:
        refused = error.status in _REFUSING_STATUSES
        raise SubmissionError(
            f"the API server refused Secret {name}: {error.status} {error.reason}",
            SubmitOutcome.REFUSED if refused else SubmitOutcome.NOT_MADE,
        ) from None
    except KubeError as error:
        # no Job exists yet: whatever became of the Secret, the job was not made
        raise SubmissionError(
            f"creating Secret {name}: {type(error).__name__}", SubmitOutcome.NOT_MADE
        ) from None


def own_secret(api: KubeApi, namespace: str, name: str, owner: JsonObject) -> None:
    """Make the Job ``owner`` the Secret's owner. Best effort: a Secret left unowned is still
    deleted by name when the job ends or is freed."""
    metadata = owner.get("metadata") or {}
    reference = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "name": metadata.get("name"),
        "uid": metadata.get("uid"),
    }
    if not reference["uid"]:
        return
    try:
        api.patch_secret(namespace, name, {"metadata": {"ownerReferences": [reference]}})
    except KubeError as error:
        log.warning("Secret %s stays without its owner Job: %s", name, type(error).__name__)


def delete_secret(api: KubeApi, namespace: str, name: str) -> None:
    """Delete the Secret; gone already is fine. Raises ``KubeError`` otherwise."""
    try:
        api.delete_secret(namespace, name)
    except KubeRefused as error:
        if error.status != 404:
            raise
