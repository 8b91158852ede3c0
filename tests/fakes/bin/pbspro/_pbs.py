"""Fake PBS Professional (OpenPBS) and PBS/Torque commands (qsub, qstat, qdel, qhold, qrls)
over the small real batch system in ``tests/fakes/fakesched.py``: the options and output
formats of the real tools as their manuals document them, with jobs that really run as local
processes. The scripts in ``bin/pbspro/`` and ``bin/torque/`` call ``main`` with their flavour.

PBS Pro, as documented (qsub.1B, qstat.1B, pbs_job_attributes.7B of OpenPBS):
- ``qsub`` prints ``123.server`` (arrays ``123[].server``); ``-J X-Y[:Z][%N]`` needs at least
  two indices; a job waiting for its dependencies is held with a system hold (``H``, ``s``).
- ``qstat -f -F json`` prints ``{"timestamp", "pbs_version", "pbs_server", "Jobs": {...}}``;
  ``-x`` adds finished jobs (``F``; members of arrays ``X``) with ``Exit_status``; ``-t``
  lists array members ``123[4].server``. Times are ctime(3) strings.
- A job whose dependency can never be met is deleted by the server: it ends ``F`` without
  having run. Walltime kills end with ``Exit_status`` -29 (JOB_EXEC_KILL_WALLTIME); a job
  killed by ``qdel`` while running with 271 (256 + SIGTERM).
- ``qdel`` of a finished job: ``qdel: Job <id> has finished`` (exit status 35 = 15139 % 256).
- ``qstat -B -f -F json`` prints the same prologue and ``"Server": {name: {attributes}}``
  (qstat.1B, qstat.c ``display_statserver``); only attributes that are set are shown, so
  ``job_history_enable`` and ``job_history_duration`` appear where the site set them.

Torque, as documented (qsub.1, qstat.1 of Torque and Adaptive Computing's guides):
- ``-t`` takes any list of indices and ``%N``; ``PBS_ARRAYID``; ``-l nodes=N:ppn=P``.
- ``qstat -x`` is XML (``<Data><Job><Job_Id>...``) of the full status; ``-t`` expands arrays.
  Ended jobs stay ``C`` with ``exit_status`` for the server's ``keep_completed`` seconds.
- Walltime kills end with ``exit_status`` -11 (JOB_EXEC_OVERLIMIT_WT); a job deleted because
  of a dependency gets ``exit_status`` 271 and the comment "Job deleted as result of
  dependency on job ...".
- ``qstat -B -f`` prints ``Server: name`` and indented ``attribute = value`` lines (no XML
  for servers), ``keep_completed`` among them when it is set.

Site settings, the real defaults unless a test switches them (``FAKESCHED_*``):
- ``FAKESCHED_PBS_HISTORY``: PBS Pro's ``job_history_enable``, off (``0``) as shipped. Then
  the server rejects every ``qstat -x``/``-H`` request as a whole (PBSE_JOBHISTNOTSET,
  15140): qstat prints the JSON prologue only, says "PBS is not configured to maintain job
  history" on stderr and exits 0. ``FAKESCHED_PBS_HISTORY_DURATION`` (two weeks).
- ``FAKESCHED_PBS_JSON``: ``broken`` (released OpenPBS up to 23.06 writes ``Variable_List``
  values as they are: ``"N":005``, stray backslashes, ``inf``/``nan``, exported bash
  functions; ``-V`` puts the whole environment there) or ``fixed``.
- ``FAKESCHED_PBS_VERSION``: ``23.06`` (walltime kills end with -29); below ``22.05`` they end
  with 256 + the signal (271), as older servers report them.
- ``FAKESCHED_LOGIN_TZ``: the time zone of the login node (a POSIX TZ string, ``IST-5:30``
  unless set), in which qstat prints ctime(3) times unless its own ``TZ`` says otherwise.
- Every ``qstat`` appends to ``$FAKESCHED_DIR/roundtrips`` one line per server request: one
  per job id named, unless ``-E`` groups them into one request.
- A dependency on a job the server does not know (any more) aborts the new job: it ends at
  once, deleted as a result of that dependency.
- ``FAKESCHED_TORQUE_KEEP_COMPLETED``: Torque's ``keep_completed``, unset (0) as before 6.1:
  an ended job leaves ``qstat`` at once. ``FAKESCHED_TORQUE_XML``: ``raw`` (Torque writes
  values into ``qstat -x`` unescaped, so a ``&`` or ``<`` in any attribute makes the XML
  ill-formed) or ``escaped``.
- Resources are checked for syntax, not enforced; ``%N`` is recorded, not enforced (the fake
  runs ``FAKESCHED_SLOTS`` tasks at once, whatever their size). Dependencies know afterok,
  afterany and afternotok; one on a member of an array waits for the whole array.
- ``PBS_NODEFILE`` and ``TMPDIR`` live under ``$FAKESCHED_DIR``; jobs start in ``$HOME``.
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shlex
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))  # tests/fakes
from fakesched import ENDED, FakeScheduler, Task

PBSPRO, TORQUE = "pbspro", "torque"
HISTORY = os.environ.get("FAKESCHED_PBS_HISTORY", "0") != "0"
HISTORY_DURATION = float(os.environ.get("FAKESCHED_PBS_HISTORY_DURATION", 14 * 86400))
BROKEN_JSON = os.environ.get("FAKESCHED_PBS_JSON", "broken") != "fixed"
PBS_VERSION = os.environ.get("FAKESCHED_PBS_VERSION", "23.06")
KEEP_COMPLETED_SET = os.environ.get("FAKESCHED_TORQUE_KEEP_COMPLETED")
KEEP_COMPLETED = float(KEEP_COMPLETED_SET or "0")
RAW_XML = os.environ.get("FAKESCHED_TORQUE_XML", "raw") != "escaped"
NO_HISTORY = 15140  # PBSE_JOBHISTNOTSET
if "TZ" not in os.environ:  # qstat formats times in the login node's zone
    os.environ["TZ"] = os.environ.get("FAKESCHED_LOGIN_TZ", "IST-5:30")
time.tzset()

QSUB_OPTIONS = {
    PBSPRO: "a:A:c:C:e:fGhIj:J:k:l:m:M:N:o:p:P:q:r:R:S:u:v:VW:XzK:",
    TORQUE: "a:A:b:c:C:d:D:e:fFhIj:k:l:m:M:N:o:p:P:q:r:S:t:T:u:v:Vw:W:xXz",
}
JOB_ID = re.compile(r"^(?P<number>\d+)(?:\[(?P<index>\d*)\])?(?:\.(?P<server>[^@\s]+))?(?:@\S+)?$")
NODE_SPEC = r"[\w.-]+(:[\w.=-]+)*(\+[\w.-]+(:[\w.=-]+)*)*"
DEPEND_TYPES = ("afterok", "afterany", "afternotok")
UNKNOWN = 15001  # PBSE_UNKJOBID: exit status 153
BADSTATE = 15018  # PBSE_BADSTATE: 170
HISTJOBID = 15139  # PBSE_HISTJOBID: 35
EXIT_WALLTIME = {PBSPRO: -29, TORQUE: -11}
OLD_WALLTIME = 256 + 15  # PBS Pro before 22.05: the signal that ended the job
KILLED_BY_SIGTERM = 256 + 15
TORQUE_TIMES = ("ctime", "etime", "mtime", "qtime", "start_time", "comp_time")  # epochs in XML


class Refused(Exception):
    """What the real command would print before giving up, and its exit status."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def main(flavour: str, command: str, argv: list[str]) -> int:
    handlers = {"qsub": qsub, "qstat": qstat, "qdel": qdel, "qhold": qhold, "qrls": qrls}
    try:
        return handlers[command](flavour, argv)
    except Refused as refusal:
        print(f"{command}: {refusal}", file=sys.stderr)
        return refusal.status


