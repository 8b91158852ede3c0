"""The Kubernetes backend's Secrets and workspaces: the manifest everywhere, and through the
engine on the real API server (with the stand-in node agent reading Secrets as a kubelet
does, and mapping mount paths to local directories)."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s_client

from jobbridge import Engine, JobSpec, Phase, Store
from jobbridge.backends.base import BackendContext
from jobbridge.backends.kubernetes import KubernetesBackend, KubernetesOptions, job_manifest
from jobbridge.backends.kubernetes_api import KubeApi, KubeRefused
from jobbridge.backends.kubernetes_manifest import WorkspaceVolume, secret_manifest
from jobbridge.config import EngineSettings, SecretsSettings
from jobbridge.errors import ResourcesNotSupportedError, SubmissionError, SubmitOutcome
from jobbridge.secrets import SecretKind, new_key
from tests import test_kubernetes as on_kubernetes
from tests.test_kubernetes import OPTIONS, WAIT, make_job, native_jobs, sh, wait_for
from tests.test_secrets import KEYTAB, NEEDLES, TOKEN, sha, stored_rows

# the real cluster's fixtures, shared with the backend's other tests
k8s = on_kubernetes.k8s
admin = on_kubernetes.admin
namespace = on_kubernetes.namespace

VALUES = {"TOKEN": (SecretKind.ENV, TOKEN.encode()), "KEYTAB": (SecretKind.FILE, KEYTAB)}
KINDS = {name: kind for name, (kind, _) in VALUES.items()}
ALL_NEEDLES = [*NEEDLES, *(base64.b64encode(value) for _, value in VALUES.values())]


def assert_nowhere(blobs: dict[str, bytes]) -> None:
    for where, blob in blobs.items():
        for needle in ALL_NEEDLES:
            assert needle not in blob, f"a secret's value is in {where}"


# -- the manifest --------------------------------------------------------------------------------


def test_secrets_are_referenced_by_the_job_and_held_by_the_secret() -> None:
    job = make_job(JobSpec(executable="true", secrets=["TOKEN", "KEYTAB"]))
    manifest = job_manifest(job, OPTIONS, "here", KINDS)
    assert_nowhere({"the Job": json.dumps(manifest).encode()})
    pod = manifest["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {item["name"]: item for item in container["env"]}
    assert env["TOKEN"] == {
        "name": "TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "jobbridge-abc123def456", "key": "TOKEN"}},
    }
    assert env["JOBBRIDGE_SECRETS"]["value"] == "/var/run/secrets/jobbridge"
    assert container["volumeMounts"] == [
        {"name": "jobbridge-secrets", "mountPath": "/var/run/secrets/jobbridge", "readOnly": True}
    ]
    (volume,) = pod["volumes"]
    assert volume["secret"]["secretName"] == "jobbridge-abc123def456"
    assert volume["secret"]["items"] == [{"key": "KEYTAB", "path": "KEYTAB", "mode": 0o400}]
    secret = secret_manifest(job, VALUES)
    assert secret["metadata"]["labels"]["jobbridge.io/job-id"] == "abc123def456"
    assert base64.b64decode(secret["data"]["TOKEN"]) == TOKEN.encode()
    assert base64.b64decode(secret["data"]["KEYTAB"]) == KEYTAB


@pytest.mark.parametrize(
    ("options", "source", "sub_path"),
    [
        ({"workspace_volume": "host_path"}, {"hostPath": {"path": "/data/wf 1",
                                                          "type": "DirectoryOrCreate"}}, None),
        ({"workspace_volume": "claim", "workspace_claim": "shared"},
         {"persistentVolumeClaim": {"claimName": "shared"}}, "data/wf 1"),
    ],
)  # fmt: skip
def test_a_workspace_is_mounted_as_configured(
    options: dict[str, Any], source: dict[str, Any], sub_path: str | None
) -> None:
    job = make_job(JobSpec(executable="true", workflow="wf", workspace="/data/wf 1"))
    configured = KubernetesOptions.model_validate({**OPTIONS.model_dump(), **options})
    manifest = job_manifest(job, configured, "here")
    pod = manifest["spec"]["template"]["spec"]
    assert pod["volumes"] == [{"name": "jobbridge-workspace", **source}]
    (mount,) = pod["containers"][0]["volumeMounts"]
    assert mount["mountPath"] == "/data/wf 1"
    assert mount.get("subPath") == sub_path


def test_a_workspace_without_a_volume_is_refused(tmp_path: Path) -> None:
    backend = KubernetesBackend("k8s", OPTIONS, BackendContext(tmp_path))
    with pytest.raises(ResourcesNotSupportedError) as caught:
        backend.check(JobSpec(executable="true", workflow="wf", workspace="/data/wf"))
    assert caught.value.field == "workspace"
    with pytest.raises(ValueError, match="workspace_claim"):
        KubernetesOptions(workspace_volume=WorkspaceVolume.CLAIM)


class SecretsApi(KubeApi):
    """The API door with an existing Secret of the job's name, labelled ``owner``."""

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.calls: list[str] = []

    def create_secret(self, namespace: str, body: dict[str, Any]) -> None:
        self.calls.append("create_secret")
        raise KubeRefused(409, "AlreadyExists", "exists")

    def read_secret_labels(self, namespace: str, name: str) -> dict[str, str]:
        return {"jobbridge.io/job-id": self.owner}

    def replace_secret(self, namespace: str, name: str, body: dict[str, Any]) -> None:
        self.calls.append("replace_secret")

    def create_job(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        self.calls.append("create_job")
        raise KubeRefused(422, "Invalid", "bad")

    def delete_secret(self, namespace: str, name: str) -> None:
        self.calls.append("delete_secret")


def test_a_secret_of_another_job_is_never_replaced(tmp_path: Path) -> None:
    backend = KubernetesBackend("k8s", OPTIONS, BackendContext(tmp_path))
    job = make_job(JobSpec(executable="true", secrets=["TOKEN"]))
    backend._api = api = SecretsApi(owner="someone-else")
    with pytest.raises(SubmissionError) as caught:
        backend.submit_with_secrets(job, VALUES)
    assert caught.value.outcome is SubmitOutcome.REFUSED
    assert api.calls == ["create_secret"]  # neither replaced nor deleted, and no Job
    # this job's own, left by an earlier attempt: replaced; the refused Job takes it away
    backend._api = api = SecretsApi(owner=job.id)
    with pytest.raises(SubmissionError) as caught:
        backend.submit_with_secrets(job, VALUES)
    assert caught.value.outcome is SubmitOutcome.REFUSED
    assert api.calls == ["create_secret", "replace_secret", "create_job", "delete_secret"]
    assert_nowhere({"the error": str(caught.value).encode()})


# -- on the real API server ----------------------------------------------------------------------


@pytest.fixture
def backend(k8s: dict[str, str], namespace: str, tmp_path: Path) -> Iterator[KubernetesBackend]:
    options = KubernetesOptions(
        kubeconfig=k8s["JOBBRIDGE_TEST_K8S_KUBECONFIG"],
        namespace=namespace,
        default_image="busybox:1.36",
        min_refresh_interval=0,
        termination_grace_period=1,
        request_timeout=10,
        workspace_volume=WorkspaceVolume.HOST_PATH,
    )
    backend = KubernetesBackend("k8s", options, BackendContext(tmp_path / "jobs"))
    yield backend
    backend.close()


@pytest.fixture
def engine(backend: KubernetesBackend, tmp_path: Path) -> Iterator[Engine]:
    engine = Engine(
        Store(f"sqlite:///{tmp_path / 'store.db'}"),
        {"k8s": backend},
        settings=EngineSettings(refresh_interval=0.1, max_backoff=1.0, submit_in_background=False),
        default_backend="k8s",
        secrets=SecretsSettings(key=new_key()),
    )
    engine.secrets.add("alice", "TOKEN", SecretKind.ENV, TOKEN.encode())
    engine.secrets.add("alice", "KEYTAB", SecretKind.FILE, KEYTAB)
    yield engine
    engine.close()


def the_secret(admin: Any, namespace: str, job_id: str) -> Any | None:
    core = k8s_client.CoreV1Api(admin)
    found = core.list_namespaced_secret(namespace, label_selector=f"jobbridge.io/job-id={job_id}")
    return found.items[0] if found.items else None


REPORT = (
    'printf %s "$TOKEN" | sha256sum; sha256sum < "$JOBBRIDGE_SECRETS/KEYTAB";'
    ' stat -c %a "$JOBBRIDGE_SECRETS/KEYTAB"; echo done; sleep "$PAUSE"'
)


def test_a_job_reads_its_secrets_which_appear_nowhere_else(
    engine: Engine,
    admin: Any,
    namespace: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    spec = sh(REPORT, environment={"PAUSE": "30"}, secrets=["TOKEN", "KEYTAB"])
    job = engine.submit(spec, owner="alice")
    wait_for("the job's report", lambda: b"done" in engine.read_output(job.id))
    lines = engine.read_output(job.id).decode().split("\n")
    assert lines[0].split()[0] == sha(TOKEN.encode())  # the program got the values
    assert lines[1].split()[0] == sha(KEYTAB)
    assert lines[2] == "400"
    # the Secret holds them, owned by the Job so that it goes with it
    secret = the_secret(admin, namespace, job.id)
    assert secret is not None
    assert base64.b64decode(secret.data["KEYTAB"]) == KEYTAB
    (native,) = native_jobs(admin, namespace, job.id)
    (owner,) = secret.metadata.owner_references
    assert (owner.kind, owner.name, owner.uid) == ("Job", native.metadata.name, native.metadata.uid)
    # the Job read back from the API server, its pods, events, rows and logs hold none
    core = k8s_client.CoreV1Api(admin)
    pods = core.list_namespaced_pod(namespace, label_selector=f"jobbridge.io/job-id={job.id}")
    events = core.list_namespaced_event(namespace)
    assert_nowhere(
        {
            "the Job": json.dumps(admin.sanitize_for_serialization(native)).encode(),
            "the pods": json.dumps(admin.sanitize_for_serialization(pods)).encode(),
            "the cluster's events": json.dumps(admin.sanitize_for_serialization(events)).encode(),
            **stored_rows(engine),
            "jobbridge's events": repr(engine.store.events(job.id)).encode(),
            "the job": engine.get(job.id).model_dump_json().encode(),
            "the logs": caplog.text.encode(),
        }
    )
    engine.cancel(job.id)
    wait_for("the Secret to go", lambda: the_secret(admin, namespace, job.id) is None)
    wait_for("the Job to go", lambda: not native_jobs(admin, namespace, job.id))


def test_a_freed_job_takes_its_secret_along(
    engine: Engine,
    admin: Any,
    namespace: str,
) -> None:
    spec = sh('test -n "$TOKEN"', secrets=["TOKEN"])
    job = engine.submit(spec, owner="alice")
    assert the_secret(admin, namespace, job.id) is not None  # made before the Job
    (done,) = engine.wait([job.id], timeout=WAIT)
    assert done.phase is Phase.COMPLETED, done
    engine.delete(job.id)
    wait_for("the Job to go", lambda: not native_jobs(admin, namespace, job.id))
    assert the_secret(admin, namespace, job.id) is None


def test_a_refused_job_leaves_no_secret(
    engine: Engine,
    admin: Any,
    namespace: str,
) -> None:
    # the API server refuses the Job (a label value too long), after its Secret was made
    spec = sh("true", secrets=["TOKEN"], attributes={"kubernetes.service_account": "-bad-"})
    job = engine.submit(spec, owner="alice")
    (done,) = engine.wait([job.id], timeout=WAIT)
    assert done.phase is Phase.ERROR, done
    assert not native_jobs(admin, namespace, job.id)
    assert the_secret(admin, namespace, job.id) is None


def test_two_jobs_of_a_workflow_share_its_workspace(engine: Engine, tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    first = engine.submit(
        sh('echo "from the first" > "$JOBBRIDGE_WORKSPACE/shared.txt"', workflow="wf",
           workspace=str(workspace)),
    )  # fmt: skip
    (done,) = engine.wait([first.id], timeout=WAIT)
    assert done.phase is Phase.COMPLETED, done
    second = engine.submit(sh('cat "$JOBBRIDGE_WORKSPACE/shared.txt"', workflow="wf"))
    assert second.spec.workspace == str(workspace)  # the workflow's
    (done,) = engine.wait([second.id], timeout=WAIT)
    assert done.phase is Phase.COMPLETED, done
    assert engine.read_output(second.id) == b"from the first\n"
    assert (workspace / "shared.txt").read_text() == "from the first\n"
