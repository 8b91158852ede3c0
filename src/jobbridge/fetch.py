"""Fetching a file given as a URL, safely: for a service that fetches what strangers name.

Every connection, the first and each one a redirect leads to, goes to an address that was
resolved and checked just before, never to a name resolved again later (so a name that
resolves to a public address first and to 127.0.0.1 next cannot lead inside). Loopback,
private, link-local (cloud metadata), shared, reserved and multicast addresses are refused
unless a network of ``allowed`` contains them. No proxy from the environment is used, URLs
are taken literally (no globbing), and the size and the time a fetch may take are bounded.

``python -m jobbridge.fetch [options] URL TARGET`` does the same from the command line: exit
status 0 when TARGET holds the whole file, 1 with the reason on stderr otherwise.

Errors: ``FetchError`` (the reason is its message), with ``RefusedAddress`` and
``TooLarge`` for the two reasons a caller may want to tell apart.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import socket
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx

__all__ = [
    "FETCH_SCHEMES",
    "FetchError",
    "FetchPolicy",
    "RefusedAddress",
    "TooLarge",
    "check_url",
    "fetch",
    "main",
]

FETCH_SCHEMES = ("http", "https")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]


class FetchError(Exception):
    """A URL that could not be fetched; the message says why."""


class RefusedAddress(FetchError):
    """The URL's host is, or resolves to, an address the policy refuses."""


class TooLarge(FetchError):
    """The file is larger than the policy allows."""


def system_resolver(host: str, port: int) -> list[str]:
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise FetchError(f"cannot resolve {host}: {error.strerror}") from None
    addresses: list[str] = []
    for *_, sockaddr in found:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 100 * 1024 * 1024
    timeout: float = 300.0
    """Seconds for the whole fetch, redirects included."""
    max_redirects: int = 5
    allowed: tuple[Network, ...] = ()
    """Networks allowed although they are not public (e.g. an institute's own range)."""
    resolver: Resolver = field(default=system_resolver, compare=False)

    @classmethod
    def from_texts(cls, allowed: Iterable[str], **options: Any) -> FetchPolicy:
        networks = tuple(ipaddress.ip_network(text, strict=False) for text in allowed)
        return cls(allowed=networks, **options)

    def refusal(self, text: str) -> str | None:
        """Why a connection to the address ``text`` is refused; None if it is allowed."""
        address = _unmapped(ipaddress.ip_address(text.split("%", 1)[0]))
        if any(address in network for network in self.allowed):
            return None
        if address.is_loopback:
            return f"{address} is a loopback address"
        if address.is_link_local:
            return f"{address} is a link-local address (where cloud metadata lives)"
        if address.is_multicast or address.is_unspecified or address.is_reserved:
            return f"{address} is not a unicast address"
        if address.is_private or not address.is_global:
            return f"{address} is a private or non-public address"
        return None

    def checked_addresses(self, host: str, port: int) -> list[str]:
        """The addresses of ``host``, every one of them allowed; else ``RefusedAddress``."""
        addresses = [host] if _is_address(host) else self.resolver(host, port)
        if not addresses:
            raise FetchError(f"{host} has no address")
        for address in addresses:
            reason = self.refusal(address)
            if reason is not None:
                shown = host if host == address else f"{host} ({address})"
                raise RefusedAddress(f"{shown} is refused: {reason}")
        return addresses


def _unmapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    return True


def check_url(text: str, policy: FetchPolicy | None = None) -> str:
    """``text`` if it is an http(s) URL with a host; with a ``policy``, a host given as an
    address must be allowed too. Names are not resolved here: that happens at each fetch."""
    try:
        parts = urlsplit(text)
        host = parts.hostname
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as error:
        raise FetchError(f"{text!r} is not a valid URL: {error}") from None
    if parts.scheme not in FETCH_SCHEMES:
        raise FetchError(f"{text!r}: only {' and '.join(FETCH_SCHEMES)} URLs are fetched")
    if not host:
        raise FetchError(f"{text!r} has no host")
    if any(character.isspace() or ord(character) < 32 for character in text):
        raise FetchError(f"{text!r} contains white space or control characters")
    if policy is not None and _is_address(host):
        policy.checked_addresses(host, 0)
    return text


