"""The Kubernetes backend: its pure parts (manifest, status mapping, refusals, error
classification) everywhere, and through the engine on the real API server, controllers and
scheduler that ``scripts/k8s-cluster.sh up`` starts (with the stand-in node agent in place of
a kubelet: it runs pods as local processes)."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config

from jobbridge import Engine, JobSpec, Phase, Resources, Store
from jobbridge.backends.base import BackendContext, Missing
from jobbridge.backends.kubernetes import (
    JOB_ID_LABEL,
    KubernetesBackend,
    KubernetesOptions,
    job_manifest,
    job_status,
)
from jobbridge.backends.kubernetes_api import KubeApi, KubeRefused, KubeUnreachable
from jobbridge.backends.registry import backend_kind
from jobbridge.config import EngineSettings
from jobbridge.errors import ResourcesNotSupportedError, SubmissionError, SubmitOutcome
from jobbridge.job import Job
from tests.batch_support import HOSTILE_ARGUMENTS, HOSTILE_VALUE
from tests.conftest import cluster_env

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
OPTIONS = KubernetesOptions(default_image="busybox:1.36", namespace="science")


def make_job(spec: JobSpec, job_id: str = "abc123def456", **fields: Any) -> Job:
    return Job(id=job_id, spec=spec, backend="k8s", created=NOW, **fields)


# -- pure parts ----------------------------------------------------------------------------------


def test_registered_as_an_entry_point() -> None:
    assert backend_kind("kubernetes") is KubernetesBackend


def test_manifest_carries_the_spec_as_lists_labels_and_limits() -> None:
    spec = JobSpec(
        executable="/opt/tool",
        arguments=HOSTILE_ARGUMENTS,
        name="it's $(x)",
        environment={"TRICKY": HOSTILE_VALUE},
        directory="/data/run 1",
        resources=Resources(
            processes_per_node=2, cores_per_process=3, gpus_per_process=1, memory="2G",
            walltime="00:01:30",
        ),
        image="python:3.12",
        pull_policy="IfNotPresent",
    )  # fmt: skip
    manifest = job_manifest(make_job(spec, array_index=7), OPTIONS, "submit-host")
    assert manifest["metadata"]["name"] == "jobbridge-abc123def456"
    assert manifest["metadata"]["labels"][JOB_ID_LABEL] == "abc123def456"
    job_spec = manifest["spec"]
    assert job_spec["backoffLimit"] == 0
    assert job_spec["activeDeadlineSeconds"] == 90
    assert job_spec["template"]["metadata"]["labels"][JOB_ID_LABEL] == "abc123def456"
    pod = job_spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "python:3.12"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["command"] == ["/opt/tool"]
    assert container["args"] == HOSTILE_ARGUMENTS
    assert container["workingDir"] == "/data/run 1"
    assert container["resources"] == {
        "requests": {"cpu": "6", "memory": str(2 * 1024**3)},
        "limits": {"cpu": "6", "memory": str(2 * 1024**3), "nvidia.com/gpu": "2"},
    }
    env = {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}
    assert env["TRICKY"] == HOSTILE_VALUE.replace("$", "$$")  # no $(VAR) expansion
    assert env["JOBBRIDGE_JOB_ID"] == "abc123def456"
    assert env["JOBBRIDGE_ARRAY_INDEX"] == "7"
    assert env["JOBBRIDGE_WORKDIR"] == "/data/run 1"
    assert env["JOBBRIDGE_NODELIST"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}


def test_manifest_takes_defaults_and_attributes() -> None:
    options = KubernetesOptions(
        default_image="busybox", service_account="runner", backoff_limit=2, pull_policy="Never"
    )
    spec = JobSpec(
        executable="true",
        prologue="echo before",
        attributes={"kubernetes.backoff_limit": 5, "kubernetes.priority_class_name": "low"},
    )
    manifest = job_manifest(make_job(spec), options, "here")
    pod = manifest["spec"]["template"]["spec"]
    assert manifest["spec"]["backoffLimit"] == 5
    assert "activeDeadlineSeconds" not in manifest["spec"]
    assert pod["serviceAccountName"] == "runner"
    assert pod["priorityClassName"] == "low"
    container = pod["containers"][0]
    assert container["image"] == "busybox"
    assert container["imagePullPolicy"] == "Never"
    assert container["command"] == ["/bin/sh"]
    assert container["args"][-2:] == ["jobbridge-job", "true"]


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"resources": {"nodes": 2}}, "resources.nodes"),
        ({"launcher": "srun"}, "launcher"),
        ({"launcher": "mpirun"}, "launcher"),
        ({"queue": "long"}, "queue"),
        ({"account": "astro"}, "account"),
        ({"reservation": "r1"}, "reservation"),
        ({"stage_in": ["input.txt"]}, "stage_in"),
        ({"stdout": "out.txt"}, "stdout"),
        ({"attributes": {"kubernetes.no_such": 1}}, "attributes.kubernetes.no_such"),
        ({"attributes": {"kubernetes.backoff_limit": "x"}}, "attributes.kubernetes.backoff_limit"),
    ],
)
def test_check_refuses_what_kubernetes_cannot_honour(
    changes: dict[str, Any], field: str, tmp_path: Path
) -> None:
    backend = KubernetesBackend("k8s", OPTIONS, BackendContext(tmp_path))
    spec = JobSpec.model_validate({"executable": "true", **changes})
    with pytest.raises(ResourcesNotSupportedError, match="k8s") as caught:
        backend.check(spec)
    assert caught.value.field == field


def test_check_needs_an_image(tmp_path: Path) -> None:
    backend = KubernetesBackend("k8s", KubernetesOptions(), BackendContext(tmp_path))
    with pytest.raises(ResourcesNotSupportedError) as caught:
        backend.check(JobSpec(executable="true"))
    assert caught.value.field == "image"
    backend.check(JobSpec(executable="true", image="busybox"))


def native(conditions: list[dict[str, Any]] | None = None, **metadata: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "jobbridge-x", "labels": {JOB_ID_LABEL: "x"}, **metadata},
        "status": {"conditions": conditions or []},
    }


def pod(
    state: dict[str, Any] | None = None,
    phase: str = "Pending",
    created: datetime = NOW,
    **status: Any,
) -> dict[str, Any]:
    containers = [{"name": "job", "state": state}] if state else []
    return {
        "metadata": {"name": "jobbridge-x-abcde", "creationTimestamp": created.isoformat()},
        "status": {"phase": phase, "containerStatuses": containers, **status},
    }


def failed(reason: str) -> list[dict[str, Any]]:
    return [
        {
            "type": "Failed",
            "status": "True",
            "reason": reason,
            "message": f"said {reason}",
            "lastTransitionTime": "2026-01-01T12:00:05Z",
        }
    ]


TERMINATED = {"terminated": {"exitCode": 3, "reason": "Error", "startedAt": "2026-01-01T12:00:01Z",
                             "finishedAt": "2026-01-01T12:00:02Z"}}  # fmt: skip


@pytest.mark.parametrize(
    ("job", "pods", "phase", "detail", "exit_code"),
    [
        (native(), [], Phase.QUEUED, None, None),
        (native([{"type": "Complete", "status": "True"}]), [pod(TERMINATED)], Phase.COMPLETED,
         None, 0),
        (native(failed("BackoffLimitExceeded")), [pod(TERMINATED, "Failed")], Phase.ERROR,
         "FAILED", 3),
        (native(failed("DeadlineExceeded")), [], Phase.ERROR, "TIMEOUT", None),
        (native(failed("BackoffLimitExceeded")),
         [pod({"terminated": {"exitCode": 137, "reason": "OOMKilled"}}, "Failed")],
         Phase.ERROR, "OUT_OF_MEMORY", 137),
        (native(failed("BackoffLimitExceeded")), [pod(None, "Failed", reason="Evicted")],
         Phase.ERROR, "EVICTED", None),
        (native([{"type": "Failed", "status": "False"}]), [pod({"running": {}}, "Running")],
         Phase.EXECUTING, None, None),
        (native(), [pod({"waiting": {"reason": "ImagePullBackOff"}})], Phase.QUEUED,
         "IMAGE_PULL_BACK_OFF", None),
        (native(), [pod({"waiting": {"reason": "ErrImagePull"}}, created=NOW - timedelta(hours=1))],
         Phase.ERROR, "IMAGE_PULL", None),
        (native(), [pod(conditions=[{"type": "PodScheduled", "status": "False",
                                     "reason": "Unschedulable"}])], Phase.QUEUED,
         "UNSCHEDULABLE", None),
        (native(deletionTimestamp="2026-01-01T12:00:00Z"), [], Phase.ABORTED, "CANCELLED", None),
    ],
)  # fmt: skip
def test_job_status_maps_conditions(
    job: dict[str, Any],
    pods: list[dict[str, Any]],
    phase: Phase,
    detail: str | None,
    exit_code: int | None,
) -> None:
    said = job_status(job, pods, NOW, pull_grace=60)
    assert (said.phase, said.detail, said.exit_code) == (phase, detail, exit_code)


def test_image_pull_failure_stops_the_native_job() -> None:
    stuck = pod({"waiting": {"reason": "ImagePullBackOff"}}, created=NOW - timedelta(seconds=61))
    said = job_status(native(), [stuck], NOW, pull_grace=60)
    assert said.stop_native
    assert "ImagePullBackOff" in (said.message or "")


class FakeApi(KubeApi):
    """The API door with each call answered by a function: for error classification."""

    def __init__(self, create: Callable[[str, dict[str, Any]], dict[str, Any]]) -> None:
        self.create = create
        self.existing: dict[str, Any] = {}

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.create(namespace, body)

    def read_job(self, namespace: str, name: str) -> dict[str, Any]:
        return self.existing


def raising(error: Exception) -> Callable[[str, dict[str, Any]], dict[str, Any]]:
    def create(namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        raise error

    return create


@pytest.mark.parametrize(
    ("error", "outcome"),
    [
        (KubeRefused(422, "Invalid", "spec.template: bad"), SubmitOutcome.REFUSED),
        (KubeRefused(403, "Forbidden", "cannot create jobs"), SubmitOutcome.REFUSED),
        (KubeRefused(404, "NotFound", "namespace gone"), SubmitOutcome.REFUSED),
        (KubeRefused(403, "Forbidden", "exceeded quota: q"), SubmitOutcome.NOT_MADE),
        (KubeRefused(429, "TooManyRequests", ""), SubmitOutcome.NOT_MADE),
        (KubeRefused(500, "InternalError", ""), SubmitOutcome.UNKNOWN),
        (KubeRefused(504, "Timeout", ""), SubmitOutcome.UNKNOWN),
        (KubeUnreachable("refused", sent=False), SubmitOutcome.NOT_MADE),
        (KubeUnreachable("read timed out", sent=True), SubmitOutcome.UNKNOWN),
    ],
)
def test_submission_errors_say_what_may_have_happened(
    error: Exception, outcome: SubmitOutcome, tmp_path: Path
) -> None:
    backend = KubernetesBackend("k8s", OPTIONS, BackendContext(tmp_path))
    backend._api = FakeApi(raising(error))
    with pytest.raises(SubmissionError) as caught:
        backend.submit(make_job(JobSpec(executable="true")))
    assert caught.value.outcome is outcome


def test_an_existing_job_with_our_mark_is_adopted(tmp_path: Path) -> None:
    backend = KubernetesBackend("k8s", OPTIONS, BackendContext(tmp_path))
    api = FakeApi(raising(KubeRefused(409, "AlreadyExists", "exists")))
    backend._api = api
    api.existing = native()
    api.existing["metadata"]["labels"][JOB_ID_LABEL] = "abc123def456"
    assert backend.submit(make_job(JobSpec(executable="true"))) == "jobbridge-abc123def456"
    api.existing["metadata"]["labels"][JOB_ID_LABEL] = "someone-else"
    with pytest.raises(SubmissionError) as caught:
        backend.submit(make_job(JobSpec(executable="true")))
    assert caught.value.outcome is SubmitOutcome.REFUSED


def test_a_refused_connection_never_reached_the_server(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    options = OPTIONS.model_copy(update={"kubeconfig": str(kubeconfig), "request_timeout": 5})
    backend = KubernetesBackend("k8s", options, BackendContext(tmp_path))
    with pytest.raises(SubmissionError) as caught:
        backend.submit(make_job(JobSpec(executable="true")))
    assert caught.value.outcome is SubmitOutcome.NOT_MADE
    backend.close()


# -- on the real API server ----------------------------------------------------------------------

WAIT = 90.0


@pytest.fixture(scope="module")
def k8s() -> dict[str, str]:
    return cluster_env("k8s")


@pytest.fixture(scope="module")
def admin(k8s: dict[str, str]) -> Iterator[Any]:
    api_client = k8s_config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=k8s["JOBBRIDGE_TEST_K8S_KUBECONFIG"], persist_config=False
    )
    yield api_client
    api_client.close()


@pytest.fixture(scope="module")
def namespace(admin: Any) -> Iterator[str]:
    """A namespace of its own for this module, with its default service account ready."""
    core = k8s_client.CoreV1Api(admin)
    name = f"jbtest-{secrets.token_hex(4)}"
    core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=name)))
    deadline = time.monotonic() + WAIT
    while True:
        accounts = core.list_namespaced_service_account(name).items
        if any(
            account.metadata and account.metadata.name == "default" and account.secrets
            for account in accounts
        ):
            break
        assert time.monotonic() < deadline, "the default service account never came"
        time.sleep(0.2)
    yield name
    core.delete_namespace(name, propagation_policy="Background")


class CallCounter:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def __call__(self, name: str) -> None:
        self.calls[name] += 1


@pytest.fixture
def backend(k8s: dict[str, str], namespace: str, tmp_path: Path) -> Iterator[KubernetesBackend]:
    options = KubernetesOptions(
        kubeconfig=k8s["JOBBRIDGE_TEST_K8S_KUBECONFIG"],
        namespace=namespace,
        default_image="busybox:1.36",
        min_refresh_interval=0,
        image_pull_grace=3,
        pod_create_grace=3,
        termination_grace_period=1,
        request_timeout=10,
    )
    backend = KubernetesBackend("k8s", options, BackendContext(tmp_path / "jobs"))
    yield backend
    backend.close()


@pytest.fixture
def engine(backend: KubernetesBackend, tmp_path: Path) -> Iterator[Engine]:
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    engine = Engine(
        store,
        {"k8s": backend},
        settings=EngineSettings(refresh_interval=0.1, max_backoff=1.0, submit_in_background=False),
        default_backend="k8s",
    )
    yield engine
    engine.close()


def sh(script: str, **fields: Any) -> JobSpec:
    return JobSpec(executable="/bin/sh", arguments=["-c", script], **fields)


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def wait_phase(engine: Engine, job_id: str, phases: set[Phase]) -> Job:
    def reached() -> bool:
        engine.refresh(force=True)
        return engine.get(job_id).phase in phases

    wait_for(f"job {job_id} to reach {phases}", reached)
    return engine.get(job_id)


def native_jobs(admin: Any, namespace: str, job_id: str) -> list[Any]:
    batch = k8s_client.BatchV1Api(admin)
    return list(
        batch.list_namespaced_job(namespace, label_selector=f"{JOB_ID_LABEL}={job_id}").items
    )


def processes_with(marker: str) -> list[int]:
    """Processes on this machine whose command line holds ``marker`` (the stand-in node
    runs pods here)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_a_job_completes_with_its_output(engine: Engine) -> None:
    job = engine.submit(
        JobSpec(executable="printf", arguments=["%s\n", *HOSTILE_ARGUMENTS], name="awkward $(x)")
    )
    (done,) = engine.wait([job.id], timeout=WAIT)
    assert done.phase is Phase.COMPLETED, done
    assert done.exit_code == 0
    assert done.native_id == f"jobbridge-{job.id}"
    assert done.started is not None and done.ended is not None
    output = engine.read_output(job.id, "stdout")
    assert output.decode() == "".join(f"{arg}\n" for arg in HOSTILE_ARGUMENTS)
    assert engine.read_output(job.id, "stdout", offset=-3) == output[-3:]
    assert engine.read_output(job.id, "stdout", offset=2, size=4) == output[2:6]


