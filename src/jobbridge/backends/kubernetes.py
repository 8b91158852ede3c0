"""Jobs as Kubernetes ``batch/v1`` Jobs, through the official ``kubernetes`` client.

The Job a job becomes is built in ``kubernetes_manifest``; what a Job and its pods say is read
in ``kubernetes_status``. One list call by the label ``jobbridge.io/job-id`` answers the status
of many jobs, and finds the Job of a submission whose answer was lost.

Kubernetes merges a container's stdout and stderr into one log: ``read_output`` returns it
as stdout, and stderr is empty. Arrays run as one Job per member (Indexed Jobs are not in
Kubernetes 1.20's stable API), each with ``JOBBRIDGE_ARRAY_INDEX``; dependencies are held by
jobbridge until the parents end.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

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
from jobbridge.backends.kubernetes_manifest import (
    ATTRIBUTES,
    CONTAINER,
    JOB_ID_LABEL,
    NAME_PREFIX,
    KubernetesOptions,
    WorkspaceVolume,
    job_manifest,
    secret_manifest,
)
from jobbridge.backends.kubernetes_secrets import delete_secret, own_secret, put_secret
from jobbridge.backends.kubernetes_status import created, job_status, label
from jobbridge.errors import (
    BackendError,
    ResourcesNotSupportedError,
    SubmissionError,
    SubmitOutcome,
)
from jobbridge.job import Job, JobStatus
from jobbridge.phase import Phase
from jobbridge.secrets import SecretValues
from jobbridge.spec import JobSpec, Launcher

__all__ = [
    "JOB_ID_LABEL",
    "KubernetesBackend",
    "KubernetesOptions",
    "job_manifest",
    "job_status",
]

log = logging.getLogger(__name__)


_REFUSING_STATUSES = frozenset({400, 403, 404, 405, 413, 415, 422})
_LABEL_CHUNK = 200  # ids per label selector: one list call for 200 jobs


class KubernetesBackend(Backend):
    kind = "kubernetes"
    Options = KubernetesOptions
    delivers_secrets = True
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
            "workspace": (
                spec.workspace is not None
                and self.options.workspace_volume is WorkspaceVolume.NONE,
                "set the backend's workspace_volume (host_path or claim) to mount workspaces",
            ),
        }
        for field, (refused, reason) in reasons.items():
            if refused:
                raise ResourcesNotSupportedError(self.name, field, reason)
        for key, value in spec.attributes_for("kubernetes").items():
            if key not in ATTRIBUTES:
                known = ", ".join(f"kubernetes.{name}" for name in sorted(ATTRIBUTES))
                raise ResourcesNotSupportedError(
                    self.name, f"attributes.kubernetes.{key}", f"known attributes: {known}"
                )
            if not ATTRIBUTES[key](value):
                raise ResourcesNotSupportedError(
                    self.name, f"attributes.kubernetes.{key}", f"{value!r} is not valid here"
                )

    # -- the Backend interface --------------------------------------------------------------

    def submit(self, job: Job, dependencies: Sequence[NativeDependency] = ()) -> str:
        return self.submit_with_secrets(job, {}, dependencies)

    def submit_with_secrets(
        self,
        job: Job,
        secrets: SecretValues,
        dependencies: Sequence[NativeDependency] = (),
    ) -> str:
        kinds = {name: kind for name, (kind, _) in secrets.items()}
        manifest = job_manifest(job, self.options, self.submit_host, kinds)
        name: str = manifest["metadata"]["name"]
        if not secrets:
            self._create(job, manifest)
            return name
        try:
            put_secret(self.api, self.namespace, job.id, secret_manifest(job, secrets))
        except SubmissionError as error:
            raise SubmissionError(f"{self.name}: {error}", error.outcome) from None
        except BackendError as error:  # the configuration could not be loaded
            raise SubmissionError(str(error), SubmitOutcome.NOT_MADE) from None
        try:
            created = self._create(job, manifest)
        except SubmissionError as error:
            if error.outcome is not SubmitOutcome.UNKNOWN:  # no Job will ever read it
                self._drop_secret(job, "a Job that was not made")
            raise
        own_secret(self.api, self.namespace, name, created)
        return name

    def remove_secrets(self, job: Job) -> None:
        self._drop_secret(job, "an ended job")

    def _create(self, job: Job, manifest: JsonObject) -> JsonObject:
        """The Job created from ``manifest``, or this job's existing one."""
        name: str = manifest["metadata"]["name"]
        try:
            return self.api.create_job(self.namespace, manifest)
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
            if native is None or label(native, JOB_ID_LABEL) != job.id:
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
                and (now - created(native)).total_seconds() >= self.options.pod_create_grace
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
                    job_id = label(item, JOB_ID_LABEL)
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
            pod = max(pods, key=created)
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

    def _adopt_existing(self, job: Job, name: str, error: KubeRefused) -> JsonObject:
        """A Job of that name exists: ours if it carries this job's mark (an earlier
        submission whose answer was lost), else a refusal."""
        try:
            existing = self.api.read_job(self.namespace, name)
        except KubeError as read_error:
            raise SubmissionError(
                f"{self.name}: Job {name} exists ({error}) and could not be read: {read_error}",
                SubmitOutcome.UNKNOWN,
            ) from None
        if label(existing, JOB_ID_LABEL) == job.id:
            return existing
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

    def _drop_secret(self, job: Job, why: str) -> None:
        try:
            delete_secret(self.api, self.namespace, NAME_PREFIX + job.id)
        except (KubeError, BackendError) as error:
            log.warning(
                "%s: the Secret of %s (job %s) stays: %s", self.name, why, job.id,
                type(error).__name__,
            )  # fmt: skip

    def _delete(self, job: Job, action: str) -> None:
        if not job.native_id:
            return
        if job.spec.secrets:
            self._delete_secret(job, action)
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

    def _delete_secret(self, job: Job, action: str) -> None:
        try:
            delete_secret(self.api, self.namespace, NAME_PREFIX + job.id)
        except KubeError as error:
            status = error.status if isinstance(error, KubeRefused) else 0
            raise BackendError(
                f"{self.name}: {action} of Secret {NAME_PREFIX}{job.id}: {type(error).__name__}"
                f" {status or ''}".rstrip(),
                retryable=status == 0 or status >= 500 or status == 429,
            ) from None


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
