"""The Kubernetes objects a jobbridge job becomes: its ``batch/v1`` Job (pure functions of
the job and the backend's options), and the options themselves.

A job becomes one Job named ``jobbridge-<job id>`` whose pod runs one container: the spec's
executable and arguments as the container's ``command`` and ``args`` (lists, never a shell
line), its environment plus the portable ``JOBBRIDGE_*`` variables, its cores, memory and GPUs
as requests and limits, its walltime as ``activeDeadlineSeconds``. The Job and its pods carry
the label ``jobbridge.io/job-id``.

A job's secrets travel in a ``v1`` Secret of the same name (``secret_manifest``): environment
secrets as ``secretKeyRef`` variables, file secrets as a read-only ``secret`` volume at
``secrets_path`` (``$JOBBRIDGE_SECRETS``). A workflow's workspace is mounted at its own path,
from the node (``hostPath``) or from a PersistentVolumeClaim, as the options say.
"""

from __future__ import annotations

import base64
import math
import posixpath
from collections.abc import Mapping
from enum import StrEnum
from typing import Literal, Self

from pydantic import Field, model_validator

from jobbridge.backends.base import BackendOptions
from jobbridge.backends.kubernetes_api import JsonObject
from jobbridge.job import Job
from jobbridge.secrets import SecretKind, SecretValues
from jobbridge.spec import JobSpec, PullPolicy

__all__ = [
    "ATTRIBUTES",
    "CONTAINER",
    "JOB_ID_LABEL",
    "KubernetesOptions",
    "WorkspaceVolume",
    "job_manifest",
    "secret_manifest",
]

JOB_ID_LABEL = "jobbridge.io/job-id"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
JOB_NAME_ANNOTATION = "jobbridge.io/job-name"
CONTAINER = "job"
NAME_PREFIX = "jobbridge-"
SECRETS_VOLUME = "jobbridge-secrets"
WORKSPACE_VOLUME = "jobbridge-workspace"
_SECRET_FILE_MODE = 0o400


class WorkspaceVolume(StrEnum):
    """Where a workflow's workspace comes from in its jobs' pods."""

    NONE = "none"
    """Nothing is mounted: a job with a workspace is refused."""
    HOST_PATH = "host_path"
    """The node's directory of the workspace's path (made if missing): for a single node, or
    a path every node shares."""
    CLAIM = "claim"
    """The directory of the workspace's path (without its leading /) inside the
    PersistentVolumeClaim ``workspace_claim``."""


class KubernetesOptions(BackendOptions):
    kubeconfig: str | None = Field(
        None, description="kubeconfig file; None: $KUBECONFIG or ~/.kube/config"
    )
    context: str | None = Field(None, description="kubeconfig context; None: its current one")
    in_cluster: bool | None = Field(
        None,
        description="use the pod's service account; None: when running inside a cluster and"
        " no kubeconfig is given",
    )
    namespace: str = Field("default", min_length=1, max_length=63)
    service_account: str | None = Field(None, description="the pods' service account")
    default_image: str | None = Field(None, description="image of jobs that name none")
    pull_policy: PullPolicy | None = Field(
        None, description="image pull policy of jobs that name none; None: Kubernetes' default"
    )
    request_timeout: float = Field(30.0, gt=0, description="seconds one API call may take")
    backoff_limit: int = Field(0, ge=0, description="pod retries before a Job fails")
    propagation_policy: Literal["Background", "Foreground"] = Field(
        "Background", description="how a deleted Job's pods go"
    )
    image_pull_grace: float = Field(
        60.0, ge=0, description="seconds a pod may fail to pull its image before the job ends"
    )
    pod_create_grace: float = Field(
        60.0,
        ge=0,
        description="seconds a Job may fail to create its pod (admission, quota) before the"
        " job ends",
    )
    gpu_resource: str = Field("nvidia.com/gpu", description="the extended resource of a GPU")
    termination_grace_period: int | None = Field(
        None, ge=0, description="seconds between TERM and KILL when a pod is stopped"
    )
    working_dir: str | None = Field(
        None, description="working directory of jobs that name none; None: the image's"
    )
    secrets_path: str = Field(
        "/var/run/secrets/jobbridge",
        description="where a job's file secrets are mounted ($JOBBRIDGE_SECRETS)",
    )
    workspace_volume: WorkspaceVolume = Field(
        WorkspaceVolume.NONE, description="where workflows' workspaces come from"
    )
    workspace_claim: str | None = Field(
        None, description="the PersistentVolumeClaim of workspaces (workspace_volume claim)"
    )

    @model_validator(mode="after")
    def _claim_named(self) -> Self:
        if (self.workspace_volume is WorkspaceVolume.CLAIM) != bool(self.workspace_claim):
            raise ValueError("workspace_claim is set exactly when workspace_volume is claim")
        if not posixpath.isabs(self.secrets_path):
            raise ValueError(f"secrets_path {self.secrets_path!r} must be an absolute path")
        return self


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