def test_environment_and_merged_streams(engine: Engine, namespace: str) -> None:
    job = engine.submit(
        sh(
            'printf "%s|%s|%s\\n" "$TRICKY" "$JOBBRIDGE_JOB_ID" "$JOBBRIDGE_NODELIST";'
            " echo to-stderr >&2",
            environment={"TRICKY": HOSTILE_VALUE},
        )
    )
    (done,) = engine.wait([job.id], timeout=WAIT)
    assert done.phase is Phase.COMPLETED, done
    output = engine.read_output(job.id, "stdout").decode()
    node = cluster_env("k8s")["JOBBRIDGE_TEST_K8S_NODE"]
    assert f"{HOSTILE_VALUE}|{job.id}|{node}\n" in output
    assert "to-stderr\n" in output  # Kubernetes merges stderr into the log
    assert engine.read_output(job.id, "stderr") == b""


def test_a_failing_job_ends_error_with_its_exit_code(engine: Engine) -> None:
    job = engine.submit(sh("echo failing; exit 3"))
    (done,) = engine.wait([job.id], timeout=WAIT)
    assert done.phase is Phase.ERROR
    assert done.exit_code == 3
    assert done.detail == "FAILED"
    assert b"failing" in engine.read_output(job.id, "stdout")


def test_a_job_past_its_deadline_times_out(engine: Engine, namespace: str) -> None:
    marker = f"deadline-{secrets.token_hex(4)}"
    job = engine.submit(sh(f"sleep 120 # {marker}", resources=Resources(walltime=3)))
    wait_phase(engine, job.id, {Phase.EXECUTING})
    (done,) = engine.wait([job.id], timeout=WAIT)
    assert done.phase is Phase.ERROR
    assert done.detail == "TIMEOUT"
    wait_for("the timed-out process to be stopped", lambda: not processes_with(marker))


