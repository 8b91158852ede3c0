"""PBS Professional and Torque through fake command-line tools that follow the real ones'
documented options and output (``tests/fakes/bin/{pbspro,torque}``, over fakesched), plus
the pure parts: generated scripts, directive refusals and the status parsers."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from jobbridge import Engine, JobSpec, Phase, ResourcesNotSupportedError
from jobbridge.backends.base import NativeDependency
from jobbridge.backends.batch.native import NativeState
from jobbridge.backends.batch.pbs import PbsProBackend
from jobbridge.backends.batch.torque import TorqueBackend
from tests.batch_support import (
    CASES,
    DEPENDENCIES,
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
    new_job,
    render_case,
    run_rendered_script,
    wait_until_ended,
)
from tests.fakes.fakesched import ENDED, FakeScheduler

FAKE_BIN = Path(__file__).parent / "fakes" / "bin"
Backends = type[PbsProBackend] | type[TorqueBackend]


def pbs_backend(cls: Backends, data_dir: Path, **options: object) -> PbsProBackend | TorqueBackend:
    return make_backend(cls, data_dir, **{"accounting_delay": 3, **options})


@pytest.fixture(scope="session")
def bytecode_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fake-pbs-bytecode")


def fake_cluster(
    flavour: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bytecode_dir: Path
) -> Path:
    """Point the backend's commands at the fake tools of one flavour, with a fresh system."""
    root = tmp_path / "fakesched"
    monkeypatch.setenv("FAKESCHED_DIR", str(root))
    # the fakes start fast from this interpreter (a pyenv shim would add 150 ms to each
    # command) and with their bytecode kept between calls
    path = [str(FAKE_BIN / flavour), str(Path(sys.executable).parent), os.environ["PATH"]]
    monkeypatch.setenv("PATH", os.pathsep.join(path))
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    monkeypatch.setenv("PYTHONPYCACHEPREFIX", str(bytecode_dir))
    return root


def stop_everything(root: Path) -> None:
    if (root / "state.json").exists():
        scheduler = FakeScheduler(str(root))
        with scheduler.session() as tasks:
            scheduler.cancel([task for task in tasks if task.state not in ENDED])


@pytest.fixture
def cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bytecode_dir: Path
) -> Iterator[Callable[[str], Path]]:
    """Starts the fake tools of a flavour; whatever still runs is stopped afterwards."""
    roots: list[Path] = []

    def start(flavour: str) -> Path:
        roots.append(fake_cluster(flavour, tmp_path, monkeypatch, bytecode_dir))
        return roots[-1]

    yield start
    for root in roots:
        stop_everything(root)


@pytest.fixture(params=[PbsProBackend, TorqueBackend], ids=["pbspro", "torque"])
def flavour(request: pytest.FixtureRequest, cluster: Callable[[str], Path]) -> Backends:
    cls: Backends = request.param
    cluster(cls.kind)
    return cls


def engine_on(cls: Backends, data_dir: Path, **options: object) -> Engine:
    return make_engine(pbs_backend(cls, data_dir, **options), data_dir)


class PbsScenarios(BatchScenarios):
    walltime = 3
    walltime_timeout = 30
    timeout = 40
    backend_class: Backends

    @pytest.fixture
    def engine(self, isolated_data_dir: Path, cluster: Callable[[str], Path]) -> Iterator[Engine]:
        cluster(self.backend_class.kind)
        with engine_on(self.backend_class, isolated_data_dir) as engine:
            yield engine


class TestPbsPro(PbsScenarios):
    backend_class = PbsProBackend


class TestTorque(PbsScenarios):
    backend_class = TorqueBackend


# -- through the fake tools, beyond the shared scenarios -------------------------------------


def test_one_refresh_of_100_active_jobs_runs_one_status_command(
    flavour: Backends, isolated_data_dir: Path
) -> None:
    backend = pbs_backend(flavour, isolated_data_dir)
    counting = CountingTransport.around(backend)
    round_trips = Path(os.environ["FAKESCHED_DIR"]) / "roundtrips"
    with make_engine(backend, isolated_data_dir) as engine:
        spec = JobSpec(executable="true", attributes={"pbs.h": True})
        jobs = [engine.submit(spec) for _ in range(100)]
        engine.refresh()  # PBS Pro: learns that the server keeps no job history
        time.sleep(backend.options.min_refresh_interval)
        round_trips.unlink()
        commands = commands_of_one_refresh(engine, counting)
        assert [command[0] for command in commands] == ["qstat"]
        # and one request to the server, not one per job id
        assert round_trips.read_text() == "qstat\n"
        assert all(engine.get(job.id).phase is Phase.HELD for job in jobs)