@contextlib.contextmanager
def streams_detached() -> Iterator[None]:
    """Tasks the fake starts meanwhile must not inherit this command's stdout and stderr:
    whoever runs the command reads them until every holder has closed them."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    os.close(quiet)
    try:
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        os.close(saved[0])
        os.close(saved[1])


def server_name() -> str:
    return os.environ.get("PBS_DEFAULT") or socket.gethostname().split(".")[0]


def host_name() -> str:
    return socket.gethostname().split(".")[0]


# -- qsub --------------------------------------------------------------------------------------


def qsub(flavour: str, argv: list[str]) -> int:
    options, operands = _getopt(argv, QSUB_OPTIONS[flavour])
    if not operands:
        raise Refused("the fake reads the script from a file only")
    script_path = Path(operands[0])
    try:
        script = script_path.read_text()
    except OSError as error:
        raise Refused(f"script file:: {error.strerror}", 1) from None
    prefix = _option(options, "-C") or os.environ.get("PBS_DPREFIX", "#PBS")
    settings = _settings(flavour, _directives(flavour, script, prefix) + options)
    job = _Submission(flavour, settings, script_path, script)
    with streams_detached():
        tasks = job.tasks()
        if _unknown_parents(flavour, job.depends):
            for task in tasks:  # the server aborts a job whose parent it does not know
                task.state, task.ended = "never", time.time()
        number = FakeScheduler().submit(tasks)
    if "-z" not in settings:
        array = "[]" if job.indices is not None else ""
        print(f"{number}{array}.{server_name()}")
    return 0


def _unknown_parents(flavour: str, depends: list[list[object]]) -> bool:
    if not depends:
        return False
    now = time.time()
    with FakeScheduler().session() as tasks:
        visible = {t.number for t in tasks if not _forgotten(flavour, t, tasks, now)}
    return any(number not in visible for _kind, number in depends)


def _getopt(argv: list[str], spec: str) -> tuple[list[tuple[str, str]], list[str]]:
    """POSIX getopt, as the real commands use it: options end at the first operand."""
    takes_value = {spec[i] for i in range(len(spec) - 1) if spec[i + 1] == ":"}
    known = set(spec.replace(":", ""))
    options: list[tuple[str, str]] = []
    position = 0
    while position < len(argv):
        word = argv[position]
        if word == "--":
            position += 1
            break
        if not word.startswith("-") or word == "-":
            break
        letters = word[1:]
        while letters:
            letter, letters = letters[0], letters[1:]
            if letter not in known:
                raise Refused(f"invalid option -- '{letter}'")
            if letter in takes_value:
                if not letters:
                    position += 1
                    if position >= len(argv):
                        raise Refused(f"option requires an argument -- '{letter}'")
                    letters = argv[position]
                options.append((f"-{letter}", letters))
                letters = ""
            else:
                options.append((f"-{letter}", ""))
        position += 1
    return options, argv[position:]


def _option(options: list[tuple[str, str]], name: str) -> str | None:
    values = [value for option, value in options if option == name]
    return values[-1] if values else None


def _directives(flavour: str, script: str, prefix: str) -> list[tuple[str, str]]:
    """Options from the directive lines, read until the first line that is not a comment."""
    options: list[tuple[str, str]] = []
    if not prefix:
        return options
    lines = script.splitlines()
    if lines and (lines[0].startswith("#!") or lines[0].startswith(":")):
        lines = lines[1:]
    for line in lines:
        stripped = line.strip()
        if stripped.startswith(prefix):
            words = shlex.split(stripped[len(prefix) :], comments=False)
            found, rest = _getopt(words, QSUB_OPTIONS[flavour])
            if rest:
                raise Refused(f"directive error: {stripped}")
            options += found
        elif stripped and not stripped.startswith("#"):
            break
    return options


def _settings(flavour: str, options: list[tuple[str, str]]) -> dict[str, object]:
    """Later options win; -l, -W and -v accumulate (the command line comes last)."""
    resources: dict[str, str] = {}
    settings: dict[str, object] = {"-l": resources, "-W": {}, "-v": []}
    for option, value in options:
        if option == "-l":
            resources.update(_resources(flavour, value))
        elif option == "-W":
            settings["-W"].update(_pairs(value, "-W"))
        elif option == "-v":
            settings["-v"] += _split_list(value)
        else:
            settings[option] = value
    if "select" in resources and "nodes" in resources:
        raise Refused('"-lresource=" cannot be used with "select" or "place", resource is: nodes')
    return settings


def _resources(flavour: str, text: str) -> dict[str, str]:
    resources = _pairs(text, "-l")
    if flavour == TORQUE and "select" in resources:
        raise Refused("Unknown resource type  Resource_List.select", 188)
    for name, value in resources.items():
        if name == "walltime":
            _seconds(value)
        elif name == "select":
            _chunks(value)
        elif name == "nodes" and not re.fullmatch(NODE_SPEC, value):
            raise Refused(f"illegal -l value nodes={value}")
        elif name == "mem" and not re.fullmatch(r"\d+([kmgt]?[bw])?", value, re.IGNORECASE):
            raise Refused("Illegal attribute or resource value  Resource_List.mem", 2)
    return resources


def _pairs(text: str, option: str) -> dict[str, str]:
    pairs = {}
    for item in _split_list(text):
        name, equals, value = item.partition("=")
        if not equals or not name:
            raise Refused(f"illegal {option} value")
        pairs[name.strip()] = value.strip().strip("'\"")
    return pairs


def _split_list(text: str) -> list[str]:
    """A comma-separated list in which quoted parts may hold commas."""
    items, current, quote = [], "", ""
    for char in text:
        if quote:
            quote = "" if char == quote else quote
            current += char
        elif char in "'\"":
            quote = char
            current += char
        elif char == ",":
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    return [item.strip() for item in items if item.strip()]


def _seconds(text: str) -> float:
    """PBS durations: [[HH:]MM:]SS[.ms]."""
    if not re.fullmatch(r"\d+(:\d+){0,2}(\.\d+)?", text):
        raise Refused("Illegal attribute or resource value  Resource_List.walltime", 2)
    total = 0.0
    for part in text.split(":"):
        total = total * 60 + float(part)
    return total


def _chunks(select: str) -> list[dict[str, str]]:
    chunks = []
    for part in select.split("+"):
        count, _, rest = part.partition(":")
        if not count.isdigit():
            count, rest = "1", part
        resources = dict(item.split("=", 1) for item in rest.split(":") if "=" in item)
        if not resources and rest:
            raise Refused(f"illegal -l value select={select}")
        chunks += [resources] * int(count)
    return chunks


class _Submission:
    """One qsub: the attributes the server records and the tasks the fake runs."""

    def __init__(self, flavour: str, settings: dict[str, object], path: Path, script: str):
        self.flavour = flavour
        self.settings = settings
        self.cwd = os.getcwd()
        self.name = self._name(str(settings.get("-N") or path.name))
        self.resources: dict[str, str] = settings["-l"]
        self.attributes: dict[str, str] = settings["-W"]
        self.queue = str(settings.get("-q") or ("workq" if flavour == PBSPRO else "batch"))
        self.indices, self.cap, self.request = self._array()
        self.depends = self._depends()
        self.script = self._spool(script)

    def _name(self, name: str) -> str:
        first_ok = name[:1].isalnum() if self.flavour == PBSPRO else name[:1].isalpha()
        if "-N" in self.settings and (not first_ok or re.search(r"\s", name) or len(name) > 236):
            raise Refused("illegal -N value")
        return name[:236]

    def _array(self) -> tuple[list[int] | None, int | None, str | None]:
        option = "-J" if self.flavour == PBSPRO else "-t"
        request = self.settings.get(option)
        if request is None:
            return None, None, None
        text = str(request)
        body, _, cap = text.partition("%")
        if cap and not cap.isdigit():
            raise Refused(f"illegal {option} value")
        if self.flavour == PBSPRO:
            match = re.fullmatch(r"(\d+)-(\d+)(?::(\d+))?", body)
            if not match or int(match[2]) <= int(match[1]) or (match[3] and int(match[3]) < 1):
                raise Refused("illegal -J value")
            indices = list(range(int(match[1]), int(match[2]) + 1, int(match[3] or 1)))
        else:
            indices = []
            for part in body.split(","):
                match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
                if not match:
                    raise Refused("illegal -t value")
                indices += range(int(match[1]), int(match[2] or match[1]) + 1)
        return indices, int(cap) if cap else None, text

    def _depends(self) -> list[list[object]]:
        text = self.attributes.get("depend")
        if not text:
            return []
        depends: list[list[object]] = []
        for part in text.split(","):
            kind, _, ids = part.partition(":")
            if kind not in DEPEND_TYPES or not ids:
                raise Refused(f"illegal -W value: the fake knows {', '.join(DEPEND_TYPES)}")
            for job_id in ids.split(":"):
                match = JOB_ID.match(job_id)
                if not match:
                    raise Refused("illegal -W value")
                if self.flavour == PBSPRO and match["index"]:
                    raise Refused("Invalid request", 15)  # PBS Pro: no dependency on a subjob
                depends.append([kind, int(match["number"])])
        return depends

    def _spool(self, script: str) -> str:
        """Like the server, keep a copy: later changes to the file do not reach the job."""
        spool = Path(os.environ["FAKESCHED_DIR"]) / "spool"
        spool.mkdir(parents=True, exist_ok=True)
        copy = spool / f"{uuid.uuid4().hex}.SC"
        copy.write_text(script)
        return str(copy)

    # -- the tasks ----------------------------------------------------------------------------

    def tasks(self) -> list[Task]:
        indices: list[int | None] = list(self.indices) if self.indices is not None else [None]
        held = "-h" in self.settings
        return [
            Task(
                number=0,
                index=index,
                name=self.name,
                script=self.script,
                workdir=self._workdir(),
                env=self._environment(index),
                out=self._output_path("-o", "o", index),
                err=self._output_path("-e", "e", index),
                walltime=_seconds(self.resources["walltime"])
                if "walltime" in self.resources
                else None,
                depends=self.depends,
                state="held" if held else "queued",
                owner=pwd.getpwuid(os.getuid()).pw_name,
                queue=self.queue,
                extra=self._extra(held),
            )
            for index in indices
        ]

    def _workdir(self) -> str:
        if self.flavour == TORQUE and self.settings.get("-d"):
            return str(self.settings["-d"])
        return os.environ.get("HOME", "/")

    def _output_path(self, option: str, letter: str, index: int | None) -> str:
        chosen = self.settings.get(option)
        suffix = "" if index is None else (f".{index}" if self.flavour == PBSPRO else f"-{index}")
        default = f"{_literal(self.name)}.{letter}{{number}}{suffix}"
        if not chosen:
            return os.path.join(_literal(self.cwd), default)
        path = str(chosen).split(":", 1)[-1] if ":" in str(chosen) else str(chosen)
        path = os.path.join(self.cwd, path)
        if os.path.isdir(path):
            return os.path.join(_literal(path), default)
        if index is not None:
            if self.flavour == PBSPRO:
                path = path.replace("^array_index^", str(index))
            else:
                path += f"-{index}"
        return _literal(path)

    def _environment(self, index: int | None) -> dict[str, str]:
        submitted = dict(os.environ)
        environment: dict[str, str] = {}
        if "-V" in self.settings:
            environment.update(submitted)
        else:
            for name in ("HOME", "LOGNAME", "USER", "LANG"):
                if name in submitted:
                    environment[name] = submitted[name]
            environment["PATH"] = "/usr/local/bin:/usr/bin:/bin"
            environment["SHELL"] = "/bin/bash"
        for item in self.settings["-v"]:
            name, equals, value = str(item).partition("=")
            if equals:
                environment[name] = value.strip("'\"")
            elif name in submitted:
                environment[name] = submitted[name]
        for name in ("HOME", "LANG", "LOGNAME", "PATH", "MAIL", "SHELL", "TZ"):
            if name in submitted:
                environment[f"PBS_O_{name}"] = submitted[name]
        environment.update(
            PBS_O_HOST=host_name(),
            PBS_O_WORKDIR=self.cwd,
            PBS_O_QUEUE=self.queue,
            PBS_QUEUE=self.queue,
            PBS_ENVIRONMENT="PBS_BATCH",
            PBS_JOBNAME=self.name,
            PBS_NODEFILE=self._nodefile(),
            PBS_TASKNUM="1",
            PBS_NODENUM="0",
            TMPDIR=self._tmpdir(),
        )
        environment = {name: _literal(value) for name, value in environment.items()}
        server = _literal(server_name())
        if index is None:
            environment["PBS_JOBID"] = f"{{number}}.{server}"
        else:
            environment["PBS_JOBID"] = f"{{number}}[{index}].{server}"
        if self.flavour == PBSPRO:
            environment.update(self._pbspro_environment(index, server))
        else:
            environment.update(self._torque_environment(index, server))
        return environment

    def _pbspro_environment(self, index: int | None, server: str) -> dict[str, str]:
        ncpus = str(self._chunk_list()[0].get("ncpus", "1"))
        environment = {
            "PBS_O_SYSTEM": os.uname().sysname,
            "PBS_JOBDIR": _literal(os.environ.get("HOME", "/")),
            "NCPUS": ncpus,
            "OMP_NUM_THREADS": ncpus,
        }
        if index is not None:
            environment["PBS_ARRAY_INDEX"] = str(index)
            environment["PBS_ARRAY_ID"] = f"{{number}}[].{server}"
        return environment

    def _torque_environment(self, index: int | None, server: str) -> dict[str, str]:
        nodes, ppn = self._torque_nodes()
        environment = {
            "PBS_SERVER": server,
            "PBS_VERSION": "TORQUE-6.1.3",
            "PBS_NUM_NODES": str(nodes),
            "PBS_NUM_PPN": str(ppn),
            "PBS_NP": str(nodes * ppn),
            "PBS_VNODENUM": "0",
        }
        if "walltime" in self.resources:
            environment["PBS_WALLTIME"] = str(int(_seconds(self.resources["walltime"])))
        if index is not None:
            environment["PBS_ARRAYID"] = str(index)
            environment["PBS_JOBNAME"] = _literal(f"{self.name}-{index}")
        if self.settings.get("-d"):
            environment["PBS_O_INITDIR"] = _literal(str(self.settings["-d"]))
        return environment

    def _chunk_list(self) -> list[dict[str, str]]:
        if "select" in self.resources:
            return _chunks(self.resources["select"])
        return [{"ncpus": "1", "mpiprocs": "1"}]

    def _torque_nodes(self) -> tuple[int, int]:
        match = re.match(r"(\d+)(?:.*:ppn=(\d+))?", self.resources.get("nodes", "1"))
        return (int(match[1]), int(match[2] or 1)) if match else (1, 1)

    def _slots(self) -> int:
        if self.flavour == TORQUE:
            nodes, ppn = self._torque_nodes()
            return nodes * ppn
        return sum(
            int(chunk.get("mpiprocs", chunk.get("ncpus", "1"))) for chunk in self._chunk_list()
        )

    def _nodefile(self) -> str:
        aux = Path(os.environ["FAKESCHED_DIR"]) / "aux"
        aux.mkdir(parents=True, exist_ok=True)
        path = aux / f"{uuid.uuid4().hex}.nodes"
        path.write_text(f"{host_name()}\n" * max(1, self._slots()))
        return str(path)

    def _tmpdir(self) -> str:
        path = Path(os.environ["FAKESCHED_DIR"]) / "tmp" / uuid.uuid4().hex
        path.mkdir(parents=True, exist_ok=True)
        return str(path)

    def _extra(self, held: bool) -> dict[str, object]:
        extra: dict[str, object] = {
            "resources": self.resources,
            "holds": "u" if held else "",
            "server": server_name(),
            "submit_host": host_name(),
            "cwd": self.cwd,
            "slots": self._slots(),
            "submit_args": " ".join(shlex.quote(arg) for arg in sys.argv[1:]),
            "variables": {
                name: value
                for name, value in os.environ.items()
                if name in ("HOME", "LANG", "LOGNAME", "PATH", "MAIL", "SHELL", "TZ")
            },
        }
        if "-V" in self.settings:  # the whole environment lands in Variable_List
            extra["exported"] = {
                name: value for name, value in os.environ.items() if not name.startswith("PBS_")
            }
        for option, key in (("-A", "account"), ("-P", "project"), ("-j", "join"), ("-m", "mail")):
            if self.settings.get(option):
                extra[key] = self.settings[option]
        if self.attributes.get("depend"):
            extra["depend"] = self.attributes["depend"]
        if self.request is not None:
            extra["array_request"] = self.request
            extra["max_run"] = self.cap
        return extra


def escape(text: str) -> str:
    """XML text, as qstat writes it: Torque as it is (``raw``), or escaped."""
    if RAW_XML:
        return text
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _literal(text: str) -> str:
    """fakesched fills in {number} and {index}: every other brace is the job's own."""
    return text.replace("{", "{{").replace("}", "}}")