def test_cancel_while_pending(engine: Engine, admin: Any, namespace: str) -> None:
    # more cores than the node has: the scheduler keeps the pod pending
    job = engine.submit(sh("true", resources=Resources(cores_per_process=1000)))
    core = k8s_client.CoreV1Api(admin)

    def unschedulable() -> bool:
        engine.refresh(force=True)
        pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_ID_LABEL}={job.id}")
        return any(
            condition.reason == "Unschedulable"
            for item in pods.items
            for condition in (item.status and item.status.conditions) or []
        )

    wait_for("the scheduler to find no room", unschedulable)
    assert engine.get(job.id).phase is Phase.QUEUED
    cancelled = engine.cancel(job.id)
    assert cancelled.phase is Phase.ABORTED
    wait_for("the Job to be deleted", lambda: not native_jobs(admin, namespace, job.id))


def test_cancel_while_running_stops_the_process(engine: Engine, admin: Any, namespace: str) -> None:
    marker = f"cancel-{secrets.token_hex(4)}"
    job = engine.submit(sh(f"echo started; sleep 300 # {marker}"))
    running = wait_phase(engine, job.id, {Phase.EXECUTING})
    assert running.started is not None
    wait_for("the process to start", lambda: bool(processes_with(marker)))
    assert engine.cancel(job.id).phase is Phase.ABORTED
    wait_for("the process to be stopped", lambda: not processes_with(marker))
    wait_for("the Job to be deleted", lambda: not native_jobs(admin, namespace, job.id))
    engine.refresh(force=True)
    assert engine.get(job.id).phase is Phase.ABORTED


