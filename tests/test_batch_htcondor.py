"""HTCondor through fake command-line tools (tests/fakes/bin/htcondor, on fakesched) that keep
the real tools' documented options and output, plus the backend's pure parts."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobbridge import Engine, Job, JobSpec, Phase, ResourcesNotSupportedError
from jobbridge.backends.batch.base import BatchBackend
from jobbridge.backends.batch.htcondor import HTCondorBackend, HTCondorState
from jobbridge.backends.batch.native import NativeState
from jobbridge.errors import BackendError
from tests.batch_support import (
    CASES,
    FIXED_TIME,
    BackendScenarios,
    BatchScenarios,
    CountingTransport,
    Outage,
    array_members,
    assert_refused,
    case_jobs,
    check_golden,
    commands_of_one_refresh,
    located_by_member,
    make_backend,
    make_engine,
    render_case,
    run_rendered_script,
    running_engine,
)

FAKE_TOOLS = Path(__file__).parent / "fakes" / "bin" / "htcondor"
STATUS_TOOLS = ("condor_q", "condor_history")


def condor_backend(data_dir: Path, **options: object) -> HTCondorBackend:
    settings = {"min_refresh_interval": 0.2, "accounting_delay": 5, **options}
    return make_backend(HTCondorBackend, data_dir, **settings)


@pytest.fixture
def condor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The fake HTCondor tools first on PATH, with a pool of their own. Their
    ``#!/usr/bin/env python3`` finds the interpreter running the tests, quick to start."""
    monkeypatch.setenv("FAKESCHED_DIR", str(tmp_path / "condor"))
    monkeypatch.setenv("FAKESCHED_CONDOR_DEFER_SECONDS", "0.5")  # DAGMan's PRE script DEFER
    path = [str(FAKE_TOOLS), os.path.dirname(sys.executable), os.environ["PATH"]]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    yield tmp_path / "condor"
    subprocess.run(["condor_rm", "-all"], capture_output=True, check=False)


@pytest.fixture
def engine(isolated_data_dir: Path, condor: Path) -> Iterator[Engine]:
    yield from running_engine(condor_backend(isolated_data_dir), isolated_data_dir)


class TestHTCondor(BatchScenarios):
    timeout = 60.0
    walltime = 3
    walltime_timeout = 30.0


def test_a_job_submitted_on_hold_waits_for_release(engine: Engine) -> None:
    job = engine.submit(JobSpec(executable="echo", attributes={"htcondor.hold": True}))
    held = TestHTCondor().wait_for_phase(engine, job, Phase.HELD)
    assert (held.detail, held.message) == ("SubmittedOnHold", "submitted on hold at user's request")
    engine.release(job.id)
    [done] = engine.wait([job.id], timeout=30)
    assert (done.phase, done.exit_code) == (Phase.COMPLETED, 0)


def test_one_refresh_of_100_active_jobs_runs_one_status_command(
    isolated_data_dir: Path, condor: Path
) -> None:
    backend = condor_backend(isolated_data_dir)
    counting = CountingTransport.around(backend)
    with make_engine(backend, isolated_data_dir) as engine:
        spec = JobSpec(
            executable="true", inherit_environment=False, attributes={"htcondor.hold": True}
        )
        jobs = [engine.submit(spec) for _ in range(100)]
        commands = commands_of_one_refresh(engine, counting)
        status_commands = [c for c in commands if c[0] in STATUS_TOOLS]
        assert len(status_commands) == 1, status_commands
        assert status_commands[0][-100:] == [job.native_id.split(".")[0] for job in jobs]  # type: ignore[union-attr]
        assert all(engine.get(job.id).phase is Phase.HELD for job in jobs)


