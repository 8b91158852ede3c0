"""The web pages without a browser: the real app (TestClient) on a real local backend and
SQLite store. Login, CSRF, ownership, the form, the job list and the job page, as plain HTML
forms work without JavaScript; UWS clients see nothing of the pages."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from lxml import html

from jobbridge import Engine
from jobbridge.uws import create_app
from tests.uws_support import add_user, bearer, service_config, valid_uws

# Secure cookies travel only over https (or to loopback addresses, in browsers)
BASE = "https://testserver"


@pytest.fixture
def app_engine(engine: Engine, isolated_data_dir: Path) -> Iterator[tuple[TestClient, Engine]]:
    app = create_app(service_config(isolated_data_dir), engine=engine)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        yield client, engine


def page(client: TestClient, path: str, status: int = 200) -> html.HtmlElement:
    response = client.get(path)
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("text/html")
    return html.fromstring(response.text)


def csrf(document: html.HtmlElement) -> str:
    values = document.xpath("//input[@name='_csrf']/@value")
    assert values, "the page has no form with a CSRF token"
    return str(values[0])


def log_in(client: TestClient, token: str) -> None:
    token_form = page(client, "/ui/login")
    response = client.post("/ui/login", data={"token": token, "_csrf": csrf(token_form)})
    assert response.status_code == 303, response.text
    assert response.headers["location"] == "/ui/"


def create_job(client: TestClient, **fields: str) -> str:
    form = page(client, "/ui/definitions/sum")
    response = client.post("/ui/jobs/sum", data={"_csrf": csrf(form), **fields})
    assert response.status_code == 303, response.text
    location = response.headers["location"]
    assert re.fullmatch(r"/ui/jobs/sum/[^/]+", location)
    return location


def wait_for_phase(client: TestClient, path: str, phases: set[str], timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while True:
        shown = page(client, path).xpath("string(//*[@id='phase'])").strip()
        if shown in phases or time.monotonic() > deadline:
            return shown
        time.sleep(0.1)


def test_root_leads_to_the_pages_which_list_the_definitions(
    app_engine: tuple[TestClient, Engine],
) -> None:
    client, _ = app_engine
    response = client.get("/")
    assert response.status_code == 303 and response.headers["location"] == "/ui/"
    home = page(client, "/ui/")
    assert home.xpath("//main//h2/a/text()") == ["sum"]
    assert home.xpath("//header//nav[@aria-label='Main']")
    assert home.get("lang") == "en"
    cookie = client.cookies.get("jobbridge_session")
    assert cookie and re.fullmatch(r"[0-9a-f]{32}", cookie)
    response = client.get("/ui/")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
    style = client.get("/ui/static/style.css")
    assert style.status_code == 200 and "--accent" in style.text


def test_pages_that_show_jobs_ask_to_log_in_first(app_engine: tuple[TestClient, Engine]) -> None:
    client, _ = app_engine
    response = client.get("/ui/jobs/sum")
    assert response.status_code == 303
    assert response.headers["location"] == "/ui/login?next=%2Fui%2Fjobs%2Fsum"
    login = page(client, "/ui/login?next=/ui/jobs/sum")
    assert login.xpath("//input[@name='next']/@value") == ["/ui/jobs/sum"]
    label = login.xpath("//label[@for='token']")
    assert label and login.xpath("//input[@id='token' and @type='password']")
    elsewhere = page(client, "/ui/login?next=https://evil.example/x")
    assert elsewhere.xpath("//input[@name='next']/@value") == [""]


def test_login_sets_secure_httponly_cookies_and_a_new_session(
    app_engine: tuple[TestClient, Engine],
) -> None:
    client, engine = app_engine
    token = add_user(engine, "alice")
    form = page(client, "/ui/login")
    before = client.cookies.get("jobbridge_session")
    response = client.post(
        "/ui/login", data={"token": token, "_csrf": csrf(form), "next": "/ui/jobs/sum"}
    )
    assert response.status_code == 303 and response.headers["location"] == "/ui/jobs/sum"
    cookies = response.headers.get_list("set-cookie")
    token_cookie = next(c for c in cookies if c.startswith("jobbridge_token="))
    session_cookie = next(c for c in cookies if c.startswith("jobbridge_session="))
    for cookie in (token_cookie, session_cookie):
        lowered = cookie.lower()
        assert "secure" in lowered and "httponly" in lowered and "samesite=lax" in lowered
        assert "path=/ui" in lowered
    assert client.cookies.get("jobbridge_session") != before
    home = page(client, "/ui/")
    assert "Signed in as" in home.xpath("string(//header)")
    bad = client.post("/ui/login", data={"token": "nope", "_csrf": csrf(home)})
    assert bad.status_code == 400
    assert "not valid" in html.fromstring(bad.text).xpath("string(//*[@role='alert'])")


def test_every_post_needs_the_sessions_csrf_token(app_engine: tuple[TestClient, Engine]) -> None:
    client, engine = app_engine
    token = add_user(engine, "alice")
    page(client, "/ui/login")
    refused = client.post("/ui/login", data={"token": token})
    assert refused.status_code == 403
    assert client.post("/ui/login", data={"token": token, "_csrf": "0" * 64}).status_code == 403
    assert "jobbridge_token" not in client.cookies
    log_in(client, token)
    job = create_job(client, count="3")
    for path, data in (
        ("/ui/jobs/sum", {"count": "2"}),
        (f"{job}/phase", {"PHASE": "RUN"}),
        (f"{job}/delete", {}),
        ("/ui/logout", {}),
    ):
        response = client.post(path, data={**data, "_csrf": "forged"})
        assert response.status_code == 403, path
    assert engine.store.count() == 1
    assert page(client, job).xpath("string(//*[@id='phase'])").strip() == "PENDING"
    # a token of another session is no good either
    other = TestClient(client.app, base_url=BASE, follow_redirects=False)
    stolen = csrf(page(other, "/ui/login"))
    response = client.post(f"{job}/phase", data={"PHASE": "RUN", "_csrf": stolen})
    assert response.status_code == 403


def test_the_form_follows_the_definitions_parameters(
    app_engine: tuple[TestClient, Engine],
) -> None:
    client, engine = app_engine
    log_in(client, add_user(engine, "alice"))
    form = page(client, "/ui/definitions/sum")
    assert form.xpath("//form[@enctype='multipart/form-data']/@action") == ["/ui/jobs/sum"]
    count = form.xpath("//input[@name='count']")[0]
    assert count.get("type") == "number" and count.get("step") == "1"
    assert count.get("value") == "100"
    assert form.xpath("//input[@name='scale']/@step") == ["any"]
    assert form.xpath("//input[@name='label']/@type") == ["text"]
    assert form.xpath("//input[@name='numbers']/@type") == ["file"]
    assert form.xpath("//input[@name='_url.numbers']/@type") == ["url"]
    for field in form.xpath("//form//input[not(@type='hidden')] | //form//select"):
        labels = form.xpath(f"//label[@for='{field.get('id')}']")
        assert labels, f"field {field.get('name')} has no label"
    help_text = form.xpath("string(//*[@id='help-count'])")
    assert "add up the integers" in help_text and "default: 100" in help_text


def test_a_job_made_from_the_form_runs_and_shows_its_results(
    app_engine: tuple[TestClient, Engine],
) -> None:
    client, engine = app_engine
    log_in(client, add_user(engine, "alice"))
    job = create_job(
        client, count="4", scale="", label="<b>sum</b>", _run="on", _runid="from-the-form"
    )
    assert wait_for_phase(client, job, {"COMPLETED", "ERROR"}) == "COMPLETED"
    shown = page(client, job)
    assert shown.xpath("//pre[1]/text()") == ["<b>sum</b> 10\n"]  # escaped, not markup
    assert not shown.xpath("//main//b")
    assert "from-the-form" in shown.xpath("string(//main)")
    links = shown.xpath("//section[@aria-labelledby='h-results']//a")
    assert [a.text for a in links] == ["total", "stdout"]
    download = client.get(links[0].get("href"))
    assert download.status_code == 200 and download.text == "<b>sum</b> 10\n"
    assert download.headers["content-disposition"] == "attachment; filename*=UTF-8''total.txt"
    parameters = dict(
        zip(
            shown.xpath("//section[@aria-labelledby='h-parameters']//tbody/tr/th/text()"),
            shown.xpath("//section[@aria-labelledby='h-parameters']//tbody/tr/td/text()"),
            strict=True,
        )
    )
    assert parameters == {"count": "4", "label": "<b>sum</b>"}
    assert not shown.xpath("//*[@data-events]")  # an ended job needs no live updates


def test_a_refused_job_shows_the_form_again_with_the_reason(
    app_engine: tuple[TestClient, Engine],
) -> None:
    client, engine = app_engine
    log_in(client, add_user(engine, "alice"))
    form = page(client, "/ui/definitions/sum")
    response = client.post(
        "/ui/jobs/sum", data={"_csrf": csrf(form), "count": "many", "label": "kept"}
    )
    assert response.status_code == 400
    again = html.fromstring(response.text)
    assert "'many' is not a valid int" in again.xpath("string(//*[@role='alert'])")
    assert again.xpath("//input[@name='label']/@value") == ["kept"]
    assert engine.store.count() == 0


def test_an_upload_from_the_form_reaches_the_job(app_engine: tuple[TestClient, Engine]) -> None:
    client, engine = app_engine
    log_in(client, add_user(engine, "alice"))
    form = page(client, "/ui/definitions/sum")
    response = client.post(
        "/ui/jobs/sum",
        data={"_csrf": csrf(form), "_run": "on"},
        files={"numbers": ("numbers.txt", b"1\n2\n3.5\n", "text/plain")},
    )
    assert response.status_code == 303, response.text
    job = response.headers["location"]
    assert wait_for_phase(client, job, {"COMPLETED", "ERROR"}) == "COMPLETED"
    assert page(client, job).xpath("//pre[1]/text()") == ["total 6.5\n"]


def test_abort_and_delete_from_the_job_page(app_engine: tuple[TestClient, Engine]) -> None:
    client, engine = app_engine
    log_in(client, add_user(engine, "alice"))
    job = create_job(client, sleep="30", _run="on")
    shown = page(client, job)
    response = client.post(f"{job}/phase", data={"PHASE": "ABORT", "_csrf": csrf(shown)})
    assert response.status_code == 303 and response.headers["location"] == job
    assert page(client, job).xpath("string(//*[@id='phase'])").strip() == "ABORTED"
    response = client.post(f"{job}/delete", data={"_csrf": csrf(shown)})
    assert response.status_code == 303 and response.headers["location"] == "/ui/jobs/sum"
    page(client, job, status=404)
    assert engine.store.count() == 0


def test_the_job_list_filters_by_phase_and_creation_time(
    app_engine: tuple[TestClient, Engine],
) -> None:
    client, engine = app_engine
    log_in(client, add_user(engine, "alice"))
    first = create_job(client)
    time.sleep(1.1)
    second = create_job(client, _run="on", count="2")
    wait_for_phase(client, second, {"COMPLETED"})

    def listed(query: str = "") -> list[str]:
        document = page(client, f"/ui/jobs/sum{query}")
        return [str(href) for href in document.xpath("//table[@class='jobs']//td/a/@href")]

    assert listed() == [second, first]
    assert listed("?phase=PENDING") == [first]
    assert listed("?phase=PENDING&phase=COMPLETED") == [second, first]
    between = engine.get(first.rsplit("/", 1)[1]).created + timedelta(seconds=0.6)
    assert listed(f"?after={between.replace(tzinfo=None).isoformat()}") == [second]
    page(client, "/ui/jobs/sum?phase=RUNNING", status=400)
    page(client, "/ui/jobs/sum?after=yesterday", status=400)
    page(client, "/ui/jobs/nothing", status=404)


def test_another_users_job_is_refused(app_engine: tuple[TestClient, Engine]) -> None:
    client, engine = app_engine
    log_in(client, add_user(engine, "alice"))
    job = create_job(client)
    bob = TestClient(client.app, base_url=BASE, follow_redirects=False)
    log_in(bob, add_user(engine, "bob"))
    refused = page(bob, job, status=403)
    assert "belongs to someone else" in refused.xpath("string(//*[@role='alert'])")
    assert bob.get(f"{job}/events").status_code == 403
    assert bob.get(f"{job}/results/total").status_code == 403
    form = csrf(page(bob, "/ui/"))
    assert bob.post(f"{job}/phase", data={"PHASE": "RUN", "_csrf": form}).status_code == 403
    assert bob.post(f"{job}/delete", data={"_csrf": form}).status_code == 403
    assert page(bob, "/ui/jobs/sum").xpath("//table[@class='jobs']") == []
    assert engine.get(job.rsplit("/", 1)[1]).phase.value == "PENDING"


def test_uws_clients_see_nothing_of_the_pages(app_engine: tuple[TestClient, Engine]) -> None:
    client, engine = app_engine
    headers = {**bearer(add_user(engine, "alice")), "Accept": "text/html,*/*"}
    response = client.post("/jobs/sum", data={"count": "1"}, headers=headers)
    assert response.status_code == 303
    assert response.headers["location"].startswith(f"{BASE}/jobs/sum/")
    listing = client.get("/jobs/sum", headers=headers)
    assert listing.headers["content-type"].startswith("application/xml")
    valid_uws(listing.content)
    assert "set-cookie" not in listing.headers
    assert client.get("/jobs/sum").status_code == 401  # no credentials, no page


def test_anonymous_clients_use_the_pages_without_logging_in(
    engine: Engine, isolated_data_dir: Path
) -> None:
    app = create_app(service_config(isolated_data_dir, anonymous=True), engine=engine)
    with TestClient(app, base_url=BASE, follow_redirects=False) as client:
        assert "Anonymous" in page(client, "/ui/").xpath("string(//header)")
        job = create_job(client, count="2")
        assert page(client, job).xpath("string(//*[@id='phase'])").strip() == "PENDING"
        listed = page(client, "/ui/jobs/sum").xpath("//table[@class='jobs']//td/a/@href")
        assert listed == [job]
        stranger = TestClient(app, base_url=BASE, follow_redirects=False)
        page(stranger, job, status=403)
