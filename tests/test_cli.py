"""The ``jobbridge`` command line end to end, with the local backend and real processes.

Quick checks go through click's CliRunner in this process; exit statuses, separate streams
of a real process, following output and the demo script go through the installed console
script.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from jobbridge import JobSpec, Store
from jobbridge.cli import cli
from jobbridge.cli.jobs import parse_since
from jobbridge.cli.logs import last_lines
from jobbridge.cli.submit import build_spec
from jobbridge.job import new_jobs
from jobbridge.phase import Phase

ROOT = Path(__file__).resolve().parent.parent
JOBBRIDGE = shutil.which("jobbridge", path=os.path.dirname(sys.executable)) or "jobbridge"
JOB_ID = re.compile(r"^[0-9a-z]{12}$")
HOSTILE = [
    "$(touch pwned)",
    "`touch pwned`",
    "a; touch pwned",
    "x && touch pwned | cat",
    'it\'s "quoted" \\ back',
    "new\nline",
    "*",
    "",
    "--",
]
ECHO_ARGV = "import json, os, sys; print(json.dumps([sys.argv[1:], os.environ['WEIRD']]))"


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    data = tmp_path / "data"
    monkeypatch.setenv("JOBBRIDGE_DATA_DIR", str(data))
    monkeypatch.delenv("JOBBRIDGE_CONFIG", raising=False)
    monkeypatch.delenv("JOBBRIDGE_DATABASE_URL", raising=False)
    return data


def invoke(*args: str) -> Result:
    """In this process; stdout and stderr kept apart."""
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def run(
    *args: str, timeout: float = 30, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """The installed console script, as a separate process."""
    return subprocess.run(
        [JOBBRIDGE, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def submit_id(*args: str) -> str:
    result = invoke("submit", "-q", *args)
    assert result.exit_code == 0, result.stderr
    return result.stdout.strip()


def job_json(job_id: str) -> dict[str, Any]:
    result = invoke("status", "--json", job_id)
    assert result.exit_code == 0, result.stderr
    [job] = json.loads(result.stdout)
    return job


def wait_for_phase(job_id: str, phase: str, timeout: float = 15) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = job_json(job_id)
        if job["phase"] == phase or time.monotonic() > deadline:
            return job
        time.sleep(0.1)


# -- submit and wait --------------------------------------------------------------------------


def test_failed_job_exits_nonzero_and_its_stderr_is_in_the_logs() -> None:
    done = run(
        "submit",
        "--backend",
        "local",
        "--wait",
        "-q",
        "--",
        "sh",
        "-c",
        "echo x; echo boom >&2; exit 3",
    )
    assert done.returncode == 1
    job_id = done.stdout.strip()
    assert JOB_ID.match(job_id)
    assert f"job {job_id} (sh) ended ERROR with exit code 3" in done.stderr
    assert run("logs", "--stderr", job_id).stdout == "boom\n"
    assert run("logs", job_id).stdout == "x\n"


def test_completed_job_exits_zero() -> None:
    done = run("submit", "--wait", "--", "true")
    assert done.returncode == 0, done.stderr
    assert "COMPLETED" in done.stdout
    assert done.stderr == ""


def test_submit_json_is_an_array_of_jobs(tmp_path: Path) -> None:
    result = invoke(
        "submit",
        "--json",
        "--name",
        "hello",
        "--env",
        "GREETING=a=b",
        "--walltime",
        "0:01:00",
        "--memory",
        "1G",
        "--directory",
        str(tmp_path),
        "--",
        "echo",
        "hi there",
    )
    assert result.exit_code == 0, result.stderr
    [job] = json.loads(result.stdout)
    assert JOB_ID.match(job["id"])
    assert job["backend"] == "local"
    assert job["owner"] == getpass.getuser()
    assert job["phase"] in ("QUEUED", "EXECUTING", "COMPLETED")
    spec = job["spec"]
    assert (spec["name"], spec["executable"], spec["arguments"]) == ("hello", "echo", ["hi there"])
    assert spec["environment"] == {"GREETING": "a=b"}
    assert spec["resources"]["walltime"] == 60
    assert spec["resources"]["memory"] == 1 << 30
    assert spec["directory"] == str(tmp_path)

    waited = invoke("submit", "--json", "--wait", "--", "true")
    assert waited.exit_code == 0
    [finished] = json.loads(waited.stdout)
    assert (finished["phase"], finished["exit_code"]) == ("COMPLETED", 0)

    listed = json.loads(invoke("list", "--json").stdout)
    assert [j["id"] for j in listed] == [finished["id"], job["id"]]
    assert json.loads(invoke("status", "--json", job["id"]).stdout)[0]["id"] == job["id"]


def test_default_directory_is_the_current_one(tmp_path: Path) -> None:
    done = run("submit", "--wait", "-q", "--", "pwd", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert run("logs", done.stdout.strip()).stdout.strip() == str(tmp_path)


def test_a_job_elsewhere_runs_in_its_own_directory_unless_told(tmp_path: Path) -> None:
    command = ["sh", "-c", "pwd"]
    assert build_spec({}, command, {}, here=False).directory is None
    told = build_spec({}, command, {"directory": "runs/1"}, here=False)
    assert told.directory == "runs/1"  # a path on the resource, not one from here
    assert build_spec({"directory": "/data"}, command, {}, here=False).directory == "/data"
    here = build_spec({}, command, {"directory": "runs/1"})
    assert here.directory == str(Path.cwd() / "runs" / "1")


def test_quiet_prints_only_ids_and_an_array_prints_every_member() -> None:
    result = invoke(
        "submit", "-q", "--array", "0-2", "--", "sh", "-c", "echo $JOBBRIDGE_ARRAY_INDEX"
    )
    assert result.exit_code == 0, result.stderr
    ids = result.stdout.splitlines()
    assert len(ids) == 3 and all(JOB_ID.match(job_id) for job_id in ids)
    assert invoke("wait", "-q", *ids).exit_code == 0
    assert [invoke("logs", job_id).stdout for job_id in ids] == ["0\n", "1\n", "2\n"]
    assert [job_json(job_id)["array_index"] for job_id in ids] == [0, 1, 2]


def test_spec_file_with_options_laid_over_it(tmp_path: Path) -> None:
    document = tmp_path / "job.json"
    document.write_text(
        json.dumps(
            {
                "executable": "sh",
                "arguments": ["-c", "echo $A $B"],
                "name": "from-file",
                "environment": {"A": "1", "B": "2"},
            }
        )
    )
    result = invoke("submit", "--json", "--wait", "--spec", str(document), "--env", "B=3")
    assert result.exit_code == 0, result.stderr
    [job] = json.loads(result.stdout)
    assert job["spec"]["name"] == "from-file"
    assert invoke("logs", job["id"]).stdout == "1 3\n"

    toml = tmp_path / "job.toml"
    toml.write_text('executable = "false"\nname = "toml"\n')
    result = invoke("submit", "--json", "--spec", str(toml), "--name", "renamed", "--", "true")
    [job] = json.loads(result.stdout)
    assert (job["spec"]["name"], job["spec"]["executable"]) == ("renamed", "true")


def test_dependencies_run_in_order_and_a_failed_parent_stops_children(tmp_path: Path) -> None:
    first = submit_id("--directory", str(tmp_path), "--", "sh", "-c", "sleep 0.3; echo 1 > order")
    second = submit_id(
        "--after", first, "--directory", str(tmp_path), "--", "sh", "-c", "echo 2 >> order"
    )
    assert invoke("wait", second).exit_code == 0
    assert (tmp_path / "order").read_text() == "1\n2\n"

    failing = submit_id("--", "false")
    assert invoke("wait", "-q", failing).exit_code == 1
    doomed = invoke("submit", "--after", failing, "--", "true")
    assert doomed.exit_code == 1
    assert "ABORTED (DEPENDENCY_NEVER_SATISFIED)" in doomed.stderr
    anyway = submit_id("--after-any", failing, "--", "true")
    assert invoke("wait", anyway).exit_code == 0


# -- refusing bad requests ------------------------------------------------------------------


def test_unknown_backend_names_the_known_ones_and_the_kinds() -> None:
    done = run("submit", "--backend", "nowhere", "--", "true")
    assert done.returncode == 2
    assert done.stderr.startswith("error: unknown backend 'nowhere'; known backends: local;")
    assert re.search(r"kinds, usable by name without configuration: .*\bslurm\b", done.stderr)
    assert invoke("list", "--json").stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (["--walltime", "soon"], "resources.walltime"),
        (["--walltime", "-5"], "resources.walltime"),
        (["--cores", "-1"], "resources.cores_per_process"),
        (["--memory", "lots"], "resources.memory"),
        (["--array", "5-1"], "array"),
        (["--env", "1BAD=x"], "environment"),
    ],
)
def test_invalid_values_exit_2_naming_the_field(options: list[str], field: str) -> None:
    result = invoke("submit", *options, "--", "true")
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: {field}:")
    assert result.stdout == ""


def test_two_problems_give_two_lines() -> None:
    result = invoke("submit", "--cores", "0", "--walltime", "never", "--", "true")
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 2


@pytest.mark.parametrize(
    "args",
    [
        ["submit"],
        ["submit", "--env", "NOEQUALS", "--", "true"],
        ["submit", "--timeout", "5", "--", "true"],
        ["submit", "--json", "-q", "--", "true"],
        ["submit", "--launcher", "aprun", "--", "true"],
        ["submit", "--after", "nosuchjob", "--", "true"],
        ["submit", "--queue", "batch", "--", "true"],
        ["status", "nosuchjob"],
        ["logs", "nosuchjob"],
        ["list", "--phase", "finished"],
        ["list", "--since", "yesterday"],
    ],
)
def test_bad_requests_exit_2(args: list[str]) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    assert result.stdout == ""


def test_unknown_job_message() -> None:
    result = invoke("status", "nosuchjob")
    assert result.stderr == "error: no job with id 'nosuchjob'\n"


def test_hostile_arguments_and_environment_reach_the_program_verbatim(tmp_path: Path) -> None:
    weird_env = "$(touch pwned); `touch pwned` 'q' \"d\"\nsecond line"
    done = run(
        "submit",
        "--wait",
        "-q",
        "--directory",
        str(tmp_path),
        "--env",
        f"WEIRD={weird_env}",
        "--",
        sys.executable,
        "-c",
        ECHO_ARGV,
        *HOSTILE,
    )
    assert done.returncode == 0, done.stderr
    output = run("logs", done.stdout.strip()).stdout
    assert json.loads(output) == [HOSTILE, weird_env]
    assert not (tmp_path / "pwned").exists()
    assert not Path("pwned").exists()


def test_arguments_after_the_command_are_not_options() -> None:
    result = invoke("submit", "-q", "--wait", "echo", "--name", "-x", "--")
    assert result.exit_code == 0, result.stderr
    assert invoke("logs", result.stdout.strip()).stdout == "--name -x --\n"


# -- looking at jobs ----------------------------------------------------------------------


def test_list_filters(tmp_path: Path, data_dir: Path) -> None:
    config = tmp_path / "jobbridge.toml"
    config.write_text('[backends.other]\nkind = "local"\n')
    base = ["--config", str(config)]
    alpha = submit_id("--name", "alpha", "--", "true")
    beta = submit_id("--name", "beta", "--", "false")
    gamma = invoke(*base, "submit", "-q", "--backend", "other", "--name", "gamma", "--", "true")
    gamma_id = gamma.stdout.strip()
    assert invoke(*base, "wait", "-q", alpha, beta, gamma_id).exit_code == 1

    store = Store(f"sqlite:///{data_dir / 'jobbridge.db'}")
    store.update(beta, created=datetime.now(UTC) - timedelta(days=2))
    store.close()

    def ids(*args: str) -> set[str]:
        result = invoke(*base, "list", "--json", *args)
        assert result.exit_code == 0, result.stderr
        return {job["id"] for job in json.loads(result.stdout)}

    assert ids() == {alpha, beta, gamma_id}
    assert ids("--phase", "error") == {beta}
    assert ids("--phase", "Completed") == {alpha, gamma_id}
    assert ids("--phase", "ERROR", "--phase", "completed") == {alpha, beta, gamma_id}
    assert ids("--backend", "other") == {gamma_id}
    assert ids("--backend", "local") == {alpha, beta}
    assert ids("--name", "alpha") == {alpha}
    assert ids("--since", "1d") == {alpha, gamma_id}
    assert ids("--since", "72h") == {alpha, beta, gamma_id}
    three_days_ago = (datetime.now(UTC) - timedelta(days=3)).strftime("%Y-%m-%dT%H:%M:%S")
    assert ids("--since", three_days_ago) == {alpha, beta, gamma_id}
    assert ids("--since", "2999-01-01") == set()
    assert ids("--limit", "1") == {gamma_id}
    assert ids("--limit", "1", "--all") == {alpha, beta, gamma_id}

    table = invoke(*base, "list", "--limit", "2")
    assert [line.split()[0] for line in table.stdout.splitlines()] == ["ID", gamma_id, alpha]
    assert "--all" in table.stderr


def test_a_name_that_looks_like_an_emoji_code_is_shown_as_named() -> None:
    job_id = submit_id("--name", "fit:fire:", "--wait", "--", "true")
    row = next(line for line in invoke("list").stdout.splitlines() if line.startswith(job_id))
    assert row.split()[1] == "fit:fire:"


def test_json_listings_are_written_a_job_at_a_time_as_one_indented_document() -> None:
    assert invoke("list", "--json").stdout == "[]\n"
    ids = [submit_id("--name", name, "--env", "NOTE=a\nb", "--", "true") for name in "ab"]
    for argv in (("list", "--json"), ("status", "--json", *ids)):
        text = invoke(*argv).stdout
        listed = json.loads(text)
        assert {job["id"] for job in listed} == set(ids)
        assert text == json.dumps(listed, indent=2) + "\n"


def test_a_long_listing_is_one_table_whose_columns_line_up(data_dir: Path) -> None:
    store = Store(f"sqlite:///{data_dir / 'jobbridge.db'}")
    # n[0] ... n[249]: names of three widths, so that a part of the table alone might be narrower
    store.add(
        new_jobs(JobSpec(executable="true", name="n", array="0-249"), "local", None, Phase.QUEUED)
    )
    store.close()
    lines = invoke("list", "--all", "--no-refresh").stdout.splitlines()
    assert len(lines) == 251 and lines[0].split() == [
        "ID", "NAME", "BACKEND", "PHASE", "DETAIL", "EXIT", "CREATED", "STARTED", "ENDED"
    ]  # fmt: skip
    phase_at = lines[0].index("PHASE")
    assert all(line[phase_at:].startswith("QUEUED") for line in lines[1:])


def test_looking_at_jobs_destroys_nothing(data_dir: Path) -> None:
    job_id = submit_id("--wait", "--", "echo", "kept")
    store = Store(f"sqlite:///{data_dir / 'jobbridge.db'}")
    store.update(job_id, destruction=datetime.now(UTC) - timedelta(minutes=1))
    store.close()
    assert invoke("status", job_id).exit_code == 0
    assert [job["id"] for job in json.loads(invoke("list", "--json").stdout)] == [job_id]
    assert invoke("logs", job_id).stdout == "kept\n"
    assert invoke("logs", "--follow", job_id).stdout == "kept\n"
    assert job_json(job_id)["phase"] == "COMPLETED"
    # what acts on jobs enforces the destruction time
    assert invoke("wait", job_id).stderr == f"error: no job with id {job_id!r}\n"


def test_looking_at_jobs_submits_nothing() -> None:
    parent = submit_id("--", "sleep", "1")
    child = submit_id("--after", parent, "--", "echo", "child")
    time.sleep(1.5)  # the parent has ended, and nothing has looked yet
    assert {job["id"]: job["phase"] for job in json.loads(invoke("list", "--json").stdout)} == {
        parent: "COMPLETED",
        child: "QUEUED",
    }
    assert invoke("status", child).exit_code == 0
    assert invoke("logs", child).stdout == ""
    job = job_json(child)
    assert (job["phase"], job["native_id"]) == ("QUEUED", None)
    assert invoke("wait", "-q", child).exit_code == 0
    assert invoke("logs", child).stdout == "child\n"


def test_parse_since() -> None:
    now = datetime(2024, 5, 6, 12, 0, tzinfo=UTC)
    assert parse_since("90s", now) == now - timedelta(seconds=90)
    assert parse_since("30m", now) == now - timedelta(minutes=30)
    assert parse_since("2H", now) == now - timedelta(hours=2)
    assert parse_since("1d", now) == now - timedelta(days=1)
    assert parse_since("2024-05-01", now) == datetime(2024, 5, 1, tzinfo=UTC)
    assert parse_since("2024-05-01T10:00:00+02:00", now) == datetime(2024, 5, 1, 8, tzinfo=UTC)


def test_status_shows_a_table_and_the_event_trail() -> None:
    job_id = submit_id("--wait", "--name", "trail", "--", "true")
    table = invoke("status", "--events", job_id)
    assert table.exit_code == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:4] == ["ID", "NAME", "BACKEND", "PHASE"]
    assert lines[1].split()[:4] == [job_id, "trail", "local", "COMPLETED"]
    assert f"events of {job_id} (trail)" in table.stdout
    trail = table.stdout.split("events of", 1)[1]
    assert trail.index("QUEUED") < trail.index("COMPLETED")

    [job] = json.loads(invoke("status", "--json", "--events", job_id).stdout)
    phases = [event["new_phase"] for event in job["events"]]
    assert phases[0] == "QUEUED" and phases[-1] == "COMPLETED"
    assert job["events"][0]["old_phase"] is None


def test_backends_lists_the_configured_ones_and_the_kinds() -> None:
    result = invoke("backends")
    assert result.exit_code == 0
    assert re.search(r"^local\s+local\s+yes", result.stdout, re.MULTILINE)
    assert "jobbridge.backends.local:LocalBackend" in result.stdout
    data = json.loads(invoke("backends", "--json").stdout)
    assert data["default"] == "local"
    assert "local" in data["kinds"]


# -- waiting, cancelling, deleting ----------------------------------------------------------


def test_wait_timeout_exits_124_naming_the_active_job() -> None:
    job_id = submit_id("--", "sleep", "30")
    try:
        done = run("wait", "--timeout", "0.5", job_id)
        assert done.returncode == 124
        assert job_id in done.stderr and "still active" in done.stderr
    finally:
        invoke("cancel", job_id)


def test_wait_reports_each_job_that_did_not_complete() -> None:
    good = submit_id("--", "true")
    bad = submit_id("--name", "bad", "--", "sh", "-c", "exit 4")
    result = invoke("wait", good, bad)
    assert result.exit_code == 1
    assert result.stderr == f"job {bad} (bad) ended ERROR with exit code 4\n"
    assert {line.split()[0] for line in result.stdout.splitlines()[1:]} == {good, bad}


def test_cancel_a_running_job() -> None:
    job_id = submit_id("--", "sleep", "30")
    assert wait_for_phase(job_id, "EXECUTING")["phase"] == "EXECUTING"
    result = invoke("cancel", job_id)
    assert result.exit_code == 0, result.stderr
    assert "ABORTED" in result.stdout
    job = wait_for_phase(job_id, "ABORTED")
    assert (job["phase"], job["detail"]) == ("ABORTED", "CANCELLED")

    again = invoke("cancel", job_id, "nosuchjob")
    assert again.exit_code == 1
    assert "already ended" in again.stderr and "nosuchjob" in again.stderr


def test_delete_refuses_an_active_job_unless_forced() -> None:
    job_id = submit_id("--", "sleep", "30")
    refused = invoke("delete", job_id)
    assert refused.exit_code == 1
    assert "cancel it first or force" in refused.stderr
    assert job_id in {job["id"] for job in json.loads(invoke("list", "--json").stdout)}

    forced = invoke("delete", "--force", job_id)
    assert forced.exit_code == 0, forced.stderr
    assert job_id not in {job["id"] for job in json.loads(invoke("list", "--json", "--all").stdout)}
    assert invoke("status", job_id).exit_code == 2


# -- logs ---------------------------------------------------------------------------------


def test_logs_tail() -> None:
    job_id = submit_id("--wait", "--", "seq", "1", "10")
    assert invoke("logs", "--tail", "2", job_id).stdout == "9\n10\n"
    assert invoke("logs", "--tail", "20", job_id).stdout == "".join(f"{i}\n" for i in range(1, 11))
    assert invoke("logs", "--tail", "0", job_id).stdout == ""

    many = submit_id("--wait", "--", "seq", "1", "20000")
    tail = invoke("logs", "--tail", "15000", many).stdout
    assert tail == "".join(f"{i}\n" for i in range(5001, 20001))


def test_last_lines() -> None:
    assert last_lines(b"a\nb\nc\n", 2) == (b"b\nc\n", True)
    assert last_lines(b"a\nb\nc", 2) == (b"b\nc", True)
    assert last_lines(b"a\nb\nc\n", 3) == (b"a\nb\nc\n", False)
    assert last_lines(b"", 3) == (b"", False)


def test_logs_follow_prints_everything_and_stops() -> None:
    script = "for i in 1 2 3 4 5 6; do echo line $i; sleep 0.25; done"
    job_id = submit_id("--", "sh", "-c", script)
    started = time.monotonic()
    done = run("logs", "--follow", job_id, timeout=20)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "".join(f"line {i}\n" for i in range(1, 7))
    assert time.monotonic() - started > 1.0
    assert job_json(job_id)["phase"] == "COMPLETED"


def test_logs_follow_with_tail() -> None:
    job_id = submit_id("--", "sh", "-c", "seq 1 5; sleep 0.6; echo six")
    assert invoke("logs", "-f", "--tail", "2", job_id).stdout.splitlines()[-1] == "six"


# -- the demo -------------------------------------------------------------------------------


def test_demo_script_computes_the_expected_total() -> None:
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "demo.sh")],
        capture_output=True,
        text=True,
        timeout=90,
        env={**os.environ, "JOBBRIDGE": JOBBRIDGE},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "expected: 5000050000" in done.stdout
    assert re.search(r"^5000050000$", done.stdout, re.MULTILINE)


def test_submit_takes_an_image_and_its_pull_policy() -> None:
    options = {"image": "python:3.12", "pull_policy": "IfNotPresent"}
    spec = build_spec({}, ["true"], options, here=False)
    assert (spec.image, spec.pull_policy) == ("python:3.12", "IfNotPresent")
    # the local backend has no container runtime configured here: refused, not ignored
    refused = invoke("submit", "--image", "busybox:1.36", "--pull-policy", "Never", "--", "true")
    assert refused.exit_code != 0
    assert "image" in refused.stderr and "No such option" not in refused.stderr
    assert invoke("list", "--json").stdout.strip() == "[]"
    wrong = invoke("submit", "--pull-policy", "Sometimes", "--", "true")
    assert wrong.exit_code == 2
    assert "Sometimes" in wrong.stderr
