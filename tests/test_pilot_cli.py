"""``jobbridge pilot``: start, list, cancel, and run a file of commands, on the local backend."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from jobbridge.cli import cli
from jobbridge.cli.app import CliError
from jobbridge.cli.pilot import parse_commands


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_run_a_file_of_commands_and_list_the_failures(tmp_path: Path) -> None:
    commands = tmp_path / "commands.txt"
    commands.write_text(
        "# a comment\n"
        "echo 'hello world'\n"
        "\n"
        "sh -c 'echo broken >&2; exit 4'\n"
        "/no/such/program\n"
        + "true\n" * 30
    )  # fmt: skip
    result = invoke("pilot", "run", str(commands), "--cores", "2")
    assert result.exit_code == 1, result.output
    assert "31 of 33 commands completed" in result.stdout
    rows = result.stdout.splitlines()[2:]
    lines = {line.split()[0]: line for line in rows if line.strip()}
    assert set(lines) == {"4", "5"}, result.stdout
    assert "FAILED" in lines["4"] and " 4 " in lines["4"] and "broken" in lines["4"]
    assert "EXEC_FAILED" in lines["5"] and "127" in lines["5"]
    # the pilot it started is gone again
    listed = json.loads(invoke("pilot", "list", "--all", "--json").stdout)
    assert len(listed) == 1 and listed[0]["phase"] == "ABORTED"


def test_start_list_run_on_a_service_and_cancel(tmp_path: Path) -> None:
    started = invoke("pilot", "start", "--count", "2", "--wait", "--json")
    assert started.exit_code == 0, started.output
    ids = json.loads(started.stdout)
    assert len(ids["pilots"]) == 2
    listed = json.loads(invoke("pilot", "list", "--json").stdout)
    assert {row["id"] for row in listed} == set(ids["pilots"])
    assert {row["phase"] for row in listed} == {"EXECUTING"}
    commands = tmp_path / "commands.txt"
    commands.write_text("sh -c 'echo $JOBBRIDGE_PILOT_ID'\n" * 40)
    ran = invoke("pilot", "run", str(commands), "--service", ids["service"])
    assert ran.exit_code == 0, ran.output
    assert "40 of 40 commands completed" in ran.stdout
    still = json.loads(invoke("pilot", "list", "--json").stdout)
    assert len(still) == 2, "pilots of an existing service are left running"
    cancelled = invoke("pilot", "cancel", "--service", ids["service"])
    assert cancelled.exit_code == 0, cancelled.output
    assert cancelled.stdout.count("ABORTED") == 2
    assert json.loads(invoke("pilot", "list", "--json").stdout) == []
    assert invoke("pilot", "cancel", "nosuchpilot").exit_code == 1


def test_a_pilot_the_backend_cannot_honour_is_refused(tmp_path: Path) -> None:
    result = invoke("pilot", "start", "--queue", "long")
    assert result.exit_code == 2
    assert "PilotJobDescription.queue" in result.stderr


def test_command_lines_are_split_as_a_shell_would_but_not_run_by_one() -> None:
    text = "# skip\n  echo 'a b' \"c\"  \n\nprog $(x) ;\n"
    assert parse_commands(text) == [(2, ["echo", "a b", "c"]), (4, ["prog", "$(x)", ";"])]
    with pytest.raises(CliError, match="line 1"):
        parse_commands("echo 'unclosed\n")