# -- what the server shows ---------------------------------------------------------------------


def _waiting_for_parents(task: Task, tasks: list[Task]) -> bool:
    for _condition, number in task.depends:
        parents = [t for t in tasks if t.number == number]
        if parents and not all(parent.state in ENDED for parent in parents):
            return True
    return False


def _forgotten(flavour: str, task: Task, tasks: list[Task], now: float) -> bool:
    """Ended jobs the server no longer shows: Torque after keep_completed, PBS Pro after its
    job history (if it keeps one)."""
    if task.state not in ENDED or task.ended is None:
        return False
    if flavour == TORQUE:
        return now - task.ended > KEEP_COMPLETED
    if HISTORY:
        return now - task.ended > HISTORY_DURATION
    # without history, an array's ended members show (as X, without an exit status) while
    # the array lives on
    return task.index is None or all(t.state in ENDED for t in tasks if t.number == task.number)


def _exit_status(flavour: str, task: Task) -> int | None:
    if task.state == "done":
        return task.exit_code
    if task.state == "timeout":
        if flavour == PBSPRO and _version(PBS_VERSION) < (22, 5):
            return OLD_WALLTIME
        return EXIT_WALLTIME[flavour]
    if task.state == "cancelled":
        return KILLED_BY_SIGTERM if (task.started or flavour == TORQUE) else None
    if task.state == "never":
        return KILLED_BY_SIGTERM if flavour == TORQUE else None
    return None


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:2])


