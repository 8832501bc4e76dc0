"""The one way out: every outbound connection (webhooks, HL7/MLLP, anything later) goes here.

A URL or host given by a lab (a webhook, a LIS address) must never turn the server into a
way into the hospital network (OWASP Server-Side Request Forgery Prevention Cheat Sheet):

- the host is resolved and every address it resolves to must be public: loopback, private,
  shared (CGNAT), link-local, unique-local, site-local, multicast, reserved, unspecified,
  documentation addresses and IPv4 addresses carried inside IPv6 (mapped, 6to4, Teredo,
  NAT64) of those are refused, and so are cloud metadata addresses, always;
- an operator lists the private hosts or networks that may be reached (an on-premises LIS) in
  OUTBOUND_ALLOWED_NETWORKS: empty by default, with DEBUG on too;
- the check runs when the address is registered (`vet_url`, `vet_tcp`) and again when a
  connection is opened: the connection goes to the address that was just vetted (the host name
  is resolved once per connection), so a name that changes its answer between the check and
  the connection (DNS rebinding) gains nothing; https keeps the host name for SNI and the
  certificate check, and the Host header is the URL's;
- redirects are never followed (a 3xx is an answer like any other non-2xx);
- https only, unless DEBUG is on;
- the proxy variables of the environment are ignored (a proxy would connect on our behalf to
  an address we never vetted).

What a refused target would have answered is never known, so it can never be shown; errors of
allowed targets are reported as a short class of failure (timed out, could not connect), never
as the text of the operating system's error.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import httpcore
import httpx
from django.conf import settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Cloud instance metadata services: never reachable, whatever the operator allowed.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(address)
    for address in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS over IPv6
        "100.100.100.200",  # Alibaba Cloud
        "192.0.0.192",  # Oracle Cloud
    )
)
NAT64 = ipaddress.ip_network("64:ff9b::/96")
USER_AGENT = "HematoVision/1"


class OutboundRefused(Exception):
    """A target the server will not connect to, with a message fit to show the user."""


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, 6to4, Teredo server, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def is_public(address: IPAddress) -> bool:
    """An address on the internet: not loopback, private, link-local, multicast, reserved..."""
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        return is_public(embedded)
    return (
        address.is_global
        and not address.is_multicast
        and not address.is_reserved
        and not address.is_link_local
        and not address.is_unspecified
        and not (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


@dataclass(frozen=True)
class Allowed:
    """OUTBOUND_ALLOWED_NETWORKS parsed: networks (CIDR or single addresses) and host names."""

    networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    hosts: frozenset[str]

    @classmethod
    def from_settings(cls) -> Allowed:
        networks = []
        hosts = set()
        for entry in settings.OUTBOUND_ALLOWED_NETWORKS:
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                hosts.add(_normal_host(entry))
        return cls(networks=tuple(networks), hosts=frozenset(hosts))

    def allows(self, *, host: str, address: IPAddress) -> bool:
        if address in METADATA_ADDRESSES or address.is_unspecified or address.is_multicast:
            return False
        if is_public(address):
            return True
        candidates = [address]
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            if embedded in METADATA_ADDRESSES:
                return False
            candidates.append(embedded)
        return _normal_host(host) in self.hosts or any(
            candidate in network
            for candidate in candidates
            for network in self.networks
            if candidate.version == network.version
        )


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def resolve(host: str, port: int) -> list[IPAddress]:
    """Every address the host name resolves to (tests replace this to stand in for DNS)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def vet_host(host: str, port: int) -> IPAddress:
    """The address to connect to for host:port, once every address it resolves to is allowed.

    Refused (OutboundRefused) when the name does not resolve or when any of its addresses is
    inside the network and not allowed: a name that answers both public and private addresses
    could be steered to the private one.
    """
    name = _normal_host(host)
    if not name:
        raise OutboundRefused("A host name is required.")
    if not 0 < port < 65536:
        raise OutboundRefused(f"Port {port} is out of range.")
    try:
        addresses = resolve(name, port)
    except (OSError, UnicodeError, ValueError):
        raise OutboundRefused(f"{name} does not resolve to an address.") from None
    if not addresses:
        raise OutboundRefused(f"{name} does not resolve to an address.")
    allowed = Allowed.from_settings()
    for address in addresses:
        if not allowed.allows(host=name, address=address):
            raise OutboundRefused(
                f"{name} is inside the network (a loopback, private, link-local, reserved or "
                "cloud metadata address): only public hosts are reached, unless an operator "
                "allows this one in OUTBOUND_ALLOWED_NETWORKS."
            )
    return addresses[0]


