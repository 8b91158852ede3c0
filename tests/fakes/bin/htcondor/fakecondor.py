"""What the fake HTCondor tools share, on top of ``tests/fakes/fakesched.py``.

Each fake keeps the documented options and output formats of the real tool where jobbridge
meets it: job ids ``cluster.proc``, the job ClassAd attributes of ``condor_q -json`` and
``condor_history -json`` (JobStatus 1 Idle, 2 Running, 3 Removed, 4 Completed, 5 Held),
completed and removed jobs leaving the queue for the history at once, late materialization
(``max_materialize``), and the messages and exit codes of condor_rm / condor_hold /
condor_release. One fakesched task is one HTCondor job (its ``index`` is the ProcId).

``-constraint`` expressions (condor_q, condor_history) and condor_history's ``-since`` are
evaluated as the ClassAd language defines, for the part of it that jobbridge writes:
literals, attribute references (names match whatever their case), ``==`` and ``!=``
(strings compared ignoring case, UNDEFINED if a side is), ``=?=`` and ``=!=`` (identity:
type and value, case counts), ``<``, ``<=``, ``>``, ``>=``, ``&&``, ``||``, ``!`` and
parentheses, with UNDEFINED's three-valued logic. A job matches if the expression is TRUE.
Anything else is refused as a syntax error, as the real tools refuse what they cannot parse.

Site settings, the real defaults unless a test switches them:
- ``FAKESCHED_CONDOR_SUBMIT_ALLOW_GETENV`` (``true``): ``false`` makes ``getenv = true`` a
  submit error, as the pool setting SUBMIT_ALLOW_GETENV does.
- ``FAKESCHED_CONDOR_SYSTEM_HOLD`` (unset): a HoldReasonCode (34 memory exceeded, 12/13
  file transfer failures, ...) with which the system holds every job once it has run a
  second, as a startd or shadow does, with the reason HTCondor gives.
- ``FAKESCHED_CONDOR_HISTORY_KEEP`` (unset: every job): how many ended jobs the rotated
  history files still hold (MAX_HISTORY_LOG times MAX_HISTORY_ROTATIONS, 20 MB and 2 by default,
  which a busy schedd fills in days); older ones are gone from condor_history.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import re
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from fakesched import ENDED, FakeScheduler, Task

IN_QUEUE = ("queued", "running", "held")
HISTORY = ("done", "cancelled", "timeout", "never")
JOB_STATUS = {"queued": 1, "running": 2, "cancelled": 3, "timeout": 3, "never": 3, "done": 4}
HELD = 5


class Expr(str):
    """A ClassAd expression (not a literal): JSON shows it as ``/Expr(...)/``."""


def user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


def schedd_name() -> str:
    return socket.gethostname()


def fail(message: str, code: int = 1) -> None:
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.exit(code)


@contextlib.contextmanager
def session() -> Iterator[list[Task]]:
    """The jobs, advanced to now (and late jobs materialized), under fakesched's lock."""
    with detached():
        scheduler = FakeScheduler()
        with scheduler.session() as tasks:
            materialize(tasks)
            _system_holds(scheduler, tasks)
            _dagman_removals(scheduler, tasks)
            yield tasks


SYSTEM_HOLD_REASONS = {
    34: "Error from slot1@{host}: Job has gone over cgroup memory limit of 1 megabytes."
    " Peak usage: 12 megabytes.  Consider resubmitting with a higher request_memory.",
    12: "Error from slot1@{host}: STARTER at 10.0.0.2 failed to send file(s) to"
    " <10.0.0.1:9618>: error reading from {iwd}/results.tar: (errno 2) No such file or"
    " directory",
    13: "Error from slot1@{host}: SHADOW at 10.0.0.1 failed to send file(s) to"
    " <10.0.0.2:9618>: error reading from {iwd}/input.dat: (errno 2) No such file or"
    " directory",
}


def _system_holds(scheduler: FakeScheduler, tasks: list[Task]) -> None:
    code = os.environ.get("FAKESCHED_CONDOR_SYSTEM_HOLD")
    if not code:
        return
    now = time.time()
    for task in tasks:
        if task.state != "running" or not task.started or now - task.started < 1:
            continue
        _evict(scheduler, task)
        reason = SYSTEM_HOLD_REASONS.get(int(code), f"held by the system ({code})")
        task.state = "held"
        task.extra.update(
            hold_code=int(code),
            hold_reason=reason.format(host=socket.gethostname(), iwd=task.workdir),
            entered=now,
        )


