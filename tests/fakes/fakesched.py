"""A small batch system for tests of schedulers that cannot run here (PBS, LSF, HTCondor).

It keeps its jobs in ``$FAKESCHED_DIR/state.json`` and really runs their scripts as local
processes. The fake command-line tools in ``bin/<scheduler>/`` call it: they parse the real
tools' options and print the real tools' documented output formats. Every call first
advances the system: it starts queued tasks whose dependencies are met, notices finished
ones, and kills those past their walltime.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

ENDED = ("done", "cancelled", "timeout", "never")


@dataclass
class Task:
    """One runnable unit: a job, or one member of an array job."""

    number: int
    index: int | None
    name: str
    script: str
    workdir: str
    env: dict[str, str]
    out: str
    err: str
    walltime: float | None = None
    depends: list[list[object]] = field(default_factory=list)
    state: str = "queued"  # queued held running done cancelled timeout never
    exit_code: int | None = None
    submitted: float = 0.0
    started: float | None = None
    ended: float | None = None
    pid: int | None = None
    owner: str = "root"
    queue: str = "batch"
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def ended_badly(self) -> bool:
        return self.state in ENDED and (self.state != "done" or self.exit_code != 0)


class FakeScheduler:
    def __init__(self, root: str | None = None, slots: int = 4) -> None:
        self.root = Path(root or os.environ["FAKESCHED_DIR"])
        self.root.mkdir(parents=True, exist_ok=True)
        self.slots = int(os.environ.get("FAKESCHED_SLOTS", slots))

    @contextlib.contextmanager
    def session(self) -> Iterator[list[Task]]:
        """The tasks, advanced to now, under a lock; changes are saved on the way out."""
        with open(self.root / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            tasks = self._load()
            self._advance(tasks)
            yield tasks
            self._save(tasks)

    def submit(self, tasks: list[Task]) -> int:
        """Give the tasks (one job, or an array's members) the next job number."""
        with self.session() as known:
            number = 1 + max(
                (t.number for t in known), default=int(os.environ.get("FAKESCHED_FIRST", 100)) - 1
            )
            for task in tasks:
                task.number = number
                task.submitted = time.time()
                task.env = {
                    k: v.format(number=number, index=task.index) for k, v in task.env.items()
                }
                task.out = task.out.format(number=number, index=task.index)
                task.err = task.err.format(number=number, index=task.index)
                known.append(task)
            self._advance(known)
        return number

    def cancel(self, tasks: list[Task]) -> None:
        for task in tasks:
            if task.state == "running" and task.pid:
                _kill_group(task.pid)
            if task.state not in ENDED:
                task.state, task.ended = "cancelled", time.time()

    def _advance(self, tasks: list[Task]) -> None:
        now = time.time()
        for task in tasks:
            if task.state == "running":
                self._check_running(task, now)
        # a task that needs no execute slot (HTCondor's scheduler universe) starts at once
        running = sum(task.state == "running" and not _slotless(task) for task in tasks)
        for task in tasks:
            if task.state != "queued":
                continue
            verdict = _dependencies(task, tasks)
            if verdict == "never":
                task.state, task.ended = "never", now
            elif verdict == "ready" and (running < self.slots or _slotless(task)):
                self._start(task)
                running += 0 if _slotless(task) else 1

    def _check_running(self, task: Task, now: float) -> None:
        rc_file = self.root / "rc" / f"{task.number}.{task.index}"
        if rc_file.exists() and rc_file.read_text().strip():
            task.state, task.ended = "done", rc_file.stat().st_mtime
            task.exit_code = int(rc_file.read_text())
        elif task.walltime and task.started and now - task.started > task.walltime:
            _kill_group(task.pid or 0)
            task.state, task.ended, task.exit_code = "timeout", now, 143
        elif task.pid and not _alive(task.pid):
            task.state, task.ended, task.exit_code = "done", now, 137

    def _start(self, task: Task) -> None:
        rc_file = self.root / "rc" / f"{task.number}.{task.index}"
        rc_file.parent.mkdir(exist_ok=True)
        runner = 'bash "$1" > "$2" 2> "$3"; echo $? > "$4.tmp"; mv "$4.tmp" "$4"'
        process = subprocess.Popen(
            ["bash", "-c", runner, "fakesched", task.script, task.out, task.err, str(rc_file)],
            cwd=task.workdir if os.path.isdir(task.workdir) else "/",
            env={**task.env},
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            # the fake tool that started it must not wait for the job's end through its pipes
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        task.state, task.started, task.pid = "running", time.time(), process.pid

    def _load(self) -> list[Task]:
        path = self.root / "state.json"
        if not path.exists():
            return []
        return [Task(**data) for data in json.loads(path.read_text())]

    def _save(self, tasks: list[Task]) -> None:
        path = self.root / "state.json"
        path.with_suffix(".tmp").write_text(json.dumps([asdict(t) for t in tasks]))
        path.with_suffix(".tmp").replace(path)


def _dependencies(task: Task, tasks: list[Task]) -> str:
    for condition, number in task.depends:
        parents = [t for t in tasks if t.number == number]
        if not parents:
            continue  # the scheduler forgot it: treat as met, as real schedulers do
        if not all(p.state in ENDED for p in parents):
            return "wait"
        bad = any(p.ended_badly for p in parents)
        if (condition == "afterok" and bad) or (condition == "afternotok" and not bad):
            return "never"
    return "ready"


def _slotless(task: Task) -> bool:
    return bool(task.extra.get("slotless"))


def _kill_group(pid: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, signal.SIGTERM)


def _alive(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
