"""The web pages in a real headless Chromium (Debian's, driven by Playwright) against the
service on a real uvicorn on 127.0.0.1: log in, submit from the form, watch the phase change
without a reload, download a result, abort, and be refused another user's job. The pages
are photographed too: into docs/screenshots/ for the README when JOBBRIDGE_SCREENSHOTS=1,
else into a scratch directory."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from jobbridge import Engine
from jobbridge.uws import create_app
from tests.uws_support import RunningServer, add_user, bearer, service_config

CHROMIUM = "/usr/bin/chromium"
SCREENSHOTS = (
    Path(__file__).parent.parent / "docs" / "screenshots"
    if os.environ.get("JOBBRIDGE_SCREENSHOTS") == "1"
    else Path(os.environ.get("TMPDIR", "/tmp")) / "jobbridge-screenshots"
)
VIEWPORT = {"width": 1100, "height": 820}
LIVE_TIMEOUT_MS = 60_000

try:
    from playwright.sync_api import Browser, Page, expect, sync_playwright
except ImportError:
    if os.environ.get("CI") == "true":
        raise
    pytest.skip("playwright is missing: run scripts/browser-tools.sh", allow_module_level=True)


@pytest.fixture
def server(engine: Engine, isolated_data_dir: Path) -> Iterator[RunningServer]:
    app = create_app(service_config(isolated_data_dir), engine=engine)
    with RunningServer(app) as running:
        yield running


@pytest.fixture
def browser() -> Iterator[Browser]:
    if shutil.which(CHROMIUM) is None:
        message = f"{CHROMIUM} is missing: run scripts/browser-tools.sh"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            yield launched
        finally:
            launched.close()


def new_page(browser: Browser) -> Page:
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    return context.new_page()


def log_in(page: Page, server: RunningServer, token: str) -> None:
    page.goto(f"{server.url}/ui/jobs/sum")
    assert page.url.startswith(f"{server.url}/ui/login?next=")
    page.get_by_label("Token").fill(token)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{server.url}/ui/jobs/sum")


def shoot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_log_in_submit_watch_the_phase_live_and_download_a_result(
    server: RunningServer, engine: Engine, browser: Browser, tmp_path: Path
) -> None:
    token = add_user(engine, "alice")
    page = new_page(browser)
    page.goto(f"{server.url}/")
    expect(page.get_by_role("heading", level=1)).to_have_text("Job definitions")
    shoot(page, "definitions")
    page.goto(f"{server.url}/ui/login")
    shoot(page, "login")
    log_in(page, server, token)

    page.get_by_role("link", name="New sum job").click()
    expect(page.get_by_role("heading", level=1)).to_have_text("New sum job")
    page.get_by_label("count").fill("50")
    page.get_by_label("label").fill("browser")
    page.get_by_label("sleep").fill("3")
    page.get_by_label("Run id").fill("seen-live")
    shoot(page, "definition-form")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(f"{server.url}/ui/jobs/sum/*")
    job_url = page.url

    # the page is not reloaded from here on: a mark left in it must stay
    page.evaluate("window.stayed = 'yes'")
    phase = page.locator("#phase")
    assert phase.inner_text() in {"QUEUED", "EXECUTING"}
    expect(page.locator("#live-hint")).to_be_visible()
    expect(phase).to_have_text("EXECUTING", timeout=LIVE_TIMEOUT_MS)
    shoot(page, "job-executing")
    expect(phase).to_have_text("COMPLETED", timeout=LIVE_TIMEOUT_MS)
    assert page.evaluate("window.stayed") == "yes"
    assert page.url == job_url
    expect(page.locator("#announce")).to_have_text("The job is now COMPLETED.")
    expect(page.locator("#live-hint")).to_have_count(0)
    results = page.get_by_role("region", name="Results")
    expect(results.get_by_role("link", name="total")).to_be_visible()
    shoot(page, "job-completed")

    with page.expect_download() as pending:
        results.get_by_role("link", name="total").click()
    download = pending.value
    assert download.suggested_filename == "total.txt"
    saved = tmp_path / "total.txt"
    download.save_as(saved)
    assert saved.read_text() == "browser 1275\n"

    page.goto(f"{server.url}/ui/jobs/sum")
    expect(page.get_by_role("table")).to_contain_text("COMPLETED")
    shoot(page, "job-list")


def test_a_pending_job_started_elsewhere_changes_phase_on_its_open_page(
    server: RunningServer, engine: Engine, browser: Browser
) -> None:
    token = add_user(engine, "alice")
    page = new_page(browser)
    log_in(page, server, token)
    page.goto(f"{server.url}/ui/definitions/sum")
    page.get_by_label("Start it at once").uncheck()
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(f"{server.url}/ui/jobs/sum/*")
    expect(page.locator("#phase")).to_have_text("PENDING")
    page.evaluate("window.stayed = 'yes'")
    job_id = page.url.rsplit("/", 1)[1]
    # the events stream is open once the page has its first event; then start the job
    # through the UWS API, as another client would
    expect(page.locator("#live-hint")).to_be_visible()
    page.wait_for_function("document.getElementById('live').dataset.events !== undefined")
    with httpx.Client(headers=bearer(token)) as client:
        response = client.post(f"{server.url}/jobs/sum/{job_id}/phase", data={"PHASE": "RUN"})
        assert response.status_code == 303
    expect(page.locator("#phase")).to_have_text("COMPLETED", timeout=LIVE_TIMEOUT_MS)
    assert page.evaluate("window.stayed") == "yes"


def test_abort_a_job_and_another_users_job_is_refused(
    server: RunningServer, engine: Engine, browser: Browser
) -> None:
    page = new_page(browser)
    log_in(page, server, add_user(engine, "alice"))
    page.goto(f"{server.url}/ui/definitions/sum")
    page.get_by_label("sleep").fill("120")
    page.get_by_role("button", name="Create job").click()
    page.wait_for_url(f"{server.url}/ui/jobs/sum/*")
    job_url = page.url
    expect(page.locator("#phase")).to_have_text("EXECUTING", timeout=LIVE_TIMEOUT_MS)
    page.get_by_role("button", name="Abort").click()
    expect(page.locator("#phase")).to_have_text("ABORTED", timeout=LIVE_TIMEOUT_MS)
    expect(page.get_by_role("button", name="Abort")).to_have_count(0)

    intruder = new_page(browser)
    log_in(intruder, server, add_user(engine, "bob"))
    response = intruder.goto(job_url)
    assert response is not None and response.status == 403
    expect(intruder.get_by_role("heading", level=1)).to_have_text("Not allowed")
    expect(intruder.get_by_role("alert")).to_contain_text("belongs to someone else")
    shoot(intruder, "refused")

    page.get_by_role("button", name="Delete").click()
    page.wait_for_url(f"{server.url}/ui/jobs/sum")
    expect(page.get_by_text("No jobs")).to_be_visible()
