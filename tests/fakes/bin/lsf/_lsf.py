"""Fake IBM Spectrum LSF commands (bsub, bjobs, bhist, bkill, bstop, bresume) over the small
real batch system in ``tests/fakes/fakesched.py``: the options and output formats of the real
tools as IBM documents them, with jobs that really run as local processes.

``bhist`` reads the event log, which here is every job fakesched ever took: without ``-l``
it prints "Summary of time in seconds spent in various states:" and one line per job (an
array's elements as ``JOBID[INDEX]``, named ``NAME[INDEX]``) under the heading ``JOBID USER
JOB_NAME PEND PSUSP RUN USUSP SSUSP UNKWN TOTAL``, job names cut to their last characters
behind a ``*`` unless ``-w``; by default only unfinished jobs, ``-d`` finished ones, ``-a``
both; ``-S start,end`` keeps jobs submitted in that interval (times ``[year/][month/][day]
[/hour:minute]`` in local time, either end may be left out); "No matching job found" when
none is left.

What the fake does differently from LSF, on purpose:
- ``FAKESCHED_LSF_SECONDS_PER_MINUTE`` (TEST-ONLY knob, default 60) is how many seconds one
  minute of ``bsub -W`` lasts, so walltime tests need not wait minutes.
- ``FAKESCHED_LSF_CLEAN_PERIOD`` (default 3600 s, LSF's default CLEAN_PERIOD) is how long
  ``bjobs -a`` keeps showing finished jobs; after that they are "not found", as at a site.
- Memory and GPU requests are checked for syntax but not enforced; ``-n`` slots are not
  counted (the fake runs ``FAKESCHED_SLOTS`` tasks at once, whatever their size).
- A dependency on one array element (``done(12[3])``) waits for the whole array.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # tests/fakes
from fakesched import ENDED, FakeScheduler, Task

SECONDS_PER_MINUTE = float(os.environ.get("FAKESCHED_LSF_SECONDS_PER_MINUTE", "60"))
CLEAN_PERIOD = float(os.environ.get("FAKESCHED_LSF_CLEAN_PERIOD", "3600"))
FINISHED = ("done", "cancelled", "timeout")  # "never" stays PEND in LSF, never finishes

VALUE_OPTIONS = {
    "-J", "-o", "-oo", "-e", "-eo", "-i", "-n", "-R", "-M", "-W", "-We", "-q", "-P", "-G",
    "-U", "-w", "-env", "-gpu", "-cwd", "-app", "-m", "-sla", "-Lp", "-g", "-u", "-b", "-t",
    "-E", "-Ep", "-c", "-v", "-Jd", "-C", "-D", "-S", "-F", "-p", "-k", "-ext",
}  # fmt: skip
FLAG_OPTIONS = {"-H", "-x", "-N", "-B", "-r", "-rn", "-hl", "-ul"}
REQUIREMENT_SECTION = re.compile(r"(select|order|rusage|span|same|cu|affinity)\[[^\[\]]*\]")
JOB_NAME = re.compile(r"^(?P<name>[^\[\]%]*)(?:\[(?P<indices>[^\]]*)\](?:%(?P<limit>\d+))?)?$")
DEPENDENCY = re.compile(r"^(done|ended|exit)\((\d+)(?:\[\d+\])?\)$")
CONDITIONS = {"done": "afterok", "ended": "afterany", "exit": "afternotok"}
JOB_ID = re.compile(r"^(\d+)(?:\[(\d+)\])?$")


def main(command: Callable[[list[str]], int]) -> None:
    """Run one fake command. Jobs it starts inherit standard output and error from it, and
    the caller reads those until they close: so give the jobs /dev/null and keep the real
    ones for this command alone (duplicated descriptors are not inherited)."""
    sys.stdout = os.fdopen(os.dup(1), "w")
    sys.stderr = os.fdopen(os.dup(2), "w")
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    status = command(sys.argv[1:])
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(status)


class Refused(Exception):
    """What the real command would print before giving up (exit status 255)."""


# -- bsub ------------------------------------------------------------------------------------


def bsub(argv: list[str]) -> int:
    try:
        options, command = _options(argv)
        script = sys.stdin.read() if not command else shlex.join(command) + "\n"
        if not command:
            directives = _script_directives(script)
            options = {**directives, **options, "-R": directives.get("-R", []) + options["-R"]}
        sched = FakeScheduler()
        tasks = _tasks(options, script, sched)
    except Refused as refusal:
        print(refusal, file=sys.stderr)
        return 255
    number = sched.submit(tasks)
    queue = options.get("-q")
    where = f"queue <{queue}>" if queue else "default queue <normal>"
    print(f"Job <{number}> is submitted to {where}.")
    return 0


def _options(argv: list[str]) -> tuple[dict, list[str]]:
    options: dict = {"-R": []}
    position = 0
    while position < len(argv):
        word = argv[position]
        if word in FLAG_OPTIONS:
            options[word] = True
        elif word in VALUE_OPTIONS:
            if position + 1 >= len(argv):
                raise Refused(f"{word}: option requires an argument. Job not submitted.")
            position += 1
            if word == "-R":
                options["-R"].append(argv[position])
            else:
                options[word] = argv[position]
        elif word.startswith("-") and word != "-":
            raise Refused(f"{word}: Illegal option. Job not submitted.")
        else:
            return options, argv[position:]
        position += 1
    return options, []


def _script_directives(script: str) -> dict:
    """The ``#BSUB`` lines at the top of a script given on standard input."""
    words: list[str] = []
    for line in script.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            break
        if stripped.startswith("#BSUB"):
            try:
                words.extend(shlex.split(stripped[len("#BSUB") :]))
            except ValueError as error:
                raise Refused(f"{stripped}: {error}. Job not submitted.") from None
    options, rest = _options(words)
    if rest:
        raise Refused(f"#BSUB: unexpected {rest[0]!r}. Job not submitted.")
    return options


