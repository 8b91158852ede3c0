"""Runs one local job and records how it ended.

    python -I -S local_runner.py JOB_DIR DIRECTORY STDIN STDOUT STDERR WALLTIME MEMORY GRACE \\
        -- PROGRAM [ARGUMENTS...]

An empty STDIN, WALLTIME or MEMORY means none. It imports only modules built into the
interpreter, because its start-up time is paid once per job.

It detaches (the submitter may exit or be killed), starts the program in a process group of
its own, enforces the walltime, turns SIGTERM into a cancellation (TERM to the whole group,
KILL after GRACE seconds), and when the program is over writes ``result`` atomically: lines
``exit_code``, ``detail``, ``started``, ``ended`` as ``key=value``, then ``message=`` and the
rest of the file. ``runner`` (pid, kernel start time, start time) lets the backend tell a
live runner from a dead one.
"""

from __future__ import annotations

import errno
import os
import resource
import sys
import time

TYPE_CHECKING = False  # what typing.TYPE_CHECKING says, without importing typing (slow)
if TYPE_CHECKING:
    import signal
else:  # the C module: `signal` imports enum, which is slow to load
    import _signal as signal

CANCEL_MARK = "cancel"
RUNNER_FILE = "runner"
RESULT_FILE = "result"
SIGNAL_NAMES = {
    getattr(signal, name): name
    for name in dir(signal)
    if name.startswith("SIG") and not name.startswith(("SIG_", "SIGRT"))
}
_CANCEL_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Plan:
    def __init__(self, argv: list[str]) -> None:
        job_dir, directory, stdin, stdout, stderr, walltime, memory, grace, dashes, *program = argv
        if dashes != "--" or not program:
            raise SystemExit("usage: see the docstring of local_runner.py")
        self.job_dir = job_dir
        self.directory = directory
        self.stdin = stdin or os.devnull
        self.stdout = stdout
        self.stderr = stderr
        self.walltime = float(walltime) if walltime else 0.0
        self.memory = int(memory) if memory else 0
        self.grace = float(grace)
        self.program = program


def main(argv: list[str]) -> None:
    plan = Plan(argv)
    if os.fork():
        os._exit(0)
    # Whatever goes wrong in the runner itself is kept next to the job, for the backend to show.
    log = os.open(os.path.join(plan.job_dir, "runner.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(log, 2)
    os.close(log)
    Runner(plan).run()


class Runner:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.child = 0
        self.reason = ""

    def path(self, name: str) -> str:
        return os.path.join(self.plan.job_dir, name)

    def run(self) -> None:
        for signum in _CANCEL_SIGNALS:
            signal.signal(signum, self.on_cancel)
        signal.signal(signal.SIGALRM, self.on_alarm)
        started = time.time()
        write_atomically(self.path(RUNNER_FILE), f"{os.getpid()} {start_ticks()} {started!r}\n")
        if os.path.exists(self.path(CANCEL_MARK)):
            self.finish(started, exit_code=None, detail="CANCELLED")
            return
        error_read, error_write = os.pipe2(os.O_CLOEXEC)
        self.child = os.fork()
        if self.child == 0:
            os.close(error_read)
            self.exec_program(error_write)
        os.close(error_write)
        try:  # noqa: SIM105 - contextlib is slow to import
            os.setpgid(self.child, self.child)
        except OSError:  # the child did it already and has exec'd
            pass
        if self.reason:  # cancelled while forking
            self.stop_now()
        exec_error = read_all(error_read).decode(errors="replace")
        if self.plan.walltime and not exec_error and not self.reason:
            signal.setitimer(signal.ITIMER_REAL, self.plan.walltime)
        status = wait_for(self.child)
        signal.setitimer(signal.ITIMER_REAL, 0)
        kill_group(self.child, signal.SIGKILL)  # leftovers of the job go with it
        if exec_error:
            self.finish(started, exit_code=127, detail="EXEC_FAILED", message=exec_error)
        else:
            self.finish(started, exit_code=exit_code_of(status), detail=self.detail_of(status))

    def detail_of(self, status: int) -> str:
        if self.reason:
            return self.reason
        if os.WIFSIGNALED(status):
            return SIGNAL_NAMES.get(os.WTERMSIG(status), "SIGNALED")
        return ""

    def exec_program(self, error_pipe: int) -> None:
        try:
            os._exit(self.become_program(error_pipe))
        except BaseException as error:  # report anything to the runner, never run on
            os.write(error_pipe, f"{type(error).__name__}: {error}".encode())
        os._exit(127)

    def become_program(self, error_pipe: int) -> int:
        """Set the process up and exec the program; on failure say why and return."""
        os.setpgid(0, 0)
        for signum in (*_CANCEL_SIGNALS, signal.SIGALRM):
            signal.signal(signum, signal.SIG_DFL)
        try:
            self.redirect()
            os.chdir(self.plan.directory)
        except OSError as error:
            os.write(error_pipe, f"{error.strerror}: {error.filename}".encode())
            return 127
        if self.plan.memory:
            resource.setrlimit(resource.RLIMIT_AS, (self.plan.memory, self.plan.memory))
        program = self.plan.program
        try:
            os.execvpe(program[0], program, os.environ)
        except OSError as error:
            what = program[0] if "/" not in program[0] else error.filename
            os.write(error_pipe, f"{error.strerror}: {what}".encode())
        return 127

    def redirect(self) -> None:
        os.dup2(os.open(self.plan.stdin, os.O_RDONLY), 0)
        opened: dict[str, int] = {}
        for fd, path in ((1, self.plan.stdout), (2, self.plan.stderr)):
            if path not in opened:
                opened[path] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(opened[path], fd)

    def on_cancel(self, signum: int, frame: object) -> None:
        if not self.reason:
            self.reason = "CANCELLED"
            if self.child:
                self.stop_now()

    def on_alarm(self, signum: int, frame: object) -> None:
        if not self.reason:
            self.reason = "TIMEOUT"
            self.stop_now()
        else:
            kill_group(self.child, signal.SIGKILL)

    def stop_now(self) -> None:
        kill_group(self.child, signal.SIGTERM)
        signal.setitimer(signal.ITIMER_REAL, max(self.plan.grace, 0.001))

    def finish(
        self, started: float, *, exit_code: int | None, detail: str, message: str = ""
    ) -> None:
        code = "" if exit_code is None else str(exit_code)
        write_atomically(
            self.path(RESULT_FILE),
            f"exit_code={code}\ndetail={detail}\nstarted={started!r}\nended={time.time()!r}\n"
            f"message={message}",
        )


def read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 4096):
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks)


def wait_for(pid: int) -> int:
    try:
        return os.waitpid(pid, 0)[1]
    except ChildProcessError:
        return 0


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


def start_ticks() -> int:
    """The kernel's start time of this process: with the pid, it names one process for good."""
    with open(f"/proc/{os.getpid()}/stat") as handle:
        return int(handle.read().rsplit(")", 1)[1].split()[19])


def write_atomically(path: str, text: str) -> None:
    temporary = f"{path}.tmp"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.replace(temporary, path)


if __name__ == "__main__":
    main(sys.argv[1:])
