"""A runner: forked by the local supervisor (``local_supervisor``) for a few spool entries,
it is the parent of their jobs, and records how each ended. It runs with no package around
it (``python -I -S``), so it imports nothing of jobbridge.

- A runner is a session of its own with a record, ``.supervisor/runners/<pid>.<ticks>``,
  whose first line names it (its pid and kernel start time). It starts a job only if the
  job's ``plans`` is the file it read the plan from, and claims it by appending
  ``<job id> started <time>`` to its record and linking the record as
  ``<job dir>/runner``: the link fails if the job has a runner already, so a job never
  starts twice. It starts the program with ``posix_spawn`` in a process group of its own
  (a fork for a job with a memory limit: ``RLIMIT_AS`` must be set in the child),
  enforces the walltime, turns a cancellation (a ``cancel`` file, then SIGTERM to the
  runner) into TERM to the job's group and KILL after the grace period, and appends
  ``<job id> ended <JSON>`` (``exit_code``, ``detail``, ``started``, ``ended``,
  ``message``) when the program is over. Only whole lines count. It removes its spool
  entries once it has taken their jobs, and the record's name under ``.supervisor``
  when it leaves (the supervisor does if it was killed); the jobs' links keep it. It
  writes the job's id into the FIFO ``.supervisor/ended`` for each outcome, if an engine
  waiting for jobs listens there.
- When the plan has a ``push`` address (a service runs), the runner tells it that the job
  started and, once the result is written, that it ended: a POST in a thread of its own with
  a short timeout, whose failure changes nothing (polling finds the job as before).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import select
import signal
import sys
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import threading

CANCEL_MARK = "cancel"
RUNNER_FILE = "runner"
PLANS_FILE = "plans"
INHERITED = "inherited"
"""A plans line ``{"inherited": {...}}`` is the environment that the jobs after it whose
plan says ``inherit`` start from, their own ``environment`` added. (Plans of an earlier
version have a whole ``env`` instead.)"""
ENDED_FIFO = "ended"
STARTED = "started"
ENDED = "ended"
RECORD_RETRY = 1.0
"""Seconds between a runner's attempts to record outcomes on a full disk; also how long
the supervisor lets a spool entry rest that a runner left behind."""
PUSH_TIMEOUT = 2.0
"""Seconds a push to the service may take; a runner waits for its pushes no longer."""
SIGNAL_NAMES = {
    int(getattr(signal, name)): name
    for name in dir(signal)
    if name.startswith("SIG") and not name.startswith(("SIG_", "SIGRT"))
}
_CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_DEFAULT_IN_JOBS = (*_CANCEL_SIGNALS, signal.SIGALRM, signal.SIGCHLD, signal.SIGPIPE)


class Job:
    def __init__(self, plan: dict[str, Any], inherited: dict[str, str]) -> None:
        self.id: str = plan["id"]
        self.job_dir: str = plan["job_dir"]
        self.plan = plan
        self.inherited = inherited if plan.get("inherit") else {}
        self.pid = 0
        self.started = 0.0
        self.deadline: float | None = None
        self.kill_at: float | None = None
        self.reason = ""

    def path(self, name: str) -> str:
        return os.path.join(self.job_dir, name)


class Batch:
    """Starts jobs, waits for them all, and records how each ended."""

    def __init__(self, spool: str, records: str, names: list[str]) -> None:
        self.spool = spool
        self.names = names
        self.live: dict[int, Job] = {}
        pid = os.getpid()
        ticks = start_ticks(pid)
        self.record_path = os.path.join(records, f"{pid}.{ticks}")
        self.ended_fifo = os.path.join(os.path.dirname(records), ENDED_FIFO)
        self.record = os.open(
            self.record_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600
        )
        os.write(self.record, f"{pid} {ticks}\n".encode())
        self.unwritten = b""
        """What the record could not take yet (a full disk): written, in order, later."""
        self.untold: list[Job] = []
        """Jobs whose outcomes are not written yet, or not told of yet."""
        self.nothing = os.open(os.devnull, os.O_RDONLY)
        self.look_for_cancels = False
        self.pushes: list[threading.Thread] = []
        self.deferred: list[tuple[Job, str]] | None = []
        """Pushes held back while jobs start: a runner forks only before it has threads."""

    def run(self) -> int:
        for signum in _CANCEL_SIGNALS:
            signal.signal(signum, self.on_cancel)
        signal.signal(signal.SIGALRM, self.on_alarm)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for name in self.names:
            self.take_entry(name)
        held, self.deferred = self.deferred or [], None
        for started in self.live.values():
            self.push(started, STARTED)
        for ended, event in held:
            self.push(ended, event)
        while self.live:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            self.ended(pid, status)
            self.reap_ended()  # and whatever ended meanwhile, all recorded in one write
        while not self.flush():  # the outcomes must reach the disk before we leave
            time.sleep(RECORD_RETRY)
        os.unlink(self.record_path)
        deadline = time.monotonic() + PUSH_TIMEOUT
        for pushing in self.pushes:
            pushing.join(max(0.0, deadline - time.monotonic()))
        return 0

    def ended(self, pid: int, status: int) -> None:
        job = self.live.pop(pid, None)
        if job is not None:
            kill_group(pid, signal.SIGKILL)  # leftovers of the job go with it
            self.finish(job, exit_code=exit_code_of(status), detail=self.detail_of(job, status))

    def reap_ended(self) -> None:
        """Record the jobs that ended already, waiting for none (while others start, so
        that an outcome is known as soon as it is)."""
        while self.live:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if not pid:
                break
            self.ended(pid, status)
        self.flush()

    def take_entry(self, name: str) -> None:
        """Start the jobs of one spool entry, then remove it (a runner that dies first
        leaves it to the next one, which starts the jobs nobody claimed)."""
        entry = os.path.join(self.spool, name)
        try:
            with open(entry, "rb") as handle:
                plans = os.fstat(handle.fileno())
                lines = handle.read().splitlines()
        except FileNotFoundError:
            return
        left = False
        inherited: dict[str, str] = {}
        for line in lines:
            try:
                plan = json.loads(line)
                if INHERITED in plan:
                    inherited = plan[INHERITED]
                    continue
                job = Job(plan, inherited)
            except (ValueError, KeyError, TypeError) as error:
                print(f"{entry}: a plan that cannot be read: {error!r}", file=sys.stderr)
                continue
            try:
                if handed_over(job, plans):
                    self.take(job)
                    self.reap_ended()
            except Exception as error:  # one bad job never stops the others
                note(job.job_dir, f"the runner could not start the job: {error!r}")
                left = True  # the entry stays for a later runner
        if not left:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry)

    def push(self, job: Job, event: str) -> None:
        """Tell the service, if there is one, without waiting for it."""
        address = job.plan.get("push")
        if not address:
            return
        if self.deferred is not None:
            self.deferred.append((job, event))
            return
        import threading  # only here: the supervisor forks, and must have no threads

        pushing = threading.Thread(target=push, args=(address, event), daemon=True)
        pushing.start()
        self.pushes.append(pushing)

    def take(self, job: Job) -> None:
        job.started = time.time()
        if not self.claim(job):
            return
        if os.path.exists(job.path(CANCEL_MARK)):
            self.finish(job, exit_code=None, detail="CANCELLED")
            return
        problem = self.start(job)
        if problem:
            self.finish(job, exit_code=127, detail="EXEC_FAILED", message=problem)
            return
        walltime = job.plan.get("walltime")
        if walltime:
            job.deadline = time.monotonic() + float(walltime)
            self.arm()

    def claim(self, job: Job) -> bool:
        """Name this runner the job's, unless another runner has it already."""
        if os.path.exists(job.path(RUNNER_FILE)):
            return False
        self.unwritten += f"{job.id} {STARTED} {job.started!r}\n".encode()
        if not self.write_record():
            raise OSError(errno.ENOSPC, "the runner's record is full")
        try:
            os.link(self.record_path, job.path(RUNNER_FILE))
        except FileExistsError:
            return False
        return True

    def start(self, job: Job) -> str:
        """Start the program; on failure say why, the way a shell would."""
        plan = job.plan
        program: list[str] = plan["argv"]
        own = plan["environment"] if "environment" in plan else plan["env"]
        env: dict[str, str] = {**job.inherited, **own}
        opened: list[int] = []
        try:
            streams = open_streams(plan, opened, self.nothing)
            os.chdir(plan["directory"])
            if plan.get("memory"):
                job.pid = fork_limited(program, env, streams, int(plan["memory"]))
            else:
                job.pid = os.posix_spawn(
                    find_program(program[0], env),
                    program,
                    env,
                    file_actions=[(os.POSIX_SPAWN_DUP2, fd, target) for target, fd in streams],
                    setpgroup=0,
                    setsigdef=_DEFAULT_IN_JOBS,
                    setsigmask=(),
                )
        except OSError as error:
            what = program[0] if error.filename is None else error.filename
            return f"{error.strerror}: {what}"
        finally:
            for fd in opened:
                os.close(fd)
            os.chdir("/")
        self.live[job.pid] = job
        if self.look_for_cancels:
            self.on_cancel(signal.SIGTERM, None)
        return ""

    def detail_of(self, job: Job, status: int) -> str:
        if job.reason:
            return job.reason
        if os.WIFSIGNALED(status):
            return SIGNAL_NAMES.get(os.WTERMSIG(status), "SIGNALED")
        return ""

    def on_cancel(self, signum: int, frame: object) -> None:
        """Someone cancelled one of our jobs: those with a cancel mark stop. A job started
        later looks for its mark too (the signal may come between its claim and its start)."""
        self.look_for_cancels = True
        for job in list(self.live.values()):
            if not job.reason and os.path.exists(job.path(CANCEL_MARK)):
                self.stop(job, "CANCELLED")

    def on_alarm(self, signum: int, frame: object) -> None:
        now = time.monotonic()
        for job in list(self.live.values()):
            if job.kill_at is not None and now >= job.kill_at:
                kill_group(job.pid, signal.SIGKILL)
                job.kill_at = None
            elif job.deadline is not None and now >= job.deadline:
                self.stop(job, "TIMEOUT")
        self.arm()

    def stop(self, job: Job, reason: str) -> None:
        if job.reason:
            return
        job.reason = reason
        job.deadline = None
        kill_group(job.pid, signal.SIGTERM)
        job.kill_at = time.monotonic() + float(job.plan.get("grace") or 0)
        self.arm()

    def arm(self) -> None:
        moments = [
            moment
            for job in self.live.values()
            for moment in (job.deadline, job.kill_at)
            if moment is not None
        ]
        if not moments:
            signal.setitimer(signal.ITIMER_REAL, 0)
            return
        signal.setitimer(signal.ITIMER_REAL, max(min(moments) - time.monotonic(), 0.001))

    def finish(self, job: Job, *, exit_code: int | None, detail: str, message: str = "") -> None:
        outcome = {
            "exit_code": exit_code,
            "detail": detail,
            "started": job.started,
            "ended": time.time(),
            "message": message,
        }
        self.unwritten += f"{job.id} {ENDED} {json.dumps(outcome)}\n".encode()
        self.untold.append(job)

    def flush(self) -> bool:
        """Write the outcomes not written yet, then tell of them; False while the disk is
        full (they are told once written)."""
        if not self.write_record():
            return False
        told, self.untold = self.untold, []
        for job in told:
            self.push(job, ENDED)
        tell(self.ended_fifo, [job.id for job in told])
        return True

    def write_record(self) -> bool:
        """Append what the record has not taken yet; False while the disk is full."""
        while self.unwritten:
            try:
                written = os.write(self.record, self.unwritten)
            except OSError as error:
                if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                    raise
                return False
            self.unwritten = self.unwritten[written:]
        return True


