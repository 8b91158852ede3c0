"""Backends come from entry points; a broken plugin is logged, not fatal."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobbridge.backends import registry
from jobbridge.backends.local import LocalBackend


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
