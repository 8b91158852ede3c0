"""The stand-in node agent's volumes: what a pod's mounts become on a machine where no
process can mount anything (see node_agent.py)."""

from __future__ import annotations

import base64
import os
import posixpath
import shutil
from pathlib import Path
from typing import Any, Protocol


class Api(Protocol):
    def call(self, method: str, path: str) -> Any: ...


class Volumes:
    def __init__(self, api: Api, work_dir: Path) -> None:
        self.api = api
        self.work_dir = work_dir

    def mount(
        self, pod: dict[str, Any], spec: dict[str, Any], private_dirs: list[Path]
    ) -> dict[str, str]:
        """Each of the container's mount paths -> the local directory that stands for it."""
        volumes = {volume["name"]: volume for volume in pod["spec"].get("volumes") or []}
        namespace, uid = pod["metadata"]["namespace"], pod["metadata"]["uid"]
        mounts: dict[str, str] = {}
        for mount in spec.get("volumeMounts") or []:
            volume = volumes[mount["name"]]
            if "hostPath" in volume:
                local = Path(volume["hostPath"]["path"])
                if volume["hostPath"].get("type") == "DirectoryOrCreate":
                    local.mkdir(parents=True, exist_ok=True)
            elif "secret" in volume:
                local = self.work_dir / "secrets" / f"{uid}-{mount['name']}"
                if local not in private_dirs:
                    private_dirs.append(local)
                    self.write_secret(namespace, volume["secret"], local)
            elif "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                local = self.work_dir / "claims" / namespace / claim
            else:
                local = self.work_dir / "pods" / uid / "volumes" / mount["name"]
            if mount.get("subPath"):
                local = local / mount["subPath"]
            local.mkdir(parents=True, exist_ok=True)
            mounts[posixpath.normpath(mount["mountPath"])] = str(local)
        return mounts

    def secret(self, namespace: str, name: str) -> dict[str, bytes]:
        answer = self.api.call("GET", f"/api/v1/namespaces/{namespace}/secrets/{name}")
        return {key: base64.b64decode(value) for key, value in (answer.get("data") or {}).items()}

    def write_secret(self, namespace: str, source: dict[str, Any], local: Path) -> None:
        data = self.secret(namespace, source["secretName"])
        local.mkdir(parents=True, exist_ok=True)
        local.chmod(0o700)
        default_mode = int(source.get("defaultMode", 0o644))
        items = source.get("items") or [{"key": key, "path": key} for key in data]
        for item in items:
            path = local / item["path"]
            path.parent.mkdir(parents=True, exist_ok=True)
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(descriptor, "wb") as file:
                file.write(data[item["key"]])
            path.chmod(int(item.get("mode", default_mode)))

    @staticmethod
    def release(private_dirs: list[Path]) -> None:
        """Take a pod's Secrets off the node."""
        for directory in private_dirs:
            shutil.rmtree(directory, ignore_errors=True)
        private_dirs.clear()


def mapped(text: str, mounts: dict[str, str]) -> str:
    """``text`` with a leading mount path (the longest that fits) replaced by its local
    directory: the process sees the files the pod would see there."""
    for mount_path in sorted(mounts, key=len, reverse=True):
        if text == mount_path or text.startswith(mount_path.rstrip("/") + "/"):
            return mounts[mount_path] + text[len(mount_path) :]
    return text