def test_history_is_asked_only_about_jobs_that_left_no_exit_file(
    isolated_data_dir: Path, condor: Path
) -> None:
    backend = condor_backend(isolated_data_dir)
    counting = CountingTransport.around(backend)
    with make_engine(backend, isolated_data_dir) as engine:
        running = engine.submit(JobSpec(executable="sleep", arguments=["60"]))
        recorded = engine.submit(JobSpec(executable="sh", arguments=["-c", "exit 5"]))
        # kills its own job script before the script can record anything
        killed = engine.submit(JobSpec(executable="sh", arguments=["-c", "kill -KILL $PPID"]))
        done = engine.wait([recorded.id, killed.id], timeout=30)
        assert (done[0].phase, done[0].exit_code) == (Phase.ERROR, 5)
        assert done[1].phase is Phase.ERROR
        history = [c for c in counting.commands if c[0] == "condor_history"]
        asked = {word for command in history for word in command if word[:1].isdigit()}
        assert asked == {(done[1].native_id or "").split(".")[0]}
        assert engine.get(running.id).phase is Phase.EXECUTING
        engine.cancel(running.id)


def test_without_history_ended_jobs_are_resolved_from_their_exit_files(
    isolated_data_dir: Path, condor: Path
) -> None:
    backend = condor_backend(isolated_data_dir, accounting=False)
    with make_engine(backend, isolated_data_dir) as engine:
        good = engine.submit(JobSpec(executable="true"))
        bad = engine.submit(JobSpec(executable="sh", arguments=["-c", "exit 4"]))
        done = engine.wait([good.id, bad.id], timeout=30)
    assert [(j.phase, j.exit_code) for j in done] == [(Phase.COMPLETED, 0), (Phase.ERROR, 4)]


def test_a_vanished_job_without_an_exit_file_is_lost_not_completed(
    isolated_data_dir: Path, condor: Path
) -> None:
    backend = condor_backend(
        isolated_data_dir, accounting=False, accounting_delay=1, lost_after=1, lost_after_misses=2
    )
    with make_engine(backend, isolated_data_dir) as engine:
        job = engine.submit(JobSpec(executable="true"))
        exit_file = Path(backend.exit_code_path(engine.get(job.id)))
        deadline = time.monotonic() + 30
        while not exit_file.exists() and time.monotonic() < deadline:
            subprocess.run(["condor_q"], capture_output=True, check=True)  # lets the pool run
            time.sleep(0.1)
        exit_file.unlink()
        [done] = engine.wait([job.id], timeout=30)
    assert (done.phase, done.detail) == (Phase.ERROR, "LOST")


def test_a_capped_array_is_one_cluster_running_at_most_n_jobs(engine: Engine) -> None:
    program = 'sleep 0.5; echo "$JOBBRIDGE_ARRAY_INDEX"'
    spec = JobSpec(executable="sh", arguments=["-c", program], array="2,4-6%2")
    members = engine.submit_array(spec)
    assert len({m.native_id.split(".")[0] for m in members if m.native_id}) == 1
    most_running = 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        engine.refresh()
        phases = [engine.get(m.id).phase for m in members]
        most_running = max(most_running, phases.count(Phase.EXECUTING))
        if not any(phase.is_active for phase in phases):
            break
        time.sleep(0.1)
    done = [engine.get(m.id) for m in members]
    assert [m.phase for m in done] == [Phase.COMPLETED] * 4
    assert 1 <= most_running <= 2
    assert [engine.read_output(m.id) for m in done] == [b"2\n", b"4\n", b"5\n", b"6\n"]


def test_a_capped_native_array_materializes_a_few_jobs_at_a_time(
    isolated_data_dir: Path, condor: Path
) -> None:
    # Jobs that max_materialize keeps back are in neither the queue nor the history: the
    # backend must still answer for them (QUEUED), never let them go LOST.
    backend = condor_backend(isolated_data_dir)
    program = 'sleep 0.5; echo "$JOBBRIDGE_ARRAY_INDEX"'
    members = array_members(JobSpec(executable="sh", arguments=["-c", program], array="1,3,5-7%2"))
    native_ids = backend.submit_array(members)
    members = [
        m.model_copy(update={"native_id": n}) for m, n in zip(members, native_ids, strict=True)
    ]
    phases: dict[str, Phase] = {}
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        answers = backend.status(members)
        phases.update((job_id, status.phase) for job_id, status in answers.items())
        assert len(phases) == len(members), "unmaterialized jobs are queued, not missing"
        assert list(phases.values()).count(Phase.EXECUTING) <= 2
        if all(phase.is_final for phase in phases.values()):
            break
        time.sleep(0.2)
    assert set(phases.values()) == {Phase.COMPLETED}
    outputs = [backend.read_output(member, "stdout") for member in members]
    assert outputs == [f"{member.array_index}\n".encode() for member in members]


