"""Jobs as Kubernetes ``batch/v1`` Jobs, through the official ``kubernetes`` client.

A jobbridge job becomes one Job named ``jobbridge-<job id>`` whose pod runs one container:
the spec's executable and arguments as the container's ``command`` and ``args`` (lists,
never a shell line), its environment plus the portable ``JOBBRIDGE_*`` variables, its
cores, memory and GPUs as requests and limits, its walltime as ``activeDeadlineSeconds``.
The Job and its pods carry the label ``jobbridge.io/job-id``: one list call by that label
answers the status of many jobs, and finds the Job of a submission whose answer was lost.

Kubernetes merges a container's stdout and stderr into one log: ``read_output`` returns it
as stdout, and stderr is empty. Arrays run as one Job per member (Indexed Jobs are not in
Kubernetes 1.20's stable API), each with ``JOBBRIDGE_ARRAY_INDEX``; dependencies are held by
jobbridge until the parents end.
"""

from __future__ import annotations

import math
import socket
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import Field

from jobbridge.backends.base import (
    Backend,
    BackendContext,
    BackendOptions,
    Located,
    Missing,
    NativeDependency,
    Stream,
)
from jobbridge.backends.kubernetes_api import (
    JsonObject,
    KubeApi,
    KubeError,
    KubeRefused,
    KubeUnreachable,
    connect,
)
from jobbridge.errors import (
    BackendError,
    ResourcesNotSupportedError,
    SubmissionError,
    SubmitOutcome,
)
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.spec import JobSpec, Launcher, PullPolicy

__all__ = ["JOB_ID_LABEL", "KubernetesBackend", "KubernetesOptions", "job_manifest"]

JOB_ID_LABEL = "jobbridge.io/job-id"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
JOB_NAME_ANNOTATION = "jobbridge.io/job-name"
CONTAINER = "job"
NAME_PREFIX = "jobbridge-"

_IMAGE_PULL_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull"})
_BROKEN_CONTAINER_REASONS = frozenset(
    {"InvalidImageName", "CreateContainerConfigError", "CreateContainerError", "RunContainerError"}
)
_REFUSING_STATUSES = frozenset({400, 403, 404, 405, 413, 415, 422})
_LABEL_CHUNK = 200  # ids per label selector: one list call for 200 jobs


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