def _dagman_removals(scheduler: FakeScheduler, tasks: list[Task]) -> None:
    """condor_dagman, removed, removes the jobs it submitted."""
    removed = {t.number for t in tasks if t.extra.get("dagman") and t.state == "cancelled"}
    if not removed:
        return
    nodes = [
        task
        for task in tasks
        if task.extra.get("ad", {}).get("DAGManJobId") in removed and task.state not in ENDED
    ]
    for task in nodes:
        task.extra["remove_reason"] = "Removed by DAGMan"
    scheduler.cancel(nodes)


@contextlib.contextmanager
def detached() -> Iterator[None]:
    """Jobs that fakesched starts meanwhile must not inherit this tool's stdout and stderr:
    whoever reads the tool's output would wait for the job to end. What the tool prints
    meanwhile is kept and written afterwards."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    real = sys.stdout, sys.stderr
    kept = io.StringIO(), io.StringIO()
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    os.close(quiet)
    sys.stdout, sys.stderr = kept
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])
        sys.stdout, sys.stderr = real
        sys.stdout.write(kept[0].getvalue())
        sys.stderr.write(kept[1].getvalue())


def materialized(task: Task) -> bool:
    return bool(task.extra.get("materialized", True)) and not task.extra.get("staging")


def in_queue(task: Task) -> bool:
    return materialized(task) and task.state in IN_QUEUE


def in_history(task: Task) -> bool:
    return materialized(task) and task.state in HISTORY


def still_in_history(ended: list[Task]) -> list[Task]:
    """The ended jobs the rotated history files still hold: the newest ones."""
    keep = os.environ.get("FAKESCHED_CONDOR_HISTORY_KEEP")
    if keep is None:
        return ended
    newest = sorted(ended, key=lambda t: t.ended or 0, reverse=True)[: int(keep)]
    return [t for t in ended if t in newest]


def materialize(tasks: list[Task]) -> None:
    """A cluster submitted with max_materialize keeps at most that many jobs in the queue;
    the schedd creates the next ones, in ProcId order, as others leave."""
    clusters: dict[int, list[Task]] = {}
    for task in tasks:
        if task.extra.get("limit") and not task.extra.get("staging"):
            clusters.setdefault(task.number, []).append(task)
    now = time.time()
    for members in clusters.values():
        limit = int(members[0].extra["limit"])
        present = sum(1 for task in members if in_queue(task))
        for task in sorted(members, key=lambda t: t.index or 0):
            if present >= limit:
                break
            if task.extra.get("materialized") or task.state in ENDED:
                continue
            task.extra["materialized"] = True
            task.state = "held" if task.extra.get("hold_code") else "queued"
            task.extra["entered"] = now
            present += 1


def job_ad(task: Task, tasks: list[Task]) -> dict[str, Any]:
    """The job ClassAd as condor_q and condor_history show it (the cluster ad's attributes
    included, as for every job of a cluster)."""
    cluster = [t for t in tasks if t.number == task.number]
    ad: dict[str, Any] = dict(task.extra.get("ad", {}))
    for name, text in task.extra.get("exprs", {}).items():
        ad[name] = Expr(text)
    ad.update(
        ClusterId=task.number,
        ProcId=task.index,
        JobStatus=HELD if task.state == "held" else JOB_STATUS[task.state],
        EnteredCurrentStatus=int(_entered(task)),
        TotalSubmitProcs=len(cluster),
        CompletionDate=int(task.ended) if task.state == "done" and task.ended else 0,
    )
    if task.extra.get("first_start") or task.started:
        ad["JobStartDate"] = int(task.extra.get("first_start") or task.started or 0)
    if task.started:
        ad["JobCurrentStartDate"] = int(task.started)
    if task.state == "done":
        ad.update(ExitBySignal=False, ExitCode=task.exit_code)
    if task.state == "held":
        ad.update(
            HoldReason=task.extra.get("hold_reason", ""),
            HoldReasonCode=task.extra.get("hold_code", 0),
            HoldReasonSubCode=0,
        )
    if task.state == "cancelled":
        ad["RemoveReason"] = task.extra.get("remove_reason", f"via condor_rm (by user {user()})")
    if task.state == "timeout":
        expression = task.extra.get("exprs", {}).get("PeriodicRemove", "")
        ad["RemoveReason"] = (
            f"The job attribute PeriodicRemove expression '{expression}' evaluated to TRUE"
        )
    if task.extra.get("limit"):
        waiting = [t.index or 0 for t in cluster if not t.extra.get("materialized")]
        ad["JobMaterializeLimit"] = int(task.extra["limit"])
        ad["JobMaterializeNextProcId"] = min(waiting, default=len(cluster))
    return ad


def _entered(task: Task) -> float:
    if task.state in ENDED and task.ended:
        return task.ended
    if task.state == "running" and task.started:
        return task.started
    return float(task.extra.get("entered", task.submitted))


# -- arguments naming jobs -----------------------------------------------------------------


def parse_targets(words: list[str]) -> list[tuple[int, int | None] | str]:
    """``cluster``, ``cluster.proc`` or an owner name, as every job tool takes them."""
    targets: list[tuple[int, int | None] | str] = []
    for word in words:
        match = re.fullmatch(r"(\d+)(?:\.(\d+))?", word)
        if match:
            targets.append((int(match[1]), None if match[2] is None else int(match[2])))
        else:
            targets.append(word)
    return targets


def matches(task: Task, targets: list[tuple[int, int | None] | str]) -> bool:
    for target in targets:
        if isinstance(target, str):
            if task.owner == target:
                return True
        elif task.number == target[0] and target[1] in (None, task.index):
            return True
    return False


# -- printing ClassAds ---------------------------------------------------------------------


def projected(ad: dict[str, Any], attributes: list[str] | None) -> dict[str, Any]:
    if attributes is None:
        return ad
    wanted = {name.lower() for name in attributes}
    return {name: value for name, value in ad.items() if name.lower() in wanted}


def print_json(ads: list[dict[str, Any]]) -> None:
    """Like ``-json``: one JSON array of ads, nothing at all when no job matched."""
    if not ads:
        return
    bodies = [json.dumps(_json_ready(ad), indent=2, sort_keys=True) for ad in ads]
    sys.stdout.write("[\n" + "\n,\n".join(bodies) + "\n]\n")


def print_autoformat(ads: list[dict[str, Any]], attributes: list[str]) -> None:
    """Like ``-af``: per job one line of the attributes' values, space-separated; a string
    bare, a missing attribute ``undefined``."""
    for ad in ads:
        lowered = {name.lower(): value for name, value in ad.items()}
        values = [lowered.get(name.lower(), UNDEFINED_WORD) for name in attributes]
        print(" ".join(v if isinstance(v, str) else classad_value(v) for v in values))


UNDEFINED_WORD = "undefined"


def _json_ready(ad: dict[str, Any]) -> dict[str, Any]:
    return {k: f"/Expr({v})/" if isinstance(v, Expr) else v for k, v in ad.items()}


def long_form(ad: dict[str, Any]) -> str:
    """Like ``-long`` (and the ``_CONDOR_JOB_AD`` file): ``Name = value`` lines."""
    return "".join(f"{name} = {classad_value(value)}\n" for name, value in sorted(ad.items()))


def classad_value(value: Any) -> str:
    if isinstance(value, Expr):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def parse_classad_value(text: str) -> Any:
    """A submit file's ``+Name = value`` / ``MY.Name = value``: a literal or an expression."""
    text = text.strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    if re.fullmatch(r"-?\d+\.\d*(?:[eE][-+]?\d+)?", text):
        return float(text)
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return Expr(text)


