"""The stand-in node agent's Node object (see node_agent.py)."""

from __future__ import annotations

import argparse
import os
from typing import Any


def node_status(
    args: argparse.Namespace, node: str, ready_since: str, stamp: str
) -> dict[str, Any]:
    """The Node's status: Ready, with the capacity of the command line."""
    resources = {"cpu": args.cpus, "memory": args.memory, "pods": "250"}
    return {
        "capacity": resources,
        "allocatable": resources,
        "addresses": [
            {"type": "InternalIP", "address": args.address},
            {"type": "Hostname", "address": node},
        ],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": args.port}},
        "nodeInfo": {
            "machineID": "jobbridge-stand-in",
            "systemUUID": "jobbridge-stand-in",
            "bootID": "jobbridge-stand-in",
            "kernelVersion": os.uname().release,
            "osImage": "jobbridge stand-in node agent (local processes)",
            "containerRuntimeVersion": "standin://0",
            "kubeletVersion": "v1.20.2",
            "kubeProxyVersion": "v1.20.2",
            "operatingSystem": "linux",
            "architecture": "amd64",
        },
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "the stand-in node agent is running",
                "lastHeartbeatTime": stamp,
                "lastTransitionTime": ready_since,
            },
            *(
                {
                    "type": kind,
                    "status": "False",
                    "reason": f"KubeletHas{reason}",
                    "lastHeartbeatTime": stamp,
                    "lastTransitionTime": ready_since,
                }
                for kind, reason in (
                    ("MemoryPressure", "SufficientMemory"),
                    ("DiskPressure", "NoDiskPressure"),
                    ("PIDPressure", "SufficientPID"),
                )
            ),
        ],
    }