class KubernetesBackend(Backend):
    kind = "kubernetes"
    Options = KubernetesOptions
    options: KubernetesOptions

    def __init__(self, name: str, options: BackendOptions, context: BackendContext) -> None:
        super().__init__(name, options, context)
        self._api: KubeApi | None = None
        self._connecting = threading.Lock()
        self.submit_host = socket.gethostname()

    @property
    def api(self) -> KubeApi:
        """Connected on first use: a backend that is configured but unused costs nothing."""
        with self._connecting:
            if self._api is None:
                try:
                    client = connect(
                        kubeconfig=self.options.kubeconfig,
                        context=self.options.context,
                        in_cluster=self.options.in_cluster,
                    )
                except KubeError as error:
                    raise BackendError(f"{self.name}: {error}") from None
                self._api = KubeApi(client, self.options.request_timeout)
            return self._api

    @property
    def namespace(self) -> str:
        return self.options.namespace

    # -- before anything is sent ------------------------------------------------------------

    def check(self, spec: JobSpec) -> None:
        reasons = {
            "resources.nodes": (
                spec.resources.nodes > 1,
                "a Kubernetes Job runs each pod on one node",
            ),
            "launcher": (
                spec.launcher is not Launcher.SINGLE,
                "no srun or mpirun inside a pod; use an MPI operator",
            ),
            "queue": (spec.queue is not None, "Kubernetes has no queues"),
            "account": (spec.account is not None, "Kubernetes has no accounts"),
            "project": (spec.project is not None, "Kubernetes has no projects"),
            "reservation": (spec.reservation is not None, "Kubernetes has no reservations"),
            "stdin": (spec.stdin is not None, "a pod has no file on this machine to read"),
            "stdout": (spec.stdout is not None, "Kubernetes keeps the output as the pod's log"),
            "stderr": (spec.stderr is not None, "Kubernetes merges stderr into the pod's log"),
            "stage_in": (bool(spec.stage_in), "files on this machine cannot reach a pod"),
            "stage_out": (bool(spec.stage_out), "a pod's files cannot come back here"),
            "image": (
                spec.image is None and self.options.default_image is None,
                "name an image, or set the backend's default_image",
            ),
        }
        for field, (refused, reason) in reasons.items():
            if refused:
                raise ResourcesNotSupportedError(self.name, field, reason)
        for key, value in spec.attributes_for("kubernetes").items():
            if key not in _ATTRIBUTES:
                known = ", ".join(f"kubernetes.{name}" for name in sorted(_ATTRIBUTES))
                raise ResourcesNotSupportedError(
                    self.name, f"attributes.kubernetes.{key}", f"known attributes: {known}"
                )
            if not _ATTRIBUTES[key](value):
                raise ResourcesNotSupportedError(
                    self.name, f"attributes.kubernetes.{key}", f"{value!r} is not valid here"
                )

    # -- the Backend interface --------------------------------------------------------------

    def submit(self, job: Job, dependencies: Sequence[NativeDependency] = ()) -> str:
        manifest = job_manifest(job, self.options, self.submit_host)
        name: str = manifest["metadata"]["name"]
        try:
            self.api.create_job(self.namespace, manifest)
        except KubeRefused as error:
            if error.status == 409:
                return self._adopt_existing(job, name, error)
            raise SubmissionError(
                f"{self.name}: the API server refused Job {name}: {error}",
                _outcome_of_refusal(error),
            ) from None
        except KubeUnreachable as error:
            outcome = SubmitOutcome.UNKNOWN if error.sent else SubmitOutcome.NOT_MADE
            raise SubmissionError(f"{self.name}: creating Job {name}: {error}", outcome) from None
        except BackendError as error:  # the configuration could not be loaded
            raise SubmissionError(str(error), SubmitOutcome.NOT_MADE) from None
        return name

    def status(self, jobs: Sequence[Job]) -> dict[str, JobStatus | Missing]:
        submitted = [job for job in jobs if job.native_id]
        if not submitted:
            return {}
        native_jobs: dict[str, JsonObject] = {}
        pods: dict[str, list[JsonObject]] = {}
        try:
            for selector in _selectors(job.id for job in submitted):
                for item in self.api.list_jobs(self.namespace, selector):
                    native_jobs[item["metadata"]["name"]] = item
                for pod in self.api.list_pods(self.namespace, selector):
                    job_id = (pod["metadata"].get("labels") or {}).get(JOB_ID_LABEL, "")
                    pods.setdefault(job_id, []).append(pod)
        except KubeError as error:
            raise BackendError(
                f"{self.name}: status query failed: {error}", retryable=True
            ) from None
        now = datetime.now(UTC)
        answers: dict[str, JobStatus | Missing] = {}
        for job in submitted:
            native = native_jobs.get(job.native_id or "")
            if native is None or _label(native, JOB_ID_LABEL) != job.id:
                answers[job.id] = Missing(
                    f"no Job {job.native_id} labelled {JOB_ID_LABEL}={job.id} in namespace"
                    f" {self.namespace}"
                )
                continue
            answers[job.id] = job_status(
                native, pods.get(job.id, []), now, self.options.image_pull_grace
            )
        stuck: dict[str, JsonObject] = {}
        for job in submitted:
            said, native = answers[job.id], native_jobs.get(job.native_id or "")
            if (
                isinstance(said, JobStatus)
                and native is not None
                and not said.phase.is_final
                and not pods.get(job.id)
                and _age(native, now) >= self.options.pod_create_grace
            ):
                stuck[job.id] = native
        if stuck:
            answers.update(self._pods_never_made(stuck))
        return answers

    def locate(self, jobs: Sequence[Job]) -> Located:
        found: dict[str, list[str]] = {}
        wanted = {job.id for job in jobs}
        try:
            for selector in _selectors(wanted):
                for item in self.api.list_jobs(self.namespace, selector):
                    job_id = _label(item, JOB_ID_LABEL)
                    if job_id in wanted:
                        found.setdefault(job_id, []).append(item["metadata"]["name"])
        except KubeError as error:
            raise BackendError(f"{self.name}: search failed: {error}", retryable=True) from None
        return Located({job_id: sorted(names) for job_id, names in found.items()}, complete=True)

    def cancel(self, job: Job) -> None:
        self._delete(job, "cancel")

    def free(self, job: Job) -> None:
        self._delete(job, "free")

    def read_output(
        self, job: Job, stream: Stream, offset: int = 0, size: int | None = None
    ) -> bytes:
        """The pod's log (stdout and stderr merged by Kubernetes) as stdout; stderr is empty."""
        if stream == "stderr" or not job.native_id:
            return b""
        limit = offset + size if offset >= 0 and size is not None else None
        try:
            pods = self.api.list_pods(self.namespace, f"{JOB_ID_LABEL}={job.id}")
            if not pods:
                return b""
            pod = max(pods, key=_created)
            data = self.api.pod_log(self.namespace, pod["metadata"]["name"], CONTAINER, limit)
        except KubeRefused as error:
            if error.status in (400, 404):  # not started yet, or gone
                return b""
            raise BackendError(f"{self.name}: reading the log: {error}") from None
        except KubeError as error:
            raise BackendError(f"{self.name}: reading the log: {error}", retryable=True) from None
        if offset < 0:
            data = data[offset:]
            return data if size is None else data[:size]
        return data[offset:] if size is None else data[offset : offset + size]

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    # -- inside -----------------------------------------------------------------------------

    def _adopt_existing(self, job: Job, name: str, error: KubeRefused) -> str:
        """A Job of that name exists: ours if it carries this job's mark (an earlier
        submission whose answer was lost), else a refusal."""
        try:
            existing = self.api.read_job(self.namespace, name)
        except KubeError as read_error:
            raise SubmissionError(
                f"{self.name}: Job {name} exists ({error}) and could not be read: {read_error}",
                SubmitOutcome.UNKNOWN,
            ) from None
        if _label(existing, JOB_ID_LABEL) == job.id:
            return name
        raise SubmissionError(
            f"{self.name}: a Job named {name} exists and is not this job's",
            SubmitOutcome.REFUSED,
        )

    def _pods_never_made(self, stuck: dict[str, JsonObject]) -> dict[str, JobStatus]:
        """Jobs whose controller could not create a pod for a while, and why (an event is
        the only record of it): they end, since nothing else will ever tell."""
        try:
            events = self.api.list_events(
                self.namespace, "involvedObject.kind=Job,reason=FailedCreate"
            )
        except KubeError:
            return {}  # no news: they stay as they are
        said: dict[str, str] = {}
        for event in events:
            uid = (event.get("involvedObject") or {}).get("uid")
            if uid:
                said[uid] = str(event.get("message") or "FailedCreate")
        answers = {}
        for job_id, native in stuck.items():
            message = said.get((native.get("metadata") or {}).get("uid", ""))
            if message is not None:
                answers[job_id] = JobStatus(
                    phase=Phase.ERROR,
                    detail="POD_CREATE_FAILED",
                    message=message,
                    stop_native=True,
                )
        return answers

    def _delete(self, job: Job, action: str) -> None:
        if not job.native_id:
            return
        try:
            self.api.delete_job(self.namespace, job.native_id, self.options.propagation_policy)
        except KubeRefused as error:
            if error.status == 404:
                return
            raise BackendError(
                f"{self.name}: {action} of Job {job.native_id}: {error}",
                retryable=error.status >= 500 or error.status == 429,
            ) from None
        except KubeUnreachable as error:
            raise BackendError(
                f"{self.name}: {action} of Job {job.native_id}: {error}", retryable=True
            ) from None


