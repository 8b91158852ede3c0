"""Starts local jobs: one long-lived supervisor per jobs directory, which forks short-lived
runners (``local_runner``).

    python -I -S local_supervisor.py JOBS_DIR IDLE_SECONDS

How a job travels (every path below is under JOBS_DIR). Creating a file is the dear part of
a job's bookkeeping (an inode on a local disk, a metadata server's round trip on a shared
one), so a job costs its directory and its two output files; everything else is shared by
the jobs handed over or started together, through hard links:

- A submission writes the plans of one job or of a batch of jobs as JSON lines into one
  file, links it into each job's directory as ``plans`` (the job counts as handed over
  from then on), then into the spool as ``.spool/<first job id>+<number of jobs>``, and
  writes a byte into the FIFO ``.supervisor/wake``. A FIFO nobody reads means no
  supervisor: the submitter starts one. The spool is on disk, so a job handed over is
  never forgotten, whoever dies.
- The supervisor holds ``.supervisor/lock`` (flock) for as long as it lives, so there is
  never a second one. It forks a runner for the jobs waiting in the spool, at most one
  every ``BATCH_WINDOW`` seconds, so that jobs arriving together share one fork. It is the
  parent of runners only, never of a job: killing it loses nothing. It leaves when it has
  been idle for IDLE_SECONDS, or when asked (a ``q`` in the FIFO) and the spool is empty.
  Before it forks a runner it checks that its own code and the runner's are still the
  files on disk: if jobbridge was upgraded meanwhile, it runs itself again as the new code
  (same process, so its runners stay its children), and no job starts under a runner
  that reads another version's plans.
- A runner (``local_runner``) starts the jobs of the spool entries it was given, claims
  each, enforces limits and records every outcome.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import select
import sys
import time

if __package__:
    from jobbridge.backends import local_runner as runner
else:  # run as a script (python -I -S, no site-packages): the runner lies beside it
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import local_runner as runner  # type: ignore[import-not-found,no-redef]

SPOOL_DIR = ".spool"
STATE_DIR = ".supervisor"
RECORDS_DIR = "runners"
WAKE_FIFO = "wake"
LOCK_FILE = "lock"
PID_FILE = "pid"
LOG_FILE = "log"
QUIT = b"q"
BATCH_WINDOW = 0.02
"""Seconds between two runner forks in a stream of jobs, unless a runner's worth is waiting;
jobs arriving meanwhile share the next runner."""
MAX_BATCH = 64
"""Jobs one runner starts at most, and jobs one plans file holds."""
LOCK_PATIENCE = 5.0
"""Seconds a new supervisor waits for one that is leaving to let go of the lock."""


def spool_name(first_job_id: str, count: int) -> str:
    return f"{first_job_id}+{count}"


def jobs_in(spool_entry: str) -> int:
    """How many jobs a spool entry hands over, by its name."""
    count = spool_entry.rpartition("+")[2]
    return int(count) if count.isdigit() else 1


# -- the supervisor ------------------------------------------------------------------------


def main(argv: list[str]) -> None:
    jobs_dir, idle = argv[0], float(argv[1])
    state = os.path.join(jobs_dir, STATE_DIR)
    os.makedirs(os.path.join(state, RECORDS_DIR), exist_ok=True)
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
        self.records = os.path.join(self.state, RECORDS_DIR)
        self.idle = idle
        self.lock = lock
        fifo = os.path.join(self.state, WAKE_FIFO)
        with contextlib.suppress(FileExistsError):
            os.mkfifo(fifo, 0o600)
        # Read and write, so that the FIFO never reads as closed when submitters come and go.
        self.wake = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        self.runners: dict[int, list[str]] = {}
        self.handed: set[str] = set()
        self.resting: dict[str, float] = {}
        """Spool entries a runner left behind (it could not start every job), and until
        when they rest: a full disk must not make a runner a millisecond."""
        self.quitting = False
        self.code = code_stamp()
        self.forget_dead_runners()
        write_atomically(
            os.path.join(self.state, PID_FILE), f"{os.getpid()} {runner.start_ticks(os.getpid())}\n"
        )

    def serve(self) -> None:
        last_fork = 0.0
        last_busy = time.monotonic()
        while True:
            self.reap()
            now = time.monotonic()
            waiting = [name for name in self.waiting() if self.ready(name, now)]
            if waiting:
                last_busy = now
                if code_stamp() != self.code:
                    self.renew()
                pause = last_fork + BATCH_WINDOW - now
                if pause <= 0 or sum(map(jobs_in, waiting)) >= MAX_BATCH:
                    self.fork_runner(next_batch(waiting))
                    last_fork = now
                    continue
            elif self.quitting or now - last_busy >= self.idle:
                break
            else:
                pause = min(1.0, self.idle - (now - last_busy))
            self.sleep(pause)
        self.leave()

    def renew(self) -> None:
        """Run again as the code now on disk. The lock and the FIFO close with the old image
        (opened close-on-exec); a submitter that finds nobody listening meanwhile starts a
        supervisor, and one of the two gives way. If the new code cannot be run, leave the
        spool to the next supervisor a submitter starts."""
        script = os.path.abspath(__file__)
        sys.stderr.flush()
        try:
            os.execv(
                sys.executable, [sys.executable, "-I", "-S", script, self.jobs_dir, repr(self.idle)]
            )
        except OSError as error:
            print(f"cannot run {script} anew ({error!r}): leaving", file=sys.stderr, flush=True)
            os._exit(1)

    def sleep(self, seconds: float) -> None:
        ready, _, _ = select.select([self.wake], [], [], max(seconds, 0.0))
        if ready:
            try:
                while data := os.read(self.wake, 65536):
                    self.quitting = self.quitting or QUIT in data
            except BlockingIOError:
                pass

    def ready(self, name: str, now: float) -> bool:
        if name in self.handed:
            return False
        return self.resting.get(name, 0.0) <= now

    def waiting(self) -> list[str]:
        try:
            return sorted(name for name in os.listdir(self.spool) if not name.startswith("."))
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
            names = self.runners.pop(pid, [])
            self.handed.difference_update(names)
            now = time.monotonic()
            self.resting = {name: until for name, until in self.resting.items() if until > now}
            for name in set(names) & set(self.waiting()):
                self.resting[name] = now + runner.RECORD_RETRY
            self.forget_dead_runners()

    def forget_dead_runners(self) -> None:
        """Unname the records of runners that were killed (the jobs' links keep them)."""
        try:
            names = os.listdir(self.records)
        except FileNotFoundError:
            return
        for name in names:
            pid, _, ticks = name.partition(".")
            if ticks.isdigit() and not runner.same_process(int(pid), int(ticks)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(self.records, name))

    def fork_runner(self, names: list[str]) -> None:
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.close(self.wake)  # a runner must not look like a supervisor,
                os.close(self.lock)  # nor hold its lock
                os.setsid()
                code = runner.Batch(self.spool, self.records, names).run()
            finally:
                os._exit(code)
        self.runners[pid] = names
        self.handed.update(names)

    def leave(self) -> None:
        """Stop listening first: a submitter that cannot wake us starts a new supervisor,
        and whatever reached the spool before is handed to a runner now."""
        os.close(self.wake)
        waiting = self.waiting()
        while waiting:
            batch = next_batch(waiting)
            self.fork_runner(batch)
            waiting = waiting[len(batch) :]
        pid_file = os.path.join(self.state, PID_FILE)
        try:
            with open(pid_file) as handle:
                if handle.read().split()[0] == str(os.getpid()):
                    os.unlink(pid_file)
        except (OSError, IndexError):
            pass


def code_stamp() -> list[tuple[int, int, int] | None]:
    """What identifies the files of the supervisor's and the runner's code as they are now."""
    stamps: list[tuple[int, int, int] | None] = []
    for path in (os.path.abspath(__file__), os.path.abspath(runner.__file__)):
        try:
            found = os.stat(path)
        except OSError:
            stamps.append(None)
        else:
            stamps.append((found.st_ino, found.st_mtime_ns, found.st_size))
    return stamps


def next_batch(waiting: list[str]) -> list[str]:
    """The first spool entries, as many as one runner starts (at least one)."""
    jobs = 0
    for taken, name in enumerate(waiting):
        jobs += jobs_in(name)
        if jobs >= MAX_BATCH:
            return waiting[: taken + 1]
    return waiting


def write_atomically(path: str, text: str) -> None:
    temporary = f"{path}.{os.getpid()}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


if __name__ == "__main__":
    main(sys.argv[1:])
