"""Users' secrets: stored encrypted, handed to their owner's jobs that name them (as an
environment variable and as a private file), and found nowhere else: not in a log, an
event, a stored row, a job document, a file left behind or any JSON or XML output."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from fastapi.testclient import TestClient

from jobbridge import Engine, EngineSettings, Job, JobSpec, Phase, Store
from jobbridge.backends.local import LocalBackend
from jobbridge.cli import cli
from jobbridge.config import SecretsSettings
from jobbridge.secrets import SecretError, SecretKind, new_key
from jobbridge.store.schema import metadata
from jobbridge.uws import create_app
from jobbridge.uws.definitions import Definitions, JobDefinition
from tests.uws_support import add_user, bearer, service_config

TOKEN = "Sup3r-Secret-Value-7781 with $(spaces) and\nlines"
KEYTAB = b"\x00keytab-bytes-Sup3r-9913\xff"
NEEDLES = [TOKEN.encode(), b"Sup3r-Secret-Value-7781", KEYTAB, b"keytab-bytes-Sup3r-9913"]

REPORT = (
    'printf %s "$TOKEN" | sha256sum; sha256sum < "$JOBBRIDGE_SECRETS/KEYTAB";'
    ' stat -c %a "$JOBBRIDGE_SECRETS" "$JOBBRIDGE_SECRETS/KEYTAB"'
)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets.key"
    path.write_text(new_key())
    return path


@pytest.fixture
def secret_engine(
    isolated_data_dir: Path, local_backend: LocalBackend, key_file: Path
) -> Iterator[Engine]:
    store = Store(f"sqlite:///{isolated_data_dir / 'jobbridge.db'}")
    engine = Engine(
        store,
        {"local": local_backend},
        settings=EngineSettings(refresh_interval=0.1),
        results_dir=isolated_data_dir / "results",
        secrets=SecretsSettings(key_file=key_file),
    )
    yield engine
    engine.close()


def run(engine: Engine, spec: JobSpec, owner: str = "alice") -> Job:
    job = engine.submit(spec, owner=owner)
    [done] = engine.wait([job.id], timeout=30)
    assert done.phase.is_final, f"job still {done.phase}"
    return done


def add_alice_secrets(engine: Engine) -> None:
    engine.secrets.add("alice", "TOKEN", SecretKind.ENV, TOKEN.encode())
    engine.secrets.add("alice", "KEYTAB", SecretKind.FILE, KEYTAB)


def assert_nowhere(blobs: dict[str, bytes]) -> None:
    for where, blob in blobs.items():
        for needle in NEEDLES:
            assert needle not in blob, f"a secret's value is in {where}"


def files_under(root: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_fifo()}


def stored_rows(engine: Engine) -> dict[str, bytes]:
    with engine.store.reading() as conn:
        return {
            f"table {table.name}": repr(conn.execute(sa.select(table)).all()).encode()
            for table in metadata.sorted_tables
            if sa.inspect(conn).has_table(table.name)
        }


def test_a_job_gets_its_secrets_and_they_appear_nowhere_else(
    secret_engine: Engine, isolated_data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    add_alice_secrets(secret_engine)
    spec = JobSpec(executable="sh", arguments=["-c", REPORT], secrets=["TOKEN", "KEYTAB"])
    job = run(secret_engine, spec)
    assert job.phase is Phase.COMPLETED, job.message
    lines = secret_engine.read_output(job.id).decode().split("\n")
    assert lines[0].split()[0] == sha(TOKEN.encode())  # the program got the value
    assert lines[1].split()[0] == sha(KEYTAB)
    assert lines[2:4] == ["700", "600"]  # a private place
    assert job.spec.secrets == ["TOKEN", "KEYTAB"]  # names only
    # nowhere else: every file left (the database included), every row, event and log
    events = secret_engine.store.events(job.id)
    assert_nowhere(
        {
            **files_under(isolated_data_dir),
            **stored_rows(secret_engine),
            "events": repr(events).encode(),
            "the job": job.model_dump_json().encode(),
            "the logs": caplog.text.encode(),
        }
    )
    assert not (isolated_data_dir / "jobs" / job.id / ".jobbridge-secrets").exists()


def test_secrets_are_encrypted_at_rest(secret_engine: Engine) -> None:
    add_alice_secrets(secret_engine)
    assert_nowhere(stored_rows(secret_engine))
    listed = secret_engine.secrets.of("alice")
    assert [(s.name, s.kind) for s in listed] == [
        ("KEYTAB", SecretKind.FILE),
        ("TOKEN", SecretKind.ENV),
    ]


def test_only_the_owner_jobs_get_a_secret(secret_engine: Engine) -> None:
    add_alice_secrets(secret_engine)
    spec = JobSpec(executable="true", secrets=["TOKEN"])
    with pytest.raises(SecretError, match="no secret named 'TOKEN'"):
        secret_engine.submit(spec, owner="bob")
    with pytest.raises(SecretError, match="without an owner"):
        secret_engine.submit(spec, owner=None)
    assert secret_engine.secrets.of("bob") == []


def test_no_key_configured_is_a_clear_error(engine: Engine) -> None:
    with pytest.raises(SecretError, match=r"no secrets key is configured.*\[secrets\]"):
        engine.secrets.add("alice", "TOKEN", SecretKind.ENV, b"x")
    with pytest.raises(SecretError, match="no secrets key is configured"):
        engine.submit(JobSpec(executable="true", secrets=["TOKEN"]), owner="alice")


def test_a_removed_secret_fails_the_job_before_it_runs(secret_engine: Engine) -> None:
    add_alice_secrets(secret_engine)
    spec = JobSpec(executable="true", secrets=["TOKEN"], depends_on=[])
    parent = secret_engine.submit(JobSpec(executable="sleep", arguments=["1"]), owner="alice")
    job = secret_engine.submit(spec.replace(depends_on=[parent.id]), owner="alice")
    secret_engine.secrets.remove("alice", "TOKEN")
    [done] = secret_engine.wait([job.id], timeout=30)
    assert (done.phase, done.detail) == (Phase.ERROR, "SUBMIT_FAILED")
    assert "no secret named 'TOKEN'" in (done.message or "")


def test_the_command_line_adds_lists_and_removes_and_never_prints_a_value(
    tmp_path: Path, isolated_data_dir: Path, key_file: Path
) -> None:
    config = tmp_path / "jobbridge.toml"
    config.write_text(f'[secrets]\nkey_file = "{key_file}"\n')
    keytab = tmp_path / "keytab"
    keytab.write_bytes(KEYTAB)

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(cli, ["--config", str(config), *args])
        assert result.exit_code == 0, result.output
        return result.output

    outputs = [
        invoke("secrets", "add", "--env", f"TOKEN={TOKEN}", "--file", f"KEYTAB={keytab}"),
        invoke("secrets", "list"),
        listed := invoke("secrets", "list", "--json"),
    ]
    assert {s["name"] for s in json.loads(listed)} == {"TOKEN", "KEYTAB"}
    submitted = invoke(
        "submit", "--wait", "--json", "--secret", "TOKEN", "--secret", "KEYTAB",
        "--", "sh", "-c", REPORT,
    )  # fmt: skip
    [job] = json.loads(submitted)
    assert job["phase"] == "COMPLETED"
    outputs += [
        submitted,
        invoke("status", job["id"], "--json", "--events"),
        invoke("list", "--json"),
    ]
    logs = invoke("logs", job["id"])
    assert sha(TOKEN.encode()) in logs
    assert_nowhere({f"output {i}": text.encode() for i, text in enumerate(outputs)})
    assert_nowhere(files_under(isolated_data_dir))
    invoke("secrets", "remove", "TOKEN")
    assert [s["name"] for s in json.loads(invoke("secrets", "list", "--json"))] == ["KEYTAB"]
    bad = CliRunner().invoke(cli, ["secrets", "add", "--env", "X=1"])
    assert bad.exit_code == 2 and "no secrets key is configured" in bad.output


@pytest.fixture
def service(secret_engine: Engine, isolated_data_dir: Path) -> Iterator[tuple[TestClient, Engine]]:
    definition = JobDefinition(
        name="report", command=["sh", "-c", REPORT.replace("$", "$$")], secrets=["TOKEN", "KEYTAB"]
    )
    app = create_app(
        service_config(isolated_data_dir),
        engine=secret_engine,
        definitions=Definitions({"report": definition}),
    )
    with TestClient(app, base_url="http://testserver", follow_redirects=False) as client:
        yield client, secret_engine


def test_users_manage_their_own_secrets_over_the_service(
    service: tuple[TestClient, Engine], isolated_data_dir: Path
) -> None:
    client, engine = service
    alice, bob = bearer(add_user(engine, "alice")), bearer(add_user(engine, "bob"))
    answers = [
        client.post("/secrets", data={"NAME": "TOKEN", "VALUE": TOKEN}, headers=alice),
        client.post(
            "/secrets",
            data={"NAME": "KEYTAB", "KIND": "file"},
            files={"VALUE": ("keytab", KEYTAB)},
            headers=alice,
        ),
    ]
    assert [a.status_code for a in answers] == [201, 201]
    mine = client.get("/secrets", headers=alice)
    assert {s["name"] for s in mine.json()["secrets"]} == {"TOKEN", "KEYTAB"}
    assert client.get("/secrets", headers=bob).json() == {"secrets": []}
    assert client.delete("/secrets/TOKEN", headers=bob).status_code == 404
    assert client.get("/secrets").status_code == 401
    # bob's job cannot get alice's secrets; alice's gets them
    refused = client.post("/jobs/report", data={"PHASE": "RUN"}, headers=bob)
    assert refused.status_code == 400 and "no secret named" in refused.text
    created = client.post("/jobs/report", data={"PHASE": "RUN"}, headers=alice)
    assert created.status_code == 303, created.text
    url = created.headers["location"]
    job_id = url.rsplit("/", 1)[1]
    [done] = engine.wait([job_id], timeout=30)
    assert done.phase is Phase.COMPLETED, done.message
    assert sha(TOKEN.encode()) in engine.read_output(job_id).decode()
    documents = [
        client.get(url, headers=alice),
        client.get(url, headers={**alice, "Accept": "application/json"}),
        client.get("/jobs/report", headers=alice),
        client.get(f"{url}/parameters", headers=alice),
        client.get("/secrets", headers=alice),
        *answers,
    ]
    assert_nowhere({f"document {i}": d.content for i, d in enumerate(documents)})
    assert_nowhere({**files_under(isolated_data_dir), **stored_rows(engine)})
    assert client.delete("/secrets/TOKEN", headers=alice).status_code == 204
    assert [s["name"] for s in client.get("/secrets", headers=alice).json()["secrets"]] == [
        "KEYTAB"
    ]


def test_a_backend_without_job_directories_refuses_secrets(tmp_path: Path) -> None:
    from tests.doubles import FakeBackend, FakeCluster

    cluster = FakeCluster()
    engine = Engine(
        Store(f"sqlite:///{tmp_path / 'store.db'}"),
        {"fake": FakeBackend(cluster)},
        default_backend="fake",
        secrets=SecretsSettings(key=new_key()),
    )
    try:
        engine.secrets.add("alice", "TOKEN", SecretKind.ENV, b"x")
        with pytest.raises(SecretError, match="keeps no job directory"):
            engine.submit(JobSpec(executable="true", secrets=["TOKEN"]), owner="alice")
        assert cluster.submit_calls == 0 and engine.store.count() == 0
    finally:
        engine.close()


def test_jobs_handed_over_together_each_get_their_secrets(secret_engine: Engine) -> None:
    """A batch handover prepares every job of the batch as a single handover would."""
    add_alice_secrets(secret_engine)
    spec = JobSpec(executable="sh", arguments=["-c", REPORT], secrets=["TOKEN", "KEYTAB"])
    jobs = secret_engine.submit_many([spec] * 6, owner="alice")
    done = secret_engine.wait([job.id for job in jobs], timeout=60)
    for job in done:
        assert job.phase is Phase.COMPLETED, job.message
        lines = secret_engine.read_output(job.id).decode().split("\n")
        assert lines[0].split()[0] == sha(TOKEN.encode())
        assert lines[1].split()[0] == sha(KEYTAB)
