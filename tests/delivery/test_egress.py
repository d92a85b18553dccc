"""The egress policy: submit-time URL checks and connect-time address pinning."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpcore
import httpx
import pytest
from httpcore._backends.sync import SyncStream  # to watch the TLS handshake's server name

from app.delivery.egress import (
    EgressBlocked,
    EgressDenied,
    EgressPolicy,
    check_url,
    guarded_async_client,
    guarded_client,
)
from app.errors import InvalidInput
from app.settings import build_settings

NO_POLICY = EgressPolicy()


class Server:
    """A real HTTP server on 127.0.0.1 that records (path, Host header) of what reaches it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        seen, outer = self.seen, self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep connections alive

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                seen.append((self.path, self.headers.get("host", "")))
                if self.path == "/redirect":
                    self.send_response(302)
                    self.send_header("location", f"http://localhost:{outer.port}/t")
                else:
                    self.send_response(200)
                self.send_header("content-length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_port
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    yield srv
    srv.close()


def resolver_of(*answers: list[str]) -> tuple[Callable[[str, int], list[str]], list[str]]:
    """A resolver giving ``answers`` in turn (the last one repeats), and the log of its calls."""
    calls: list[str] = []

    def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        return answers[min(len(calls), len(answers)) - 1]

    return resolve, calls


# --- submit time -------------------------------------------------------------------------------

REFUSED = [
    ("http://127.0.0.1/", "loopback address (127.0.0.1)"),
    ("http://127.1/", "loopback address (127.0.0.1)"),
    ("http://2130706433/", "loopback address (127.0.0.1)"),
    ("http://0177.0.0.1/", "loopback address (127.0.0.1)"),
    ("http://0x7f.1/", "loopback address (127.0.0.1)"),
    ("http://0x7f.0.00.0x1/", "loopback address (127.0.0.1)"),
    ("http://0X7F000001/", "loopback address (127.0.0.1)"),
    ("http://127.0.0.1./", "loopback address (127.0.0.1)"),
    ("http://127.0.0.1:8080/x", "loopback address (127.0.0.1)"),
    ("http://%31%32%37.0.0.1/", "loopback address (127.0.0.1)"),
    ("http://\uff11\uff12\uff17\uff0e\uff10\uff0e\uff10\uff0e\uff11/", "loopback address"),
    ("http://[::1]/", "loopback address (::1)"),
    ("http://0/", "unspecified address (0.0.0.0)"),
    ("http://0.0.0.0/", "unspecified address"),
    ("http://[::]/", "unspecified address"),
    ("http://0.1.2.3/", "'this network' address"),
    ("http://10.0.0.1/", "private address (10.0.0.1)"),
    ("http://172.16.5.4/", "private address"),
    ("http://192.168.1.1/", "private address"),
    ("http://0xc0.0xa8.0x1.1/", "private address (192.168.1.1)"),
    ("http://3232235777/", "private address (192.168.1.1)"),
    ("http://169.254.169.254/latest/meta-data", "cloud metadata address"),
    ("http://169.254.10.1/", "link-local address"),
    ("http://100.64.0.1/", "carrier-grade NAT"),
    ("http://224.0.0.1/", "multicast address"),
    ("http://240.0.0.1/", "reserved address"),
    ("http://255.255.255.255/", "broadcast address"),
    ("http://192.0.2.1/", "documentation address"),
    ("http://198.51.100.7/", "documentation address"),
    ("http://203.0.113.9/", "documentation address"),
    ("http://198.18.0.1/", "benchmarking address"),
    ("http://[2001:db8::1]/", "documentation address"),
    ("http://[fc00::1]/", "private address"),
    ("http://[fd12:3456::1]/", "private address"),
    ("http://[fe80::1]/", "link-local address"),
    ("http://[fe80::1%25eth0]/", "link-local address"),
    ("http://[fec0::1]/", "site-local address"),
    ("http://[ff02::1]/", "multicast address"),
    ("http://[::ffff:127.0.0.1]/", "loopback address 127.0.0.1 inside an IPv4-mapped IPv6"),
    ("http://[::ffff:7f00:1]/", "loopback address 127.0.0.1 inside an IPv4-mapped IPv6"),
    ("http://[::ffff:169.254.169.254]/", "cloud metadata address 169.254.169.254 inside"),
    ("http://[::127.0.0.1]/", "IPv4-compatible IPv6 address"),
    ("http://[2002:7f00:1::1]/", "loopback address 127.0.0.1 inside a 6to4 address"),
    ("http://[2002:c0a8:101::1]/", "private address 192.168.1.1 inside a 6to4 address"),
    ("http://[64:ff9b::127.0.0.1]/", "loopback address 127.0.0.1 inside a NAT64 address"),
    ("http://[64:ff9b::a00:1]/", "private address 10.0.0.1 inside a NAT64 address"),
    ("http://[2001:0:4136:e378:8000:63bf:3fff:fdd2]/", "Teredo tunnel address"),
    ("http://localhost/", "loopback host name (localhost)"),
    ("http://LOCALHOST./", "loopback host name (localhost.)"),
    ("http://api.localhost:8000/", "loopback host name"),
    ("http://%6c%6f%63%61%6c%68%6f%73%74/", "loopback host name (localhost)"),
    ("http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/", "loopback host name"),
    ("http://metadata.google.internal/computeMetadata/v1/", "internal host name"),
    ("http://printer.local/", "internal host name"),
]


@pytest.mark.parametrize(("url", "reason"), REFUSED)
def test_internal_targets_are_refused_in_every_spelling(url: str, reason: str) -> None:
    with pytest.raises(EgressDenied) as caught:
        check_url(url, NO_POLICY)
    assert reason in caught.value.message
    assert caught.value.message.startswith("callback_url points at ")
    assert "outbound requests to internal addresses are not allowed" in caught.value.message


MALFORMED = [
    ("ftp://example.com/", "must be an http or https URL, not 'ftp'"),
    ("file:///etc/passwd", "must be an http or https URL"),
    ("gopher://127.0.0.1:6379/_x", "must be an http or https URL"),
    ("http://good.com@127.0.0.1/", "must not carry credentials"),
    ("https://user:pw@example.com/", "must not carry credentials"),
    ("http://127.0.0.1\\@good.com/", "backslash"),
    ("http://good.com\\@127.0.0.1/", "backslash"),
    ("http://exa mple.com/", "a space"),
    ("http://example.com\n/", "control character"),
    ("http://256.0.0.1/", "malformed numeric host"),
    ("http://08.0.0.1/", "malformed numeric host"),
    ("http://1.2.3.4.5/", "malformed numeric host"),
    ("http://foo.0x10/", "malformed numeric host"),
    ("http://[::ffff:0177.0.0.1]/", "not a valid URL"),
    ("http:///path", "has no valid host"),
    ("http://ex%00ample.com/", "has no valid host"),
    ("http://example.com:99999/", "not a valid URL"),
    ("http://[::1/", "not a valid URL"),
]


@pytest.mark.parametrize(("url", "reason"), MALFORMED)
def test_malformed_or_disguised_urls_are_refused(url: str, reason: str) -> None:
    with pytest.raises(EgressDenied, match=reason.replace("\\", "\\\\")) as caught:
        check_url(url, NO_POLICY, field="base_url")
    assert caught.value.message.startswith("base_url ")


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/hook",
        "http://8.8.8.8/",
        "http://134744072/",  # 8.8.8.8
        "http://[2606:4700::1111]/",
        "http://[::ffff:8.8.8.8]/",
        "http://[64:ff9b::808:808]/",
        "http://[2002:808:808::1]/",
        "https://receiver.test:8443/x",  # not resolved at submit time
    ],
)
def test_public_targets_pass(url: str) -> None:
    check_url(url, NO_POLICY)