def _holds(task: Task, tasks: list[Task]) -> str:
    holds = str(task.extra.get("holds", "")) if task.state == "held" else ""
    if task.state in ("queued", "held") and _waiting_for_parents(task, tasks):
        holds += "s"
    return holds or "n"


def _letter(flavour: str, task: Task, tasks: list[Task]) -> str:
    if task.state in ENDED:
        if flavour == TORQUE:
            return "C"
        return "X" if task.index is not None else "F"
    if task.state == "running":
        return "R"
    return "H" if _holds(task, tasks) != "n" else "Q"


def _substate(task: Task, letter: str, holds: str) -> int:
    if letter in ("F", "X", "C"):
        if task.state in ("cancelled", "never"):
            return 91
        return 92 if task.state == "done" and task.exit_code == 0 else 93
    if letter == "R":
        return 42
    if letter == "H":
        return 22 if holds == "s" else 20
    return 10


def _job_id(task: Task, array_parent: bool = False) -> str:
    server = task.extra.get("server", server_name())
    if array_parent:
        return f"{task.number}[].{server}"
    if task.index is None:
        return f"{task.number}.{server}"
    return f"{task.number}[{task.index}].{server}"


def _ctime(seconds: float | None) -> str | None:
    return time.ctime(seconds) if seconds else None