def vet_tcp(host: str, port: int) -> tuple[str, int]:
    """For a raw TCP connection (HL7 over MLLP): the vetted address and port to connect to."""
    return str(vet_host(host, port)), port


def open_tcp(host: str, port: int, *, timeout: float) -> socket.socket:
    """A TCP connection to host:port, opened to the address vetted just now."""
    address, port = vet_tcp(host, port)
    return socket.create_connection((address, port), timeout=timeout)


def vet_url(url: str) -> str:
    """The URL, stripped, when it may be called: https (http with DEBUG on), no credentials,
    and a host allowed now. Raises OutboundRefused with the reason otherwise."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise OutboundRefused("That is not a valid URL.") from None
    schemes = {"https", "http"} if settings.DEBUG else {"https"}
    if parts.scheme not in schemes or not parts.hostname:
        raise OutboundRefused(
            "The URL must be https://HOST/..." + (" (or http:// here)" if settings.DEBUG else ".")
        )
    if parts.username or parts.password:
        raise OutboundRefused("Put no credentials in the URL: every request is signed instead.")
    vet_host(parts.hostname, port)
    return url


class _VettingBackend(httpcore.SyncBackend):
    """Opens each TCP connection to the address vetted at that moment (no rebinding window);
    TLS is then started by httpcore with the URL's host name (SNI, certificate)."""

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Any = None,
    ) -> httpcore.NetworkStream:
        try:
            address = vet_host(host, port)
        except OutboundRefused as exc:
            raise _Refused(str(exc)) from None
        return super().connect_tcp(
            str(address), port, timeout=timeout, local_address=local_address,
            socket_options=socket_options,
        )  # fmt: skip


class _Refused(httpcore.ConnectError):
    """A refusal at connect time, carried through httpcore and httpx."""


class _VettedTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__(trust_env=False, retries=0)
        self._pool = httpcore.ConnectionPool(
            ssl_context=httpx.create_ssl_context(trust_env=False),
            max_connections=10,
            network_backend=_VettingBackend(),
        )


@dataclass(frozen=True)
class Answer:
    """What came back: a status code, or why there was none (fit for a delivery log)."""

    status_code: int | None
    error: str = ""

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def post(url: str, *, content: bytes, headers: dict[str, str], timeout: float) -> Answer:
    """POST once; never follows a redirect, never raises for the target's faults."""
    try:
        url = vet_url(url)
    except OutboundRefused as exc:
        return Answer(None, f"Refused: {exc}")
    host = urlsplit(url).hostname or ""
    try:
        with httpx.Client(
            transport=_VettedTransport(), follow_redirects=False, trust_env=False, timeout=timeout
        ) as client:
            response = client.post(
                url, content=content, headers={"User-Agent": USER_AGENT, **headers}
            )
    except httpx.ConnectError as exc:
        if isinstance(exc.__cause__, _Refused):
            return Answer(None, f"Refused: {exc.__cause__}")
        return Answer(None, f"Could not connect to {host}.")
    except httpx.TimeoutException:
        return Answer(None, f"No answer from {host} within {timeout:g} s.")
    except httpx.HTTPError:
        return Answer(None, f"The exchange with {host} failed.")
    if response.is_redirect:
        return Answer(
            response.status_code, f"HTTP {response.status_code}: redirects are not followed."
        )
    error = "" if response.is_success else f"HTTP {response.status_code}"
    return Answer(response.status_code, error)