def _tasks(options: dict, script: str, sched: FakeScheduler) -> list[Task]:
    match = JOB_NAME.match(options.get("-J", "job"))
    if match is None or (match["limit"] and not match["indices"]):
        raise Refused("Bad job name. Job not submitted.")
    name = match["name"] or "job"
    indices = _indices(match["indices"]) if match["indices"] is not None else [None]
    limit = int(match["limit"]) if match["limit"] else None
    slots = _slots(options.get("-n", "1"))
    for requirement in options["-R"]:
        if not REQUIREMENT_SECTION.sub("", requirement).strip() == "":
            raise Refused(f"{requirement}: Bad resource requirement syntax. Job not submitted.")
    if "-M" in options and not re.fullmatch(r"\d+(\.\d+)?([KMGTPEZ]B?)?!?", options["-M"]):
        raise Refused(f"{options['-M']}: Bad memory limit. Job not submitted.")
    walltime = _walltime(options["-W"]) if "-W" in options else None
    depends = _depends(options.get("-w"), sched)
    workdir = options.get("-cwd") or os.getcwd()
    spool = sched.root / "spool" / f"job.{uuid.uuid4().hex}.sh"
    spool.parent.mkdir(exist_ok=True)
    spool.write_text(script)
    spool.chmod(0o700)
    host = socket.gethostname().split(".")[0]
    queue = options.get("-q", "normal")
    environment = _environment(options.get("-env", "all"))
    tasks = []
    for position, index in enumerate(indices):
        env = {key: _braces(value) for key, value in environment.items()}
        env.update(
            LSB_JOBID="{number}",
            LSB_JOBNAME=_braces(name) + ("" if index is None else "[{index}]"),
            LSB_SUB_HOST=host,
            LSB_HOSTS=" ".join([host] * slots),
            LSB_MCPU_HOSTS=f"{host} {slots}",
            LSB_DJOB_NUMPROC=str(slots),
            LSB_MAX_NUM_PROCESSORS=str(slots),
            LSB_QUEUE=_braces(queue),
            LS_SUBCWD=_braces(workdir),
            LSB_JOBFILENAME=_braces(str(spool)),
        )
        if index is not None:
            env["LSB_JOBINDEX"] = "{index}"
        if "-P" in options:
            env["LSB_PROJECT_NAME"] = _braces(options["-P"])
        out = options.get("-oo") or options.get("-o")
        err = options.get("-eo") or options.get("-e") or out
        state = "held" if options.get("-H") else "queued"
        if state == "queued" and limit is not None and position >= limit:
            state = "limited"
        tasks.append(
            Task(
                number=0,
                index=index,
                name=name,
                script=str(spool),
                workdir=workdir,
                env=env,
                out=_output_path(out, index),
                err=_output_path(err, index),
                walltime=walltime,
                depends=depends,
                state=state,
                queue=queue,
                extra={
                    "limit": limit,
                    "project": options.get("-P", "default"),
                    "slots": slots,
                    "host": host,
                },
            )
        )
    return tasks


