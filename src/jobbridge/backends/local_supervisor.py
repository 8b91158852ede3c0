"""Starts local jobs: one long-lived supervisor per jobs directory, and short-lived runners.

    python -I -S local_supervisor.py JOBS_DIR IDLE_SECONDS

How a job travels (every path below is under JOBS_DIR):

- A submission writes the plan ``<job dir>/job.json``, links ``.spool/<job id>`` to the job
  directory, and writes a byte into the FIFO ``.supervisor/wake``. A FIFO nobody reads
  means no supervisor: the submitter starts one. The spool is on disk, so a job handed
  over is never forgotten, whoever dies.
- The supervisor holds ``.supervisor/lock`` (flock) for as long as it lives, so there is
  never a second one. It forks a runner for the jobs waiting in the spool, at most one
  every ``BATCH_WINDOW`` seconds, so that jobs arriving together share one fork. It is the
  parent of runners only, never of a job: killing it loses nothing. It leaves when it has
  been idle for IDLE_SECONDS, or when asked (a ``q`` in the FIFO) and the spool is empty.
- A runner is a session of its own. It claims each job by publishing ``<job dir>/runner``
  (its pid, its kernel start time, the job's start time) with ``link()``, which fails if
  the file exists, so a job never starts twice; then removes the spool entry, starts the
  program with ``posix_spawn`` in a process group of its own (a fork for a job with a
  memory limit: ``RLIMIT_AS`` must be set in the child), enforces the walltime, turns a
  cancellation (a ``cancel`` file, then SIGTERM to the runner) into TERM to the job's
  group and KILL after the grace period, and writes ``<job dir>/result`` atomically when
  the program is over: lines ``exit_code``, ``detail``, ``started``, ``ended`` as
  ``key=value``, then ``message=`` and the rest of the file.
- When the plan has a ``push`` address (a service runs), the runner tells it that the job
  started and, once the result is written, that it ended: a POST in a thread of its own with
  a short timeout, whose failure changes nothing (polling finds the job as before).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
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
RESULT_FILE = "result"
PLAN_FILE = "job.json"
SPOOL_DIR = ".spool"
STATE_DIR = ".supervisor"
WAKE_FIFO = "wake"
LOCK_FILE = "lock"
PID_FILE = "pid"
LOG_FILE = "log"
QUIT = b"q"
BATCH_WINDOW = 0.004
"""Seconds between two runner forks; jobs arriving meanwhile share the next runner."""
MAX_BATCH = 64
LOCK_PATIENCE = 5.0
"""Seconds a new supervisor waits for one that is leaving to let go of the lock."""
PUSH_TIMEOUT = 2.0
"""Seconds a push to the service may take; a runner waits for its pushes no longer."""

SIGNAL_NAMES = {
    int(getattr(signal, name)): name
    for name in dir(signal)
    if name.startswith("SIG") and not name.startswith(("SIG_", "SIGRT"))
}
_CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
_DEFAULT_IN_JOBS = (*_CANCEL_SIGNALS, signal.SIGALRM, signal.SIGCHLD, signal.SIGPIPE)


# -- the supervisor ------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    jobs_dir, idle = argv[0], float(argv[1])
    state = os.path.join(jobs_dir, STATE_DIR)
    os.makedirs(state, exist_ok=True)
    os.makedirs(os.path.join(jobs_dir, SPOOL_DIR), exist_ok=True)
    log = os.open(os.path.join(state, LOG_FILE), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.dup2(log, 2)
    os.close(log)
    lock = os.open(os.path.join(state, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o600)
    if not _take_lock(lock, os.path.join(state, WAKE_FIFO)):
        return  # another supervisor serves this directory
    Supervisor(jobs_dir, idle, lock).serve()


def _take_lock(lock: int, fifo: str) -> bool:
    """True once this process holds the lock; False if another supervisor is serving."""
    deadline = time.monotonic() + LOCK_PATIENCE
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            pass
        if is_served(fifo) or time.monotonic() > deadline:
            return False
        time.sleep(0.01)  # the holder is leaving: it has closed the FIFO already


def is_served(fifo: str) -> bool:
    """True if a supervisor reads the FIFO."""
    try:
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        return False
    return True


class Supervisor:
    def __init__(self, jobs_dir: str, idle: float, lock: int) -> None:
        self.jobs_dir = jobs_dir
        self.spool = os.path.join(jobs_dir, SPOOL_DIR)
        self.state = os.path.join(jobs_dir, STATE_DIR)
        self.idle = idle
        self.lock = lock
        fifo = os.path.join(self.state, WAKE_FIFO)
        with contextlib.suppress(FileExistsError):
            os.mkfifo(fifo, 0o600)
        # Read and write, so that the FIFO never reads as closed when submitters come and go.
        self.wake = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        self.runners: dict[int, list[str]] = {}
        self.handed: set[str] = set()
        self.quitting = False
        write_atomically(
            os.path.join(self.state, PID_FILE), f"{os.getpid()} {start_ticks(os.getpid())}\n"
        )

    def serve(self) -> None:
        last_fork = 0.0
        last_busy = time.monotonic()
        while True:
            self.reap()
            waiting = [name for name in self.waiting() if name not in self.handed]
            now = time.monotonic()
            if waiting:
                last_busy = now
                pause = last_fork + BATCH_WINDOW - now
                if pause <= 0:
                    self.fork_runner(waiting[:MAX_BATCH])
                    last_fork = now
                    continue
            elif self.quitting or now - last_busy >= self.idle:
                break
            else:
                pause = min(1.0, self.idle - (now - last_busy))
            self.sleep(pause)
        self.leave()

    def sleep(self, seconds: float) -> None:
        ready, _, _ = select.select([self.wake], [], [], max(seconds, 0.0))
        if ready:
            try:
                while data := os.read(self.wake, 65536):
                    self.quitting = self.quitting or QUIT in data
            except BlockingIOError:
                pass

    def waiting(self) -> list[str]:
        try:
            return sorted(os.listdir(self.spool))
        except FileNotFoundError:
            return []

    def reap(self) -> None:
        while self.runners:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                pid = 0
            if not pid:
                return
            self.handed.difference_update(self.runners.pop(pid, ()))

    def fork_runner(self, names: list[str]) -> None:
        job_dirs = []
        for name in names:
            try:
                job_dirs.append((name, os.readlink(os.path.join(self.spool, name))))
            except OSError:
                continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(self.wake)  # a runner must not look like a supervisor,
                os.close(self.lock)  # nor hold its lock
                os.setsid()
                code = Batch(self.spool, job_dirs).run()
            finally:
                os._exit(code)
        self.runners[pid] = names
        self.handed.update(names)

    def leave(self) -> None:
        """Stop listening first: a submitter that cannot wake us starts a new supervisor,
        and whatever reached the spool before is handed to a runner now."""
        os.close(self.wake)
        waiting = self.waiting()
        for start in range(0, len(waiting), MAX_BATCH):
            self.fork_runner(waiting[start : start + MAX_BATCH])
        pid_file = os.path.join(self.state, PID_FILE)
        try:
            with open(pid_file) as handle:
                if handle.read().split()[0] == str(os.getpid()):
                    os.unlink(pid_file)
        except (OSError, IndexError):
            pass


# -- a runner: the parent of a batch of jobs ----------------------------------------------


class Job:
    def __init__(self, job_dir: str, plan: dict[str, Any]) -> None:
        self.job_dir = job_dir
        self.plan = plan
        self.pid = 0
        self.started = 0.0
        self.deadline: float | None = None
        self.kill_at: float | None = None
        self.reason = ""

    def path(self, name: str) -> str:
        return os.path.join(self.job_dir, name)


class Batch:
    """Starts jobs, waits for them all, and records how each ended."""

    def __init__(self, spool: str, job_dirs: list[tuple[str, str]]) -> None:
        self.spool = spool
        self.job_dirs = job_dirs
        self.live: dict[int, Job] = {}
        self.identity = f"{os.getpid()} {start_ticks(os.getpid())}"
        self.look_for_cancels = False
        self.pushes: list[threading.Thread] = []
        self.deferred: list[tuple[Job, str]] | None = []
        """Pushes held back while jobs start: a runner forks only before it has threads."""

    def run(self) -> int:
        for signum in _CANCEL_SIGNALS:
            signal.signal(signum, self.on_cancel)
        signal.signal(signal.SIGALRM, self.on_alarm)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for name, job_dir in self.job_dirs:
            try:
                self.take(name, job_dir)
            except Exception as error:  # one bad job never stops the others
                note(job_dir, f"the runner could not start the job: {error!r}")
        held, self.deferred = self.deferred or [], None
        for started in self.live.values():
            self.push(started, "started")
        for ended, event in held:
            self.push(ended, event)
        while self.live:
            try:
                pid, status = os.waitpid(-1, 0)
            except ChildProcessError:
                break
            job = self.live.pop(pid, None)
            if job is not None:
                kill_group(pid, signal.SIGKILL)  # leftovers of the job go with it
                self.finish(job, exit_code=exit_code_of(status), detail=self.detail_of(job, status))
        deadline = time.monotonic() + PUSH_TIMEOUT
        for pushing in self.pushes:
            pushing.join(max(0.0, deadline - time.monotonic()))
        return 0

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

    def take(self, name: str, job_dir: str) -> None:
        with open(os.path.join(job_dir, PLAN_FILE)) as handle:
            job = Job(job_dir, json.load(handle))
        job.started = time.time()
        if not self.claim(job):
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self.spool, name))
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
        """Publish this runner as the job's, unless another runner has it already."""
        temporary = job.path(f"{RUNNER_FILE}.{os.getpid()}.tmp")
        with open(temporary, "w") as handle:
            handle.write(f"{self.identity} {job.started!r}\n")
        try:
            os.link(temporary, job.path(RUNNER_FILE))
        except FileExistsError:
            return False
        finally:
            os.unlink(temporary)
        return True

    def start(self, job: Job) -> str:
        """Start the program; on failure say why, the way a shell would."""
        plan = job.plan
        program: list[str] = plan["argv"]
        env: dict[str, str] = plan["env"]
        opened: list[int] = []
        try:
            streams = open_streams(plan, opened)
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
        code = "" if exit_code is None else str(exit_code)
        write_atomically(
            job.path(RESULT_FILE),
            f"exit_code={code}\ndetail={detail}\nstarted={job.started!r}\n"
            f"ended={time.time()!r}\nmessage={message}",
        )
        self.push(job, "ended")


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


def open_streams(plan: dict[str, Any], opened: list[int]) -> list[tuple[int, int]]:
    """(target fd, open fd) for stdin, stdout and stderr; one file opened once."""
    stdin = os.open(plan.get("stdin") or os.devnull, os.O_RDONLY)
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


def write_atomically(path: str, text: str) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


if __name__ == "__main__":
    main(sys.argv[1:])