def test_a_job_not_yet_materialized_cannot_be_cancelled_yet(
    isolated_data_dir: Path, condor: Path
) -> None:
    backend = condor_backend(isolated_data_dir)
    members = array_members(JobSpec(executable="sleep", arguments=["30"], array="0-2%1"))
    native_ids = backend.submit_array(members)
    first, _, last = (
        m.model_copy(update={"native_id": n}) for m, n in zip(members, native_ids, strict=True)
    )
    with pytest.raises(BackendError, match="not been materialized yet") as refused:
        backend.cancel(last)
    assert refused.value.retryable
    backend.cancel(first)
    assert backend.status([first])[first.id].phase is Phase.ABORTED


def test_scripts_and_submit_descriptions_match_the_golden_files(tmp_path: Path) -> None:
    backend = condor_backend(tmp_path, work_dir="/scratch/jobbridge jobs")
    for case in CASES:
        jobs = case_jobs(case)
        try:
            description = backend.render_submit_description(jobs[0], jobs)
        except ResourcesNotSupportedError as refusal:
            check_golden("htcondor", f"{case}.refused", f"{refusal}\n")
            continue
        check_golden("htcondor", f"{case}.sub", description)
        check_golden("htcondor", f"{case}.sh", render_case(backend, case))
    one_node = CASES["resources"].replace(
        queue=None,
        reservation=None,
        resources={
            "nodes": 1,
            "processes_per_node": 4,
            "cores_per_process": 2,
            "gpus_per_process": 1,
            "memory": "16G",
            "walltime": "1-02:03:04",
        },
        attributes={
            "htcondor.requirements": '(OpSysAndVer == "AlmaLinux9") && (Memory > 2048)',
            "htcondor.MY.Project": '"astro survey"',
            "htcondor.hold": True,
        },
    )
    job = Job(id="jb0case0node", spec=one_node, backend="cluster", created=FIXED_TIME)
    check_golden("htcondor", "one_node.sub", backend.render_submit_description(job, [job]))
    check_golden("htcondor", "one_node.sh", backend.render_script(job, [job]))


def test_the_generated_script_passes_everything_verbatim(tmp_path: Path) -> None:
    job_ad = tmp_path / ".job.ad"
    job_ad.write_text('ClusterId = 42\nGlobalJobId = "login.example.org#42.0#1767225600"\n')
    environment = {"JOBBRIDGE_HTCONDOR_ID": "42.0", "_CONDOR_JOB_AD": str(job_ad)}
    seen = run_rendered_script(condor_backend(tmp_path), tmp_path, environment)
    assert seen["stdin"] == "from stdin\n"
    assert seen["cwd"].endswith("it's")