# -- ClassAd expressions ---------------------------------------------------------------------


class Undefined:
    """The ClassAd value UNDEFINED."""

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED = Undefined()
_TOKEN = re.compile(
    r'\s*(?:(?P<number>\d+(?:\.\d+)?)|(?P<string>"(?:[^"\\]|\\.)*")'
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*)|(?P<op>=\?=|=!=|==|!=|<=|>=|&&|\|\||[<>!()-]))"
)


def matches_expression(expression: str, ad: dict[str, Any]) -> bool:
    """Whether ``expression`` is TRUE for ``ad``."""
    return _Parser(expression, ad).evaluate() is True


class _Parser:
    def __init__(self, text: str, ad: dict[str, Any]) -> None:
        self.tokens = _tokens(text)
        self.position = 0
        self.ad = {name.lower(): value for name, value in ad.items()}

    def evaluate(self) -> Any:
        value = self._or()
        if self.position != len(self.tokens):
            raise SyntaxError(f"unexpected {self.tokens[self.position][1]!r}")
        return value

    def _peek(self) -> str | None:
        if self.position < len(self.tokens) and self.tokens[self.position][0] == "op":
            return self.tokens[self.position][1]
        return None

    def _or(self) -> Any:
        value = self._and()
        while self._peek() == "||":
            self.position += 1
            right = self._and()
            value = (
                True
                if True in (value, right)
                else (UNDEFINED if UNDEFINED in (value, right) else False)
            )
        return value

    def _and(self) -> Any:
        value = self._not()
        while self._peek() == "&&":
            self.position += 1
            right = self._not()
            value = (
                False
                if False in (value, right)
                else (UNDEFINED if UNDEFINED in (value, right) else True)
            )
        return value

    def _not(self) -> Any:
        if self._peek() == "!":
            self.position += 1
            value = self._not()
            return UNDEFINED if value is UNDEFINED else not value
        return self._comparison()

    def _comparison(self) -> Any:
        left = self._primary()
        operator = self._peek()
        if operator not in ("==", "!=", "=?=", "=!=", "<", "<=", ">", ">="):
            return left
        self.position += 1
        return _compare(operator, left, self._primary())

    def _primary(self) -> Any:
        if self.position >= len(self.tokens):
            raise SyntaxError("unexpected end of expression")
        kind, text = self.tokens[self.position]
        self.position += 1
        if kind == "number":
            return float(text) if "." in text else int(text)
        if kind == "string":
            return re.sub(r"\\(.)", r"\1", text[1:-1])
        if kind == "name":
            keyword = text.lower()
            if keyword in ("true", "false"):
                return keyword == "true"
            if keyword == "undefined":
                return UNDEFINED
            value = self.ad.get(keyword, UNDEFINED)
            return UNDEFINED if isinstance(value, Expr) else value
        if text == "(":
            value = self._or()
            if self._peek() != ")":
                raise SyntaxError("missing )")
            self.position += 1
            return value
        if text == "-":
            value = self._primary()
            if isinstance(value, int | float) and not isinstance(value, bool):
                return -value
            return UNDEFINED
        raise SyntaxError(f"unexpected {text!r}")


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    position = 0
    while text[position:].strip():
        match = _TOKEN.match(text, position)
        if match is None:
            raise SyntaxError(f"cannot read {text[position:].strip()[:20]!r}")
        kind = match.lastgroup or "op"
        tokens.append((kind, match[kind]))
        position = match.end()
    return tokens