ATTRIBUTES = {
    "backoff_limit": _positive_int,
    "priority_class_name": _text,
    "service_account": _text,
}


def job_manifest(
    job: Job,
    options: KubernetesOptions,
    submit_host: str,
    secrets: Mapping[str, SecretKind] | None = None,
) -> JsonObject:
    """The ``batch/v1`` Job that runs ``job`` (a pure function of its inputs), reading
    ``secrets`` (their names and kinds) from the Secret of ``secret_manifest``."""
    spec = job.spec
    extra = spec.attributes_for("kubernetes")
    labels = {JOB_ID_LABEL: job.id, MANAGED_BY_LABEL: "jobbridge"}
    directory = spec.directory or options.working_dir
    container: JsonObject = {
        "name": CONTAINER,
        "image": spec.image or options.default_image,
        "command": _command(spec)[:1],
        "args": _command(spec)[1:],
        "env": _environment(job, directory, submit_host),
        "resources": _resources(spec, options),
    }
    if directory:
        container["workingDir"] = directory
    volumes = _mount_secrets(container, job, options, secrets or {})
    volumes += _mount_workspace(container, spec, options)
    pull_policy = spec.pull_policy or options.pull_policy
    if pull_policy is not None:
        container["imagePullPolicy"] = str(pull_policy)
    pod_spec: JsonObject = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "containers": [container],
    }
    if volumes:
        pod_spec["volumes"] = volumes
    service_account = extra.get("service_account") or options.service_account
    if service_account:
        pod_spec["serviceAccountName"] = str(service_account)
    if extra.get("priority_class_name"):
        pod_spec["priorityClassName"] = str(extra["priority_class_name"])
    if options.termination_grace_period is not None:
        pod_spec["terminationGracePeriodSeconds"] = options.termination_grace_period
    job_spec: JsonObject = {
        "backoffLimit": int(extra.get("backoff_limit", options.backoff_limit)),
        "template": {"metadata": {"labels": labels}, "spec": pod_spec},
    }
    walltime = spec.resources.walltime
    if walltime is not None:
        job_spec["activeDeadlineSeconds"] = max(1, math.ceil(walltime.total_seconds()))
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": NAME_PREFIX + job.id,
            "labels": labels,
            "annotations": {JOB_NAME_ANNOTATION: job.name},
        },
        "spec": job_spec,
    }