def test_portable_variables_come_from_the_job_environment(tmp_path: Path) -> None:
    backend = condor_backend(tmp_path)
    job_ad = tmp_path / ".job.ad"
    job_ad.write_text('GlobalJobId = "schedd2@login.example.org#42.3#1767225600"\n')
    exports = "\n".join(
        f"export {name}={value}" for name, value in backend.portable_variables(True).items()
    )
    names = "JOBBRIDGE_JOB_ID JOBBRIDGE_SUBMIT_HOST JOBBRIDGE_NODELIST JOBBRIDGE_ARRAY_INDEX"
    script = exports + f'\nfor name in {names}; do printf "%s\\n" "${{!name}}"; done\n'
    environment = {
        **os.environ,
        "JOBBRIDGE_HTCONDOR_ID": "42.3",
        "JOBBRIDGE_HTCONDOR_INDEX": "7",
        "_CONDOR_JOB_AD": str(job_ad),
    }
    done = subprocess.run(["bash", "-c", script], env=environment, capture_output=True, text=True)
    job_id, host, node, index = done.stdout.splitlines()
    assert (job_id, host, index) == ("42.3", "login.example.org", "7")
    assert node == os.uname().nodename


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"queue": "long"}, "queue"),
        ({"reservation": "maint"}, "reservation"),
        ({"resources": {"nodes": 2}}, "resources.nodes"),
        ({"account": "a b"}, "account"),
        ({"account": "a", "project": "b"}, "project"),
        ({"launcher": "srun"}, "launcher"),
        ({"attributes": {"htcondor.Bad-Name": "x"}}, "attributes.htcondor.Bad-Name"),
        ({"attributes": {"htcondor.executable": "/bin/sh"}}, "attributes.htcondor.executable"),
        (
            {"attributes": {"htcondor.Periodic_Remove": "true"}},
            "attributes.htcondor.Periodic_Remove",
        ),
        ({"attributes": {"htcondor.requirements": "$(x)"}}, "attributes.htcondor.requirements"),
        ({"attributes": {"htcondor.requirements": "a\nqueue"}}, "attributes.htcondor.requirements"),
        ({"attributes": {"htcondor.rank": "Memory \\"}}, "attributes.htcondor.rank"),
    ],
)
def test_what_a_submit_description_cannot_carry_is_refused(
    tmp_path: Path, changes: dict, field: str
) -> None:
    assert_refused(condor_backend(tmp_path), changes, field)


# Samples in the documented `condor_q -json` / `condor_history -json` format: a JSON array of
# job ClassAds (attributes as in the manual's "Job ClassAd Attributes"; JobStatus 1 Idle,
# 2 Running, 3 Removed, 4 Completed, 5 Held, 6 Transferring Output, 7 Suspended; unevaluated
# expressions as "/Expr(...)/" strings); no output at all when no job matches.
CONDOR_Q_SAMPLE = """[
{
  "ClusterId": 12,
  "ProcId": 0,
  "JobStatus": 1,
  "EnteredCurrentStatus": 1767225600,
  "PeriodicRemove": "/Expr((JobStatus == 2) && (time() - EnteredCurrentStatus) > 60)/"
}
,
{
  "ClusterId": 13,
  "ProcId": 0,
  "JobStatus": 2,
  "JobStartDate": 1767225600,
  "JobCurrentStartDate": 1767225660
}
,
{
  "ClusterId": 14,
  "ProcId": 0,
  "JobStatus": 5,
  "HoldReason": "via condor_hold (by user alice)",
  "HoldReasonCode": 1,
  "HoldReasonSubCode": 0
}
,
{
  "ClusterId": 15,
  "ProcId": 0,
  "JobStatus": 5,
  "HoldReason": "Error from slot1_3@node7: memory usage exceeded request_memory",
  "HoldReasonCode": 34,
  "HoldReasonSubCode": 0
}
,
{"ClusterId": 16, "ProcId": 0, "JobStatus": 7},
{"ClusterId": 17, "ProcId": 0, "JobStatus": 6},
{"ClusterId": 18, "ProcId": 0, "JobStatus": 9},
{"ClusterId": 20, "ProcId": 1, "JobStatus": 2, "TotalSubmitProcs": 4},
{"ClusterId": 21, "ProcId": 0, "JobStatus": 1, "JobMaterializeLimit": 1, "TotalSubmitProcs": 3},
{
  "ClusterId": 19,
  "ProcId": 1,
  "JobStatus": 2,
  "JobMaterializeLimit": 2,
  "JobMaterializeNextProcId": 3,
  "TotalSubmitProcs": 5
}
]
"""
WALLTIME_REMOVAL = (
    "The job attribute PeriodicRemove expression"
    " '(JobStatus == 2) && (time() - EnteredCurrentStatus) > 60' evaluated to TRUE"
)
POLICY_REMOVAL = (
    "The system macro SYSTEM_PERIODIC_REMOVE expression 'NumJobStarts > 10' evaluated to TRUE"
)
CONDOR_HISTORY_SAMPLE = f"""[
{{"ClusterId": 20, "ProcId": 0, "JobStatus": 4, "ExitCode": 0, "ExitBySignal": false,
 "JobStartDate": 1767225600, "CompletionDate": 1767225700}},
{{"ClusterId": 21, "ProcId": 2, "JobStatus": 4, "ExitCode": 3, "ExitBySignal": false,
 "CompletionDate": 1767225700}},
{{"ClusterId": 22, "ProcId": 0, "JobStatus": 4, "ExitBySignal": true, "ExitSignal": 9,
 "CompletionDate": 1767225700}},
{{"ClusterId": 23, "ProcId": 0, "JobStatus": 3, "RemoveReason": "via condor_rm (by user alice)",
 "CompletionDate": 0, "EnteredCurrentStatus": 1767225800}},
{{"ClusterId": 24, "ProcId": 0, "JobStatus": 3, "CompletionDate": 0,
 "RemoveReason": "{WALLTIME_REMOVAL}"}},
{{"ClusterId": 25, "ProcId": 0, "JobStatus": 3, "CompletionDate": 0,
 "RemoveReason": "{POLICY_REMOVAL}"}}
]"""