def test_the_api_renders_a_denial_as_invalid_input() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_url("http://127.0.0.1/", NO_POLICY)
    assert caught.value.code == "egress_denied"
    assert not caught.value.retryable


@pytest.mark.parametrize(
    ("entries", "url"),
    [
        (["127.0.0.1/32"], "http://127.0.0.1:8080/"),
        (["127.0.0.1"], "http://2130706433/"),
        (["10.0.0.0/8"], "http://10.1.2.3/"),
        (["[::1]"], "http://[::1]:9000/"),
        (["receiver.test"], "http://RECEIVER.test./"),
        (["localhost"], "http://localhost:8000/"),
    ],
)
def test_what_the_operator_allowed_passes(entries: list[str], url: str) -> None:
    check_url(url, EgressPolicy.parse(entries))


def test_an_allowed_network_opens_exactly_its_addresses() -> None:
    policy = EgressPolicy.parse(["127.0.0.1/32"])
    assert policy.allows_ip("127.0.0.1") and not policy.allows_ip("127.0.0.2")
    assert not policy.allows_ip("::ffff:127.0.0.1")
    with pytest.raises(EgressDenied, match="loopback address"):
        check_url("http://127.0.0.2/", policy)


def test_resolving_at_submit_time_is_optional() -> None:
    resolve, calls = resolver_of(["10.0.0.7"])
    check_url("http://evil.test/", NO_POLICY)
    assert calls == []
    with pytest.raises(EgressDenied, match=r"evil.test resolves to a private address \(10.0.0.7\)"):
        check_url("http://evil.test/", NO_POLICY, resolve=True, resolver=resolve)
    check_url("http://ok.test/", NO_POLICY, resolve=True, resolver=resolver_of(["8.8.4.4"])[0])

    def broken(host: str, port: int) -> list[str]:
        raise socket.gaierror("no such host")

    with pytest.raises(EgressDenied, match="could not resolve"):
        check_url("http://gone.test/", NO_POLICY, resolve=True, resolver=broken)