def test_an_image_that_cannot_be_pulled_ends_error(
    engine: Engine, admin: Any, namespace: str
) -> None:
    job = engine.submit(JobSpec(executable="true", image="unpullable/nothing:1"))
    done = wait_phase(engine, job.id, {Phase.ERROR, Phase.COMPLETED})
    assert done.phase is Phase.ERROR
    assert done.detail == "IMAGE_PULL"
    assert "ImagePullBackOff" in (done.message or "") or "ErrImagePull" in (done.message or "")
    # jobbridge gave up on it: its Job must not wait for ever
    wait_for("the Job to be deleted", lambda: not native_jobs(admin, namespace, job.id))


def test_a_job_deleted_behind_our_back_is_missing_not_ended(
    engine: Engine, backend: KubernetesBackend, admin: Any, namespace: str
) -> None:
    job = engine.submit(sh("sleep 300"))
    wait_phase(engine, job.id, {Phase.QUEUED, Phase.EXECUTING})
    k8s_client.BatchV1Api(admin).delete_namespaced_job(
        f"jobbridge-{job.id}", namespace, propagation_policy="Foreground", grace_period_seconds=0
    )
    wait_for("the Job to go", lambda: not native_jobs(admin, namespace, job.id))
    said = backend.status([engine.get(job.id)])[job.id]
    assert isinstance(said, Missing)
    engine.refresh(force=True)
    assert not engine.get(job.id).phase.is_final