def _compare(operator: str, left: Any, right: Any) -> Any:
    if operator in ("=?=", "=!="):
        same = type(left) is type(right) and left == right
        return same if operator == "=?=" else not same
    if left is UNDEFINED or right is UNDEFINED:
        return UNDEFINED
    if isinstance(left, str) and isinstance(right, str):
        left, right = left.lower(), right.lower()
    elif isinstance(left, str) or isinstance(right, str):
        return UNDEFINED  # ERROR in the ClassAd language; never TRUE either way
    comparisons = {
        "==": left == right, "!=": left != right, "<": left < right,
        "<=": left <= right, ">": left > right, ">=": left >= right,
    }  # fmt: skip
    return comparisons[operator]


def constraint_value(args: list[str], position: int, option: str) -> str:
    """The expression after ``option``, refused as the tools refuse one they cannot parse."""
    expression = option_value(args, position, option)
    try:
        _Parser(expression, {}).evaluate()
    except SyntaxError as error:
        fail(f"Error: Parse error of constraint expression: {expression} ({error})")
    return expression


def option_value(args: list[str], position: int, option: str) -> str:
    if position + 1 >= len(args):
        fail(f"Error: {option} requires an argument")
    return args[position + 1]


# -- acting on jobs: condor_rm, condor_hold, condor_release --------------------------------

