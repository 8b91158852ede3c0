"""The pilot agent: runs work units inside one allocation, on the cluster's own Python.

    python3 -I -S jobbridge_agent.py CONFIG_JSON

It is shipped with the pilot's files and imports nothing outside the standard library of
Python 3.8, so nothing is installed on the cluster. It talks to the coordinator through a
mailbox in its own directory (the pilot job's sandbox), which the coordinator reaches through
the backend's transport (locally, or over the SSH connection to the login node):

- ``in/NNNN.json``, written atomically by the coordinator: ``{"units": [...], "cancel":
  [...], "drain": bool}``. The agent reads them in order and removes them; a unit it has
  seen already is ignored, so that a batch sent twice does no harm.
- ``out/NNNN.json``, written atomically by the agent: ``{"agent": {...}, "updates": [[unit,
  attempt, word, exit_code, time, message, output], ...]}``, batched; the coordinator removes
  them once it has recorded them. The first one says hello (hosts, cores, pid); one is
  written at least every ``heartbeat`` seconds. ``output`` says where the unit's stdout and
  stderr are: ``{"out": [file, start, end], "err": [...]}`` (no end while it runs).

Units are processes started with ``posix_spawn`` by one thread per core, with their exit
codes. Each thread runs one unit at a time and keeps one stdout and one stderr file, which
its units append to: a unit's output is the part its run added, so that no file is made per
unit (on a cluster's shared file system, making files is what costs most). A unit that names
its own files gets them. Cores are counted per node; a unit on another
node of the allocation (or with the ``srun`` launcher) goes through ``srun``. Near the end of
its walltime the agent stops starting units that would not finish and hands them back; when
cancelled it hands back every unit it has not finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

IN_DIR = "in"
OUT_DIR = "out"
UNITS_DIR = "units"

RUNNING = "RUNNING"
EXITED = "EXITED"
EXEC_FAILED = "EXEC_FAILED"
CANCELLED = "CANCELLED"
TIMEOUT = "TIMEOUT"
RETURNED = "RETURNED"
"""Handed back unfinished: the coordinator binds the unit again elsewhere."""

_CHDIR = 'cd -- "$1" || exit 127; shift; exec "$@"'
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGKILL, signal.SIGHUP, signal.SIGINT)


class Unit:
    __slots__ = (
        "argv", "attempt", "cores", "cwd", "env", "id", "launcher", "pid", "placement",
        "processes", "stderr", "stdin", "stdout", "stop_word", "timer", "walltime",
    )  # fmt: skip

    def __init__(self, data: dict[str, Any]) -> None:
        self.id = str(data["id"])
        self.attempt = int(data.get("attempt", 1))
        self.argv = [str(word) for word in data["argv"]]
        self.env = data.get("env") or {}
        self.cwd = data.get("cwd")
        self.stdin = data.get("stdin")
        self.stdout = data.get("stdout")
        self.stderr = data.get("stderr")
        self.processes = int(data.get("processes", 1))
        self.cores = int(data.get("cores", 1))
        self.launcher = data.get("launcher") or "single"
        self.walltime = data.get("walltime")
        self.pid = 0
        self.placement: dict[str, int] = {}
        self.stop_word = ""
        self.timer: threading.Timer | None = None


class Logs:
    """One worker thread's stdout and stderr files, and how long they were after its last
    unit."""

    __slots__ = ("ends", "fds", "names")

    def __init__(self, root: str, number: int) -> None:
        base = f"{UNITS_DIR}/worker-{os.getpid()}-{number}"
        self.names = (base + ".out", base + ".err")
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND
        self.fds = tuple(os.open(os.path.join(root, name), flags, 0o644) for name in self.names)
        self.ends = [os.fstat(fd).st_size for fd in self.fds]

    def measure(self) -> None:
        self.ends = [os.fstat(fd).st_size for fd in self.fds]


class Agent:
    def __init__(self, config: dict[str, Any], root: str) -> None:
        self.root = root
        self.pilot = str(config.get("pilot", ""))
        self.cores_per_node = int(config.get("cores", 1))
        self.walltime = config.get("walltime")
        self.margin = float(config.get("drain_margin", 10.0))
        self.poll = float(config.get("poll", 0.005))
        self.flush_every = float(config.get("flush", 0.02))
        self.heartbeat = float(config.get("heartbeat", 2.0))
        self.grace = float(config.get("grace", 3.0))
        self.directory = config.get("directory") or None
        self.srun_everywhere = bool(config.get("srun_everywhere", False))
        self.nodes = discover_nodes(int(config.get("nodes", 1)))
        self.local_node = self.nodes[0]
        self.free = {node: self.cores_per_node for node in self.nodes}
        self.started = time.time()
        self.lock = threading.Condition()
        self.pending: list[Unit] = []
        self.known: set[str] = set()
        self.running: dict[str, Unit] = {}
        self.updates: list[list[object]] = []
        self.out_seq = 0
        self.draining = False
        self.drain_asked = False
        self.stopping = False
        self.terminated = False
        self.base_env = dict(os.environ)
        self.base_env["JOBBRIDGE_PILOT_ID"] = self.pilot

    # -- the main loop ----------------------------------------------------------------------

    def run(self) -> int:
        for name in (IN_DIR, OUT_DIR, UNITS_DIR):
            os.makedirs(os.path.join(self.root, name), exist_ok=True)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1):
            signal.signal(signum, self.on_terminate)
        workers = []
        for number in range(self.cores_per_node * len(self.nodes)):
            worker = threading.Thread(
                target=self.work, args=(Logs(self.root, number),), name=f"unit-{number}",
                daemon=True,
            )  # fmt: skip
            worker.start()
            workers.append(worker)
        self.flush(force=True)
        last_flush = time.monotonic()
        while True:
            received = self.receive()
            self.watch_walltime()
            now = time.monotonic()
            with self.lock:
                due = bool(self.updates) and now - last_flush >= self.flush_every
                done = self.terminated or (
                    self.drain_asked and not self.pending and not self.running
                )
            if due or done or now - last_flush >= self.heartbeat:
                self.flush(force=True)
                last_flush = now
            if done:
                break
            if not received:
                time.sleep(self.poll)
        if self.terminated:
            self.hand_back_on_termination()
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        self.flush(force=True)
        return 143 if self.terminated else 0

    def on_terminate(self, signum: int, frame: object) -> None:
        self.terminated = True

    def hand_back_on_termination(self) -> None:
        """Cancelled, or the scheduler's walltime came: every unfinished unit goes back."""
        with self.lock:
            self.return_pending("the pilot was stopped before the unit started")
            victims = list(self.running.values())
            for unit in victims:
                unit.stop_word = RETURNED
        for unit in victims:
            kill(unit.pid, signal.SIGTERM)
        deadline = time.monotonic() + min(self.grace, 0.5)
        with self.lock:
            while self.running and time.monotonic() < deadline:
                self.lock.wait(0.05)
            for unit in list(self.running.values()):
                kill(unit.pid, signal.SIGKILL)
                self.record(unit, RETURNED, None, "the pilot was stopped while the unit ran")
                del self.running[unit.id]

    # -- the mailbox ------------------------------------------------------------------------

    def receive(self) -> bool:
        inbox = os.path.join(self.root, IN_DIR)
        try:
            names = sorted(name for name in os.listdir(inbox) if name.endswith(".json"))
        except OSError:
            return False
        for name in names:
            path = os.path.join(inbox, name)
            try:
                with open(path, "rb") as handle:
                    message = json.loads(handle.read().decode())
            except (OSError, ValueError) as error:
                log(f"cannot read {path}: {error}")
                message = {}
            with contextlib.suppress(OSError):
                os.unlink(path)
            self.accept(message)
        return bool(names)

    def accept(self, message: dict[str, Any]) -> None:
        with self.lock:
            for data in message.get("units", ()):
                key = "{}/{}".format(data.get("id"), data.get("attempt", 1))
                if key in self.known:
                    continue
                self.known.add(key)
                try:
                    unit = Unit(data)
                except (KeyError, TypeError, ValueError) as error:
                    self.updates.append(
                        [data.get("id"), data.get("attempt", 1), EXEC_FAILED, 127, time.time(),
                         f"the agent cannot read this unit: {error}"]
                    )  # fmt: skip
                    continue
                if self.draining or self.drain_asked:
                    self.record(unit, RETURNED, None, "the pilot is draining")
                else:
                    self.pending.append(unit)
            for unit_id in message.get("cancel", ()):
                self.cancel(str(unit_id))
            if message.get("drain"):
                self.drain_asked = True
                self.return_pending("the pilot is draining")
            self.lock.notify_all()

    def cancel(self, unit_id: str) -> None:
        for index, unit in enumerate(self.pending):
            if unit.id == unit_id:
                del self.pending[index]
                self.record(unit, CANCELLED, None, "cancelled before it started")
                return
        running = self.running.get(unit_id)
        if running is not None and not running.stop_word:
            running.stop_word = CANCELLED
            self.stop(running)

    def flush(self, force: bool = False) -> None:
        with self.lock:
            updates, self.updates = self.updates, []
            status = self.status()
        if not updates and not force:
            return
        self.out_seq += 1
        name = f"{self.out_seq:012d}-{os.getpid()}.json"
        data = json.dumps({"agent": status, "updates": updates}, separators=(",", ":"))
        write_atomically(os.path.join(self.root, OUT_DIR, name), data.encode())

    def status(self) -> dict[str, Any]:
        return {
            "pilot": self.pilot,
            "pid": os.getpid(),
            "hosts": self.nodes,
            "cores_per_node": self.cores_per_node,
            "cores": self.cores_per_node * len(self.nodes),
            "free": sum(self.free.values()),
            "running": len(self.running),
            "pending": len(self.pending),
            "draining": self.draining or self.drain_asked or self.terminated,
            "started": self.started,
            "walltime": self.walltime,
            "time": time.time(),
            "python": ".".join(str(part) for part in sys.version_info[:3]),
        }

    def record(
        self, unit: Unit, word: str, code: int | None, message: str = "",
        output: dict[str, list[Any]] | None = None,
    ) -> None:  # fmt: skip
        """Queue one update (the lock is held)."""
        update = [unit.id, unit.attempt, word, code, time.time(), message]
        if output:
            update.append(output)
        self.updates.append(update)

    def return_pending(self, why: str) -> None:
        for unit in self.pending:
            self.record(unit, RETURNED, None, why)
        self.pending = []

    # -- walltime ---------------------------------------------------------------------------

    def remaining(self) -> float | None:
        if not self.walltime:
            return None
        return float(self.walltime) - (time.time() - self.started)

    def watch_walltime(self) -> None:
        left = self.remaining()
        if left is None or self.draining:
            return
        if left <= self.margin:
            with self.lock:
                self.draining = True
                self.return_pending("the pilot is near the end of its walltime")

    def would_not_finish(self, unit: Unit) -> bool:
        left = self.remaining()
        if left is None:
            return False
        return unit.walltime is not None and float(unit.walltime) > left - self.margin

    # -- running units ----------------------------------------------------------------------

    def work(self, logs: Logs) -> None:
        while True:
            with self.lock:
                unit = self.next_unit()
                while unit is None:
                    if self.stopping:
                        return
                    self.lock.wait()
                    unit = self.next_unit()
                self.running[unit.id] = unit
            self.execute(unit, logs)

    def next_unit(self) -> Unit | None:
        """The first pending unit that fits the free cores, its cores taken (lock held);
        units that would outlast the walltime are handed back on the way."""
        if self.terminated or self.stopping:
            return None
        index = 0
        while index < len(self.pending):
            unit = self.pending[index]
            if self.would_not_finish(unit):
                del self.pending[index]
                self.record(unit, RETURNED, None, "it would not finish before the walltime")
                continue
            placement = self.place(unit)
            if placement is not None:
                del self.pending[index]
                for node, cores in placement.items():
                    self.free[node] -= cores
                unit.placement = placement
                return unit
            index += 1
        return None

    def place(self, unit: Unit) -> dict[str, int] | None:
        if unit.processes == 1 or unit.launcher == "single":
            for node in self.nodes:
                if self.free[node] >= unit.cores:
                    return {node: unit.cores}
            return None
        per_process = max(1, unit.cores // unit.processes)
        placement: dict[str, int] = {}
        left = unit.processes
        for node in self.nodes:
            fits = min(left, self.free[node] // per_process)
            if fits:
                placement[node] = fits * per_process
                left -= fits
            if not left:
                return placement
        return None

    def execute(self, unit: Unit, logs: Logs) -> None:
        code: int | None = None
        word, message = EXITED, ""
        output: dict[str, list[Any]] = {}
        for key, chosen, index in (("out", unit.stdout, 0), ("err", unit.stderr, 1)):
            if not chosen:
                output[key] = [logs.names[index], logs.ends[index]]
        try:
            pid = self.spawn(unit, logs)
        except OSError as error:
            word, code = EXEC_FAILED, 127
            message = f"{error.strerror or error}: {error.filename or unit.argv[0]}"
            pid = 0
        if pid:
            with self.lock:
                unit.pid = pid
                self.record(unit, RUNNING, None, "", output)
                stop = unit.stop_word
            if stop:
                self.stop(unit)
            elif unit.walltime:
                unit.timer = threading.Timer(float(unit.walltime), self.time_out, (unit,))
                unit.timer.daemon = True
                unit.timer.start()
            status = wait_for(pid)
            if unit.timer is not None:
                unit.timer.cancel()
            code = exit_code_of(status)
            logs.measure()
            for key, index in (("out", 0), ("err", 1)):
                if key in output:
                    output[key] = [output[key][0], output[key][1], logs.ends[index]]
            if os.WIFSIGNALED(status):
                message = f"killed by signal {os.WTERMSIG(status)}"
                if os.WTERMSIG(status) in _STOP_SIGNALS and not unit.stop_word:
                    time.sleep(0.2)  # a TERM to the whole pilot reaches the agent too
                    if self.terminated:
                        unit.stop_word = RETURNED
        with self.lock:
            if unit.stop_word:
                word = unit.stop_word
                message = {
                    CANCELLED: "cancelled",
                    TIMEOUT: "ran past its wall_time_limit",
                    RETURNED: "the pilot was stopped while the unit ran",
                }.get(word, message)
            for node, cores in unit.placement.items():
                self.free[node] += cores
            if self.running.pop(unit.id, None) is not None:
                self.record(unit, word, code, message, output if pid else None)
            self.lock.notify_all()

    def time_out(self, unit: Unit) -> None:
        with self.lock:
            if unit.stop_word:
                return
            unit.stop_word = TIMEOUT
        self.stop(unit)

    def stop(self, unit: Unit) -> None:
        """TERM, then KILL after the grace period."""
        if not unit.pid:
            return
        kill(unit.pid, signal.SIGTERM)
        timer = threading.Timer(self.grace, kill, (unit.pid, signal.SIGKILL))
        timer.daemon = True
        timer.start()

    def spawn(self, unit: Unit, logs: Logs) -> int:
        cwd = unit.cwd or self.directory
        if cwd is not None:
            cwd = os.path.join(self.root, cwd)
        where = cwd or self.root
        stdin = os.path.join(where, unit.stdin) if unit.stdin else os.devnull
        actions: list[tuple[Any, ...]] = [(os.POSIX_SPAWN_OPEN, 0, stdin, os.O_RDONLY, 0)]
        if unit.stdout:
            stdout = os.path.join(where, unit.stdout)
            actions.append((os.POSIX_SPAWN_OPEN, 1, stdout, _WRITE_FLAGS, 0o644))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, logs.fds[0], 1))
        if unit.stderr and unit.stderr == unit.stdout:
            actions.append((os.POSIX_SPAWN_DUP2, 1, 2))
        elif unit.stderr:
            stderr = os.path.join(where, unit.stderr)
            actions.append((os.POSIX_SPAWN_OPEN, 2, stderr, _WRITE_FLAGS, 0o644))
        else:
            actions.append((os.POSIX_SPAWN_DUP2, logs.fds[1], 2))
        argv = self.command(unit)
        if cwd is not None and cwd != self.root:
            argv = ["/bin/sh", "-c", _CHDIR, "sh", cwd, *argv]
        env = dict(self.base_env)
        env.update(unit.env)
        env["JOBBRIDGE_UNIT_ID"] = unit.id
        env["JOBBRIDGE_UNIT_CORES"] = str(unit.cores)
        env["JOBBRIDGE_UNIT_NODES"] = ",".join(unit.placement)
        return os.posix_spawnp(argv[0], argv, env, file_actions=actions)

    def command(self, unit: Unit) -> list[str]:
        nodes = list(unit.placement)
        if unit.launcher == "srun" or (unit.launcher == "single" and self.needs_srun(nodes)):
            per_process = max(1, unit.cores // max(1, unit.processes))
            return [
                "srun", f"--ntasks={unit.processes}", f"--cpus-per-task={per_process}",
                f"--nodes={len(nodes)}", "--nodelist=" + ",".join(nodes), "--overlap",
                "--quiet", "--kill-on-bad-exit=1", *unit.argv,
            ]  # fmt: skip
        if unit.launcher == "mpirun":
            per_process = max(1, unit.cores // max(1, unit.processes))
            hosts = ",".join(
                f"{node}:{cores // per_process}" for node, cores in unit.placement.items()
            )
            return ["mpirun", "-np", str(unit.processes), "--host", hosts, *unit.argv]
        return unit.argv

    def needs_srun(self, nodes: list[str]) -> bool:
        if not os.environ.get("SLURM_JOB_ID"):
            return False
        return self.srun_everywhere or any(node != self.local_node for node in nodes)


# -- helpers -------------------------------------------------------------------------------


def discover_nodes(expected: int) -> list[str]:
    """The allocation's hosts, the agent's own first; only this one outside a scheduler or
    where the scheduler does not say."""
    here = socket.gethostname()
    hosts: list[str] = []
    if expected > 1:
        hosts = _scheduler_hosts()
    if not hosts:
        return [here]
    short = here.split(".")[0]
    hosts.sort(key=lambda host: host.split(".")[0] != short)
    return hosts[:expected]


def _scheduler_hosts() -> list[str]:
    nodelist = os.environ.get("SLURM_JOB_NODELIST")
    if nodelist:
        try:
            listed = subprocess.run(
                ["scontrol", "show", "hostnames", nodelist],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=30, check=True,
            )  # fmt: skip
            return unique(listed.stdout.decode().split())
        except (OSError, subprocess.SubprocessError):
            return []
    for variable in ("PE_HOSTFILE", "PBS_NODEFILE"):
        path = os.environ.get(variable)
        if path and os.path.exists(path):
            with open(path) as handle:
                return unique(line.split()[0] for line in handle if line.strip())
    lsf = os.environ.get("LSB_MCPU_HOSTS", "").split()
    return unique(lsf[0::2])


def unique(items: Iterable[str]) -> list[str]:
    seen: list[str] = []
    for item in items:
        if item not in seen:
            seen.append(item)
    return seen


def wait_for(pid: int) -> int:
    while True:
        try:
            return os.waitpid(pid, 0)[1]
        except InterruptedError:
            continue
        except ChildProcessError:
            return 0


def exit_code_of(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def kill(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signum)


def write_atomically(path: str, data: bytes) -> None:
    directory, name = os.path.split(path)
    temporary = os.path.join(directory, "." + name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(data)
    os.replace(temporary, path)


def log(message: str) -> None:
    sys.stderr.write(f"jobbridge agent: {message}\n")
    sys.stderr.flush()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        log("usage: jobbridge_agent.py CONFIG_JSON")
        return 2
    config = json.loads(argv[0])
    root = os.path.dirname(os.path.abspath(__file__))
    return Agent(config, root).run()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