def _pbspro_attributes(task: Task, tasks: list[Task]) -> dict[str, object]:
    holds = _holds(task, tasks)
    letter = _letter(PBSPRO, task, tasks)
    extra = task.extra
    host = str(extra.get("submit_host", host_name()))
    resources = dict(extra.get("resources", {}))
    resources.setdefault("ncpus", str(extra.get("slots", 1)))
    attributes: dict[str, object] = {
        "Job_Name": task.name,
        "Job_Owner": f"{task.owner}@{host}",
        "job_state": letter,
        "queue": task.queue,
        "server": extra.get("server", server_name()),
        "Checkpoint": "u",
        "ctime": _ctime(task.submitted),
        "Error_Path": f"{host}:{task.err}",
        "Hold_Types": holds,
        "Join_Path": extra.get("join", "n"),
        "Keep_Files": "n",
        "Mail_Points": extra.get("mail", "a"),
        "mtime": _ctime(task.ended or task.started or task.submitted),
        "Output_Path": f"{host}:{task.out}",
        "Priority": 0,
        "qtime": _ctime(task.submitted),
        "Rerunable": "True",
        "Resource_List": resources,
        "substate": _substate(task, letter, holds),
        "Variable_List": {
            **dict(extra.get("exported", {})),
            **{f"PBS_O_{k}": v for k, v in dict(extra.get("variables", {})).items()},
            "PBS_O_WORKDIR": extra.get("cwd"),
            "PBS_O_HOST": host,
            "PBS_O_QUEUE": task.queue,
        },
        "euser": task.owner,
        "project": extra.get("project", "_pbs_project_default"),
        "Submit_arguments": extra.get("submit_args", ""),
        "Submit_Host": host,
    }
    if "account" in extra:
        attributes["Account_Name"] = extra["account"]
    if "depend" in extra:
        attributes["depend"] = extra["depend"]
    if task.started:
        attributes["stime"] = _ctime(task.started)
        attributes["exec_host"] = f"{host_name()}/0*{extra.get('slots', 1)}"
        attributes["exec_vnode"] = f"({host_name()}:ncpus={resources['ncpus']})"
        attributes["run_count"] = 1
        attributes["comment"] = f"Job run at {time.ctime(task.started)} on ({host_name()})"
    if task.state == "running" and task.pid:
        attributes["session_id"] = task.pid
    if task.state in ENDED:
        attributes["obittime"] = _ctime(task.ended)
        status = _exit_status(PBSPRO, task) if HISTORY else None
        if status is not None:
            attributes["Exit_status"] = status
        if task.started:
            attributes["comment"] = (
                f"Job run at {time.ctime(task.started)} on ({host_name()}) and"
                f" {'finished' if task.state != 'cancelled' else 'terminated'}"
            )
    if task.index is not None:
        attributes["array_id"] = _job_id(task, array_parent=True)
        attributes["array_index"] = str(task.index)
    return attributes


def _pbspro_parent(members: list[Task], tasks: list[Task]) -> dict[str, object]:
    first = members[0]
    attributes = _pbspro_attributes(first, tasks)
    for key in ("array_id", "array_index", "Exit_status", "stime", "exec_host", "exec_vnode"):
        attributes.pop(key, None)
    for key in ("Output_Path", "Error_Path"):
        attributes[key] = str(attributes[key]).removesuffix(f".{first.index}")
    ended = [m for m in members if m.state in ENDED]
    begun = [m for m in members if m.started or m.state in ENDED]
    if len(ended) == len(members):
        letter = "F"
        ran = [m for m in ended if m.state != "cancelled" or m.started]
        attributes["Exit_status"] = 0 if all(_exit_status(PBSPRO, m) == 0 for m in ran) else 1
        attributes["obittime"] = _ctime(max(m.ended or 0 for m in ended))
    elif begun:
        letter = "B"
    else:
        letter = "H" if all(_letter(PBSPRO, m, tasks) == "H" for m in members) else "Q"
    attributes["job_state"] = letter
    attributes["substate"] = {"F": 92, "B": 70, "H": 20, "Q": 10}[letter]
    started = [m.started for m in members if m.started]
    if started:
        attributes["stime"] = _ctime(min(started))
    counts = {
        "Queued": sum(m.state in ("queued", "held") for m in members),
        "Running": sum(m.state == "running" for m in members),
        "Exiting": 0,
        "Expired": len(ended),
    }
    attributes["array"] = "True"
    attributes["array_state_count"] = " ".join(f"{k}:{v}" for k, v in counts.items())
    attributes["array_indices_submitted"] = first.extra.get("array_request", "").split("%")[0]
    remaining = [m.index for m in members if m.state in ("queued", "held")]
    if remaining:
        attributes["array_indices_remaining"] = _ranges(remaining)
    if first.extra.get("max_run"):
        attributes["max_run_subjobs"] = first.extra["max_run"]
    return attributes


