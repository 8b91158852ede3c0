"""File parameters given as URLs: fetched by a job of their own, never in the request,
never from loopback, private, link-local or metadata addresses unless allowed, checked on
the address each connection really goes to, redirects included. Every server here is a
loopback listener that records whether it was contacted."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from jobbridge import Engine
from jobbridge.fetch import FetchError, FetchPolicy, RefusedAddress, TooLarge, check_url, fetch
from jobbridge.uws import create_app
from tests.uws_support import NS, Listener, add_user, bearer, service_config, valid_uws

BASE = "http://testserver"
AppFactory = Callable[..., TestClient]


@pytest.fixture
def make_client(engine: Engine, isolated_data_dir: Path) -> Iterator[AppFactory]:
    clients: list[Any] = []
    token = add_user(engine, "alice")

    def make(**service: object) -> TestClient:
        app = create_app(service_config(isolated_data_dir, **service), engine=engine)
        client = TestClient(app, base_url=BASE, follow_redirects=False)
        clients.append(client.__enter__())
        client.headers.update(bearer(token))
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def finish(client: TestClient, url: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    phase = client.get(f"{url}/phase").text
    while phase in {"PENDING", "QUEUED", "EXECUTING"} and time.monotonic() < deadline:
        client.get(url, params={"WAIT": "2"})
        phase = client.get(f"{url}/phase").text
    return phase


def run_with(client: TestClient, numbers: str) -> str:
    response = client.post("/jobs/sum", data={"PHASE": "RUN", "numbers": numbers})
    assert response.status_code == 303, response.text
    return str(response.headers["location"])


def test_a_loopback_url_is_never_contacted(make_client: AppFactory) -> None:
    client = make_client()
    with Listener() as listener:
        refused = client.post("/jobs/sum", data={"numbers": f"{listener.url}/n.txt"})
        assert refused.status_code == 400 and "loopback" in refused.text
        port = listener.url.rsplit(":", 1)[1]
        url = run_with(client, f"http://localhost:{port}/n.txt")  # a name: refused at fetch
        assert finish(client, url) == "ABORTED"
        job = valid_uws(client.get(url).content)
        summary = job.findtext("uws:errorSummary/uws:message", namespaces=NS)
        assert "numbers" in summary and "loopback" in summary
        assert "loopback" in client.get(f"{url}/error").text
        assert listener.connections == 0 and listener.hits == []
        # the parameter is shown as the URL it was given as
        shown = job.find("uws:parameters/uws:parameter[@id='numbers']", NS)
        assert shown.text == f"http://localhost:{port}/n.txt"
        assert shown.get("byReference") == "true"


def test_an_allowed_network_is_fetched_into_the_job(make_client: AppFactory) -> None:
    """The control for the test above: the same listener, allowed, is reached."""
    client = make_client(fetch_allowed_networks=["127.0.0.1/32"])
    with Listener(routes={"/n.txt": (200, {}, b"4\n5\n")}) as listener:
        url = run_with(client, f"{listener.url}/n.txt")
        assert finish(client, url) == "COMPLETED"
        assert client.get(f"{url}/results/total").text == "total 9\n"
        assert listener.hits == ["/n.txt"]


def test_a_redirect_to_a_refused_address_is_not_followed(make_client: AppFactory) -> None:
    """The first hop is allowed (127.0.0.1), the one it redirects to (127.0.0.2) is not."""
    client = make_client(fetch_allowed_networks=["127.0.0.1/32"])
    with Listener("127.0.0.2") as target:
        routes = {"/go": (302, {"Location": f"{target.url}/secret"}, b"")}
        with Listener(routes=routes) as first:
            url = run_with(client, f"{first.url}/go")
            assert finish(client, url) == "ABORTED"
            assert first.hits == ["/go"]
        assert target.connections == 0 and target.hits == []
        assert "127.0.0.2" in client.get(f"{url}/error").text


def test_urls_are_not_globbed(make_client: AppFactory) -> None:
    client = make_client(fetch_allowed_networks=["127.0.0.1/32"])
    with Listener() as listener:
        url = run_with(client, f"{listener.url}/glob[1-5]")
        assert finish(client, url) == "COMPLETED"
        assert len(listener.hits) == 1 and listener.hits[0] in ("/glob[1-5]", "/glob%5B1-5%5D")


def test_the_request_never_waits_for_the_remote_server(make_client: AppFactory) -> None:
    """A server that holds every answer: creating jobs that name it, and another user's
    requests, complete while it holds them."""
    client = make_client(fetch_allowed_networks=["127.0.0.1/32"])
    with Listener() as listener:
        listener.hold.clear()
        urls = [run_with(client, f"{listener.url}/slow{n}") for n in range(3)]
        assert client.get("/jobs/sum").status_code == 200
        assert all(client.get(f"{url}/phase").text in ("QUEUED", "EXECUTING") for url in urls)
        listener.hold.set()
        assert [finish(client, url) for url in urls] == ["COMPLETED"] * 3


def test_a_changed_url_is_fetched_again_and_the_old_fetch_dropped(
    make_client: AppFactory, engine: Engine
) -> None:
    client = make_client(fetch_allowed_networks=["127.0.0.1/32"])
    with Listener(routes={"/b": (200, {}, b"10\n")}) as listener:
        listener.hold.clear()
        response = client.post("/jobs/sum", data={"numbers": f"{listener.url}/a"})
        url = response.headers["location"]
        service = client.app.state.uws.service  # type: ignore[attr-defined]
        first = service.uws.get_job(url.rsplit("/", 1)[1]).parameters[0].fetch_job
        # while the first URL is being fetched, it stays
        while listener.hits != ["/a"]:
            time.sleep(0.05)
        busy = client.post(f"{url}/parameters", data={"numbers": f"{listener.url}/b"})
        assert busy.status_code == 403 and "still being fetched" in busy.text
        listener.hold.set()
        while engine.get(first).phase.is_active:
            time.sleep(0.05)
        changed = client.post(f"{url}/parameters", data={"numbers": f"{listener.url}/b"})
        assert changed.status_code == 303
        assert client.post(f"{url}/phase", data={"PHASE": "RUN"}).status_code == 303
        assert finish(client, url) == "COMPLETED"
        assert client.get(f"{url}/results/total").text == "total 10\n"
        with pytest.raises(Exception, match=first):
            engine.get(first)


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "::1", "10.1.2.3", "172.16.0.1", "192.168.1.1", "169.254.169.254",
     "fd00:ec2::254", "fe80::1", "100.64.0.1", "0.0.0.0", "::ffff:10.0.0.1", "224.0.0.1",
     "::ffff:127.0.0.1"],
)  # fmt: skip
def test_non_public_addresses_are_refused_unless_allowed(address: str) -> None:
    assert FetchPolicy().refusal(address) is not None
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(RefusedAddress):
        check_url(f"http://{host}/x", FetchPolicy())
    allowed = FetchPolicy.from_texts(["0.0.0.0/0", "::/0"])
    assert allowed.refusal(address) is None
    assert FetchPolicy().refusal("93.184.216.34") is None  # public: checked, not contacted


@pytest.mark.parametrize(
    "url", ["ftp://example.org/x", "file:///etc/passwd", "gopher://x/", "http:///nohost",
            "http://exa mple.org/", "http://example.org:99999/"],
)  # fmt: skip
def test_only_http_urls_with_a_host_are_taken(url: str) -> None:
    with pytest.raises(FetchError):
        check_url(url)


def test_the_address_checked_is_the_address_connected_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DNS rebinding: the name resolves to an allowed address once, then to a refused one.
    The connection must go to the address that was checked, not to a second lookup."""
    real = socket.getaddrinfo
    lookups: list[str] = []

    def rebinding(host: str, port: Any, *args: Any, **kwargs: Any) -> Any:
        if host != "rebind.test":
            return real(host, port, *args, **kwargs)
        lookups.append(host)
        return real("127.0.0.1" if len(lookups) == 1 else "127.0.0.2", port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    with Listener("127.0.0.2") as inside, Listener() as allowed:
        port = allowed.url.rsplit(":", 1)[1]
        policy = FetchPolicy.from_texts(["127.0.0.1/32"])
        assert fetch(f"http://rebind.test:{port}/x", tmp_path / "x", policy) == 4
        assert allowed.hits == ["/x"] and inside.connections == 0
        assert lookups == ["rebind.test"]


def test_size_and_time_are_bounded(tmp_path: Path) -> None:
    routes = {"/big": (200, {}, b"x" * 5000)}
    with Listener(routes=routes) as listener:
        policy = FetchPolicy.from_texts(["127.0.0.1/32"], max_bytes=1000)
        with pytest.raises(TooLarge):
            fetch(f"{listener.url}/big", tmp_path / "big", policy)
        assert list(tmp_path.iterdir()) == []
        listener.hold.clear()
        slow = FetchPolicy.from_texts(["127.0.0.1/32"], timeout=0.5)
        with pytest.raises(FetchError, match=r"in time|took over"):
            fetch(f"{listener.url}/big", tmp_path / "slow", slow)
        assert list(tmp_path.iterdir()) == []


def test_no_proxy_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A proxy would fetch on the fetcher's behalf, where no address is checked."""
    with Listener() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        with pytest.raises(FetchError):
            fetch("http://does-not-exist.invalid/x", tmp_path / "x", FetchPolicy())
        assert proxy.connections == 0


def test_the_command_line_fetcher(tmp_path: Path) -> None:
    from jobbridge.fetch import main

    with Listener() as listener:
        assert main([f"{listener.url}/x", str(tmp_path / "refused")]) == 1
        assert listener.connections == 0
        assert main(["--allow", "127.0.0.1/32", f"{listener.url}/x", str(tmp_path / "ok")]) == 0
        assert (tmp_path / "ok").read_bytes() == b"1\n2\n"
        assert httpx.get(f"{listener.url}/y").status_code == 200  # the listener does answer