def test_pbspro_maps_an_index_set_that_is_no_range(
    cluster: Callable[[str], Path], isolated_data_dir: Path
) -> None:
    cluster("pbspro")
    script = 'echo "index $JOBBRIDGE_ARRAY_INDEX"; [ "$JOBBRIDGE_ARRAY_INDEX" != 5 ]'
    spec = JobSpec(executable="sh", arguments=["-c", script], array="1,3,5-7")
    with engine_on(PbsProBackend, isolated_data_dir) as engine:
        members = engine.submit_array(spec)
        single = engine.submit_array(spec.replace(array="9"))
        done = engine.wait([m.id for m in [*members, *single]], timeout=30)
        outputs = {job.array_index: engine.read_output(job.id).decode() for job in done}
    # PBS runs them as members 0..4 of one array; the script maps them back
    assert [(m.native_id or "").split(".")[0][-3:] for m in members] == [
        f"[{position}]" for position in range(5)
    ]
    assert "[" not in (single[0].native_id or ""), "a single index goes as a plain job"
    assert outputs == {i: f"index {i}\n" for i in (1, 3, 5, 6, 7, 9)}
    failed = {job.array_index for job in done if job.phase is not Phase.COMPLETED}
    assert failed == {5}


def test_torque_runs_an_index_set_natively(
    cluster: Callable[[str], Path], isolated_data_dir: Path
) -> None:
    cluster("torque")
    with engine_on(TorqueBackend, isolated_data_dir) as engine:
        members = engine.submit_array(
            JobSpec(executable="sh", arguments=["-c", "echo $JOBBRIDGE_ARRAY_INDEX"], array="2,4")
        )
        assert [(m.native_id or "").split(".")[0][-3:] for m in members] == ["[2]", "[4]"]
        done = engine.wait([m.id for m in members], timeout=30)
    assert [job.phase for job in done] == [Phase.COMPLETED, Phase.COMPLETED]


def test_ended_jobs_the_server_forgot_are_resolved_from_exit_files(
    flavour: Backends, monkeypatch: pytest.MonkeyPatch, isolated_data_dir: Path
) -> None:
    # PBS Pro without job history (its default), Torque with keep_completed = 0
    monkeypatch.setenv("FAKESCHED_PBS_HISTORY", "0")
    monkeypatch.setenv("FAKESCHED_TORQUE_KEEP_COMPLETED", "0")
    with engine_on(flavour, isolated_data_dir) as engine:
        good = engine.submit(JobSpec(executable="true"))
        bad = engine.submit(JobSpec(executable="sh", arguments=["-c", "exit 4"]))
        done = engine.wait([good.id, bad.id], timeout=30)
    assert [(j.phase, j.exit_code) for j in done] == [(Phase.COMPLETED, 0), (Phase.ERROR, 4)]


def test_pbspro_without_history_settles_array_members_from_exit_files(
    cluster: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, isolated_data_dir: Path
) -> None:
    # members that ended while their array runs on show as X without an exit status
    cluster("pbspro")
    monkeypatch.setenv("FAKESCHED_PBS_HISTORY", "0")
    script = '[ "$JOBBRIDGE_ARRAY_INDEX" = 0 ] && sleep 1.5; exit "$JOBBRIDGE_ARRAY_INDEX"'
    spec = JobSpec(executable="sh", arguments=["-c", script], array="0-2")
    with engine_on(PbsProBackend, isolated_data_dir) as engine:
        members = engine.submit_array(spec)
        done = engine.wait([m.id for m in members], timeout=30)
    assert [(j.phase, j.detail, j.exit_code) for j in done] == [
        (Phase.COMPLETED, None, 0),
        (Phase.ERROR, None, 1),
        (Phase.ERROR, None, 2),
    ]


def test_a_forgotten_job_without_an_exit_file_ends_lost(
    flavour: Backends, monkeypatch: pytest.MonkeyPatch, isolated_data_dir: Path
) -> None:
    monkeypatch.setenv("FAKESCHED_PBS_HISTORY", "0")
    monkeypatch.setenv("FAKESCHED_TORQUE_KEEP_COMPLETED", "0")
    backend = pbs_backend(
        flavour, isolated_data_dir, accounting_delay=1, lost_after=1, lost_after_misses=2
    )
    with make_engine(backend, isolated_data_dir) as engine:
        # the job script itself dies, before it can write its exit code
        lost = engine.submit(JobSpec(executable="sh", arguments=["-c", "kill -9 $PPID"]))
        [done] = engine.wait([lost.id], timeout=30)
    assert (done.phase, done.detail) == (Phase.ERROR, "LOST")


