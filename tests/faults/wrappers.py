"""Scheduler commands that misbehave on request.

``FaultBin`` writes, into a directory put first on PATH, one small shell script per wrapped
tool (``sbatch``, ``squeue``, ``qsub`` ...). Each script calls the real tool by its absolute
path and obeys the rule files of its control directory, which a test adds and removes while
jobbridge runs:

- ``delay``: sleep, then run the real command;
- ``fail``: print a message on stderr and exit with a code, without running the real command;
- ``hang``: run the real command, then sleep before answering (with a sleep longer than the
  caller's timeout the command has taken effect but its answer is lost);
- ``kill``: run the real command, then ``kill -9`` the process that called it;
- ``lie``: replace a literal string in the records of the answer that match a pattern;
- ``hide``: drop the records of the answer that match a pattern.

A record is a line, a ``<job_list>`` element of ``qstat -xml``, or a ``qacct`` record (from
its ``====`` line to the next). A rule may apply a limited number of ``times`` (a lie or a
hide counts only calls whose answer it changed) and may expire after ``seconds``. Every call
is logged with the rules it applied, so that a test can check that its fault happened.
"""

from __future__ import annotations

import math
import os
import shlex
import shutil
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = ["FaultBin", "Rule", "is_wrapper", "sge_record", "slurm_record"]

_WRAPPER = r"""#!/bin/bash
# Fault wrapper around {real}: rules are the *.rule files of {ctl}
real={real_q}
ctl={ctl_q}
log="$ctl/calls.log"
now_ms() {{ date +%s%3N; }}

# take one use of a rule: false if it has none left
consume() {{
    local left_file="$1.left" left
    [[ -f $left_file ]] || return 0
    left=$(<"$left_file")
    ((left > 0)) || return 1
    echo $((left - 1)) >"$left_file"
}}

# what a rule's "when" is matched against: the arguments and the files they name
call_text() {{
    local argument
    printf '%s\n' "$@"
    for argument in "$@"; do
        [[ -f $argument && -r $argument ]] && head -c 8192 -- "$argument"
    done
}}

load_rule() {{
    mode='' seconds='' message='' code='' old='' new='' pattern='' until='' when=''
    # shellcheck disable=SC1090
    . "$1"
    [[ -z $until || $(now_ms) -lt $until ]] || return 1
    [[ -z $when ]] || grep -qE -- "$when" <<<"$call" || return 1
    [[ ! -f $1.left || $(<"$1.left") -gt 0 ]]
}}

call=''
if grep -qs '^when=' "$ctl"/*.rule; then
    call=$(call_text "$@" | tr -d '\0')
fi

pre='' pre_rule='' post_rules=()
exec 8>>"$ctl/.lock"
flock 8
for rule in "$ctl"/*.rule; do
    [[ -e $rule ]] || continue
    load_rule "$rule" || continue
    case $mode in
    fail | delay | hang | kill)
        if [[ -z $pre ]] && consume "$rule"; then
            pre=$mode pre_rule=$rule
        fi
        ;;
    lie | hide) post_rules+=("$rule") ;;
    esac
done
flock -u 8

applied=()
if [[ -n $pre ]]; then
    load_rule "$pre_rule" || true
    applied+=("$pre:$(basename "$pre_rule" .rule)")
fi
note() {{ printf '%s\t%s\t%s\n' "$(now_ms)" "${{applied[*]:-pass}}" "$*" >>"$log"; }}

case $pre in
fail)
    note "$@"
    printf '%s\n' "$message" >&2
    exit "${{code:-1}}"
    ;;
delay) sleep "$seconds" ;;
esac

if [[ $pre != hang && $pre != kill && ${{#post_rules[@]}} == 0 ]]; then
    note "$@"
    exec "$real" "$@"
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$real" "$@" >"$tmp/out" 2>"$tmp/err"
rc=$?
for rule in "${{post_rules[@]}}"; do
    load_rule "$rule" || continue
    MODE=$mode OLD=$old NEW=$new PATTERN=$pattern awk '
        function swap(s, a, b,    out, i) {{
            out = ""
            while (a != "" && (i = index(s, a)) > 0) {{
                out = out substr(s, 1, i - 1) b
                s = substr(s, i + length(a))
            }}
            return out s
        }}
        function flush() {{
            if (have) {{
                if (rec ~ ENVIRON["PATTERN"]) {{
                    if (ENVIRON["MODE"] == "hide") rec = ""
                    else rec = swap(rec, ENVIRON["OLD"], ENVIRON["NEW"])
                }}
                printf "%s", rec
            }}
            rec = ""; have = 0
        }}
        {{
            line = $0 "\n"
            if (xml) {{
                rec = rec line
                if ($0 ~ /<\/job_list>/) {{ flush(); xml = 0 }}
                next
            }}
            if ($0 ~ /^[ \t]*<job_list/) {{
                flush(); rec = line; have = 1; xml = 1
                if ($0 ~ /<\/job_list>/) {{ flush(); xml = 0 }}
                next
            }}
            if ($0 ~ /^==+[ \t]*$/) {{ flush(); rec = line; have = 1; acct = 1; next }}
            if (acct) {{ rec = rec line; next }}
            flush(); rec = line; have = 1; flush()
        }}
        END {{ flush() }}
    ' "$tmp/out" >"$tmp/new"
    if ! cmp -s "$tmp/out" "$tmp/new"; then
        flock 8
        if load_rule "$rule" && consume "$rule"; then
            mv -f "$tmp/new" "$tmp/out"
            applied+=("$mode:$(basename "$rule" .rule)")
        fi
        flock -u 8
    fi
done
note "$@"

case $pre in
hang) sleep "$seconds" </dev/null >/dev/null 2>&1 ;;
kill) kill -9 "$PPID" ;;
esac
cat "$tmp/err" >&2
cat "$tmp/out"
exit "$rc"
"""

