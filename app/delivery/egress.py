"""The egress policy: no outbound request reaches an internal address unless an operator allowed it.

Two check points share one set of rules. :func:`check_url` runs when a caller hands us a URL (a
``callback_url``, an integration's base URL) and refuses what can never be allowed: a scheme other
than http(s), credentials in the URL, a host that spells a forbidden address in any notation a
browser or ``inet_aton`` accepts (``2130706433``, ``0177.0.0.1``, ``0x7f.1``, ``[::ffff:7f00:1]``)
and names such as ``localhost``. :func:`guarded_client` is the real guard: its connections resolve
the host once, check every address and connect to the checked address itself, so a DNS answer that
changes in between (DNS rebinding) cannot get through.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import anyio.to_thread
import httpcore
import httpx

from app.errors import InvalidInput

if TYPE_CHECKING:
    from app.settings import Settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]
"""``(host, port) -> addresses``; the default is :func:`system_resolver`."""

NOT_ALLOWED = "outbound requests to internal addresses are not allowed"
_REASONS_BY_NETWORK = {
    "a 'this network' address": "0.0.0.0/8",
    "the cloud metadata address": "169.254.169.254/32",
    "a carrier-grade NAT (shared) address": "100.64.0.0/10",
    "a broadcast address": "255.255.255.255/32",
    "a documentation address": "192.0.2.0/24 198.51.100.0/24 203.0.113.0/24 2001:db8::/32 3fff::/20",
    "a benchmarking address": "198.18.0.0/15 2001:2::/48",
    "a site-local address": "fec0::/10",
    "a private address": "10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7",
}
_NAMED_NETWORKS = [
    (ipaddress.ip_network(net), reason)
    for reason, nets in _REASONS_BY_NETWORK.items()
    for net in nets.split()
]
_FLAGS = (
    ("is_link_local", "a link-local address"),
    ("is_multicast", "a multicast address"),
    ("is_reserved", "a reserved address"),
    ("is_private", "a special-purpose address"),
)
_V4_COMPATIBLE = ipaddress.ip_network("::/96")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_NUMERIC_LABEL = re.compile(r"0[xX][0-9a-fA-F]*|[0-9]+")
_HOST_CHARS = re.compile(r"[a-z0-9._-]+|[0-9a-f:.]+(%[a-z0-9._-]+)?")
_URL_BAD_CHARS = re.compile(r"[\\\s\x00-\x1f\x7f]")
_INTERNAL_SUFFIXES = ("internal", "local", "localdomain", "home.arpa")


class EgressDenied(InvalidInput):
    """A URL or an address the egress policy refuses (a caller's URL: 422 ``egress_denied``)."""

    code = "egress_denied"


class EgressBlocked(EgressDenied):
    """A guarded client refused to connect. Record it as ``egress_denied``; retrying cannot help.

    Deliberately not an ``httpx.HTTPError``: httpx re-raises it unchanged, and code that retries
    transport errors does not mistake it for one.
    """


@dataclass(frozen=True)
class EgressPolicy:
    """What an operator opened (``INFERQ_EGRESS_ALLOW``); every other internal address stays shut.

    An allowed network opens the addresses in it (exactly: ``127.0.0.1/32`` does not open
    ``::ffff:127.0.0.1``). An allowed host name opens that name, compared case-insensitively
    without a trailing dot and with no wildcards, and whatever it resolves to: the operator
    vouches for the name's DNS.
    """

    networks: tuple[IPNetwork, ...] = ()
    hosts: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> EgressPolicy:
        """Build a policy from host names and addresses/CIDRs (``[::1]``, ``10.0.0.0/8``).

        Raises:
            ValueError: an entry is neither a host name nor an address or network.
        """
        networks: list[IPNetwork] = []
        hosts: set[str] = set()
        for entry in filter(None, (e.strip().lower() for e in entries)):
            bare = entry[1:-1] if entry.startswith("[") and entry.endswith("]") else entry
            try:
                networks.append(ipaddress.ip_network(bare, strict=False))
            except ValueError:
                if not re.fullmatch(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?", entry):
                    raise ValueError(
                        f"INFERQ_EGRESS_ALLOW: {entry!r} is not a host or CIDR"
                    ) from None
                hosts.add(entry.removesuffix("."))
        return cls(tuple(networks), frozenset(hosts))

    @classmethod
    def from_settings(cls, settings: Settings) -> EgressPolicy:
        """The policy ``settings.egress_allow`` describes."""
        return cls.parse(settings.egress_allow)

    def allows_ip(self, ip: IPAddress | str) -> bool:
        """Whether an allowed network holds ``ip``."""
        addr = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        return any(net.version == addr.version and addr in net for net in self.networks)

    def allows_host(self, host: str) -> bool:
        """Whether ``host`` is an allowed host name."""
        return host.lower().removesuffix(".") in self.hosts


def forbidden_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` is internal (``"a loopback address"``), or None for a public address.

    An IPv6 address that carries an IPv4 one (IPv4-mapped, 6to4, NAT64) is judged by that one;
    Teredo and the deprecated IPv4-compatible form are refused outright.
    """
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.teredo is not None:
            return "a Teredo tunnel address"
        if ip in _V4_COMPATIBLE and int(ip) > 1:
            return "a deprecated IPv4-compatible IPv6 address"
        carried = _carried_ipv4(ip)
        if carried is not None:
            inner = forbidden_reason(carried[1])
            return None if inner is None else f"{inner} {carried[1]} inside {carried[0]} address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_loopback:
        return "a loopback address"
    for network, reason in _NAMED_NETWORKS:
        if network.version == ip.version and ip in network:
            return reason
    for flag, reason in _FLAGS:
        if getattr(ip, flag):
            return reason
    return None if ip.is_global else "a special-purpose address"


def _carried_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if ip.ipv4_mapped is not None:
        return "an IPv4-mapped IPv6", ip.ipv4_mapped
    if ip.sixtofour is not None:
        return "a 6to4", ip.sixtofour
    if ip in _NAT64:
        return "a NAT64", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def parse_host(host: str) -> IPAddress | None:
    """The address a URL host denotes, read like a browser (``inet_aton`` for legacy IPv4
    forms: decimal, octal, hex, 1-4 parts, one trailing dot); None for a host name.

    Raises:
        ValueError: the host looks numeric but is no valid address (a browser refuses it).
    """
    host = host.removeprefix("[").removesuffix("]")
    if ":" in host:
        return ipaddress.IPv6Address(host.split("%", 1)[0])
    parts = host.split(".")
    if len(parts) > 1 and parts[-1] == "":
        parts.pop()
    if not _NUMERIC_LABEL.fullmatch(parts[-1]):
        return None
    if len(parts) > 4 or not all(_NUMERIC_LABEL.fullmatch(p) for p in parts):
        raise ValueError(f"malformed numeric host {host!r}")
    *head, last = [_number(p) for p in parts]
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        raise ValueError(f"numeric host {host!r} is out of range")
    return ipaddress.IPv4Address(sum(v << (24 - 8 * i) for i, v in enumerate(head)) + last)


def _number(label: str) -> int:
    if label[:2].lower() == "0x":
        return int(label[2:] or "0", 16)
    return int(label, 8) if len(label) > 1 and label[0] == "0" else int(label)


def _name_reason(name: str) -> str | None:
    name = name.removesuffix(".")
    if name == "localhost" or name.endswith(".localhost"):
        return "a loopback host name"
    if any(name == s or name.endswith("." + s) for s in _INTERNAL_SUFFIXES):
        return "an internal host name"
    return None


def check_url(
    url: str,
    policy: EgressPolicy,
    *,
    field: str = "callback_url",
    resolve: bool = False,
    resolver: Resolver | None = None,
) -> None:
    """Refuse, at submit time, a URL the policy can never allow.

    Only http and https. A URL with credentials (``user:pw@host``) is refused: ours never need
    them, and ``good.com@127.0.0.1`` is the classic way to disguise a host. Backslashes, spaces
    and control characters are refused (parsers disagree about them). A host name is not
    resolved unless ``resolve`` is set: DNS may be down, and the connect-time check is the guard.

    Parameters:
        field: the name the message gives the URL.
        resolve: also resolve a host name (through ``resolver``) and check its addresses.

    Raises:
        EgressDenied: with a message that says why.
    """
    host, port = _split_url(url, field)
    try:
        literal = parse_host(host)
    except ValueError:
        raise EgressDenied(f"{field} has a malformed numeric host ({host})") from None
    if literal is not None:
        reason = None if policy.allows_ip(literal) else forbidden_reason(literal)
        if reason is not None:
            raise EgressDenied(f"{field} points at {reason} ({literal}); {NOT_ALLOWED}")
        return
    if policy.allows_host(host):
        return
    reason = _name_reason(host)
    if reason is not None:
        raise EgressDenied(f"{field} points at {reason} ({host}); {NOT_ALLOWED}")
    if resolve:
        try:
            _Guard(policy, resolver or system_resolver).addresses(host, port)
        except EgressBlocked as exc:
            raise EgressDenied(f"{field}: {exc.message}") from None
        except httpcore.ConnectError as exc:
            raise EgressDenied(f"{field}: {exc}") from None


def _split_url(url: str, field: str) -> tuple[str, int]:
    """The canonical host (percent-decoded, IDNA, lower case) and the port of ``url``."""
    if _URL_BAD_CHARS.search(url):
        raise EgressDenied(f"{field} contains a backslash, a space or a control character")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = unquote(parts.hostname or "")
        host = host if host.isascii() else host.encode("idna").decode("ascii")
    except ValueError:  # UnicodeError is one
        raise EgressDenied(f"{field} is not a valid URL") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise EgressDenied(f"{field} must be an http or https URL, not {parts.scheme!r}")
    if "@" in parts.netloc:
        raise EgressDenied(f"{field} must not carry credentials (user:password@host)")
    if not _HOST_CHARS.fullmatch(host.lower()):
        raise EgressDenied(f"{field} has no valid host")
    return host.lower(), port or (443 if parts.scheme.lower() == "https" else 80)


def system_resolver(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to (``getaddrinfo``), in order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class _Guard:
    """Resolves a host once and vets the answer: at connect time addresses decide, not names
    (``localhost`` is refused because it resolves to loopback; the name rules are for submit)."""

    def __init__(self, policy: EgressPolicy, resolver: Resolver) -> None:
        self.policy = policy
        self.resolver = resolver

    def addresses(self, host: str, port: int) -> list[str]:
        """The addresses to connect to, from one lookup.

        Refuses if ANY address is forbidden rather than using the allowed ones: a name that
        answers both public and internal addresses is a rebinding attempt or a mistake, and which
        one gets used would depend on answer order.
        """
        try:
            literal = parse_host(host)
        except ValueError:
            raise EgressBlocked(f"{host!r} is not a valid host; {NOT_ALLOWED}") from None
        if literal is not None:
            self._vet(f"{host} is", literal)
            return [str(literal)]
        try:
            addresses = self.resolver(host, port)
        except OSError as exc:
            raise httpcore.ConnectError(f"could not resolve {host}: {exc}") from exc
        if not addresses:
            raise httpcore.ConnectError(f"could not resolve {host}: no addresses")
        if not self.policy.allows_host(host):
            for address in addresses:
                self._vet(f"{host} resolves to", ipaddress.ip_address(address.split("%", 1)[0]))
        return addresses

    def _vet(self, subject: str, ip: IPAddress) -> None:
        reason = None if self.policy.allows_ip(ip) else forbidden_reason(ip)
        if reason is not None:
            raise EgressBlocked(f"{subject} {reason} ({ip}); {NOT_ALLOWED}")


class GuardedBackend(httpcore.SyncBackend):
    """httpcore's sync backend, connecting only to addresses the guard vetted.

    httpcore takes the TLS server name (SNI, certificate check) from the request's origin, not
    from the host given to ``connect_tcp``, so connecting to an IP keeps TLS on the host name.
    """

    def __init__(self, policy: EgressPolicy, resolver: Resolver | None = None) -> None:
        self._guard = _Guard(policy, resolver or system_resolver)

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.NetworkStream:
        """Resolve ``host`` once, vet every address, connect to the first that answers."""
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in self._guard.addresses(host, port):
            try:
                return super().connect_tcp(address, port, timeout, local_address, socket_options)
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error


class AsyncGuardedBackend(httpcore.AnyIOBackend):
    """The async twin of :class:`GuardedBackend` (the lookup runs in a worker thread)."""

    def __init__(self, policy: EgressPolicy, resolver: Resolver | None = None) -> None:
        self._guard = _Guard(policy, resolver or system_resolver)

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Resolve ``host`` once, vet every address, connect to the first that answers."""
        error: Exception = httpcore.ConnectError(f"no address for {host}")
        for address in await anyio.to_thread.run_sync(self._guard.addresses, host, port):
            try:
                return await super().connect_tcp(
                    address, port, timeout, local_address, socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        raise error


def guarded_client(
    policy: EgressPolicy,
    *,
    timeout: float | httpx.Timeout,
    resolver: Resolver | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.Client:
    """An httpx client whose every connection goes through the egress policy.

    No redirects are followed (a 3xx comes back as it is) and the environment is ignored (no
    ``HTTPS_PROXY`` can route around the check). A refused connection raises
    :class:`EgressBlocked`.
    """
    transport = httpx.HTTPTransport(trust_env=False, retries=0)
    _pool(transport)._network_backend = GuardedBackend(policy, resolver)
    return httpx.Client(
        transport=transport,
        timeout=timeout,
        headers=headers,
        follow_redirects=False,
        trust_env=False,
    )


def guarded_async_client(
    policy: EgressPolicy,
    *,
    timeout: float | httpx.Timeout,
    resolver: Resolver | None = None,
    headers: Mapping[str, str] | None = None,
) -> httpx.AsyncClient:
    """The async twin of :func:`guarded_client`."""
    transport = httpx.AsyncHTTPTransport(trust_env=False, retries=0)
    _pool(transport)._network_backend = AsyncGuardedBackend(policy, resolver)
    return httpx.AsyncClient(
        transport=transport,
        timeout=timeout,
        headers=headers,
        follow_redirects=False,
        trust_env=False,
    )


def _pool(transport: Any) -> Any:
    """The httpcore pool under an httpx transport; fails closed if httpx lays it out otherwise."""
    pool = getattr(transport, "_pool", None)
    pools = (httpcore.ConnectionPool, httpcore.AsyncConnectionPool)
    if type(pool) not in pools or not hasattr(pool, "_network_backend"):
        raise RuntimeError("this httpx/httpcore version cannot take the egress guard")
    return pool


@lru_cache(maxsize=8)
def _policy(entries: tuple[str, ...]) -> EgressPolicy:
    return EgressPolicy.parse(entries)


def policy_for(settings: Settings) -> EgressPolicy:
    """The policy of ``settings`` (parsed once per distinct ``INFERQ_EGRESS_ALLOW``)."""
    return _policy(tuple(settings.egress_allow))


def check_caller_url(url: str, settings: Settings, *, field: str = "callback_url") -> None:
    """``check_url`` of a URL a caller gave, under the policy of ``settings`` (a 422 if never
    allowed)."""
    check_url(url, policy_for(settings), field=field)