def test_an_array_runs_one_job_per_member(engine: Engine) -> None:
    members = engine.submit_array(sh('echo "member $JOBBRIDGE_ARRAY_INDEX"', array="0-2"))
    done = engine.wait([member.id for member in members], timeout=WAIT)
    assert [job.phase for job in done] == [Phase.COMPLETED] * 3
    outputs = sorted(engine.read_output(job.id).decode() for job in done)
    assert outputs == ["member 0\n", "member 1\n", "member 2\n"]


def audit_lists(audit_log: Path, namespace: str) -> Counter[str]:
    """List calls on jobs and pods in ``namespace`` that the API server recorded."""
    seen: Counter[str] = Counter()
    if not audit_log.exists():
        return seen
    for line in audit_log.read_text().splitlines():
        event = json.loads(line)
        ref = event.get("objectRef") or {}
        if (
            event.get("verb") == "list"
            and ref.get("namespace") == namespace
            and event.get("stage") == "ResponseComplete"
        ):
            seen[ref.get("resource", "")] += 1
    return seen


def test_a_hundred_active_jobs_take_one_jobs_list_and_one_pods_list(
    engine: Engine, backend: KubernetesBackend, admin: Any, namespace: str, k8s: dict[str, str]
) -> None:
    jobs = [engine.submit(sh("sleep 300", name=f"many-{index}")) for index in range(100)]

    def all_handed_over() -> bool:
        engine.refresh(force=True)
        return all(job.native_id for job in engine.store.get_many([job.id for job in jobs]))

    wait_for("100 submissions", all_handed_over)
    core = k8s_client.CoreV1Api(admin)
    ids = {job.id for job in jobs}

    def all_have_pods() -> bool:
        pods = core.list_namespaced_pod(namespace, label_selector=JOB_ID_LABEL).items
        return ids <= {(item.metadata.labels or {}).get(JOB_ID_LABEL) for item in pods}

    wait_for("a pod for each job", all_have_pods)
    counter = CallCounter()
    backend.api.on_call = counter
    audit_log = Path(k8s["JOBBRIDGE_TEST_K8S_AUDIT_LOG"])
    before = audit_lists(audit_log, namespace)
    engine.refresh(force=True, hand_over=False)
    backend.api.on_call = None
    assert counter.calls == Counter({"list_jobs": 1, "list_pods": 1})
    after = audit_lists(audit_log, namespace)
    assert after["jobs"] - before["jobs"] == 1
    assert after["pods"] - before["pods"] == 1
    current = engine.store.get_many([job.id for job in jobs])
    assert all(job.phase in (Phase.QUEUED, Phase.EXECUTING) for job in current)
    assert any(job.phase is Phase.EXECUTING for job in current)
    for job in jobs:
        engine.cancel(job.id)