def test_release_lets_a_held_job_run(flavour: Backends, isolated_data_dir: Path) -> None:
    with engine_on(flavour, isolated_data_dir) as engine:
        job = engine.submit(
            JobSpec(executable="echo", arguments=["free"], attributes={"pbs.h": True})
        )
        engine.refresh()
        assert engine.get(job.id).phase is Phase.HELD
        engine.release(job.id)
        [done] = engine.wait([job.id], timeout=30)
        assert (done.phase, engine.read_output(job.id)) == (Phase.COMPLETED, b"free\n")


def test_the_job_gets_what_it_asked_for(flavour: Backends, isolated_data_dir: Path) -> None:
    program = (
        "import json, os; print(json.dumps({k: v for k, v in os.environ.items()"
        " if k.startswith(('PBS_', 'JOBBRIDGE_', 'NCPUS'))}))"
    )
    spec = JobSpec(
        executable="python3",
        arguments=["-c", program],
        resources={"nodes": 1, "processes_per_node": 2, "cores_per_process": 2},
        queue="fast",
        account="astro",
        attributes={"pbs.l.software": "matlab"},
    )
    with engine_on(flavour, isolated_data_dir) as engine:
        [done] = engine.wait([engine.submit(spec).id], timeout=30)
        seen = json.loads(engine.read_output(done.id))
    assert seen["PBS_QUEUE"] == "fast"
    # one line per MPI process (PBS Pro) or per core (Torque's ppn)
    slots = 2 if flavour is PbsProBackend else 4
    assert len(Path(seen["PBS_NODEFILE"]).read_text().splitlines()) == slots
    assert seen["JOBBRIDGE_NODELIST"] and "," not in seen["JOBBRIDGE_NODELIST"]
    assert seen["JOBBRIDGE_JOB_ID"] == done.native_id
    if flavour is PbsProBackend:
        assert seen["NCPUS"] == "4"
    else:
        assert (seen["PBS_NUM_PPN"], seen["PBS_NP"]) == ("4", "4")


# what each fake says, in its documented format: (qstat of a held job, what shows it held;
# qstat -x of an ended job, what shows it ended; qdel of an ended job, its status and message)
FAKE_ANSWERS = {
    "pbspro": (
        ["-f", "-F", "json"],
        '"Hold_Types":\t"u"',
        ["-f", "-x"],
        "job_state = F",
        (35, "qdel: Job {id} has finished\n"),
    ),
    "torque": (
        ["-f"],
        "Hold_Types = u",
        ["-x"],
        "<job_state>C</job_state>",
        (170, "qdel: Request invalid for state of job MSG=invalid state for job - COMPLETE {id}\n"),
    ),
}