# --- the policy and its setting ------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "127.0.0.1/32, receiver.test,10.0.0.0/8,[::1]",
        '["127.0.0.1/32", "receiver.test", "10.0.0.0/8", "[::1]"]',
    ],
)
def test_the_setting_takes_a_list_or_json(raw: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INFERQ_EGRESS_ALLOW", raw)
    settings = build_settings()
    assert settings.egress_allow == ["127.0.0.1/32", "receiver.test", "10.0.0.0/8", "[::1]"]
    policy = EgressPolicy.from_settings(settings)
    assert policy.allows_host("Receiver.Test.") and not policy.allows_host("other.test")
    assert policy.allows_ip("10.9.9.9") and policy.allows_ip("::1")
    assert not policy.allows_ip("11.0.0.1")


def test_the_setting_defaults_to_nothing_and_a_lone_ipv6_is_no_json() -> None:
    assert build_settings().egress_allow == []
    assert build_settings(egress_allow="[::1]").egress_allow == ["[::1]"]


def test_a_bad_entry_is_refused() -> None:
    with pytest.raises(ValueError, match="is not a host or CIDR"):
        EgressPolicy.parse(["http://x.test/"])


# --- connect time ------------------------------------------------------------------------------


def test_a_name_resolving_to_loopback_is_refused_and_nothing_is_sent(server: Server) -> None:
    resolve, calls = resolver_of(["127.0.0.1"])
    with (
        guarded_client(NO_POLICY, timeout=5, resolver=resolve) as client,
        pytest.raises(EgressBlocked) as caught,
    ):
        client.get(f"http://receiver.test:{server.port}/")
    assert "receiver.test resolves to a loopback address (127.0.0.1)" in caught.value.message
    assert not isinstance(caught.value, httpx.HTTPError)  # httpx passed it through unchanged
    assert calls == ["receiver.test"]
    assert server.seen == []


def test_any_forbidden_answer_refuses_the_name(server: Server) -> None:
    resolve, _ = resolver_of(["8.8.8.8", "127.0.0.1"])
    policy = EgressPolicy.parse(["8.8.8.8/32"])
    with (
        guarded_client(policy, timeout=5, resolver=resolve) as client,
        pytest.raises(EgressBlocked, match="loopback"),
    ):
        client.get(f"http://mixed.test:{server.port}/")
    assert server.seen == []


def test_the_connection_goes_to_the_checked_address_with_one_lookup(server: Server) -> None:
    # Allowed: 127.0.0.1 only. The resolver rebinds to 127.0.0.3 after its first answer: were
    # there a second lookup between check and connect, the connect would go elsewhere.
    resolve, calls = resolver_of(["127.0.0.1"], ["127.0.0.3"])
    policy = EgressPolicy.parse(["127.0.0.1/32"])
    with guarded_client(policy, timeout=5, resolver=resolve) as client:
        response = client.get(f"http://rebind.test:{server.port}/a")
        peer = response.extensions["network_stream"].get_extra_info("server_addr")
        client.get(f"http://rebind.test:{server.port}/b")  # the same, kept-alive connection
    assert response.status_code == 200
    assert peer == ("127.0.0.1", server.port)
    assert calls == ["rebind.test"]
    assert server.seen == [
        ("/a", f"rebind.test:{server.port}"),
        ("/b", f"rebind.test:{server.port}"),
    ]
    with (
        guarded_client(policy, timeout=5, resolver=resolve) as client,
        pytest.raises(EgressBlocked, match=r"loopback address \(127.0.0.3\)"),
    ):  # a new connection
        client.get(f"http://rebind.test:{server.port}/c")
    assert calls == ["rebind.test", "rebind.test"]
    assert [path for path, _ in server.seen] == ["/a", "/b"]


def test_allowed_hosts_and_networks_are_delivered(server: Server) -> None:
    resolve, _ = resolver_of(["127.0.0.1"])
    by_name = EgressPolicy.parse(["receiver.test"])
    with guarded_client(by_name, timeout=5, resolver=resolve) as client:
        assert client.get(f"http://receiver.test:{server.port}/name").status_code == 200
    with guarded_client(EgressPolicy.parse(["127.0.0.0/8"]), timeout=5) as client:
        assert client.get(f"http://127.0.0.1:{server.port}/cidr").status_code == 200
        assert client.get(f"http://2130706433:{server.port}/decimal").status_code == 200
    assert [path for path, _ in server.seen] == ["/name", "/cidr", "/decimal"]


def test_redirects_are_not_followed(server: Server) -> None:
    with guarded_client(EgressPolicy.parse(["127.0.0.1/32"]), timeout=5) as client:
        response = client.get(f"http://127.0.0.1:{server.port}/redirect")
    assert response.status_code == 302
    assert response.headers["location"].startswith("http://localhost:")
    assert [path for path, _ in server.seen] == ["/redirect"]


@pytest.mark.parametrize("host", ["[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "0x7f.1", "2130706433"])
def test_literal_spellings_are_refused_at_connect(server: Server, host: str) -> None:
    with (
        guarded_client(NO_POLICY, timeout=5) as client,
        pytest.raises(EgressBlocked, match="loopback address"),
    ):
        client.get(f"http://{host}:{server.port}/")
    assert server.seen == []


def test_localhost_via_the_system_resolver_is_refused(server: Server) -> None:
    with (
        guarded_client(NO_POLICY, timeout=5) as client,
        pytest.raises(EgressBlocked, match="localhost resolves to a loopback address"),
    ):
        client.get(f"http://localhost:{server.port}/")
    assert server.seen == []


def test_tls_keeps_the_host_name_when_connecting_to_the_ip(
    server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    names: list[str | None] = []

    def start_tls(self: Any, ssl_context: Any, server_hostname: str | None = None, **_: Any) -> Any:
        names.append(server_hostname)
        raise httpcore.ConnectError("stop here")

    monkeypatch.setattr(SyncStream, "start_tls", start_tls)
    resolve, _ = resolver_of(["127.0.0.1"])
    with (
        guarded_client(EgressPolicy.parse(["127.0.0.1/32"]), timeout=5, resolver=resolve) as c,
        pytest.raises(httpx.ConnectError),
    ):
        c.get(f"https://receiver.test:{server.port}/")
    assert names == ["receiver.test"]


def test_the_async_client_is_guarded_too(server: Server) -> None:
    answers = {"receiver.test": ["127.0.0.1"], "evil.test": ["127.0.0.5"]}
    policy = EgressPolicy.parse(["127.0.0.1/32"])

    async def go() -> tuple[int, str]:
        client = guarded_async_client(policy, timeout=5, resolver=lambda h, _: answers[h])
        async with client:
            ok = (await client.get(f"http://receiver.test:{server.port}/async")).status_code
            with pytest.raises(EgressBlocked) as caught:
                await client.get(f"http://evil.test:{server.port}/async-denied")
        return ok, caught.value.message

    status, message = asyncio.run(go())
    assert status == 200
    assert "evil.test resolves to a loopback address (127.0.0.5)" in message
    assert [path for path, _ in server.seen] == ["/async"]
