"""Backends come from entry points; a broken plugin is logged, not fatal."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobbridge.backends import registry
from jobbridge.backends.local import LocalBackend
from jobbridge.cli import cli
from jobbridge.config import BackendConfig


@pytest.fixture
def plugin_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real installed distribution (dist-info on sys.path) that declares backends."""
    dist = tmp_path / "site" / "jobbridge_testplugins-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: jobbridge-testplugins\nVersion: 1.0\n"
    )
    (dist / "entry_points.txt").write_text(
        "[jobbridge.backends]\n"
        "broken = jobbridge_no_such_module:Backend\n"
        "notabackend = os.path:join\n"
        "fromplugin = jobbridge.backends.local:LocalBackend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    registry.backend_kinds.cache_clear()
    registry.backend_kind.cache_clear()
    yield tmp_path
    registry.backend_kinds.cache_clear()
    registry.backend_kind.cache_clear()


def test_built_in_backends_are_entry_points() -> None:
    registry.backend_kinds.cache_clear()
    assert registry.backend_kinds()["local"] is LocalBackend


def test_a_broken_plugin_is_logged_and_the_rest_load(
    plugin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        kinds = registry.backend_kinds()
    assert kinds["fromplugin"] is LocalBackend and kinds["local"] is LocalBackend
    assert "broken" not in kinds and "notabackend" not in kinds
    assert "'broken'" in caplog.text and "failed to load" in caplog.text
    assert "not a Backend class" in caplog.text
    assert "jobbridge_no_such_module" not in sys.modules


def test_creating_one_backend_loads_no_other_plugin(
    plugin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        assert registry.backend_kind("fromplugin") is LocalBackend
    assert caplog.text == ""


def test_a_kind_named_without_configuration_is_that_kind_with_its_defaults(
    plugin_dir: Path,
) -> None:
    assert registry.kind_defaults("fromplugin") == BackendConfig(kind="fromplugin")
    assert registry.kind_defaults("nosuchkind") is None
    runner = CliRunner()
    done = runner.invoke(
        cli, ["submit", "--backend", "fromplugin", "--wait", "-q", "--", "echo", "hi"]
    )
    assert done.exit_code == 0, done.output
    job_id = done.stdout.strip()
    # a later invocation has the backend again for the jobs sent to it
    assert runner.invoke(cli, ["logs", job_id]).stdout == "hi\n"
    [job] = json.loads(runner.invoke(cli, ["status", "--json", job_id]).stdout)
    assert (job["backend"], job["phase"]) == ("fromplugin", "COMPLETED")
    listed = json.loads(runner.invoke(cli, ["backends", "--json"]).stdout)
    assert [backend["name"] for backend in listed["backends"]] == ["local"]


def test_a_broken_kind_of_recorded_jobs_does_not_stop_other_verbs(
    plugin_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    runner = CliRunner()
    done = runner.invoke(cli, ["submit", "--backend", "fromplugin", "-q", "--wait", "--", "true"])
    assert done.exit_code == 0, done.output
    (plugin_dir / "site" / "jobbridge_testplugins-1.0.dist-info" / "entry_points.txt").write_text(
        "[jobbridge.backends]\nfromplugin = jobbridge.backends.local:NoSuchClass\n"
    )
    registry.backend_kinds.cache_clear()
    registry.backend_kind.cache_clear()
    with caplog.at_level(logging.WARNING):
        listed = runner.invoke(cli, ["list", "--json"])
    assert listed.exit_code == 0, listed.output
    assert [job["id"] for job in json.loads(listed.stdout)] == [done.stdout.strip()]