MAX_JOB_ARRAY_SIZE = int(os.environ.get("FAKESCHED_LSF_MAX_JOB_ARRAY_SIZE", "1000"))
"""lsb.params: the most elements an array may have, and its highest index (1,000 unless
the site set it); an array's index list may take 255 characters at the most."""


def _indices(text: str) -> list[int]:
    if len(text) > 255:
        raise Refused("Bad job name. Job not submitted.")
    indices: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+)(?::(\d+))?)?", part.strip())
        if match is None:
            raise Refused("Bad job name. Job not submitted.")
        start = int(match[1])
        end = int(match[2]) if match[2] else start
        step = int(match[3]) if match[3] else 1
        if start < 1 or end < start or step < 1:
            raise Refused("Bad job name. Job not submitted.")
        indices.extend(range(start, end + 1, step))
    if len(set(indices)) != len(indices):
        raise Refused("Bad job name. Job not submitted.")
    if len(indices) > MAX_JOB_ARRAY_SIZE or max(indices) > MAX_JOB_ARRAY_SIZE:
        raise Refused("Job array index too large. Job not submitted.")
    return indices


def _slots(text: str) -> int:
    most = text.split(",")[-1]
    if not most.isdigit() or int(most) < 1:
        raise Refused(f"{text}: Bad argument for option -n. Job not submitted.")
    return int(most)


def _walltime(text: str) -> float:
    limit = text.split("/")[0]
    match = re.fullmatch(r"(?:(\d+):)?(\d+)", limit)
    if match is None:
        raise Refused(f"{text}: Bad RUNLIMIT specification. Job not submitted.")
    minutes = int(match[1] or 0) * 60 + int(match[2])
    return minutes * SECONDS_PER_MINUTE


def _depends(expression: str | None, sched: FakeScheduler) -> list[list[object]]:
    if not expression:
        return []
    depends: list[list[object]] = []
    for term in expression.split("&&"):
        match = DEPENDENCY.match(term.strip())
        if match is None:
            raise Refused(f"{expression}: Job dependency syntax error. Job not submitted.")
        depends.append([CONDITIONS[match[1]], int(match[2])])
    with sched.session() as known:
        numbers = {task.number for task in known if _visible(task)}
    for _, number in depends:
        if number not in numbers:
            raise Refused(f"{number}: No matching job found. Job not submitted.")
    return depends


def _environment(text: str) -> dict[str, str]:
    """``-env "all"``, ``"none"`` or a list such as ``"all, A=1, B"``."""
    chosen: dict[str, str] = {}
    for item in (part.strip() for part in text.split(",")):
        if item == "all":
            chosen.update(os.environ)
        elif item == "none":
            login = ("HOME", "USER", "LOGNAME")
            chosen.update({key: os.environ[key] for key in login if key in os.environ})
        elif "=" in item:
            key, value = item.split("=", 1)
            chosen[key.strip()] = value
        elif item in os.environ:
            chosen[item] = os.environ[item]
    return chosen


def _output_path(template: str | None, index: int | None) -> str:
    if template is None:
        return "/dev/null"  # real LSF mails the output instead
    text = _braces(template).replace("%J", "{number}")
    return text.replace("%I", "0" if index is None else "{index}")


def _braces(text: str) -> str:
    """Protect text from the ``str.format`` that fills in job numbers."""
    return text.replace("{", "{{").replace("}", "}}")


# -- the queue as the other commands see it ----------------------------------------------------


@contextlib.contextmanager
def session() -> Iterator[list[Task]]:
    with FakeScheduler().session() as tasks:
        _release_array_elements(tasks)
        yield tasks