def summary(backend: HTCondorBackend, states: dict[str, NativeState]) -> dict[str, tuple]:
    return {
        job_id: (status.phase, status.detail, status.exit_code)
        for job_id, status in ((k, backend.to_status(v)) for k, v in states.items())
    }


def test_parsing_condor_q_json() -> None:
    backend = condor_backend(Path("/x"))
    queue = backend.parse_status(CONDOR_Q_SAMPLE)
    assert summary(backend, queue) == {
        "12.0": (Phase.QUEUED, None, None),
        "13.0": (Phase.EXECUTING, None, None),
        "14.0": (Phase.HELD, "UserRequest", None),
        "15.0": (Phase.ERROR, "OUT_OF_MEMORY", None),  # held by HTCondor itself
        "16.0": (Phase.SUSPENDED, None, None),
        "17.0": (Phase.EXECUTING, None, None),
        "18.0": (Phase.UNKNOWN, "JobStatus=9", None),
        "20.1": (Phase.EXECUTING, None, None),
        "21.0": (Phase.QUEUED, None, None),
        "21.1": (Phase.QUEUED, None, None),
        "21.2": (Phase.QUEUED, None, None),
        "19.1": (Phase.EXECUTING, None, None),
        "19.3": (Phase.QUEUED, None, None),
        "19.4": (Phase.QUEUED, None, None),
    }
    assert queue["13.0"].started == datetime(2026, 1, 1, 0, 1, tzinfo=UTC)
    assert backend.to_status(queue["15.0"]).message.startswith("Error from slot1_3@node7")  # type: ignore[union-attr]
    assert backend.to_status(queue["15.0"]).stop_native  # removed from the queue
    assert not backend.to_status(queue["14.0"]).stop_native
    assert backend.parse_status("") == {} == backend.parse_status("[]\n")
    with pytest.raises(ValueError):
        backend.parse_status('{"ClusterId": 1}')


def test_parsing_condor_history_json() -> None:
    backend = condor_backend(Path("/x"))
    ended = backend.parse_accounting(CONDOR_HISTORY_SAMPLE)
    assert summary(backend, ended) == {
        "20.0": (Phase.COMPLETED, None, 0),
        "21.2": (Phase.ERROR, None, 3),
        "22.0": (Phase.ERROR, None, 137),
        "23.0": (Phase.ABORTED, "CANCELLED", None),
        "24.0": (Phase.ERROR, "TIMEOUT", None),
        "25.0": (Phase.ERROR, "SYSTEM_PERIODIC_REMOVE", None),
    }
    assert ended["20.0"].ended == datetime(2026, 1, 1, 0, 1, 40, tzinfo=UTC)
    assert ended["23.0"].ended == datetime(2026, 1, 1, 0, 3, 20, tzinfo=UTC)
    assert isinstance(ended["20.0"], HTCondorState)