def _ranges(indices: Iterable[int]) -> str:
    runs: list[list[int]] = []
    for index in sorted(indices):
        if runs and index == runs[-1][1] + 1:
            runs[-1][1] = index
        else:
            runs.append([index, index])
    return ",".join(str(a) if a == b else f"{a}-{b}" for a, b in runs)


def _torque_attributes(task: Task, tasks: list[Task]) -> dict[str, object]:
    holds = _holds(task, tasks)
    letter = _letter(TORQUE, task, tasks)
    extra = task.extra
    host = str(extra.get("submit_host", host_name()))
    variables = dict(extra.get("exported", {}))
    variables.update({f"PBS_O_{k}": v for k, v in dict(extra.get("variables", {})).items()})
    variables.update(PBS_O_WORKDIR=extra.get("cwd"), PBS_O_HOST=host, PBS_O_QUEUE=task.queue)
    attributes: dict[str, object] = {
        "Job_Name": task.name if task.index is None else f"{task.name}-{task.index}",
        "Job_Owner": f"{task.owner}@{host}",
        "job_state": letter,
        "queue": task.queue,
        "server": extra.get("server", server_name()),
        "Checkpoint": "u",
        "ctime": int(task.submitted),
        "Error_Path": f"{host}:{task.err}",
        "Hold_Types": holds,
        "Join_Path": extra.get("join", "n"),
        "Keep_Files": "n",
        "Mail_Points": extra.get("mail", "a"),
        "mtime": int(task.ended or task.started or task.submitted),
        "Output_Path": f"{host}:{task.out}",
        "Priority": 0,
        "qtime": int(task.submitted),
        "Rerunable": "True",
        "Resource_List": dict(extra.get("resources", {})),
        "Variable_List": ",".join(f"{k}={v}" for k, v in variables.items()),
        "euser": task.owner,
        "queue_type": "E",
        "etime": int(task.submitted),
        "submit_args": extra.get("submit_args", ""),
        "fault_tolerant": "False",
        "job_radix": 0,
        "submit_host": host,
        "init_work_dir": extra.get("cwd"),
    }
    if "account" in extra:
        attributes["Account_Name"] = extra["account"]
    if "depend" in extra:
        attributes["depend"] = extra["depend"]
    if task.index is not None:
        attributes["job_array_id"] = task.index
        attributes["job_array_request"] = extra.get("array_request", "")
    if task.started:
        attributes["start_time"] = int(task.started)
        attributes["start_count"] = 1
        attributes["exec_host"] = f"{host_name()}/0-{max(0, int(extra.get('slots', 1)) - 1)}"
    if task.state == "running" and task.pid:
        attributes["session_id"] = task.pid
    if task.state in ENDED:
        attributes["exit_status"] = _exit_status(TORQUE, task)
        attributes["comp_time"] = int(task.ended or 0)
        if task.state == "never":
            parents = ":".join(str(number) for _, number in task.depends)
            attributes["comment"] = f"Job deleted as result of dependency on job {parents}"
    return attributes


def _torque_summary(members: list[Task], tasks: list[Task]) -> dict[str, object]:
    attributes = _torque_attributes(members[0], tasks)
    for key in ("job_array_id", "exit_status", "comp_time", "start_time", "exec_host", "comment"):
        attributes.pop(key, None)
    attributes["Job_Name"] = members[0].name
    letters = {_letter(TORQUE, m, tasks) for m in members}
    attributes["job_state"] = (
        "C" if letters == {"C"} else ("R" if letters & {"R", "C"} else sorted(letters)[0])
    )
    return attributes


# -- qstat -------------------------------------------------------------------------------------


def qstat(flavour: str, argv: list[str]) -> int:
    spec = "fF:D:xtJwEpHainrsu:GMT1BQ" if flavour == PBSPRO else "fxtacCeGinMRrsu:1lW:BQ"
    options, operands = _getopt(argv, spec)
    flags = {option for option, _ in options}
    if "-B" in flags:
        return _server_status(flavour, options, flags)
    _count_round_trips(operands, flags)
    if flavour == PBSPRO and not HISTORY and flags & {"-x", "-H"}:
        # the server rejects the whole request; qstat still prints its prologue
        _print_pbspro([], options, flags)
        print("qstat: PBS is not configured to maintain job history", file=sys.stderr)
        return 0
    now = time.time()
    errors: list[tuple[str, int]] = []
    with streams_detached(), FakeScheduler().session() as tasks:
        visible = [t for t in tasks if not _forgotten(flavour, t, tasks, now)]
        if flavour == PBSPRO:
            records = _pbspro_records(visible, tasks, operands, flags, errors)
        else:
            records = _torque_records(visible, tasks, operands, flags, errors)
    if flavour == PBSPRO:
        _print_pbspro(records, options, flags)
    else:
        _print_torque(records, flags)
    for message, _status in errors:
        print(f"qstat: {message}", file=sys.stderr)
    return max((status % 256 for _, status in errors), default=0)


def _count_round_trips(operands: list[str], flags: set[str]) -> None:
    """qstat sends one request per job id, unless -E groups them (one per server)."""
    requests = 1 if "-E" in flags or not operands else len(operands)
    root = Path(os.environ["FAKESCHED_DIR"])
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "roundtrips", "a") as counter:
        counter.write("qstat\n" * requests)