def _release_array_elements(tasks: list[Task]) -> None:
    """Let waiting elements of arrays with a ``%N`` limit queue up as others finish."""
    arrays: dict[int, list[Task]] = {}
    for task in tasks:
        if task.extra.get("limit"):
            arrays.setdefault(task.number, []).append(task)
    for members in arrays.values():
        limit = int(members[0].extra["limit"])  # type: ignore[call-overload]
        active = sum(task.state in ("queued", "running") for task in members)
        for task in sorted(members, key=lambda t: t.index or 0):
            if task.state == "limited" and active < limit:
                task.state = "queued"
                active += 1


def _visible(task: Task) -> bool:
    gone = task.state in FINISHED and task.ended and time.time() - task.ended > CLEAN_PERIOD
    return not gone


def _select(tasks: list[Task], job_id: str) -> list[Task] | None:
    match = JOB_ID.match(job_id)
    if match is None:
        return None
    number, index = int(match[1]), (int(match[2]) if match[2] else None)
    chosen = [
        task
        for task in tasks
        if task.number == number and _visible(task) and (index is None or task.index == index)
    ]
    return sorted(chosen, key=lambda t: t.index or 0) or None


def _stat(task: Task) -> str:
    if task.state in ("queued", "limited", "never"):
        return "PEND"
    if task.state == "held":
        return "PSUSP"
    if task.state == "running":
        return "USUSP" if task.extra.get("suspended") else "RUN"
    if task.state == "done" and task.exit_code == 0:
        return "DONE"
    return "EXIT"


def _pending_reason(task: Task) -> str:
    reasons = {
        "never": "Dependency condition invalid or never satisfied;",
        "limited": "The job array has reached its job slot limit;",
        "held": "The job was suspended by the user while pending;",
    }
    if task.state == "queued":
        if task.depends:
            return "Job dependency condition not satisfied;"
        return "New job is waiting for scheduling;"
    return reasons.get(task.state, "")


def _exit_reason(task: Task) -> str:
    if task.state == "cancelled":
        return "TERM_OWNER: job killed by owner."
    if task.state == "timeout":
        return "TERM_RUNLIMIT: job killed after reaching LSF run time limit."
    return ""


def _stamp(moment: float | None) -> str:
    return time.strftime("%b %e %H:%M", time.localtime(moment)) if moment else ""


def _field(task: Task, name: str) -> str:
    stat = _stat(task)
    ended = stat in ("DONE", "EXIT")
    values = {
        "jobid": str(task.number),
        "jobindex": str(task.index or 0),
        "stat": stat,
        "exit_code": str(task.exit_code) if stat == "EXIT" and task.exit_code is not None else "",
        "exit_reason": _exit_reason(task),
        "pend_reason": _pending_reason(task) if stat in ("PEND", "PSUSP") else "",
        "job_name": task.name if task.index is None else f"{task.name}[{task.index}]",
        "name": task.name if task.index is None else f"{task.name}[{task.index}]",
        "user": task.owner,
        "queue": task.queue,
        "proj_name": str(task.extra.get("project", "default")),
        "from_host": str(task.extra.get("host", "")),
        "exec_host": str(task.extra.get("host", "")) if task.started else "",
        "first_host": str(task.extra.get("host", "")) if task.started else "",
        "slots": str(task.extra.get("slots", 1)),
        "nreq_slot": str(task.extra.get("slots", 1)),
        "submit_time": _stamp(task.submitted),
        "start_time": _stamp(task.started),
        "finish_time": _stamp(task.ended) if ended else "",
        "output_file": task.out,
        "error_file": task.err,
    }
    if name not in values:
        raise Refused(f"{name}: Invalid field name in the -o option")
    return values[name]


# -- bjobs -----------------------------------------------------------------------------------


