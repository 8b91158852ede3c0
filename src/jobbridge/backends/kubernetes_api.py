"""A typed, narrow door to the official ``kubernetes`` client: the calls the Kubernetes
backend makes, objects as plain JSON dictionaries, and every failure converted to one of
two errors at the boundary.

    KubeError
    ├── KubeRefused     the API server answered with an error status (``status``, ``reason``)
    └── KubeUnreachable no answer; ``sent`` tells whether the request may have reached it

Objects are read as the server sends them (``_preload_content=False``) rather than as the
client's models: one JSON parse for a list of hundreds of objects, and no field the server
sends is lost to a client built for another Kubernetes version.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import urllib3.exceptions
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

__all__ = [
    "JsonObject",
    "KubeApi",
    "KubeError",
    "KubeRefused",
    "KubeUnreachable",
    "connect",
]

JsonObject = dict[str, Any]
Propagation = Literal["Background", "Foreground"]


class KubeError(Exception):
    pass


class KubeRefused(KubeError):
    """The API server answered with an error status."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}" if message else f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.message = message


class KubeUnreachable(KubeError):
    """No answer came back. ``sent`` is False only when the request certainly never reached
    the API server (the connection was refused, the name did not resolve, TLS failed)."""

    def __init__(self, message: str, *, sent: bool) -> None:
        super().__init__(message)
        self.sent = sent


class _Response(Protocol):
    data: bytes


def connect(
    *,
    kubeconfig: str | None,
    context: str | None,
    in_cluster: bool | None,
) -> Any:
    """A configured ``kubernetes.client.ApiClient``. ``in_cluster`` None: the pod's service
    account when running inside a cluster, else the kubeconfig file (``$KUBECONFIG`` or
    ``~/.kube/config`` when ``kubeconfig`` is None)."""
    configuration = k8s_client.Configuration()
    if in_cluster is None:
        in_cluster = kubeconfig is None and "KUBERNETES_SERVICE_HOST" in os.environ
    try:
        if in_cluster:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            k8s_config.load_kube_config(  # type: ignore[no-untyped-call]
                config_file=kubeconfig,
                context=context,
                client_configuration=configuration,
                persist_config=False,
            )
    except (ConfigException, OSError) as error:
        raise KubeError(f"cannot load the Kubernetes configuration: {error}") from None
    # No retry in the transport: a repeated create could make a second Job, and the
    # engine decides when to ask again.
    configuration.retries = False
    return k8s_client.ApiClient(configuration)


@dataclass
class KubeApi:
    """The backend's calls, each with a timeout. ``on_call`` sees each call's name."""

    api_client: Any
    timeout: float
    on_call: Callable[[str], None] | None = None

    def __post_init__(self) -> None:
        self.batch = k8s_client.BatchV1Api(self.api_client)
        self.core = k8s_client.CoreV1Api(self.api_client)

    def create_job(self, namespace: str, body: JsonObject) -> JsonObject:
        return self._object("create_job", self.batch.create_namespaced_job, namespace, body)

    def read_job(self, namespace: str, name: str) -> JsonObject:
        return self._object("read_job", self.batch.read_namespaced_job, name, namespace)

    def list_jobs(self, namespace: str, selector: str) -> list[JsonObject]:
        answer = self._object(
            "list_jobs", self.batch.list_namespaced_job, namespace, label_selector=selector
        )
        return list(answer.get("items") or [])

    def list_pods(self, namespace: str, selector: str) -> list[JsonObject]:
        answer = self._object(
            "list_pods", self.core.list_namespaced_pod, namespace, label_selector=selector
        )
        return list(answer.get("items") or [])

    def list_events(self, namespace: str, field_selector: str) -> list[JsonObject]:
        answer = self._object(
            "list_events",
            self.core.list_namespaced_event,
            namespace,
            field_selector=field_selector,
        )
        return list(answer.get("items") or [])

    def delete_job(self, namespace: str, name: str, propagation: Propagation) -> None:
        self._call(
            "delete_job",
            self.batch.delete_namespaced_job,
            name,
            namespace,
            propagation_policy=propagation,
        )

    def create_secret(self, namespace: str, body: JsonObject) -> None:
        self._call("create_secret", self.core.create_namespaced_secret, namespace, body)

    def read_secret_labels(self, namespace: str, name: str) -> dict[str, str]:
        """A Secret's labels only: its values stay out of this process's objects."""
        answer = self._object("read_secret", self.core.read_namespaced_secret, name, namespace)
        return dict((answer.get("metadata") or {}).get("labels") or {})

    def replace_secret(self, namespace: str, name: str, body: JsonObject) -> None:
        self._call("replace_secret", self.core.replace_namespaced_secret, name, namespace, body)

    def patch_secret(self, namespace: str, name: str, patch: JsonObject) -> None:
        self._call("patch_secret", self.core.patch_namespaced_secret, name, namespace, patch)

    def delete_secret(self, namespace: str, name: str) -> None:
        self._call("delete_secret", self.core.delete_namespaced_secret, name, namespace)

    def pod_log(
        self, namespace: str, pod: str, container: str, limit_bytes: int | None = None
    ) -> bytes:
        extra: dict[str, Any] = {} if limit_bytes is None else {"limit_bytes": limit_bytes}
        response = self._call(
            "pod_log", self.core.read_namespaced_pod_log, pod, namespace, container=container,
            **extra,
        )  # fmt: skip
        return response.data

    def close(self) -> None:
        self.api_client.close()

    # -- inside -----------------------------------------------------------------------------

    def _object(
        self, name: str, method: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> JsonObject:
        data = self._call(name, method, *args, **kwargs).data
        try:
            answer = json.loads(data)
        except ValueError:
            raise KubeRefused(0, "BadResponse", f"{name}: the answer is not JSON") from None
        if not isinstance(answer, dict):
            raise KubeRefused(0, "BadResponse", f"{name}: the answer is not an object")
        return cast(JsonObject, answer)

    def _call(self, name: str, method: Callable[..., Any], *args: Any, **kwargs: Any) -> _Response:
        if self.on_call is not None:
            self.on_call(name)
        try:
            response = method(
                *args, _preload_content=False, _request_timeout=self.timeout, **kwargs
            )
            _ = response.data  # read the body while errors can still be converted
        except ApiException as error:
            raise _refused(error) from None
        except urllib3.exceptions.HTTPError as error:
            raise _unreachable(error) from None
        except OSError as error:
            raise KubeUnreachable(f"{name}: {error}", sent=True) from None
        return cast(_Response, response)


def _refused(error: Any) -> KubeError:
    status = int(error.status or 0)
    reason = str(error.reason or "")
    if status == 0:
        # the client's own word for a TLS failure or a request it could not build
        return KubeUnreachable(reason.replace("\n", ": "), sent=False)
    message = ""
    try:
        body = json.loads(error.body or "")
        if isinstance(body, dict):
            message = str(body.get("message") or "")
            reason = str(body.get("reason") or reason)
    except ValueError:
        message = str(error.body or "")[:500]
    return KubeRefused(status, reason, message)


def _unreachable(error: urllib3.exceptions.HTTPError) -> KubeUnreachable:
    cause: BaseException = error
    if isinstance(error, urllib3.exceptions.MaxRetryError) and error.reason is not None:
        cause = error.reason
    # a refused or timed-out connection, an unknown name, a failed TLS handshake: the
    # request was never written
    never_sent = isinstance(
        cause, urllib3.exceptions.ConnectTimeoutError | urllib3.exceptions.SSLError
    )
    return KubeUnreachable(f"{type(cause).__name__}: {cause}", sent=not never_sent)