def test_parsing_condor_submit_terse() -> None:
    backend = condor_backend(Path("/x"))
    assert backend.parse_job_id("123.0 - 123.9\n") == "123.0"
    assert backend.parse_job_id("\nWARNING: the line 'x = 1' was unused\n7.0 - 7.0\n") == "7.0"
    assert backend.member_ids("123.0", case_jobs("array")[:3]) == ["123.0", "123.1", "123.2"]
    assert backend.query_ids(["5.0", "5.1", "6.0"]) == ["5", "6"]
    with pytest.raises(ValueError):
        backend.parse_job_id("Submitting job(s).\n1 job(s) submitted to cluster 8.\n")


def test_the_fake_reads_the_environment_command_as_documented(tmp_path: Path) -> None:
    # The manual's example of the quoted syntax, through the fake condor_submit's reader.
    fake = FAKE_TOOLS / "condor_submit"
    code = (
        "import importlib.machinery, importlib.util, json, sys;"
        f"loader = importlib.machinery.SourceFileLoader('fake', {str(fake)!r});"
        "module = importlib.util.module_from_spec(importlib.util.spec_from_loader('fake', loader));"
        "loader.exec_module(module);"
        "print(json.dumps(module.parse_environment(sys.argv[1])))"
    )
    value = "\"one=1 two=\"\"2\"\" three='spacey ''quoted'' value'\""
    done = subprocess.run(["python3", "-c", code, value], capture_output=True, text=True)
    assert json.loads(done.stdout) == {"one": "1", "two": '"2"', "three": "spacey 'quoted' value"}


# -- finding submissions by their mark (locate), through the fake tools ----------------------


class TestHTCondorBackend(BackendScenarios):
    hold_attribute = "htcondor.hold"
    queue_down = Outage("condor_q", "-- Failed to fetch ads from: <127.0.0.1:9618> : schedd")
    accounting_down = Outage("condor_history", "-- Failed to fetch ads from: <127.0.0.1:9618>")
    # two at a time: the last members are not in the queue yet, their cluster is
    whole_array = "1,3,4,8%2"
    last_member_id = r"\.3$"

    @pytest.fixture
    def backend(self, isolated_data_dir: Path, condor: Path) -> HTCondorBackend:
        return condor_backend(isolated_data_dir)

    def check_ended_later(self, backend: BatchBackend, job: Job) -> None:
        # the history is read back to the search's start only
        later = job.model_copy(update={"created": datetime.now(UTC) + timedelta(hours=1)})
        assert backend.locate([later]).found == {}


def test_the_scheduler_output_paths(tmp_path: Path) -> None:
    backend = condor_backend(tmp_path, work_dir="/w")
    [job] = case_jobs("plain")
    member = case_jobs("array")[4].model_copy(update={"native_id": "8.4"})
    assert backend.scheduler_output_path(member, "stderr") == "/w/jb0array0000/htcondor-8.4.err"
    assert backend.scheduler_output_path(job, "stdout") is None  # not submitted


def test_the_fake_tools_filter_as_documented(condor: Path, tmp_path: Path) -> None:
    (tmp_path / "job.sh").write_text("#!/bin/sh\ntrue\n")
    (tmp_path / "job.sub").write_text(
        'executable = job.sh\n+JobbridgeId = "jb-one"\nhold = True\nqueue 2\n'
    )

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path)

    cluster = run("condor_submit", "-terse", "job.sub").stdout.split(".")[0]
    asked = ["-json", "-attributes", "ClusterId,ProcId,JobbridgeId"]
    found = json.loads(run("condor_q", *asked, "-constraint", 'JobbridgeId =?= "jb-one"').stdout)
    assert [(ad["ClusterId"], ad["ProcId"]) for ad in found] == [
        (int(cluster), 0),
        (int(cluster), 1),
    ]
    assert run("condor_q", *asked, "-constraint", 'JobbridgeId =?= "JB-ONE"').stdout == ""
    assert run("condor_q", "-constraint", "JobbridgeId === 1").returncode == 1
    run("condor_rm", cluster)
    history = ["condor_history", *asked, "-constraint", 'JobbridgeId == "JB-ONE"']
    assert len(json.loads(run(*history).stdout)) == 2  # == ignores case
    assert run(*history, "-since", f"EnteredCurrentStatus < {int(time.time()) + 60}").stdout == ""
    assert len(json.loads(run(*history, "-since", "EnteredCurrentStatus < 1000").stdout)) == 2