def secret_manifest(job: Job, values: SecretValues) -> JsonObject:
    """The ``v1`` Secret that holds ``job``'s secrets while it runs (its owner reference to
    the Job is added once the Job exists)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": NAME_PREFIX + job.id,
            "labels": {JOB_ID_LABEL: job.id, MANAGED_BY_LABEL: "jobbridge"},
        },
        "data": {name: base64.b64encode(value).decode() for name, (_, value) in values.items()},
    }


def _mount_secrets(
    container: JsonObject, job: Job, options: KubernetesOptions, kinds: Mapping[str, SecretKind]
) -> list[JsonObject]:
    secret = NAME_PREFIX + job.id
    env: list[JsonObject] = container["env"]
    files = sorted(name for name, kind in kinds.items() if kind is SecretKind.FILE)
    for name in sorted(kinds):
        if kinds[name] is SecretKind.ENV:
            reference = {"secretKeyRef": {"name": secret, "key": name}}
            env[:] = [item for item in env if item["name"] != name]
            env.append({"name": name, "valueFrom": reference})
    if not files:
        return []
    env.append({"name": "JOBBRIDGE_SECRETS", "value": options.secrets_path.replace("$", "$$")})
    container.setdefault("volumeMounts", []).append(
        {"name": SECRETS_VOLUME, "mountPath": options.secrets_path, "readOnly": True}
    )
    source = {
        "secretName": secret,
        "defaultMode": _SECRET_FILE_MODE,
        "items": [{"key": name, "path": name, "mode": _SECRET_FILE_MODE} for name in files],
    }
    return [{"name": SECRETS_VOLUME, "secret": source}]


def _mount_workspace(
    container: JsonObject, spec: JobSpec, options: KubernetesOptions
) -> list[JsonObject]:
    workspace = spec.workspace
    if workspace is None or options.workspace_volume is WorkspaceVolume.NONE:
        return []
    mount: JsonObject = {"name": WORKSPACE_VOLUME, "mountPath": workspace}
    if options.workspace_volume is WorkspaceVolume.HOST_PATH:
        source: JsonObject = {"hostPath": {"path": workspace, "type": "DirectoryOrCreate"}}
    else:
        source = {"persistentVolumeClaim": {"claimName": options.workspace_claim}}
        mount["subPath"] = workspace.lstrip("/")
    container.setdefault("volumeMounts", []).append(mount)
    return [{"name": WORKSPACE_VOLUME, **source}]


def _command(spec: JobSpec) -> list[str]:
    argv = [spec.executable, *spec.arguments]
    if spec.prologue or spec.epilogue:
        # the program's words travel as positional parameters, never as shell text
        script = "\n".join(
            [
                "jobbridge_prologue() {",
                spec.prologue or ":",
                "}",
                "jobbridge_epilogue() {",
                spec.epilogue or ":",
                "}",
                "jobbridge_prologue || exit $?",
                '"$@"',
                "jobbridge_status=$?",
                "jobbridge_epilogue",
                "exit $jobbridge_status",
            ]
        )
        argv = ["/bin/sh", "-c", script, "jobbridge-job", *argv]
    return argv


def _environment(job: Job, directory: str | None, submit_host: str) -> list[JsonObject]:
    # Kubernetes expands $(NAME) in values; $$ keeps a dollar sign literal.
    values = {key: value.replace("$", "$$") for key, value in job.spec.environment.items()}
    values.update(
        JOBBRIDGE_JOB_ID=job.id,
        JOBBRIDGE_JOB_NAME=job.name.replace("$", "$$"),
        JOBBRIDGE_WORKDIR=(directory or "").replace("$", "$$"),
        JOBBRIDGE_SUBMIT_HOST=submit_host,
    )
    if job.array_index is not None:
        values["JOBBRIDGE_ARRAY_INDEX"] = str(job.array_index)
    env: list[JsonObject] = [{"name": key, "value": value} for key, value in values.items()]
    env.append(
        {"name": "JOBBRIDGE_NODELIST", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    )
    return env


def _resources(spec: JobSpec, options: KubernetesOptions) -> JsonObject:
    resources = spec.resources
    amounts: dict[str, str] = {"cpu": str(resources.cores)}
    if resources.memory is not None:
        amounts["memory"] = str(resources.memory)
    limits = dict(amounts)
    gpus = resources.gpus_per_process * resources.processes
    if gpus:
        limits[options.gpu_resource] = str(gpus)
    return {"requests": amounts, "limits": limits}