@pytest.mark.parametrize("flavour_name", ["pbspro", "torque"])
def test_the_fake_tools_answer_as_documented(
    flavour_name: str,
    cluster: Callable[[str], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    held_query, held_shows, ended_query, ended_shows, finished = FAKE_ANSWERS[flavour_name]
    cluster(flavour_name)
    monkeypatch.setenv("FAKESCHED_PBS_HISTORY", "1")  # sites that keep ended jobs a while
    monkeypatch.setenv("FAKESCHED_TORQUE_KEEP_COMPLETED", "300")
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/bash\n#PBS -N from_script\n#PBS -l walltime=00:01:00\ntrue\n")

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, timeout=30)

    job_id = run("qsub", "-N", "from_cli", str(script)).stdout.strip()
    assert re.fullmatch(r"\d+\.\S+", job_id)
    held_id = run("qsub", "-h", str(script)).stdout.strip()
    held = run("qstat", *held_query, held_id).stdout
    assert "from_script" in held and held_shows in held  # directives read, -h applied
    deadline = time.monotonic() + 20
    while ended_shows not in (ended := run("qstat", *ended_query, job_id).stdout):
        assert time.monotonic() < deadline, ended
        time.sleep(0.1)
    assert "from_cli" in ended  # the command line overrides the directive
    answer = run("qdel", job_id)
    assert (answer.returncode, answer.stderr) == (finished[0], finished[1].format(id=job_id))
    unknown = run("qstat", "-f", "-x", "99999.nowhere")
    assert unknown.returncode == 153 and "Unknown Job Id" in unknown.stderr


# -- the generated scripts -------------------------------------------------------------------


@pytest.mark.parametrize("cls", [PbsProBackend, TorqueBackend], ids=["pbspro", "torque"])
def test_scripts_match_the_golden_files(cls: Backends, tmp_path: Path) -> None:
    backend = pbs_backend(cls, tmp_path, work_dir="/scratch/jobbridge jobs")
    for case in CASES:
        if cls is PbsProBackend and case == "resources":
            continue
        check_golden(cls.kind, f"{case}.sh", render_case(backend, case))
    check_golden(cls.kind, "dependencies.sh", render_case(backend, "plain", dependencies=True))


def test_pbspro_golden_files_for_what_only_pbspro_maps(tmp_path: Path) -> None:
    backend = pbs_backend(PbsProBackend, tmp_path, work_dir="/scratch/jobbridge jobs")
    # a reservation is a queue on PBS Pro: the resources case without its second queue
    [job] = case_jobs("resources")
    resources = CASES["resources"].replace(reservation=None, project="cosmo")
    job = job.model_copy(update={"spec": resources})
    check_golden("pbspro", "resources.sh", backend.render_script(job, [job]))
    for name, indices in (("array_lookup.sh", "1,3,5-7%2"), ("array_single.sh", "4")):
        members = array_members(CASES["array"].replace(array=indices))
        check_golden("pbspro", name, backend.render_script(members[0], members))


@pytest.mark.parametrize("cls", [PbsProBackend, TorqueBackend], ids=["pbspro", "torque"])
def test_the_generated_script_passes_everything_verbatim(cls: Backends, tmp_path: Path) -> None:
    nodes = tmp_path / "nodefile"
    nodes.write_text("node1\nnode1\nnode2\n")
    seen = run_rendered_script(
        pbs_backend(cls, tmp_path),
        tmp_path,
        {"PBS_JOBID": "42.server", "PBS_O_HOST": "login", "PBS_NODEFILE": str(nodes)},
    )
    assert seen["stdin"] == "from stdin\n"
    assert seen["cwd"].endswith("it's")


def test_array_members_get_the_schedulers_ids(tmp_path: Path) -> None:
    pbspro, torque = pbs_backend(PbsProBackend, tmp_path), pbs_backend(TorqueBackend, tmp_path)
    members = case_jobs("array")
    assert pbspro.member_ids("7[].srv", members[:3]) == ["7[0].srv", "7[1].srv", "7[2].srv"]
    assert torque.member_ids("7[].srv", members[8:]) == ["7[8].srv", "7[9].srv"]
    assert pbspro.query_ids(["7[0].srv", "7[1].srv", "8.srv"]) == ["7[].srv", "8.srv"]
    assert pbspro.parse_job_id("1234[].pbs-server\n") == "1234[].pbs-server"
    with pytest.raises(ValueError):
        pbspro.parse_job_id("qsub: Unknown queue\n")


@pytest.mark.parametrize(
    ("cls", "changes", "field"),
    [
        (PbsProBackend, {"queue": "long; rm -rf /"}, "queue"),
        (PbsProBackend, {"account": "a b"}, "account"),
        (PbsProBackend, {"queue": "long", "reservation": "R12"}, "reservation"),
        (PbsProBackend, {"project": "a,b"}, "project"),
        (TorqueBackend, {"account": "a", "project": "b"}, "project"),
        (TorqueBackend, {"reservation": "$(x)"}, "reservation"),
        (PbsProBackend, {"attributes": {"pbs.l.9lives": "x"}}, "attributes.pbs.l.9lives"),
        (PbsProBackend, {"attributes": {"pbs.l.walltime": "1:00:00"}}, "attributes.pbs.l.walltime"),
        (TorqueBackend, {"attributes": {"pbs.W.depend": "afterok:1"}}, "attributes.pbs.W.depend"),
        (TorqueBackend, {"attributes": {"pbs.N": "other"}}, "attributes.pbs.N"),
        (TorqueBackend, {"attributes": {"pbs.h": "yes"}}, "attributes.pbs.h"),
        (PbsProBackend, {"attributes": {"pbs.m": "a\nb"}}, "attributes.pbs.m"),
        (TorqueBackend, {"launcher": "srun"}, "launcher"),
    ],
)
def test_what_a_directive_cannot_carry_is_refused(
    cls: Backends, changes: dict, field: str, tmp_path: Path
) -> None:
    assert_refused(pbs_backend(cls, tmp_path), changes, field)


def test_pbspro_refuses_to_wait_for_one_member_of_an_array(tmp_path: Path) -> None:
    backend = pbs_backend(PbsProBackend, tmp_path)
    [job] = case_jobs("plain")
    with pytest.raises(ResourcesNotSupportedError, match="member of an array"):
        backend.render_script(job, [job], [NativeDependency("12[3].srv", "afterok")])
    torque = pbs_backend(TorqueBackend, tmp_path).render_script(
        job, [job], [NativeDependency("12[3].srv", "afterok"), *DEPENDENCIES]
    )
    assert "#PBS -W depend=afterok:12[3].srv:1001,afterany:1002\n" in torque


# -- the parsers, on samples in the documented formats ---------------------------------------

# PBS Pro `qstat -f -F json -x -t` (qstat.1B: "Attribute output is preceded by timestamp,
# PBS version, and PBS server hostname"; attributes and job_state letters as in
# pbs_job_attributes.7B; times printed as ctime(3); Exit_status -29 is JOB_EXEC_KILL_WALLTIME
# in job.h; 271 is 256 + SIGTERM, how PBS reports a job it killed with a signal)
PBSPRO_SAMPLE = {
    "timestamp": 1767225600,
    "pbs_version": "23.06.06",
    "pbs_server": "srv",
    "Jobs": {
        "10.srv": {"Job_Name": "q", "job_state": "Q", "Hold_Types": "n", "substate": 10},
        "11.srv": {"job_state": "H", "Hold_Types": "u", "substate": 20},
        "12.srv": {
            "job_state": "H",
            "Hold_Types": "s",
            "substate": 22,
            "depend": "afterok:10.srv@srv",
        },
        "13.srv": {
            "job_state": "R",
            "stime": "Thu Jan  1 00:00:00 2026",
            "comment": "Job run at Thu Jan 01 at 00:00 on (node1:ncpus=1)",
        },
        "14.srv": {
            "job_state": "F",
            "Exit_status": 0,
            "stime": "Thu Jan  1 00:00:00 2026",
            "obittime": "Thu Jan  1 00:05:00 2026",
        },
        "15.srv": {"job_state": "F", "Exit_status": 3, "stime": "Thu Jan  1 00:00:00 2026"},
        "16.srv": {"job_state": "F", "Exit_status": -29, "stime": "Thu Jan  1 00:00:00 2026"},
        "17.srv": {"job_state": "F", "substate": 91, "depend": "afterok:15.srv@srv"},
        "18.srv": {
            "job_state": "F",
            "substate": 91,
            "Exit_status": 271,
            "stime": "Thu Jan  1 00:00:00 2026",
        },
        "19[].srv": {"job_state": "B", "array": "True", "array_state_count": "Queued:1"},
        "19[0].srv": {"job_state": "X", "Exit_status": 1, "stime": "Thu Jan  1 00:00:00 2026"},
        "19[1].srv": {"job_state": "Q"},
        "20.srv": {"job_state": "F", "stime": "Thu Jan  1 00:00:00 2026"},
        "21.srv": {"job_state": "F", "Exit_status": -27, "stime": "Thu Jan  1 00:00:00 2026"},
    },
}

# Torque `qstat -f -x -t` (Torque's qstat.c create_full_job_xml: one <Job> per job in <Data>,
# resources as nested elements, times as epoch seconds; job states from qstat.1; exit_status
# -11 is JOB_EXEC_OVERLIMIT_WT; a job deleted for a dependency gets 271 and a comment)
TORQUE_SAMPLE = """<?xml version="1.0"?>
<Data><Job><Job_Id>30.srv</Job_Id><Job_Name>a</Job_Name><job_state>Q</job_state>\
<Hold_Types>n</Hold_Types><Resource_List><nodes>1:ppn=2</nodes><walltime>01:00:00</walltime>\
</Resource_List></Job><Job><Job_Id>31.srv</Job_Id><job_state>H</job_state>\
<Hold_Types>s</Hold_Types><depend>afterok:30.srv@srv</depend></Job><Job><Job_Id>32.srv</Job_Id>\
<job_state>C</job_state><exit_status>0</exit_status><start_time>1767225600</start_time>\
<comp_time>1767225660</comp_time></Job><Job><Job_Id>33.srv</Job_Id><job_state>C</job_state>\
<exit_status>-11</exit_status><start_time>1767225600</start_time></Job><Job><Job_Id>34.srv\
</Job_Id><job_state>C</job_state><exit_status>271</exit_status><comment>Job deleted as result \
of dependency on job 33.srv</comment></Job><Job><Job_Id>35[2].srv</Job_Id><job_state>R</job_state>\
<job_array_id>2</job_array_id><start_time>1767225600</start_time></Job><Job><Job_Id>36.srv\
</Job_Id><job_state>C</job_state><exit_status>7</exit_status><start_time>1767225600\
</start_time><Variable_List>PBS_O_HOME=/home/a,ODD=\x01</Variable_List></Job></Data>
"""


def summarize(backend: PbsProBackend | TorqueBackend, states: dict[str, NativeState]) -> dict:
    return {
        job_id: (backend.to_status(s).phase, backend.to_status(s).detail, s.exit_code)
        for job_id, s in states.items()
    }


def test_parsing_pbspro_qstat_json(tmp_path: Path) -> None:
    backend = pbs_backend(PbsProBackend, tmp_path)
    states = backend.parse_status(json.dumps(PBSPRO_SAMPLE))
    assert summarize(backend, states) == {
        "10.srv": (Phase.QUEUED, None, None),
        "11.srv": (Phase.HELD, None, None),
        "12.srv": (Phase.QUEUED, None, None),  # PBS holds a job until its dependencies end
        "13.srv": (Phase.EXECUTING, None, None),
        "14.srv": (Phase.COMPLETED, None, 0),
        "15.srv": (Phase.ERROR, None, 3),
        "16.srv": (Phase.ERROR, "TIMEOUT", -29),
        "17.srv": (Phase.ABORTED, "DEPENDENCY_NEVER_SATISFIED", None),
        "18.srv": (Phase.ABORTED, "CANCELLED", 143),
        "19[].srv": (Phase.EXECUTING, None, None),
        "19[0].srv": (Phase.ERROR, None, 1),
        "19[1].srv": (Phase.QUEUED, None, None),
        "20.srv": (Phase.ERROR, "NO_EXIT_STATUS", None),
        "21.srv": (Phase.ERROR, "OUT_OF_MEMORY", -27),
    }
    assert states["13.srv"].reason and states["13.srv"].started is not None
    assert states["14.srv"].ended is not None and states["14.srv"].ended.minute == 5
    assert backend.parse_status("") == {}
    assert backend.parse_status('{"timestamp": 1, "pbs_version": "x", "pbs_server": "s"}') == {}
    assert backend.to_status(NativeState("BRAND_NEW")).phase is Phase.UNKNOWN


def test_parsing_torque_qstat_xml(tmp_path: Path) -> None:
    backend = pbs_backend(TorqueBackend, tmp_path)
    states = backend.parse_status(TORQUE_SAMPLE)
    assert summarize(backend, states) == {
        "30.srv": (Phase.QUEUED, None, None),
        "31.srv": (Phase.QUEUED, None, None),
        "32.srv": (Phase.COMPLETED, None, 0),
        "33.srv": (Phase.ERROR, "TIMEOUT", -11),
        "34.srv": (Phase.ABORTED, "DEPENDENCY_NEVER_SATISFIED", 143),
        "35[2].srv": (Phase.EXECUTING, None, None),
        "36.srv": (Phase.ERROR, None, 7),
    }
    assert states["32.srv"].ended is not None and states["32.srv"].ended.year == 2026
    # Torque before 6.1.0 printed nothing at all when there were no jobs
    assert backend.parse_status("") == {}
    assert backend.parse_status('<?xml version="1.0"?>\n<Data></Data>\n') == {}


def test_the_per_refresh_commands(tmp_path: Path) -> None:
    pbspro, torque = pbs_backend(PbsProBackend, tmp_path), pbs_backend(TorqueBackend, tmp_path)
    assert pbspro.status_command(["7[].s", "8.s"]) == [
        "qstat", "-f", "-F", "json", "-x", "-t", "-E", "7[].s", "8.s"
    ]  # fmt: skip
    assert pbspro.status_environment() == {"TZ": "UTC"}
    assert torque.status_command(["7[].s"]) == ["qstat", "-f", "-x", "-t"]
    assert pbspro.accounting_command(["8.s"]) is None
    assert (pbspro.cancel_command(["8.s"]), torque.hold_command(["8.s"])) == (
        ["qdel", "8.s"],
        ["qhold", "8.s"],
    )


# -- finding submissions by their mark (locate), through the fake tools ----------------------


class PbsBackendScenarios(BackendScenarios):
    """On sites that keep ended jobs a while (PBS Pro's job history, Torque's
    keep_completed): otherwise an ended job cannot be found by its mark at all."""

    hold_attribute = "pbs.h"
    queue_down = Outage("qstat", "qstat: cannot connect to server srv (errno=111)", returncode=2)
    accounting_down = Outage("qstat", "qstat: cannot connect to server srv", "-B", 2)
    backend_class: Backends

    @pytest.fixture
    def backend(
        self,
        isolated_data_dir: Path,
        cluster: Callable[[str], Path],
        monkeypatch: pytest.MonkeyPatch,
    ) -> PbsProBackend | TorqueBackend:
        cluster(self.backend_class.kind)
        monkeypatch.setenv("FAKESCHED_PBS_HISTORY", "1")
        monkeypatch.setenv("FAKESCHED_TORQUE_KEEP_COMPLETED", "300")
        return pbs_backend(self.backend_class, isolated_data_dir)


class TestPbsProBackend(PbsBackendScenarios):
    backend_class = PbsProBackend
    last_member_id = r"^\d+\[2\]"  # not a range: PBS indices 0-2, looked up in the script


class TestTorqueBackend(PbsBackendScenarios):
    backend_class = TorqueBackend
    last_member_id = r"^\d+\[4\]"


def test_without_history_the_job_directory_proves_absence(
    flavour: Backends, isolated_data_dir: Path
) -> None:
    # the sites' defaults: PBS Pro keeps no job history, Torque no completed jobs
    backend = pbs_backend(flavour, isolated_data_dir)
    held = new_job(JobSpec(executable="true", attributes={"pbs.h": True}))
    ended = new_job(JobSpec(executable="true"))
    never = new_job(JobSpec(executable="true"))
    native, ended_native = backend.submit(held), backend.submit(ended)
    try:
        wait_until_ended(backend, ended.model_copy(update={"native_id": ended_native}))
        # a job the server does not show and whose directory holds nothing a job script
        # leaves was never made; one that ran noted its native id
        located = backend.locate([held, ended, never])
        assert located.found == {held.id: [native], ended.id: [ended_native]}
        assert located.complete
        # an exit-code file without the noted id: absence proves nothing
        Path(backend.exit_code_path(ended) + ".id").unlink()
        located = backend.locate([held, ended, never])
        assert (located.found, located.complete) == ({held.id: [native]}, False)
    finally:
        backend.cancel(held.model_copy(update={"native_id": native}))


def test_locate_is_incomplete_when_the_server_keeps_no_finished_jobs(
    flavour: Backends, monkeypatch: pytest.MonkeyPatch, isolated_data_dir: Path
) -> None:
    monkeypatch.setenv("FAKESCHED_PBS_HISTORY", "1")
    monkeypatch.setenv("FAKESCHED_PBS_HISTORY_DURATION", "1")
    monkeypatch.setenv("FAKESCHED_TORQUE_KEEP_COMPLETED", "1")
    backend = pbs_backend(flavour, isolated_data_dir)
    job = new_job(JobSpec(executable="true", attributes={"pbs.h": True}))
    old = new_job(JobSpec(executable="true"), created=datetime.now(UTC) - timedelta(hours=1))
    (Path(backend.job_dir(old)) / "exitcode").parent.mkdir(parents=True)
    (Path(backend.job_dir(old)) / "exitcode").write_text("0 1 2\n")
    native = backend.submit(job)
    try:
        located = backend.locate([job, old])
        assert (located.found, located.complete) == ({job.id: [native]}, False)
    finally:
        backend.cancel(job.model_copy(update={"native_id": native}))


# -- one unreadable record is no news for its job only -----------------------------------------

# PBS Pro prints JSON with cJSON (tab-indented, one key per line); a value it failed to escape
# breaks one job's object
PBSPRO_GARBLED = (
    '{\n\t"timestamp":\t1767225600,\n\t"pbs_version":\t"23.06.06",\n\t"pbs_server":\t"srv",\n'
    '\t"Jobs":\t{\n'
    '\t\t"10.srv":\t{\n\t\t\t"Job_Name":\t"a",\n\t\t\t"job_state":\t"R"\n\t\t},\n'
    '\t\t"11.srv":\t{\n\t\t\t"Job_Name":\t"say "hi"",\n\t\t\t"job_state":\t"Q"\n\t\t},\n'
    '\t\t"12.srv":\t{\n\t\t\t"Job_Name":\t"c",\n\t\t\t"job_state":\t"F",\n'
    '\t\t\t"Exit_status":\t0,\n\t\t\t"stime":\t"Thu Jan  1 00:00:00 2026",\n'
    '\t\t\t"Resource_List":\t{\n\t\t\t\t"ncpus":\t1\n\t\t\t}\n\t\t},\n'
    '\t\t"13.srv":\t{\n\t\t\t"job_state":\t"F",\n\t\t\t"Exit_status":\t"x"\n\t\t},\n'
    '\t\t"14.srv":\t{\n\t\t\t"Job_Name":\t"no state"\n\t\t}\n'
    "\t}\n}\n"
)
TORQUE_GARBLED = (
    '<?xml version="1.0"?>\n<Data><Job><Job_Id>30.srv</Job_Id><job_state>R</job_state></Job>'
    "<Job><Job_Id>31.srv</Job_Id><comment>a < b</comment><job_state>Q</job_state></Job>"
    "<Job><Job_Id>32.srv</Job_Id><job_state>C</job_state><exit_status>0</exit_status>"
    "<start_time>1767225600</start_time></Job>"
    "<Job><Job_Id>33.srv</Job_Id><job_state>C</job_state><exit_status>x</exit_status></Job>"
    "<Job><Job_Id>34.srv</Job_Id></Job></Data>\n"
)


@pytest.mark.parametrize(
    ("cls", "answer", "good"),
    [
        (PbsProBackend, PBSPRO_GARBLED, {"10.srv": Phase.EXECUTING, "12.srv": Phase.COMPLETED}),
        (
            TorqueBackend,
            TORQUE_GARBLED,
            {"30.srv": Phase.EXECUTING, "31.srv": Phase.QUEUED, "32.srv": Phase.COMPLETED},
        ),
    ],
    ids=["pbspro", "torque"],
)
def test_an_unreadable_job_record_leaves_out_that_job_only(
    cls: Backends,
    answer: str,
    good: dict[str, Phase],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    backend = pbs_backend(cls, tmp_path)
    with caplog.at_level(logging.WARNING):
        states = backend.parse_status(answer)
        backend.parse_status(answer)
    assert {native: backend.to_status(s).phase for native, s in states.items()} == good
    warned = [r.getMessage() for r in caplog.records if "unreadable" in r.getMessage()]
    # once per unreadable job, not at every query (Torque's bare "<" is recovered)
    assert len(warned) == (3 if cls is PbsProBackend else 2), warned
    assert backend.parse_located(answer) == {}  # no marks in these names, and no exception


@pytest.mark.parametrize(
    ("cls", "answer"),
    [
        (PbsProBackend, "qstat: cannot connect to server srv (errno=111)\n"),
        (PbsProBackend, PBSPRO_GARBLED[: len(PBSPRO_GARBLED) // 2]),  # cut short
        (TorqueBackend, "qstat: cannot connect to server srv\n"),
        (TorqueBackend, TORQUE_GARBLED.replace("</Data>", "")),
    ],
    ids=["pbspro-no-json", "pbspro-cut", "torque-no-xml", "torque-cut"],
)
def test_an_answer_unreadable_as_a_whole_is_an_error(
    cls: Backends, answer: str, tmp_path: Path
) -> None:
    with pytest.raises(ValueError):
        pbs_backend(cls, tmp_path).parse_status(answer)


def test_located_names_are_read_from_the_listing(tmp_path: Path) -> None:
    backend = pbs_backend(PbsProBackend, tmp_path)
    listing = {
        "Jobs": {
            "5.srv": {"Job_Name": "run.jb-aaaa", "job_state": "R"},
            "6[].srv": {"Job_Name": "work.jb-bbbb", "job_state": "B"},
            "7.srv": {"Job_Name": "work.jb-bbbb.3", "job_state": "Q"},
            "8.srv": {"Job_Name": "someone_else", "job_state": "Q"},
            "9.srv": {"Job_Name": "run.jb-aaaa", "job_state": "F"},
        }
    }
    assert backend.parse_located(json.dumps(listing)) == {
        "jb-aaaa": ["5.srv", "9.srv"],
        "jb-bbbb": ["6[].srv", "7.srv#3"],
    }
    assert located_by_member(backend, "6[].srv", "1-4")[2] == ["6[2].srv"]
    assert located_by_member(backend, "7.srv#3", "1-4") == {3: ["7.srv"]}


def test_the_scheduler_output_paths(tmp_path: Path) -> None:
    pbspro = pbs_backend(PbsProBackend, tmp_path, work_dir="/w")
    torque = pbs_backend(TorqueBackend, tmp_path, work_dir="/w")
    [job] = case_jobs("plain")
    members = case_jobs("array")
    plain = job.model_copy(update={"native_id": "8.srv"})
    member = members[3].model_copy(update={"native_id": "9[3].srv"})
    assert pbspro.scheduler_output_path(plain, "stderr") == "/w/jb0case0plai/pbs.err"
    assert pbspro.scheduler_output_path(member, "stdout") == "/w/jb0array0000/pbs.3.out"
    assert torque.scheduler_output_path(plain, "stdout") == "/w/jb0case0plai/pbs.out"
    assert (
        torque.scheduler_output_path(member, "stderr")
        == "/w/jb0array0000/work.jb-jb0array0000.e9-3"
    )
    assert pbspro.scheduler_output_path(job, "stdout") is None  # not submitted


def test_the_fake_servers_show_how_long_they_keep_finished_jobs(
    cluster: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    def run(*argv: str) -> str:
        return subprocess.run(argv, capture_output=True, text=True, check=True).stdout

    cluster("pbspro")
    document = json.loads(run("qstat", "-B", "-f", "-F", "json"))
    assert set(document) == {"timestamp", "pbs_version", "pbs_server", "Server"}
    [server] = document["Server"].values()
    assert "job_history_enable" not in server  # off as shipped; unset attributes not shown
    monkeypatch.setenv("FAKESCHED_PBS_HISTORY", "1")
    [server] = json.loads(run("qstat", "-B", "-f", "-F", "json"))["Server"].values()
    assert (server["job_history_enable"], server["job_history_duration"]) == ("True", "336:00:00")
    cluster("torque")
    text = run("qstat", "-B", "-f")
    assert text.startswith("Server: ") and "keep_completed" not in text  # 0 before 6.1
    assert pbs_backend(TorqueBackend, Path("/x")).history_kept(text) == 0
    monkeypatch.setenv("FAKESCHED_TORQUE_KEEP_COMPLETED", "300")
    text = run("qstat", "-B", "-f")
    assert "\n    keep_completed = 300\n" in text
    assert pbs_backend(TorqueBackend, Path("/x")).history_kept(text) == 300