ACTIONS = {
    "remove": ("marked for removal", "remove"),
    "hold": ("held", "hold"),
    "release": ("released", "release"),
}


def act(action: str, argv: list[str]) -> int:
    """condor_rm / condor_hold / condor_release: ``Job C.P <done>`` per named job,
    ``All jobs in cluster C have been <done>`` per cluster; failures on stderr, exit 1."""
    done_word, verb = ACTIONS[action]
    targets: list[str] = []
    everything = False
    position = 0
    while position < len(argv):
        word = argv[position]
        if word in ("-all", "-a"):
            everything = True
        elif word in ("-name", "-pool", "-addr"):
            position += 1
        elif word.startswith("-"):
            fail(f"Unrecognized option: {word}")
        else:
            targets.append(word)
        position += 1
    if not targets and not everything:
        fail(
            f"Usage: condor_{'rm' if action == 'remove' else action} [options] "
            "[cluster | cluster.proc | user]... | -all"
        )
    status = 0
    with session() as tasks:
        scheduler = FakeScheduler()
        if everything:
            chosen = [t for t in tasks if in_queue(t) and t.owner == user()]
            if [t for t in chosen if _act_on(scheduler, action, t) is None]:
                print(f"All jobs have been {done_word}")
                return 0
            sys.stderr.write(f"Couldn't find/{verb} all jobs\n")
            return 1
        for target in parse_targets(targets):
            if isinstance(target, str):
                chosen = [t for t in tasks if in_queue(t) and t.owner == target]
                acted = [t for t in chosen if _act_on(scheduler, action, t) is None]
                if acted:
                    print(f"All jobs of user {target} have been {done_word}")
                else:
                    sys.stderr.write(f"Couldn't find/{verb} all jobs of user {target}\n")
                    status = 1
                continue
            cluster, proc = target
            if proc is None:
                # A whole cluster: its jobs not yet materialized go with it on removal.
                chosen = [
                    t
                    for t in tasks
                    if t.number == cluster
                    and (in_queue(t) or (action == "remove" and not materialized(t)))
                    and t.state not in ENDED
                ]
                acted = [t for t in chosen if _act_on(scheduler, action, t) is None]
                if acted:
                    print(f"All jobs in cluster {cluster} have been {done_word}")
                else:
                    sys.stderr.write(f"Couldn't find/{verb} all jobs in cluster {cluster}.\n")
                    status = 1
                continue
            job = next(
                (t for t in tasks if t.number == cluster and t.index == proc and in_queue(t)),
                None,
            )
            problem = f"Job {cluster}.{proc} not found" if job is None else None
            problem = problem or _act_on(scheduler, action, job)  # type: ignore[arg-type]
            if problem:
                sys.stderr.write(problem + "\n")
                status = 1
            else:
                print(f"Job {cluster}.{proc} {done_word}")
    return status


def _act_on(scheduler: FakeScheduler, action: str, task: Task) -> str | None:
    """Do it; None, or the message HTCondor prints when it cannot."""
    job = f"{task.number}.{task.index}"
    now = time.time()
    if action == "remove":
        task.extra["remove_reason"] = f"via condor_rm (by user {user()})"
        scheduler.cancel([task])
        return None
    if action == "hold":
        if task.state == "held":
            return f"Job {job} already held"
        if task.state == "running":
            _evict(scheduler, task)
        task.state = "held"
        task.extra.update(
            hold_code=1, hold_reason=f"via condor_hold (by user {user()})", entered=now
        )
        return None
    if task.state != "held":
        return f"Job {job} not held to be released"
    task.state = "queued"
    task.extra.pop("hold_code", None)
    task.extra.pop("hold_reason", None)
    task.extra["entered"] = now
    return None


def _evict(scheduler: FakeScheduler, task: Task) -> None:
    """A held running job is stopped; on release it starts again from the beginning."""
    if task.pid:
        with contextlib.suppress(OSError):
            os.killpg(task.pid, signal.SIGTERM)
        deadline = time.time() + 5
        while time.time() < deadline and _running(task.pid):
            time.sleep(0.05)
    rc_file = scheduler.root / "rc" / f"{task.number}.{task.index}"
    rc_file.unlink(missing_ok=True)
    task.extra.setdefault("first_start", task.started)
    task.pid, task.started = None, None


def _running(pid: int) -> bool:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False