def cluster_script(k8s: dict[str, str], *args: str) -> None:
    subprocess.run([k8s["JOBBRIDGE_TEST_K8S_SCRIPT"], *args], check=True, timeout=120)


def test_api_server_down_jobs_turn_unknown_then_recover(
    engine: Engine, k8s: dict[str, str]
) -> None:
    if os.geteuid() != 0:
        pytest.skip("stopping the API server needs root")
    running = engine.submit(sh("sleep 4; echo done"))
    wait_phase(engine, running.id, {Phase.EXECUTING})
    cluster_script(k8s, "stop", "apiserver")
    try:
        for _ in range(EngineSettings().status_failure_threshold + 1):
            engine.refresh(force=True)
        during = engine.get(running.id)
        assert during.phase is Phase.UNKNOWN
        # a submission while the server is down is not made, and is made later
        later = engine.submit(sh("echo later"))
        engine.refresh(force=True)
        assert engine.get(later.id).native_id is None
        assert not engine.get(later.id).phase.is_final
        time.sleep(4)  # the first job ends while nobody can hear of it
        engine.refresh(force=True)
        assert engine.get(running.id).phase is Phase.UNKNOWN
    finally:
        cluster_script(k8s, "start", "apiserver")
    done = engine.wait([running.id, later.id], timeout=WAIT)
    assert [job.phase for job in done] == [Phase.COMPLETED, Phase.COMPLETED]
    assert engine.read_output(running.id) == b"done\n"