_MODES = ("fail", "delay", "hang", "kill", "lie", "hide")
_MARK = "# Fault wrapper around "


def is_wrapper(path: Path) -> bool:
    """Whether ``path`` is one of these wrappers (and not the real tool)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(200)
    except OSError:
        return False
    return _MARK.encode() in head


def slurm_record(native_id: str) -> str:
    """A pattern for the records of one SLURM job in ``--parsable`` and ``|``-formatted
    answers (squeue, sacct): lines that start with its id."""
    return f"^{native_id}[|_.]"


def sge_record(native_id: str) -> str:
    """A pattern for one Grid Engine job's ``qstat -xml`` element or ``qacct`` record."""
    number = native_id.split(".")[0]
    return f"(<JB_job_number>{number}</JB_job_number>|jobnumber +{number}[[:space:]])"


@dataclass
class Rule:
    """One fault in force for one tool until it is removed, runs out or expires."""

    bin: FaultBin
    tool: str
    name: str
    mode: str

    @property
    def path(self) -> Path:
        return self.bin.control(self.tool) / f"{self.name}.rule"

    @property
    def fired(self) -> int:
        """Calls this rule changed."""
        return sum(
            1 for call in self.bin.calls(self.tool) if f"{self.mode}:{self.name}" in call.applied
        )

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        (self.path.parent / f"{self.name}.rule.left").unlink(missing_ok=True)


@dataclass(frozen=True)
class Call:
    """One run of a wrapped tool."""

    time: float
    applied: tuple[str, ...]
    arguments: str