def _server_status(flavour: str, options: list[tuple[str, str]], flags: set[str]) -> int:
    """``qstat -B``: the server's attributes (-f), or its one-line summary."""
    with streams_detached(), FakeScheduler().session() as tasks:
        counts = {
            "Queued": sum(t.state == "queued" for t in tasks),
            "Held": sum(t.state == "held" for t in tasks),
            "Running": sum(t.state == "running" for t in tasks),
        }
    total = sum(counts.values())
    server = server_name()
    if "-f" not in flags:
        print("Server             Max   Tot   Que   Run   Hld   Wat   Trn   Ext Status")
        print("---------------- ----- ----- ----- ----- ----- ----- ----- ----- -----------")
        print(
            f"{server[:16]:<16} {0:>5} {total:>5} {counts['Queued']:>5} {counts['Running']:>5}"
            f" {counts['Held']:>5} {0:>5} {0:>5} {0:>5} Active"
        )
        return 0
    attributes: dict[str, object] = {
        "server_state": "Active",
        "server_host": host_name(),
        "scheduling": "True",
        "total_jobs": total,
        "state_count": " ".join(f"{name}:{count}" for name, count in counts.items()),
        "default_queue": "workq" if flavour == PBSPRO else "batch",
        "query_other_jobs": "True",
    }
    if flavour == PBSPRO:
        if HISTORY:
            hours, rest = divmod(int(HISTORY_DURATION), 3600)
            attributes["job_history_enable"] = "True"
            attributes["job_history_duration"] = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
        attributes["pbs_version"] = PBS_VERSION
    else:
        if KEEP_COMPLETED_SET is not None:  # shown only where the site set it
            attributes["keep_completed"] = int(KEEP_COMPLETED)
        attributes["pbs_version"] = "6.0.4"
    if flavour == PBSPRO and _option(options, "-F") == "json":
        document = {
            "timestamp": int(time.time()),
            "pbs_version": PBS_VERSION,
            "pbs_server": server,
            "Server": {server: attributes},
        }
        print(json.dumps(document, indent=4))
        return 0
    print(f"Server: {server}")
    for name, value in attributes.items():
        print(f"    {name} = {value}")
    print()
    return 0


def _by_number(tasks: list[Task]) -> dict[int, list[Task]]:
    groups: dict[int, list[Task]] = {}
    for task in tasks:
        groups.setdefault(task.number, []).append(task)
    return groups


def _matching(operand: str, tasks: list[Task]) -> tuple[list[Task], bool]:
    """The tasks an id names, and whether it names a whole array."""
    match = JOB_ID.match(operand)
    if not match:
        return [], False
    same = [t for t in tasks if t.number == int(match["number"])]
    if match["index"] is None:
        return [t for t in same if t.index is None], False
    if match["index"] == "":
        return [t for t in same if t.index is not None], True
    return [t for t in same if t.index == int(match["index"])], False


def _pbspro_records(
    visible: list[Task],
    tasks: list[Task],
    operands: list[str],
    flags: set[str],
    errors: list[tuple[str, int]],
) -> list[tuple[str, dict[str, object]]]:
    history = "-x" in flags or "-H" in flags
    members_too = "-t" in flags
    records: list[tuple[str, dict[str, object]]] = []

    def add_group(group: list[Task], whole_array: bool) -> None:
        if group[0].index is not None or whole_array:
            records.append((_job_id(group[0], True), _pbspro_parent(group, tasks)))
            if members_too:
                for member in sorted(group, key=lambda t: t.index or 0):
                    if history or member.state not in ENDED:
                        records.append((_job_id(member), _pbspro_attributes(member, tasks)))
        else:
            records.append((_job_id(group[0]), _pbspro_attributes(group[0], tasks)))

    if not operands:
        for group in _by_number(visible).values():
            if history or not all(t.state in ENDED for t in group):
                add_group(group, False)
        return records
    for operand in operands:
        found, whole = _matching(operand, visible)
        if not found:
            errors.append((f"Unknown Job Id {operand}", UNKNOWN))
        elif not history and all(t.state in ENDED for t in found):
            errors.append(
                (
                    f"{operand} Job has finished, use -x or -H to obtain historical job"
                    " information",
                    HISTJOBID,
                )
            )
        elif whole:
            add_group(found, True)
        else:
            records.append((_job_id(found[0]), _pbspro_attributes(found[0], tasks)))
    return records


def _print_pbspro(
    records: list[tuple[str, dict[str, object]]], options: list[tuple[str, str]], flags: set[str]
) -> None:
    output_format = _option(options, "-F")
    if "-f" in flags and output_format == "json":
        document: dict[str, object] = {
            "timestamp": int(time.time()),
            "pbs_version": PBS_VERSION,
            "pbs_server": server_name(),
        }
        if records:
            document["Jobs"] = {job_id: _drop_none(attributes) for job_id, attributes in records}
        print(_cjson(document, 0))
    elif "-f" in flags:
        for job_id, attributes in records:
            print(f"Job Id: {job_id}")
            for name, value in _flat(_drop_none(attributes)):
                print(f"    {name} = {value}")
            print()
    elif records:
        print(f"{'Job id':<17}{'Name':<17}{'User':<17}{'Time Use':>8} S Queue")
        print(f"{'-' * 16:<17}{'-' * 16:<17}{'-' * 16:<17}{'-' * 8} - -----")
        for job_id, a in records:
            print(
                f"{job_id[:16]:<17}{str(a['Job_Name'])[:16]:<17}{str(a['euser'])[:16]:<17}"
                f"{'0':>8} {a['job_state']} {a['queue']}"
            )


def _cjson(value: object, depth: int, raw: bool = False) -> str:
    """JSON as qstat prints it: tab-indented, one key per line. Values of ``Variable_List``
    (``raw``) go out as released OpenPBS writes them: a number-like or ``inf``/``nan`` value
    bare, anything else between quotes with only the quotes escaped."""
    if isinstance(value, dict):
        inner = "\t" * (depth + 1)
        items = [
            f"{inner}{json.dumps(str(key))}:\t{_cjson(item, depth + 1, key == 'Variable_List')}"
            if not raw
            else f"{inner}{json.dumps(str(key))}:\t{_raw_value(str(item))}"
            for key, item in value.items()
        ]
        return "{\n" + ",\n".join(items) + "\n" + "\t" * depth + "}"
    return json.dumps(value)


def _raw_value(text: str) -> str:
    if not BROKEN_JSON:
        return json.dumps(text)
    if re.fullmatch(r"-?\d+(\.\d+)?|inf|nan|-inf", text):
        return text
    return '"' + text.replace('"', '\\"') + '"'


def _flat(attributes: dict[str, object]) -> list[tuple[str, object]]:
    flat: list[tuple[str, object]] = []
    for name, value in attributes.items():
        if isinstance(value, dict) and name != "Variable_List":
            flat += [(f"{name}.{key}", item) for key, item in value.items()]
        elif isinstance(value, dict):
            flat.append((name, ",".join(f"{k}={v}" for k, v in value.items())))
        else:
            flat.append((name, value))
    return flat


def _drop_none(attributes: dict[str, object]) -> dict[str, object]:
    return {name: value for name, value in attributes.items() if value is not None}