def tell(fifo: str, job_ids: list[str]) -> None:
    """The jobs' ids, one per line, into the FIFO if someone waits on it (an engine waiting
    for jobs); it only hastens what polling finds anyway. Each write is at most
    ``select.PIPE_BUF`` bytes, which a pipe never splits nor mixes with another's."""
    if not job_ids:
        return
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # nobody listens (ENXIO), or there is no FIFO yet
        return
    lines = [f"{job_id}\n".encode() for job_id in job_ids]
    per_write = max(1, select.PIPE_BUF // max(map(len, lines)))
    with contextlib.suppress(OSError):  # full of news already
        for start in range(0, len(lines), per_write):
            os.write(fd, b"".join(lines[start : start + per_write]))
    os.close(fd)


def handed_over(job: Job, plans: os.stat_result) -> bool:
    """True if the job's directory links the plans file the runner read (a job whose link
    was never made, or that was handed over again in another file, is not this file's)."""
    try:
        linked = os.stat(job.path(PLANS_FILE))
    except FileNotFoundError:
        return False
    return (linked.st_dev, linked.st_ino) == (plans.st_dev, plans.st_ino)


def same_process(pid: int, ticks: int) -> bool:
    """True if ``pid`` is still the process that started at ``ticks``, and not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return fields[0] != "Z" and int(fields[19]) == ticks


def push(address: dict[str, str], event: str) -> None:
    """One POST to the service; any failure is ignored (polling is the fallback)."""
    import urllib.parse
    import urllib.request

    url = address["url"]
    if not url.startswith(("http://", "https://")):
        return
    body = urllib.parse.urlencode({"event": event, "token": address["token"]}).encode()
    request = urllib.request.Request(url, data=body, method="POST")  # noqa: S310 - http(s) only
    direct = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # no proxy from env
    with contextlib.suppress(Exception), direct.open(request, timeout=PUSH_TIMEOUT):
        pass


def open_streams(plan: dict[str, Any], opened: list[int], nothing: int) -> list[tuple[int, int]]:
    """(target fd, open fd) for stdin, stdout and stderr; one file opened once; ``nothing``
    is the runner's own /dev/null."""
    stdin = nothing
    if plan.get("stdin"):
        stdin = os.open(plan["stdin"], os.O_RDONLY)
        opened.append(stdin)
    streams = [(0, stdin)]
    by_path: dict[str, int] = {}
    for target, path in ((1, plan["stdout"]), (2, plan["stderr"])):
        if path not in by_path:
            by_path[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            opened.append(by_path[path])
        streams.append((target, by_path[path]))
    return streams


def find_program(name: str, env: dict[str, str]) -> str:
    """The file ``execvpe`` would run: ``name`` looked up in the job's own PATH."""
    if "/" in name:
        return name
    for directory in os.get_exec_path(env):
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), name)


