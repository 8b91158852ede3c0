"""The fake DAGMan: runs a DAG's nodes as condor_dagman does, in the DAG file's directory.

A node is ready once all its parents succeeded. For a ready node it runs the PRE script (if
any): exit 0 lets the node's job be submitted; the DEFER status makes it run the script again
after the DEFER time (``FAKESCHED_CONDOR_DEFER_SECONDS`` shortens that for tests); any other
status fails the node without submitting its job. The job is submitted with condor_submit,
with DAGMan's own attributes appended (``+DAGManJobId``, ``+DAGNodeName``,
``+DAGParentNodeNames``), and the node succeeds when all its jobs completed with exit code 0
(then its POST script, if any, decides). A node whose parent failed never runs. Nodes marked
DONE are taken as succeeded, NOOP nodes succeed without a job. When nothing more can run,
DAGMan exits 0 if every node succeeded, else 1 (writing a rescue DAG, ``DAG.rescue001``).
Removing the DAGMan job removes the jobs it submitted (see fakecondor.session); a DAGMan
held and released starts again and recovers: a node whose job it submitted before is not
submitted again.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

POLL = 0.2


class DagError(Exception):
    pass


@dataclass
class Script:
    argv: list[str]
    defer_status: int | None = None
    defer_time: float = 0.0


@dataclass
class Node:
    name: str
    submit: str
    directory: str | None = None
    noop: bool = False
    done: bool = False
    parents: list[str] = field(default_factory=list)
    pre: Script | None = None
    post: Script | None = None
    # while running
    state: str = "waiting"  # waiting deferred submitted succeeded failed
    retry_at: float = 0.0
    cluster: int | None = None


@dataclass
class Dag:
    nodes: dict[str, Node]
    attributes: dict[str, str]


def read_dag(path: Path) -> Dag:
    nodes: dict[str, Node] = {}
    attributes: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        words = line.split()
        keyword = words[0].upper()
        if keyword == "JOB":
            if len(words) < 3:
                raise DagError(f"{path.name} (line {number}): JOB needs a name and a submit file")
            node = Node(words[1], words[2])
            rest = words[3:]
            while rest:
                option = rest.pop(0).upper()
                if option == "DIR" and rest:
                    node.directory = rest.pop(0)
                elif option == "NOOP":
                    node.noop = True
                elif option == "DONE":
                    node.done = True
                else:
                    raise DagError(f"{path.name} (line {number}): unexpected {option!r}")
            if node.name in nodes:
                raise DagError(f"{path.name} (line {number}): node {node.name} already exists")
            nodes[node.name] = node
        elif keyword == "PARENT":
            if "CHILD" not in [w.upper() for w in words]:
                raise DagError(f"{path.name} (line {number}): PARENT without CHILD")
            split = [w.upper() for w in words].index("CHILD")
            parents, children = words[1:split], words[split + 1 :]
            for name in [*parents, *children]:
                if name not in nodes:
                    raise DagError(f"{path.name} (line {number}): unknown node {name}")
            for child in children:
                nodes[child].parents.extend(parents)
        elif keyword == "SCRIPT":
            rest = words[1:]
            defer_status, defer_time = None, 0.0
            if rest and rest[0].upper() == "DEFER":
                defer_status, defer_time = int(rest[1]), float(rest[2])
                rest = rest[3:]
            if len(rest) < 3 or rest[0].upper() not in ("PRE", "POST"):
                raise DagError(f"{path.name} (line {number}): bad SCRIPT line")
            kind, name, argv = rest[0].upper(), rest[1], rest[2:]
            if name not in nodes:
                raise DagError(f"{path.name} (line {number}): unknown node {name}")
            script = Script(argv, defer_status, defer_time)
            setattr(nodes[name], kind.lower(), script)
        elif keyword == "SET_JOB_ATTR":
            match = re.match(r"(?i)^SET_JOB_ATTR\s+([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.+)$", line)
            if not match:
                raise DagError(f"{path.name} (line {number}): bad SET_JOB_ATTR line")
            attributes[match[1]] = match[2].strip()
        else:
            raise DagError(f"{path.name} (line {number}): this fake does not know {words[0]}")
    return Dag(nodes, attributes)


def run(path: Path) -> int:
    dag = read_dag(path)
    my_id = os.environ.get("CONDOR_ID", "0.0").split(".")[0]
    defer_scale = os.environ.get("FAKESCHED_CONDOR_DEFER_SECONDS")
    for node in dag.nodes.values():
        if node.done:
            node.state = "succeeded"
    log(f"DAG {path.name}: {len(dag.nodes)} nodes")
    while True:
        now = time.time()
        progressed = False
        for node in dag.nodes.values():
            if node.state in ("waiting", "deferred") and now >= node.retry_at:
                parents = [dag.nodes[p].state for p in node.parents]
                if any(state == "failed" for state in parents):
                    node.state = "failed"
                    log(f"node {node.name}: not run, a parent failed")
                    progressed = True
                elif all(state == "succeeded" for state in parents):
                    start(node, path.parent, my_id, defer_scale)
                    progressed = True
            elif node.state == "submitted":
                ended = node_result(node)
                if ended is not None:
                    finish(node, ended, path.parent)
                    progressed = True
        if all(node.state in ("succeeded", "failed") for node in dag.nodes.values()):
            break
        if not progressed:
            time.sleep(POLL)
    failed = [node.name for node in dag.nodes.values() if node.state != "succeeded"]
    if failed:
        rescue = Path(f"{path}.rescue001")
        rescue.write_text(
            "".join(f"DONE {n.name}\n" for n in dag.nodes.values() if n.state == "succeeded")
        )
        log(f"DAG failed: {' '.join(failed)}")
        return 1
    log("All jobs Completed!")
    return 0


def start(node: Node, here: Path, my_id: str, defer_scale: str | None) -> None:
    where = here / (node.directory or ".")
    if node.pre is not None:
        code = subprocess.run(node.pre.argv, cwd=where, check=False).returncode
        log(f"node {node.name}: PRE script exited {code}")
        if node.pre.defer_status is not None and code == node.pre.defer_status:
            delay = float(defer_scale) if defer_scale else node.pre.defer_time
            node.state, node.retry_at = "deferred", time.time() + delay
            return
        if code != 0:
            node.state = "failed"
            return
    if node.noop:
        node.state = "succeeded"
        return
    earlier = submitted_before(node, my_id)
    if earlier is not None:  # recovery (a DAGMan released from hold starts again)
        node.cluster, node.state = earlier, "submitted"
        return
    appended = [
        f"+DAGManJobId = {my_id}",
        f'+DAGNodeName = "{node.name}"',
        f'+DAGParentNodeNames = "{",".join(node.parents)}"',
    ]
    command = ["condor_submit", "-terse"]
    for line in appended:
        command += ["-a", line]
    done = subprocess.run(
        [*command, node.submit], cwd=where, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        log(f"node {node.name}: condor_submit failed: {done.stderr.strip()}")
        node.state = "failed"
        return
    node.cluster = int(done.stdout.split(".")[0])
    node.state = "submitted"
    log(f"node {node.name}: submitted as cluster {node.cluster}")


def submitted_before(node: Node, my_id: str) -> int | None:
    """The cluster of the node's job if this DAGMan submitted it already."""
    from fakecondor import session

    with session() as tasks:
        for task in tasks:
            ad = task.extra.get("ad", {})
            if str(ad.get("DAGManJobId")) == my_id and ad.get("DAGNodeName") == node.name:
                return task.number
    return None


def node_result(node: Node) -> bool | None:
    """True if the node's jobs all completed with 0, False if one did not, None if running."""
    from fakecondor import in_history, session

    with session() as tasks:
        mine = [t for t in tasks if t.number == node.cluster]
        if not mine or not all(in_history(t) for t in mine):
            return None
        return all(t.state == "done" and t.exit_code == 0 for t in mine)


def finish(node: Node, succeeded: bool, here: Path) -> None:
    if node.post is not None:
        argv = [word.replace("$RETURN", "0" if succeeded else "1") for word in node.post.argv]
        where = here / (node.directory or ".")
        succeeded = subprocess.run(argv, cwd=where, check=False).returncode == 0
    node.state = "succeeded" if succeeded else "failed"
    log(f"node {node.name}: {'completed' if succeeded else 'failed'}")


def log(text: str) -> None:
    print(time.strftime("%m/%d/%y %H:%M:%S ") + text, flush=True)


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
