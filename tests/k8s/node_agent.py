"""A stand-in Kubernetes node for the integration tests: Python's standard library only.

No container runtime and no image registry exist on the test machines, so no kubelet can
run there. This agent plays the kubelet's part against the real API server, as the node
``--node-name``:

* it registers a Ready node (its capacity from the command line), removes the
  ``node.kubernetes.io/not-ready`` taint that admission puts on new nodes, and renews its
  Ready condition every few seconds;
* it runs each pod the scheduler binds to the node as a local process: the first
  container's ``command`` + ``args`` with its environment (values and the ``metadata.name``,
  ``metadata.namespace``, ``spec.nodeName`` field references) in its ``workingDir``. The
  image is ignored, except that an image whose repository starts with ``unpullable/``
  is reported as ``ErrImagePull`` and then ``ImagePullBackOff``, as a kubelet would for an
  image it cannot fetch;
* volumes: a ``hostPath`` volume is the local directory of its path (made for
  ``DirectoryOrCreate``); a ``secret`` volume is a private directory (0700) of the agent's
  into which the Secret's keys are written with their modes, read from the API as a kubelet
  reads them (the node authorizer lets a node read only its pods' Secrets), and removed when
  the process ends; a ``persistentVolumeClaim`` is a directory of the agent's per claim. No
  process can mount anything here, so a mount path is mapped instead: the working directory,
  environment values and arguments that start with a mount path are rewritten to the local
  directory. Environment variables from ``secretKeyRef`` are read from the Secret too;
* it reports the pod Running, then Succeeded or Failed with the process's exit code in the
  container status (128 + signal for a killed process). Only ``restartPolicy: Never`` is
  honoured: a failed container is never restarted. Resource limits are not enforced;
* stdout and stderr go, merged as the container runtime merges them, to one log file that
  the agent serves on the kubelet's ``/containerLogs/{namespace}/{pod}/{container}``
  endpoint over TLS (client certificates signed by ``--client-ca`` only), so that the API
  server's ``pods/{name}/log`` works as on a real cluster;
* when a pod is being deleted it stops the process (TERM, then KILL after the pod's grace
  period, at most a few seconds) and removes the pod for good, as the kubelet does.

Status updates that fail (the API server down, say) are kept and sent again until they
land; processes keep running meanwhile. On SIGTERM the agent stops every process it runs.
A pod found Running on the node that this agent does not run (the agent restarted) is
reported Failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from node_logs import serve_logs  # beside this script
from node_object import node_status
from node_volumes import Volumes, mapped

log = logging.getLogger("node-agent")

UNPULLABLE_PREFIX = "unpullable/"
NOT_READY_TAINTS = {"node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"}
POLL_INTERVAL = 0.25
HEARTBEAT_INTERVAL = 10.0
PULL_BACKOFF_AFTER = 1.0
MAX_KILL_GRACE = 3.0


def now_text() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class Api:
    """The few calls a node makes, as JSON over HTTPS with a bearer token."""

    def __init__(self, server: str, token: str, ca_file: str) -> None:
        self.server = server.rstrip("/")
        self.token = token
        self.context = ssl.create_default_context(cafile=ca_file)

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: dict[str, str] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        url = self.server + path
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as answer:
                text = answer.read()
        except urllib.error.HTTPError as error:
            raise ApiError(error.code, error.read().decode(errors="replace")) from None
        return json.loads(text) if text else None

    def merge_patch(self, path: str, body: Any) -> Any:
        return self.call("PATCH", path, body, content_type="application/merge-patch+json")


@dataclass
class Container:
    """One pod's process (or its pretended image-pull failure)."""

    namespace: str
    pod: str
    uid: str
    container: str
    image: str
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    started_at: str = ""
    finished_at: str = ""
    exit_code: int | None = None
    pull_failed_since: float | None = None
    start_error: str | None = None
    kill_deadline: float | None = None
    reported: str = ""
    """The last status body that reached the API server (JSON text)."""
    removed: bool = False
    private_dirs: list[Path] = field(default_factory=list)
    """Directories holding the pod's Secrets, removed when its process ends."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def container_id(self) -> str:
        pid = self.process.pid if self.process else 0
        return f"standin://{self.uid}/{pid}"


class NodeAgent:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.api = Api(args.server, Path(args.token_file).read_text().strip(), args.ca)
        self.node = args.node_name
        self.work_dir = Path(args.work_dir)
        self.volumes = Volumes(self.api, self.work_dir)
        self.containers: dict[str, Container] = {}  # by pod uid
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.last_heartbeat = 0.0
        self.registered = False
        self.orphans_checked = False
        self.ready_since = now_text()

    # -- the node ------------------------------------------------------------------------

    def node_status(self) -> dict[str, Any]:
        return node_status(self.args, self.node, self.ready_since, now_text())

    def register(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.node,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "jobbridge.io/stand-in": "true",
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.node, "labels": labels},
            "spec": {},
            "status": self.node_status(),
        }
        try:
            self.api.call("POST", "/api/v1/nodes", body)
            log.info("registered node %s", self.node)
        except ApiError as error:
            if error.status != 409:
                raise
        self.heartbeat()
        node = self.api.call("GET", f"/api/v1/nodes/{self.node}")
        taints = node.get("spec", {}).get("taints") or []
        kept = [taint for taint in taints if taint.get("key") not in NOT_READY_TAINTS]
        if len(kept) != len(taints) or node["spec"].get("unschedulable"):
            self.api.merge_patch(
                f"/api/v1/nodes/{self.node}",
                {"spec": {"taints": kept or None, "unschedulable": None}},
            )
            log.info("removed the not-ready taint of %s", self.node)
        self.registered = True

    def heartbeat(self) -> None:
        self.api.merge_patch(f"/api/v1/nodes/{self.node}/status", {"status": self.node_status()})
        self.last_heartbeat = time.monotonic()

    # -- pods ----------------------------------------------------------------------------

    def list_pods(self) -> list[dict[str, Any]]:
        answer = self.api.call(
            "GET", "/api/v1/pods", query={"fieldSelector": f"spec.nodeName={self.node}"}
        )
        return list(answer.get("items") or [])

    def sync(self) -> None:
        pods = self.list_pods()
        seen = set()
        for pod in pods:
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            try:
                self.sync_pod(pod)
            except ApiError as error:
                log.warning("pod %s: %s", pod["metadata"]["name"], error)
        with self.lock:
            gone = [c for uid, c in self.containers.items() if uid not in seen]
        for container in gone:
            self.stop(container, grace=0)
            self.volumes.release(container.private_dirs)
            with self.lock:
                self.containers.pop(container.uid, None)
        self.orphans_checked = True

    def sync_pod(self, pod: dict[str, Any]) -> None:
        meta, status = pod["metadata"], pod.get("status", {})
        uid = meta["uid"]
        with self.lock:
            container = self.containers.get(uid)
        if meta.get("deletionTimestamp"):
            self.finish_deletion(pod, container)
            return
        if container is None:
            if status.get("phase") in ("Succeeded", "Failed"):
                return
            if status.get("phase") == "Running" and self.orphans_checked is False:
                self.report_orphan(pod)
                return
            if status.get("phase") == "Running":
                return
            container = self.start(pod)
            with self.lock:
                self.containers[uid] = container
        self.report(pod, container)

    def start(self, pod: dict[str, Any]) -> Container:
        meta, spec = pod["metadata"], pod["spec"]
        first = spec["containers"][0]
        log_dir = self.work_dir / "logs" / meta["namespace"] / meta["name"]
        log_dir.mkdir(parents=True, exist_ok=True)
        container = Container(
            namespace=meta["namespace"],
            pod=meta["name"],
            uid=meta["uid"],
            container=first["name"],
            image=first.get("image", ""),
            log_path=log_dir / f"{first['name']}.log",
        )
        repository = container.image.split("@", 1)[0]
        if repository.startswith(UNPULLABLE_PREFIX):
            container.pull_failed_since = time.monotonic()
            log.info(
                "pod %s/%s: pretending %s cannot be pulled", *self.where(container), repository
            )
            return container
        argv = [*(first.get("command") or []), *(first.get("args") or [])]
        if not argv:
            container.start_error = "the stand-in node cannot run an image's own entrypoint"
            return container
        try:
            mounts = self.volumes.mount(pod, first, container.private_dirs)
            environment = self.environment(pod, first)
        except (ApiError, OSError, KeyError, ValueError) as error:
            # what a kubelet says of a Secret it cannot read: CreateContainerConfigError
            self.volumes.release(container.private_dirs)
            container.start_error = f"cannot prepare the pod's volumes or variables: {error}"
            return container
        argv = [mapped(word, mounts) for word in argv]
        workdir = Path(
            mapped(first.get("workingDir") or "", mounts) or self.work_dir / "pods" / meta["uid"]
        )
        workdir.mkdir(parents=True, exist_ok=True)
        env = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": "/root",
            "HOSTNAME": meta["name"],
            **{name: mapped(value, mounts) for name, value in environment.items()},
        }
        with container.log_path.open("wb") as output:
            try:
                container.process = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    cwd=workdir,
                    env=env,
                    start_new_session=True,
                )
            except OSError as error:
                container.start_error = f"cannot start {argv[0]!r}: {error}"
                return container
        container.started_at = now_text()
        log.info("pod %s/%s: started pid %d", *self.where(container), container.process.pid)
        return container

    def environment(self, pod: dict[str, Any], spec: dict[str, Any]) -> dict[str, str]:
        fields = {
            "metadata.name": pod["metadata"]["name"],
            "metadata.namespace": pod["metadata"]["namespace"],
            "metadata.uid": pod["metadata"]["uid"],
            "spec.nodeName": self.node,
            "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
            "status.hostIP": self.args.address,
            "status.podIP": self.args.address,
        }
        env: dict[str, str] = {}
        for item in spec.get("env") or []:
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            secret_ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if secret_ref:
                data = self.volumes.secret(pod["metadata"]["namespace"], secret_ref["name"])
                env[item["name"]] = data[secret_ref["key"]].decode()
                continue
            ref = (item.get("valueFrom") or {}).get("fieldRef") or {}
            path = ref.get("fieldPath", "")
            if path in fields:
                env[item["name"]] = fields[path]
            elif path.startswith(("metadata.labels['", "metadata.annotations['")):
                kind, _, key = path.partition("['")
                values = pod["metadata"].get(kind.split(".")[1]) or {}
                env[item["name"]] = values.get(key.rstrip("']"), "")
        return env

    def where(self, container: Container) -> tuple[str, str]:
        return container.namespace, container.pod

    def container_status(self, container: Container) -> tuple[str, dict[str, Any]]:
        """The pod phase and the container's status as a kubelet would report them."""
        base: dict[str, Any] = {
            "name": container.container,
            "image": container.image,
            "imageID": "",
            "restartCount": 0,
            "ready": False,
            "started": False,
        }
        if container.pull_failed_since is not None:
            waited = time.monotonic() - container.pull_failed_since
            reason = "ImagePullBackOff" if waited > PULL_BACKOFF_AFTER else "ErrImagePull"
            message = f'Back-off pulling image "{container.image}"'
            if reason == "ErrImagePull":
                message = f'rpc error: pull access denied for "{container.image}"'
            return "Pending", {**base, "state": {"waiting": {"reason": reason, "message": message}}}
        if container.start_error is not None:
            waiting = {"reason": "CreateContainerError", "message": container.start_error}
            return "Pending", {**base, "state": {"waiting": waiting}}
        process = container.process
        assert process is not None
        code = process.poll()
        if code is None:
            running = {"running": {"startedAt": container.started_at}}
            return "Running", {
                **base,
                "ready": True,
                "started": True,
                "containerID": container.container_id,
                "state": running,
            }
        if container.exit_code is None:
            container.exit_code = code if code >= 0 else 128 - code
            container.finished_at = now_text()
            self.volumes.release(container.private_dirs)
        exit_code = container.exit_code
        terminated = {
            "exitCode": exit_code,
            "reason": "Completed" if exit_code == 0 else "Error",
            "startedAt": container.started_at,
            "finishedAt": container.finished_at,
            "containerID": container.container_id,
        }
        if code < 0:
            terminated["signal"] = -code
        phase = "Succeeded" if exit_code == 0 else "Failed"
        return phase, {
            **base,
            "containerID": container.container_id,
            "state": {"terminated": terminated},
        }

    def report(self, pod: dict[str, Any], container: Container) -> None:
        phase, container_status = self.container_status(container)
        stamp = now_text()
        running = phase == "Running"
        conditions = [
            {"type": "Initialized", "status": "True", "lastTransitionTime": stamp},
            {"type": "Ready", "status": str(running), "lastTransitionTime": stamp},
            {"type": "ContainersReady", "status": str(running), "lastTransitionTime": stamp},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": stamp},
        ]
        status = {
            "phase": phase,
            "hostIP": self.args.address,
            "podIP": self.args.address,
            "podIPs": [{"ip": self.args.address}],
            "startTime": pod.get("status", {}).get("startTime") or stamp,
            "containerStatuses": [container_status],
        }
        # the same state is not sent twice (time stamps aside)
        key = json.dumps({"phase": phase, "state": container_status.get("state")}, sort_keys=True)
        if key == container.reported:
            return
        status["conditions"] = conditions
        path = f"/api/v1/namespaces/{container.namespace}/pods/{container.pod}/status"
        try:
            self.api.merge_patch(path, {"status": status})
        except ApiError as error:
            if error.status == 404:
                return
            raise
        container.reported = key
        log.info("pod %s/%s: %s", *self.where(container), phase)

    def report_orphan(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        spec = pod["spec"]["containers"][0]
        stamp = now_text()
        terminated = {
            "exitCode": 137,
            "reason": "Error",
            "message": "the stand-in node agent restarted and lost this process",
            "startedAt": stamp,
            "finishedAt": stamp,
        }
        status = {
            "phase": "Failed",
            "reason": "NodeAgentRestarted",
            "containerStatuses": [
                {
                    "name": spec["name"],
                    "image": spec.get("image", ""),
                    "imageID": "",
                    "restartCount": 0,
                    "ready": False,
                    "state": {"terminated": terminated},
                }
            ],
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status"
        self.api.merge_patch(path, {"status": status})

    def finish_deletion(self, pod: dict[str, Any], container: Container | None) -> None:
        meta = pod["metadata"]
        if container is not None and not self.stopped(container, pod):
            return
        try:
            self.api.call(
                "DELETE",
                f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                {
                    "kind": "DeleteOptions",
                    "apiVersion": "v1",
                    "gracePeriodSeconds": 0,
                    "preconditions": {"uid": meta["uid"]},
                },
            )
        except ApiError as error:
            if error.status not in (404, 409):
                raise
        with self.lock:
            self.containers.pop(meta["uid"], None)
        if container is not None:
            self.volumes.release(container.private_dirs)
        log.info("pod %s/%s: deleted", meta["namespace"], meta["name"])

    def stopped(self, container: Container, pod: dict[str, Any]) -> bool:
        """Stop the process gently, then for good; True once it is gone."""
        process = container.process
        if process is None or process.poll() is not None:
            return True
        if container.kill_deadline is None:
            grace = float(pod["metadata"].get("deletionGracePeriodSeconds") or 0)
            container.kill_deadline = time.monotonic() + min(grace, MAX_KILL_GRACE)
            self.signal(process, signal.SIGTERM)
        elif time.monotonic() >= container.kill_deadline:
            self.signal(process, signal.SIGKILL)
        return process.poll() is not None

    def stop(self, container: Container, grace: float) -> None:
        process = container.process
        if process is None or process.poll() is not None:
            return
        self.signal(process, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.signal(process, signal.SIGKILL)
            process.wait()

    @staticmethod
    def signal(process: subprocess.Popen[bytes], signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        failures = 0
        while not self.stopping.is_set():
            try:
                if not self.registered:
                    self.register()
                elif time.monotonic() - self.last_heartbeat > HEARTBEAT_INTERVAL:
                    self.heartbeat()
                self.sync()
                failures = 0
            except ApiError as error:
                failures += 1
                if error.status == 404 and "nodes" in str(error):
                    self.registered = False
                log.warning("API call failed (%d in a row): %s", failures, error)
            except (OSError, urllib.error.URLError) as error:
                failures += 1
                if failures == 1 or failures % 20 == 0:
                    log.warning("API server unreachable (%d in a row): %s", failures, error)
            pause = POLL_INTERVAL if failures == 0 else min(2.0, POLL_INTERVAL * 2**failures)
            self.stopping.wait(pause)
        with self.lock:
            containers = list(self.containers.values())
        for container in containers:
            self.stop(container, grace=MAX_KILL_GRACE)

    def log_file(self, namespace: str, pod: str, name: str) -> Path | None:
        with self.lock:
            for container in self.containers.values():
                if (container.namespace, container.pod, container.container) == (
                    namespace,
                    pod,
                    name,
                ):
                    return container.log_path
        path = self.work_dir / "logs" / namespace / pod / f"{name}.log"
        return path if path.exists() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--server", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument("--ca", required=True, help="the API server's certificate authority")
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=10250)
    parser.add_argument("--tls-cert", required=True)
    parser.add_argument("--tls-key", required=True)
    parser.add_argument("--client-ca", required=True)
    parser.add_argument("--cpus", default="16")
    parser.add_argument("--memory", default="32Gi")
    parser.add_argument("--work-dir", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    agent = NodeAgent(args)
    server = serve_logs(agent, args)
    signal.signal(signal.SIGTERM, lambda *_: agent.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: agent.stopping.set())
    try:
        agent.run()
    finally:
        server.shutdown()


if __name__ == "__main__":
    main()