def bjobs(argv: list[str]) -> int:
    show_all, as_json, header, fields, delimiter, ids = False, False, True, None, None, []
    position = 0
    while position < len(argv):
        word = argv[position]
        if word in ("-a", "-d"):
            show_all = True
        elif word == "-json":
            as_json = True
        elif word == "-noheader":
            header = False
        elif word in ("-w", "-W", "-hms"):
            pass
        elif word in ("-o", "-u", "-q", "-J"):
            position += 1
            if word == "-o":
                fields, delimiter = _format(argv[position])
        elif word.startswith("-"):
            print(f"{word}: Illegal option.", file=sys.stderr)
            return 255
        else:
            ids.append(word)
        position += 1
    if as_json and fields is None:
        print("-json: must be used with -o.", file=sys.stderr)
        return 255
    fields = fields or ["jobid", "user", "stat", "queue", "from_host", "exec_host", "job_name",
                        "submit_time"]  # fmt: skip
    missing: list[str] = []
    with session() as tasks:
        if ids:
            chosen = []
            for job_id in ids:
                found = _select(tasks, job_id)
                if found is None:
                    missing.append(job_id)
                else:
                    chosen.extend(found)
        else:
            chosen = [t for t in tasks if _visible(t) and (show_all or t.state not in FINISHED)]
        try:
            rows = [{name: _field(task, name) for name in fields} for task in chosen]
        except Refused as refusal:
            print(refusal, file=sys.stderr)
            return 255
    for job_id in missing:
        print(f"Job <{job_id}> is not found", file=sys.stderr)
    if as_json:
        records: list[dict[str, str]] = [
            {name.upper(): value for name, value in row.items()} for row in rows
        ]
        records += [{"JOBID": j, "ERROR": f"Job <{j}> is not found"} for j in missing]
        print(json.dumps({"COMMAND": "bjobs", "JOBS": len(records), "RECORDS": records}, indent=2))
    elif rows:
        separator = delimiter if delimiter is not None else " "
        if header:
            print(separator.join(name.upper() for name in fields))
        for row in rows:
            print(separator.join(row[name] or "-" for name in fields))
    elif not missing:
        print("No unfinished job found", file=sys.stderr)
    return 255 if missing and not rows else 0


def _format(text: str) -> tuple[list[str], str | None]:
    fields, delimiter = [], None
    for word in text.split():
        if word.startswith("delimiter="):
            delimiter = word.split("=", 1)[1].strip("'\"")
        else:
            fields.append(word.split(":")[0].lower())
    return fields, delimiter


# -- bhist ------------------------------------------------------------------------------------

BHIST_HEADING = ("JOBID", "USER", "JOB_NAME", "PEND", "PSUSP", "RUN", "USUSP", "SSUSP", "UNKWN",
                 "TOTAL")  # fmt: skip