# -- the manifest -------------------------------------------------------------------------------


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _text(value: object) -> bool:
    return isinstance(value, str) and bool(value)


_ATTRIBUTES = {
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


# -- reading the answers -----------------------------------------------------------------------


def job_status(
    native: JsonObject, pods: Sequence[JsonObject], now: datetime, pull_grace: float
) -> JobStatus:
    """What a Job and its pods say, as a jobbridge status (a pure function)."""
    status = native.get("status") or {}
    pod = max(pods, key=_created) if pods else None
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
        since = _created(pod)
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


def _created(item: JsonObject) -> datetime:
    return _time((item.get("metadata") or {}).get("creationTimestamp")) or datetime.min.replace(
        tzinfo=UTC
    )


def _age(item: JsonObject, now: datetime) -> float:
    return (now - _created(item)).total_seconds()


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


def _label(item: JsonObject, key: str) -> str | None:
    labels = (item.get("metadata") or {}).get("labels") or {}
    value = labels.get(key)
    return value if isinstance(value, str) else None


def _selectors(job_ids: Iterator[str] | set[str] | list[str]) -> Iterator[str]:
    ids = sorted(set(job_ids))
    for start in range(0, len(ids), _LABEL_CHUNK):
        yield f"{JOB_ID_LABEL} in ({','.join(ids[start : start + _LABEL_CHUNK])})"


def _outcome_of_refusal(error: KubeRefused) -> SubmitOutcome:
    status = error.status
    if status == 403 and "exceeded quota" in error.message:
        return SubmitOutcome.NOT_MADE  # room may come back
    if status in _REFUSING_STATUSES:
        return SubmitOutcome.REFUSED  # invalid, forbidden, no such namespace: for good
    if status == 429 or status == 401:
        return SubmitOutcome.NOT_MADE  # throttled, or credentials to renew: not taken
    return SubmitOutcome.UNKNOWN  # 5xx: it may have been stored before the error