def test_a_lost_answer_is_found_by_label(
    engine: Engine,
    backend: KubernetesBackend,
    admin: Any,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    real_create = backend.api.create_job
    creates: list[str] = []

    def create_then_lose_the_answer(ns: str, body: dict[str, Any]) -> dict[str, Any]:
        creates.append(body["metadata"]["name"])
        real_create(ns, body)
        raise KubeUnreachable("ReadTimeoutError: read timed out", sent=True)

    monkeypatch.setattr(backend.api, "create_job", create_then_lose_the_answer)
    job = engine.submit(sh("echo once"))
    (done,) = engine.wait([job.id], timeout=WAIT)
    assert "unknown outcome" in caplog.text
    assert done.phase is Phase.COMPLETED, done
    assert done.native_id == f"jobbridge-{job.id}"
    assert creates == [f"jobbridge-{job.id}"]  # found again, never created twice
    assert len(native_jobs(admin, namespace, job.id)) == 1
    assert engine.read_output(job.id) == b"once\n"


def test_free_deletes_the_finished_job(engine: Engine, admin: Any, namespace: str) -> None:
    job = engine.submit(sh("true"))
    engine.wait([job.id], timeout=WAIT)
    assert native_jobs(admin, namespace, job.id)
    engine.delete(job.id)
    wait_for("the Job to be deleted", lambda: not native_jobs(admin, namespace, job.id))


def test_locate_finds_jobs_by_label(
    engine: Engine, backend: KubernetesBackend, namespace: str
) -> None:
    job = engine.submit(sh("true"))
    engine.wait([job.id], timeout=WAIT)
    stranger = make_job(JobSpec(executable="true"), job_id="nosuchjob000")
    located = backend.locate([engine.get(job.id), stranger])
    assert located.complete
    assert located.found == {job.id: [f"jobbridge-{job.id}"]}


def test_a_job_that_cannot_make_its_pod_ends_error(
    engine: Engine, admin: Any, namespace: str
) -> None:
    # the Job is accepted, but admission refuses its pods (no such priority class)
    spec = sh("true", attributes={"kubernetes.priority_class_name": "no-such-class"})
    job = engine.submit(spec)
    done = wait_phase(engine, job.id, {Phase.ERROR, Phase.COMPLETED, Phase.ABORTED})
    assert done.phase is Phase.ERROR, done
    assert done.detail == "POD_CREATE_FAILED"
    assert "no-such-class" in (done.message or "")
    # jobbridge gave up on it: its Job must not try for ever
    wait_for("the Job to be deleted", lambda: not native_jobs(admin, namespace, job.id))
