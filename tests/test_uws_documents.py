"""The pure parts of the service: job definitions, parameter values, XML documents and the
schema check the other tests rely on, users and tokens."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from jobbridge import ConfigError, Phase, Store
from jobbridge.store.uws import UserExistsError, UwsStore, hash_token
from jobbridge.uws import xml
from jobbridge.uws.definitions import ParameterError, load_definition, load_definitions
from jobbridge.uws.models import ErrorSummaryView, JobRefView, JobView, ParameterView, ResultView
from jobbridge.uws.results import ByteRange, RangeNotSatisfiable, parse_range
from tests.uws_support import DEFINITIONS, valid_uws

WHEN = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def full_job() -> JobView:
    return JobView(
        job_id="abc", run_id="r", owner_id=None, phase=Phase.ERROR, quote=None,
        creation_time=WHEN, start_time=WHEN, end_time=None, execution_duration=60,
        destruction=WHEN,
        parameters=[ParameterView(id="p", value="<&>'\""),
                    ParameterView(id="f", value="http://x/y", by_reference=True)],
        results=[ResultView(id="total", href="http://x/r", size=3, mime_type="text/plain")],
        error_summary=ErrorSummaryView(type="fatal", has_detail=True, message="boom"),
    )  # fmt: skip


def test_every_document_is_valid_uws_1_1() -> None:
    job = valid_uws(xml.job_document(full_job()))
    assert job.findtext("{http://www.ivoa.net/xml/UWS/v1.0}creationTime") == (
        "2026-01-02T03:04:05.123456Z"
    )
    ref = JobRefView(id="abc", href="http://x/abc", phase=Phase.QUEUED, creation_time=WHEN)
    valid_uws(xml.job_list_document([ref, ref]))
    valid_uws(xml.job_list_document([]))
    valid_uws(xml.parameters_document(full_job().parameters))
    valid_uws(xml.results_document(full_job().results))


def test_the_schema_check_catches_elements_out_of_order() -> None:
    root = etree.fromstring(xml.job_document(full_job()))
    phase = root[3]
    root.remove(phase)
    root.insert(0, phase)
    with pytest.raises(AssertionError, match="not valid UWS"):
        valid_uws(etree.tostring(root))


def test_the_demo_definition_builds_argument_lists_not_shell_text() -> None:
    [definition] = load_definitions(DEFINITIONS).values()
    assert definition.name == "sum"
    spec = definition.job_spec({"label": "$(rm -rf ~); `x` 'y'"}, {"numbers": "/tmp/n"}, 30)
    assert spec.executable == "python3"
    assert spec.arguments[2:] == ["100", "1.0", "$(rm -rf ~); `x` 'y'", "inputs/numbers", "0"]
    assert [(t.source, t.target) for t in spec.stage_in] == [("/tmp/n", "inputs/numbers")]
    assert spec.resources.walltime is not None and spec.resources.walltime.total_seconds() == 30
    assert definition.job_spec({}, {}, 0).resources.walltime is None


def test_parameter_values_are_typed_and_checked() -> None:
    definition = load_definition(DEFINITIONS / "sum.yaml")
    count = definition.parameters["count"]
    assert count.parse("count", " 12 ") == "12"
    with pytest.raises(ParameterError, match="not a valid int"):
        count.parse("count", "1.5")
    with pytest.raises(ParameterError, match="control characters"):
        definition.parameters["label"].parse("label", "a\x01b")
    assert definition.parameter("COUNT") == ("count", count)


def test_bad_definitions_are_errors_that_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("command: [echo, '${missing}']\n")
    with pytest.raises(ConfigError, match=r"(?s)bad\.yaml.*missing"):
        load_definitions(tmp_path)
    (tmp_path / "bad.yaml").write_text(
        "command: [echo]\nparameters: {x: {type: int, allowed: [1, 2]}}\n"
    )
    definition = load_definitions(tmp_path)["bad"]
    with pytest.raises(ParameterError, match="not one of 1, 2"):
        definition.parameters["x"].parse("x", "3")


def test_ranges() -> None:
    assert parse_range(None, 10) is None
    assert parse_range("bytes=2-4", 10) == ByteRange(2, 4)
    assert parse_range("bytes=7-", 10) == ByteRange(7, 9)
    assert parse_range("bytes=-3", 10) == ByteRange(7, 9)
    assert parse_range("bytes=5-100", 10) == ByteRange(5, 9)
    with pytest.raises(RangeNotSatisfiable):
        parse_range("bytes=10-", 10)


def test_tokens_are_kept_hashed_and_shown_once(store: Store) -> None:
    users = UwsStore(store)
    token = users.add_user("carol", admin=True)
    assert users.user_for_token(token).name == "carol"  # type: ignore[union-attr]
    assert users.user_for_token(token + "x") is None
    with pytest.raises(UserExistsError):
        users.add_user("carol")
    with store.reading() as conn:
        stored = [row[0] for row in conn.exec_driver_sql("SELECT token_hash FROM uws_users")]
    assert stored == [hash_token(token)] and token not in stored
    users.close()
