"""The Kubernetes objects a jobbridge job becomes: its ``batch/v1`` Job (pure functions of
the job and the backend's options), and the options themselves.

A job becomes one Job named ``jobbridge-<job id>`` whose pod runs one container: the spec's
executable and arguments as the container's ``command`` and ``args`` (lists, never a shell
line), its environment plus the portable ``JOBBRIDGE_*`` variables, its cores, memory and GPUs
as requests and limits, its walltime as ``activeDeadlineSeconds``. The Job and its pods carry
the label ``jobbridge.io/job-id``.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field

from jobbridge.backends.base import BackendOptions
from jobbridge.backends.kubernetes_api import JsonObject
from jobbridge.job import Job
from jobbridge.spec import JobSpec, PullPolicy

__all__ = [
    "ATTRIBUTES",
    "CONTAINER",
    "JOB_ID_LABEL",
    "KubernetesOptions",
    "job_manifest",
]

JOB_ID_LABEL = "jobbridge.io/job-id"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
JOB_NAME_ANNOTATION = "jobbridge.io/job-name"
CONTAINER = "job"
NAME_PREFIX = "jobbridge-"


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


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


ATTRIBUTES = {
    "backoff_limit": _positive_int,
    "priority_class_name": _text,
    "service_account": _text,
}


def job_manifest(job: Job, options: KubernetesOptions, submit_host: str) -> JsonObject:
    """The ``batch/v1`` Job that runs ``job`` (a pure function of its inputs)."""
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
    pull_policy = spec.pull_policy or options.pull_policy
    if pull_policy is not None:
        container["imagePullPolicy"] = str(pull_policy)
    pod_spec: JsonObject = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "containers": [container],
    }
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