def _torque_records(
    visible: list[Task],
    tasks: list[Task],
    operands: list[str],
    flags: set[str],
    errors: list[tuple[str, int]],
) -> list[list[tuple[str, dict[str, object]]]]:
    """One list of records per operand (qstat answers each operand on its own)."""
    expand = "-t" in flags

    def records_of(group: list[Task], whole: bool) -> list[tuple[str, dict[str, object]]]:
        if group[0].index is None and not whole:
            return [(_job_id(group[0]), _torque_attributes(group[0], tasks))]
        if expand:
            ordered = sorted(group, key=lambda t: t.index or 0)
            return [(_job_id(m), _torque_attributes(m, tasks)) for m in ordered]
        return [(_job_id(group[0], True), _torque_summary(group, tasks))]

    if not operands:
        every: list[tuple[str, dict[str, object]]] = []
        for group in _by_number(visible).values():
            every += records_of(group, False)
        return [every]
    answers = []
    for operand in operands:
        found, whole = _matching(operand, visible)
        if not found:
            errors.append((f"Unknown Job Id Error {operand}", UNKNOWN))
            continue
        answers.append(records_of(found, whole))
    return answers


def _print_torque(answers: list[list[tuple[str, dict[str, object]]]], flags: set[str]) -> None:
    for records in answers:
        if "-x" in flags:
            print('<?xml version="1.0"?>')
            print(f"<Data>{''.join(_torque_xml(job_id, a) for job_id, a in records)}</Data>")
        elif "-f" in flags:
            for job_id, attributes in records:
                print(f"Job Id: {job_id}")
                for name, value in _flat(attributes):
                    if name in TORQUE_TIMES:
                        value = time.ctime(int(str(value)))
                    if value is not None:
                        print(f"    {name} = {value}")
                print()
        elif records:
            print(f"{'Job ID':<26}{'Name':<17}{'User':<16}{'Time Use':>8} S Queue")
            print(f"{'-' * 25:<26}{'-' * 16:<17}{'-' * 15:<16}{'-' * 8} - -----")
            for job_id, a in records:
                print(
                    f"{job_id[:25]:<26}{str(a['Job_Name'])[:16]:<17}{str(a['euser'])[:15]:<16}"
                    f"{'0':>8} {a['job_state']} {a['queue']}"
                )


def _torque_xml(job_id: str, attributes: dict[str, object]) -> str:
    parts = [f"<Job><Job_Id>{escape(job_id)}</Job_Id>"]
    for name, value in attributes.items():
        if value is None:
            continue
        if isinstance(value, dict):
            inner = "".join(f"<{k}>{escape(str(v))}</{k}>" for k, v in value.items())
            parts.append(f"<{name}>{inner}</{name}>")
        else:
            parts.append(f"<{name}>{escape(str(value))}</{name}>")
    parts.append("</Job>")
    return "".join(parts)


Action = Callable[[str, list[Task], list[Task]], None]
"""What qdel, qhold or qrls does to the tasks one operand names (all tasks given too)."""


# -- qdel, qhold, qrls -------------------------------------------------------------------------


def qdel(flavour: str, argv: list[str]) -> int:
    spec = "xW:" if flavour == PBSPRO else "a:b:cm:pW:t:"
    options, operands = _getopt(argv, spec)
    purge_history = any(option == "-x" for option, _ in options)
    if not operands:
        raise Refused("usage: qdel [-x] [-W force|suppress_email=<N>] job_identifier...")

    def delete(operand: str, found: list[Task], tasks: list[Task]) -> None:
        if all(t.state in ENDED for t in found):
            if flavour == TORQUE:
                raise Refused(
                    "Request invalid for state of job MSG=invalid state for job - COMPLETE"
                    f" {operand}",
                    BADSTATE,
                )
            if not purge_history:
                raise Refused(f"Job {operand} has finished", HISTJOBID)
            for task in found:
                tasks.remove(task)
            return
        FakeScheduler().cancel(found)

    return _each(flavour, "qdel", operands, delete)


def qhold(flavour: str, argv: list[str]) -> int:
    options, operands = _getopt(argv, "h:")
    kind = _option(options, "-h") or "u"
    if not operands or not set(kind) <= set("uosnp"):
        raise Refused("usage: qhold [-h hold_list] job_identifier ...")

    def hold(operand: str, found: list[Task], tasks: list[Task]) -> None:
        _refuse_ended(flavour, operand, found)
        if any(t.state == "running" for t in found) and not any(
            t.state != "running" for t in found
        ):
            raise Refused(f"Request invalid for state of job {operand}", BADSTATE)
        for task in found:
            if task.state in ("queued", "held") and kind != "n":
                task.state = "held"
                task.extra["holds"] = "".join(sorted(set(str(task.extra.get("holds", "")) + kind)))

    return _each(flavour, "qhold", operands, hold)


def qrls(flavour: str, argv: list[str]) -> int:
    options, operands = _getopt(argv, "h:")
    kind = _option(options, "-h") or "u"
    if not operands:
        raise Refused("usage: qrls [-h hold_list] job_identifier ...")

    def release(operand: str, found: list[Task], tasks: list[Task]) -> None:
        _refuse_ended(flavour, operand, found)
        for task in found:
            if task.state == "held":
                left = "".join(h for h in str(task.extra.get("holds", "")) if h not in kind)
                task.extra["holds"] = left
                if not left:
                    task.state = "queued"

    return _each(flavour, "qrls", operands, release)


def _refuse_ended(flavour: str, operand: str, found: list[Task]) -> None:
    if all(t.state in ENDED for t in found):
        if flavour == PBSPRO:
            raise Refused(f"Job {operand} has finished", HISTJOBID)
        raise Refused(f"Request invalid for state of job {operand}", BADSTATE)


def _each(flavour: str, command: str, operands: list[str], act: Action) -> int:
    refusals: list[Refused] = []
    now = time.time()
    with streams_detached(), FakeScheduler().session() as tasks:
        for operand in operands:
            visible = [t for t in tasks if not _forgotten(flavour, t, tasks, now)]
            found, _whole = _matching(operand, visible)
            try:
                if not found:
                    suffix = " Error" if flavour == TORQUE else ""
                    raise Refused(f"Unknown Job Id{suffix} {operand}", UNKNOWN)
                act(operand, found, tasks)
            except Refused as refusal:
                refusals.append(refusal)
    for refusal in refusals:
        print(f"{command}: {refusal}", file=sys.stderr)
    return refusals[-1].status % 256 if refusals else 0