def fork_limited(
    program: list[str], env: dict[str, str], streams: list[tuple[int, int]], memory: int
) -> int:
    """Start the program under an address-space limit, which posix_spawn cannot set."""
    error_read, error_write = os.pipe2(os.O_CLOEXEC)
    pid = os.fork()
    if pid == 0:
        try:
            os.setpgid(0, 0)
            for signum in _DEFAULT_IN_JOBS:
                signal.signal(signum, signal.SIG_DFL)
            for target, fd in streams:
                os.dup2(fd, target)
            resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            os.execvpe(program[0], program, env)
        except OSError as error:
            what = program[0] if "/" not in program[0] else error.filename
            os.write(error_write, f"{error.strerror}\0{what}".encode())
        finally:
            os._exit(127)
    os.close(error_write)
    with contextlib.suppress(OSError):  # the child did it already and has exec'd
        os.setpgid(pid, pid)
    failure = read_all(error_read).decode(errors="replace")
    if failure:
        os.waitpid(pid, 0)
        strerror, _, what = failure.partition("\0")
        raise OSError(0, strerror, what)
    return pid


def note(job_dir: str, text: str) -> None:
    """Whatever goes wrong in a runner is kept next to the job, for the backend to show."""
    try:
        with open(os.path.join(job_dir, "runner.log"), "a") as handle:
            handle.write(text + "\n")
    except OSError:
        print(f"{job_dir}: {text}", file=sys.stderr)


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def exit_code_of(status: int) -> int:
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def kill_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except OSError as error:
        if error.errno not in (errno.ESRCH, errno.EPERM):
            raise


def start_ticks(pid: int) -> int:
    """A process's kernel start time: with its pid, it names one process for good."""
    with open(f"/proc/{pid}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[19])