# -- one unreadable record is no news for its job only -----------------------------------------

# condor_q -json prints "[", then each ad from a "{" at the start of a line, separated by ","
CONDOR_Q_GARBLED = """[
{
  "ClusterId": 50,
  "ProcId": 0,
  "JobStatus": 2
}
,
{
  "ClusterId": 51,
  "ProcId": 0,
  "HoldReason": "the file "x" is missing",
  "JobStatus": 5
}
,
{
  "ClusterId": 52,
  "ProcId": 0,
  "JobStatus": 4,
  "ExitCode": 0
}
,
{
  "ClusterId": 53,
  "ProcId": 0,
  "JobStatus": "Running"
}
,
{
  "ProcId": 0,
  "JobStatus": 1
}
,
{
  "ClusterId": 54,
  "ProcId": 0,
  "JobStatus": 4,
  "ExitCode": "zero"
}
]
"""


def test_an_unreadable_ad_leaves_out_that_job_only(caplog: pytest.LogCaptureFixture) -> None:
    backend = condor_backend(Path("/x"))
    with caplog.at_level(logging.WARNING):
        states = backend.parse_status(CONDOR_Q_GARBLED)
        backend.parse_accounting(CONDOR_Q_GARBLED)
    assert summary(backend, states) == {
        "50.0": (Phase.EXECUTING, None, None),
        "52.0": (Phase.COMPLETED, None, 0),
    }
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warned) == 4, warned  # once per job, though read twice
    with pytest.raises(ValueError):
        backend.parse_status(CONDOR_Q_GARBLED[:200])  # cut short
    with pytest.raises(ValueError):
        backend.parse_status("-- Failed to fetch ads from: <127.0.0.1:9618>\n")


def test_located_marks_are_read_from_the_ads() -> None:
    backend = condor_backend(Path("/x"))
    ads = [
        {"ClusterId": 5, "ProcId": 0, "JobbridgeId": "jb-aaaa"},
        {"ClusterId": 6, "ProcId": 0, "JobbridgeId": "jb-bbbb", "JobbridgeArray": True},
        {"ClusterId": 6, "ProcId": 1, "JobbridgeId": "jb-bbbb", "JobbridgeArray": True},
        {"ClusterId": 7, "ProcId": 0, "JobbridgeId": "jb-bbbb", "JobbridgeMember": 3},
        {"ClusterId": 8, "ProcId": 0},
    ]
    assert backend.parse_located(json.dumps(ads)) == {
        "jb-aaaa": ["5.0"],
        "jb-bbbb": ["6", "7.0#3"],
    }
    assert located_by_member(backend, "6", "1,3,8")[8] == ["6.2"]
    assert located_by_member(backend, "7.0#3", "1,3,8") == {3: ["7.0"]}
    command = backend.locate_queue_command(["jb-a", "jb-b"])
    assert command[-2:] == ["-constraint", 'JobbridgeId =?= "jb-a" || JobbridgeId =?= "jb-b"']
    since = datetime(2026, 1, 1, tzinfo=UTC)
    history = backend.locate_accounting_command(["jb-a"], since)
    assert history[-2:] == ["-since", "EnteredCurrentStatus < 1767225600"]


def test_jobbridges_marks_cannot_be_set_by_attributes(tmp_path: Path) -> None:
    backend = condor_backend(tmp_path)
    for key in ("htcondor.MY.JobbridgeId", "htcondor.jobbridgemember"):
        with pytest.raises(ResourcesNotSupportedError, match="marks its submissions"):
            backend.check(JobSpec(executable="x", attributes={key: '"x"'}))