class FaultBin:
    """A directory of wrappers put first on PATH, and their control directories.

    ``shared`` makes everything readable and the control directories writable by any user,
    for wrappers that another user (the ssh test user) runs."""

    def __init__(self, root: Path, tools: Iterable[str], *, shared: bool = False) -> None:
        self.root = root
        self.bin_dir = root / "bin"
        self.shared = shared
        self._counter = 0
        self.bin_dir.mkdir(parents=True, exist_ok=True)
        self.real: dict[str, str] = {}
        if shared:
            for directory in (root, self.bin_dir):
                directory.chmod(0o755)
        for tool in tools:
            self.wrap(tool)

    def control(self, tool: str) -> Path:
        return self.root / "control" / tool

    def wrap(self, tool: str, real: str | None = None) -> Path:
        """Write the wrapper of ``tool`` around the real one (found on PATH without us)."""
        real = real or _which_elsewhere(tool, self.bin_dir)
        control = self.control(tool)
        control.mkdir(parents=True, exist_ok=True)
        for name in ("calls.log", ".lock"):
            (control / name).touch()
            if self.shared:
                (control / name).chmod(0o666)
        if self.shared:
            control.parent.chmod(0o755)
            control.chmod(0o777)
        script = _WRAPPER.format(
            real=real, ctl=control, real_q=shlex.quote(real), ctl_q=shlex.quote(str(control))
        )
        wrapper = self.bin_dir / tool
        wrapper.write_text(script)
        wrapper.chmod(0o755)
        self.real[tool] = real
        return wrapper

    def path_with_bin(self, path: str | None = None) -> str:
        """PATH with the wrappers first."""
        return f"{self.bin_dir}{os.pathsep}{path if path is not None else os.environ['PATH']}"

    # -- rules ----------------------------------------------------------------------------------

    def add(
        self,
        tool: str,
        mode: str,
        *,
        times: int | None = None,
        seconds_in_force: float | None = None,
        when: str | None = None,
        **values: object,
    ) -> Rule:
        """A rule for ``tool``: it applies ``times`` times at most (None: always), for at most
        ``seconds_in_force`` seconds from now (None: until removed), and only to calls whose
        arguments, or the first 8 KiB of the files they name, match the regular expression
        ``when`` (None: every call; a test's job names keep others' calls out)."""
        if mode not in _MODES:
            raise ValueError(f"unknown fault mode {mode!r}; modes: {', '.join(_MODES)}")
        if tool not in self.real:
            raise ValueError(f"{tool} is not wrapped")
        self._counter += 1
        rule = Rule(self, tool, f"{self._counter:03d}-{mode}", mode)
        settings = {"mode": mode, **values}
        if when is not None:
            settings["when"] = when
        if seconds_in_force is not None:
            settings["until"] = math.ceil((time.time() + seconds_in_force) * 1000)
        text = "".join(f"{key}={shlex.quote(str(value))}\n" for key, value in settings.items())
        if times is not None:
            left = rule.path.parent / f"{rule.name}.rule.left"
            left.write_text(f"{times}\n")
            if self.shared:
                left.chmod(0o666)
        # written under another name first: a wrapper never reads half a rule
        partial = rule.path.with_suffix(".partial")
        partial.write_text(text)
        partial.chmod(0o644)
        partial.replace(rule.path)
        return rule

    def delay(
        self, tool: str, seconds: float, *, times: int | None = None, when: str | None = None
    ) -> Rule:
        """Sleep ``seconds``, then run the real command."""
        return self.add(tool, "delay", times=times, when=when, seconds=seconds)

    def fail(
        self,
        tool: str,
        message: str,
        code: int = 1,
        *,
        times: int | None = None,
        when: str | None = None,
    ) -> Rule:
        """Print ``message`` on stderr and exit ``code`` without running the real command."""
        return self.add(tool, "fail", times=times, when=when, message=message, code=code)

    def hang_after(
        self, tool: str, seconds: float, *, times: int | None = None, when: str | None = None
    ) -> Rule:
        """Run the real command, then answer only after ``seconds``."""
        return self.add(tool, "hang", times=times, when=when, seconds=seconds)

    def kill_caller(self, tool: str, *, times: int | None = 1, when: str | None = None) -> Rule:
        """Run the real command, then SIGKILL the process that called it."""
        return self.add(tool, "kill", times=times, when=when)

    def lie(
        self,
        tool: str,
        old: str,
        new: str,
        *,
        pattern: str = "",
        times: int | None = None,
        seconds_in_force: float | None = None,
    ) -> Rule:
        """Replace ``old`` by ``new`` in the records that match the regular expression
        ``pattern`` (every record if empty)."""
        return self.add(
            tool, "lie", times=times, seconds_in_force=seconds_in_force,
            old=old, new=new, pattern=pattern,
        )  # fmt: skip

    def hide(
        self,
        tool: str,
        pattern: str,
        *,
        times: int | None = None,
        seconds_in_force: float | None = None,
    ) -> Rule:
        """Leave the records matching ``pattern`` out of the answer."""
        return self.add(
            tool, "hide", times=times, seconds_in_force=seconds_in_force, pattern=pattern
        )

    def clear(self, tools: Sequence[str] | None = None) -> None:
        """Remove every rule: the tools behave again."""
        for tool in tools or list(self.real):
            for path in self.control(tool).glob("*.rule*"):
                path.unlink(missing_ok=True)

    # -- what happened --------------------------------------------------------------------------

    def calls(self, tool: str) -> list[Call]:
        calls = []
        for line in (self.control(tool) / "calls.log").read_text().splitlines():
            stamp, applied, arguments = ([*line.split("\t", 2), "", ""])[:3]
            if stamp.isdigit():
                calls.append(Call(int(stamp) / 1000, tuple(applied.split()), arguments))
        return calls


def _which_elsewhere(tool: str, ours: Path) -> str:
    path = os.pathsep.join(
        entry for entry in os.environ.get("PATH", "").split(os.pathsep) if Path(entry) != ours
    )
    found = shutil.which(tool, path=path)
    if found is None:
        raise FileNotFoundError(f"{tool} is not installed: nothing to wrap")
    return os.path.abspath(found)