class _GuardedBackend(httpcore.SyncBackend):
    """Connects only to addresses the policy allows, as resolved at this very moment."""

    def __init__(self, policy: FetchPolicy) -> None:
        self._policy = policy

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        last: Exception | None = None
        for address in self._policy.checked_addresses(host, port):
            try:
                return super().connect_tcp(
                    address, port, timeout, local_address, socket_options
                )  # fmt: skip
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as error:
                last = error
        raise FetchError(f"cannot connect to {host}:{port}: {last}")

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Any = None
    ) -> httpcore.NetworkStream:
        raise RefusedAddress("unix sockets are never fetched from")


def _client(policy: FetchPolicy) -> httpx.Client:
    transport = httpx.HTTPTransport(retries=0)
    # the same pool httpx would build, with a network backend that checks each address
    transport._pool = httpcore.ConnectionPool(
        ssl_context=httpx.create_ssl_context(),
        network_backend=_GuardedBackend(policy),
        max_connections=4,
    )
    step = min(policy.timeout, 30.0)
    return httpx.Client(
        transport=transport,
        follow_redirects=True,
        max_redirects=policy.max_redirects,
        trust_env=False,
        timeout=httpx.Timeout(step),
        headers={"User-Agent": "jobbridge-fetch"},
    )


def fetch(url: str, target: Path, policy: FetchPolicy) -> int:
    """Fetch ``url`` into ``target`` (replaced only once the whole file is there); returns
    its size in bytes."""
    check_url(url)
    deadline = time.monotonic() + policy.timeout
    partial = target.with_name(target.name + ".part")
    try:
        with _client(policy) as client, client.stream("GET", url) as response:
            if response.status_code != 200:
                raise FetchError(f"{url}: the server answered {response.status_code}")
            declared = response.headers.get("content-length")
            if declared is not None and declared.isdigit() and int(declared) > policy.max_bytes:
                raise TooLarge(f"{url} is {declared} bytes, over the {policy.max_bytes} allowed")
            size = 0
            with partial.open("wb") as handle:
                for chunk in response.iter_raw():
                    size += len(chunk)
                    if size > policy.max_bytes:
                        raise TooLarge(f"{url} is over the {policy.max_bytes} bytes allowed")
                    if time.monotonic() > deadline:
                        raise FetchError(f"{url} took over {policy.timeout:g} s")
                    handle.write(chunk)
        os.replace(partial, target)
        return size
    except httpx.TooManyRedirects:
        raise FetchError(f"{url}: more than {policy.max_redirects} redirects") from None
    except httpx.TimeoutException:
        raise FetchError(f"{url}: no answer in time") from None
    except httpx.HTTPError as error:
        cause = error.__context__
        if isinstance(cause, FetchError):
            raise cause from None
        raise FetchError(f"{url}: {error}") from None
    finally:
        partial.unlink(missing_ok=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobbridge.fetch", description=__doc__)
    parser.add_argument("--max-bytes", type=int, default=FetchPolicy.max_bytes)
    parser.add_argument("--timeout", type=float, default=FetchPolicy.timeout)
    parser.add_argument("--max-redirects", type=int, default=FetchPolicy.max_redirects)
    parser.add_argument("--allow", action="append", default=[], metavar="NETWORK")
    parser.add_argument("url")
    parser.add_argument("target", type=Path)
    options = parser.parse_args(argv)
    policy = FetchPolicy.from_texts(
        options.allow, max_bytes=options.max_bytes, timeout=options.timeout,
        max_redirects=options.max_redirects,
    )  # fmt: skip
    try:
        size = fetch(options.url, options.target, policy)
    except (FetchError, OSError) as error:
        print(f"could not fetch {options.url}: {error}", file=sys.stderr)
        return 1
    print(f"fetched {size} bytes from {options.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