def bhist(argv: list[str]) -> int:
    which, wide, submitted, ids = "unfinished", False, None, []
    position = 0
    while position < len(argv):
        word = argv[position]
        if word == "-a":
            which = "all"  # overrides -d
        elif word == "-d":
            which = "all" if which == "all" else "finished"
        elif word == "-w":
            wide = True
        elif word in ("-n", "-u", "-J", "-q", "-P", "-C", "-S"):
            if position + 1 >= len(argv):
                print(f"{word}: option requires an argument.", file=sys.stderr)
                return 255
            position += 1
            if word == "-S":
                try:
                    submitted = _interval(argv[position])
                except Refused as refusal:
                    print(refusal, file=sys.stderr)
                    return 255
        elif word.startswith("-"):
            print(f"{word}: Illegal option.", file=sys.stderr)
            return 255
        else:
            ids.append(word)
        position += 1
    with session() as tasks:
        chosen = [t for t in tasks if _in_history(t, which, submitted)]
        if ids:
            chosen = [t for t in chosen if any(t in (_select(tasks, i) or []) for i in ids)]
        rows = [_history_row(task, wide) for task in chosen]
    if not rows:
        print("No matching job found", file=sys.stderr)
        return 255
    print("Summary of time in seconds spent in various states:")
    widths = [max(len(row[i]) for row in [BHIST_HEADING, *rows]) for i in range(10)]
    for row in [BHIST_HEADING, *rows]:
        print("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=True)))
    return 0


def _in_history(task: Task, which: str, submitted: tuple[float, float] | None) -> bool:
    finished = task.state in FINISHED
    if (which == "unfinished" and finished) or (which == "finished" and not finished):
        return False
    return submitted is None or submitted[0] <= task.submitted <= submitted[1]


def _history_row(task: Task, wide: bool) -> tuple[str, ...]:
    now = time.time()
    started = task.started or (task.ended if task.state in FINISHED else None)
    pending = (started or now) - task.submitted
    running = ((task.ended or now) - task.started) if task.started else 0.0
    name = task.name if task.index is None else f"{task.name}[{task.index}]"
    if not wide and len(name) > 10:
        name = "*" + name[-9:]
    job_id = str(task.number) if task.index is None else f"{task.number}[{task.index}]"
    seconds = [int(pending), 0, int(running), 0, 0, 0]
    return (job_id, task.owner, name, *(str(s) for s in seconds), str(sum(seconds)))


def _interval(text: str) -> tuple[float, float]:
    """``start,end``: either may be left out (from the beginning, up to now)."""
    start, comma, end = text.partition(",")
    if not comma:
        raise Refused(f"{text}: Bad time specification.")
    return (_moment(start, 0.0) if start else 0.0, _moment(end, 59.999) if end else time.time())


def _moment(text: str, seconds: float) -> float:
    """``[year/][month/][day][/hour:minute]`` in local time; what is left out is today's."""
    parts = [part for part in text.split("/") if part]
    clock = parts.pop() if parts and ":" in parts[-1] else "0:0"
    try:
        date = [int(part) for part in parts]
        hour, minute = (int(part or 0) for part in clock.split(":"))
    except ValueError:
        raise Refused(f"{text}: Bad time specification.") from None
    if len(date) > 3:
        raise Refused(f"{text}: Bad time specification.")
    today = time.localtime()
    year, month, day = [today.tm_year, today.tm_mon, today.tm_mday][: 3 - len(date)] + date
    return time.mktime((year, month, day, hour, minute, 0, 0, 0, -1)) + seconds


# -- bkill, bstop, bresume ---------------------------------------------------------------------


def bkill(argv: list[str]) -> int:
    return _act(argv, _kill, "is being terminated")


def bstop(argv: list[str]) -> int:
    return _act(argv, _stop, "is being stopped")


def bresume(argv: list[str]) -> int:
    return _act(argv, _resume, "is being resumed")


def _act(argv: list[str], action: object, done: str) -> int:
    assert callable(action)
    status = 0
    if not argv:
        print("Job ID must be specified.", file=sys.stderr)
        return 255
    with session() as tasks:
        for job_id in argv:
            if job_id.startswith("-"):
                print(f"{job_id}: Illegal option.", file=sys.stderr)
                return 255
            members = _select(tasks, job_id)
            if members is None:
                print(f"Job <{job_id}>: No matching job found", file=sys.stderr)
                status = 255
                continue
            problem = action(members)
            if problem:
                print(f"Job <{job_id}>: {problem}", file=sys.stderr)
                status = 255
            else:
                print(f"Job <{job_id}> {done}")
    return status


def _kill(members: list[Task]) -> str | None:
    alive = [task for task in members if task.state not in ENDED or task.state == "never"]
    if not alive:
        return "Job has already finished"
    now = time.time()
    for task in alive:
        if task.state == "running":
            if task.extra.get("suspended") and task.pid:
                _signal(task.pid, signal.SIGCONT)
            task.exit_code = 128 + signal.SIGTERM
        if task.state == "never":
            task.state, task.ended = "cancelled", now
    FakeScheduler().cancel(alive)
    return None


def _stop(members: list[Task]) -> str | None:
    alive = [task for task in members if task.state not in FINISHED]
    if not alive:
        return "Job has already finished"
    for task in alive:
        if task.state in ("queued", "limited", "never"):
            task.state = "held"
        elif task.state == "running" and task.pid:
            _signal(task.pid, signal.SIGSTOP)
            task.extra["suspended"] = True
    return None


def _resume(members: list[Task]) -> str | None:
    stopped = [t for t in members if t.state == "held" or t.extra.get("suspended")]
    if not stopped:
        return "Job is not suspended"
    for task in stopped:
        if task.state == "held":
            task.state = "limited" if task.extra.get("limit") else "queued"
        elif task.pid:
            _signal(task.pid, signal.SIGCONT)
            task.extra["suspended"] = False
    return None


def _signal(pid: int, number: int) -> None:
    with contextlib.suppress(OSError):
        os.killpg(pid, number)
