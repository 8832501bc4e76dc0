from __future__ import annotations

import ipaddress
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from webportal.notifications import outbound

INSIDE = [
    "127.0.0.1",
    "127.1.2.3",
    "::1",
    "::ffff:127.0.0.1",
    "0.0.0.0",  # noqa: S104 (an address to refuse, not to bind)
    "::",
    "169.254.169.254",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "100.64.0.1",
    "fc00::1",
    "fd12:3456::1",
    "fe80::1",
    "fec0::1",
    "224.0.0.1",
    "ff02::1",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.2.1",
    "2001:db8::1",
    "2002:7f00:1::1",  # 6to4 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "::ffff:10.0.0.1",
]


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Stands in for DNS: host name -> addresses; IP literals resolve to themselves."""
    answers: dict[str, list[str]] = {}

    def resolve(host: str, port: int) -> list[outbound.IPAddress]:
        try:
            return [ipaddress.ip_address(host)]
        except ValueError:
            pass
        if host not in answers:
            raise OSError("name does not resolve")
        return [ipaddress.ip_address(address) for address in answers[host]]

    monkeypatch.setattr(outbound, "resolve", resolve)
    return answers


@contextmanager
def local_server(
    status: int = 200, location: str = ""
) -> Iterator[tuple[int, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self.rfile.read(length)
            seen.append({"path": self.path, "headers": dict(self.headers.items())})
            self.send_response(status)
            if location:
                self.send_header("Location", location)
            self.end_headers()
            self.wfile.write(b"internal secret answer")

        do_GET = do_POST

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("address", INSIDE)
def test_every_address_inside_the_network_is_refused(address: str, dns, settings) -> None:
    settings.DEBUG = True  # DEBUG opens nothing
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(outbound.OutboundRefused, match="inside the network"):
        outbound.vet_url(f"http://{host}/hook")
    with pytest.raises(outbound.OutboundRefused):
        outbound.vet_tcp(address, 2575)


def test_names_that_resolve_inside_the_network_are_refused_even_beside_a_public_one(dns) -> None:
    dns["localhost"] = ["127.0.0.1", "::1"]
    dns["metadata.google.internal"] = ["169.254.169.254"]
    dns["mixed.example"] = ["93.184.216.34", "10.0.0.7"]
    for name in dns:
        with pytest.raises(outbound.OutboundRefused, match="inside the network"):
            outbound.vet_url(f"https://{name}/hook")


def test_public_hosts_pass_and_names_that_do_not_resolve_are_refused(dns) -> None:
    dns["lis.example"] = ["93.184.216.34", "2606:2800:220:1::1"]
    assert outbound.vet_url(" https://lis.example/hook ") == "https://lis.example/hook"
    assert outbound.vet_tcp("lis.example", 2575) == ("93.184.216.34", 2575)
    with pytest.raises(outbound.OutboundRefused, match="does not resolve"):
        outbound.vet_url("https://nowhere.example/")


def test_https_only_unless_debug_and_no_credentials(dns, settings) -> None:
    dns["lis.example"] = ["93.184.216.34"]
    settings.DEBUG = False
    with pytest.raises(outbound.OutboundRefused, match="https"):
        outbound.vet_url("http://lis.example/hook")
    with pytest.raises(outbound.OutboundRefused, match="https"):
        outbound.vet_url("ftp://lis.example/hook")
    with pytest.raises(outbound.OutboundRefused, match="credentials"):
        outbound.vet_url("https://u:p@lis.example/hook")
    settings.DEBUG = True
    assert outbound.vet_url("http://lis.example/hook") == "http://lis.example/hook"


def test_an_operator_allows_private_networks_and_names_but_never_cloud_metadata(
    dns, settings
) -> None:
    dns["lis.hospital.internal"] = ["10.20.0.5"]
    settings.OUTBOUND_ALLOWED_NETWORKS = [
        "192.168.0.0/16",
        "lis.hospital.internal",
        "169.254.0.0/16",
    ]
    assert outbound.vet_tcp("192.168.4.4", 2575) == ("192.168.4.4", 2575)
    assert outbound.vet_tcp("lis.hospital.internal", 2575) == ("10.20.0.5", 2575)
    with pytest.raises(outbound.OutboundRefused):
        outbound.vet_tcp("10.20.0.6", 2575)  # the name was allowed, not its network
    with pytest.raises(outbound.OutboundRefused):
        outbound.vet_tcp("169.254.169.254", 80)
    with pytest.raises(outbound.OutboundRefused):
        outbound.vet_tcp("::ffff:169.254.169.254", 80)


def test_a_refused_target_is_never_contacted_and_its_answer_never_shown(settings) -> None:
    settings.DEBUG = True
    with local_server(status=401) as (port, seen):
        answer = outbound.post(
            f"http://127.0.0.1:{port}/admin/", content=b"{}", headers={}, timeout=5
        )
    assert seen == []
    assert answer.status_code is None
    assert answer.error.startswith("Refused:")
    assert "401" not in answer.error


def test_a_name_that_changes_its_answer_after_the_check_is_refused_at_connect_time(
    settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings.DEBUG = True
    answers = iter([["93.184.216.34"], ["93.184.216.34"], ["127.0.0.1"]])

    def rebinding(host: str, port: int) -> list[outbound.IPAddress]:
        return [ipaddress.ip_address(address) for address in next(answers)]

    monkeypatch.setattr(outbound, "resolve", rebinding)
    with local_server() as (port, seen):
        # Public at registration and at the URL check before sending; loopback at connect.
        url = outbound.vet_url(f"http://rebind.example:{port}/hook")
        answer = outbound.post(url, content=b"{}", headers={}, timeout=5)
    assert seen == []
    assert answer.status_code is None
    assert answer.error.startswith("Refused:")
    assert "inside the network" in answer.error


def test_an_allowed_private_host_is_reached_by_name_with_its_host_header(dns, settings) -> None:
    settings.DEBUG = True
    settings.OUTBOUND_ALLOWED_NETWORKS = ["lis.test"]
    dns["lis.test"] = ["127.0.0.1"]
    with local_server() as (port, seen):
        answer = outbound.post(
            f"http://lis.test:{port}/hook", content=b"{}", headers={"X-A": "1"}, timeout=5
        )
    assert answer.ok
    assert answer.status_code == 200
    assert seen[0]["headers"]["Host"] == f"lis.test:{port}"
    assert seen[0]["headers"]["X-A"] == "1"


def test_redirects_are_never_followed(settings) -> None:
    settings.DEBUG = True
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1/32"]
    with local_server(status=302, location="/internal/admin") as (port, seen):
        answer = outbound.post(
            f"http://127.0.0.1:{port}/hook", content=b"{}", headers={}, timeout=5
        )
    assert [request["path"] for request in seen] == ["/hook"]
    assert answer.status_code == 302
    assert not answer.ok
    assert "not followed" in answer.error


def test_a_closed_port_of_an_allowed_host_reads_as_could_not_connect(settings) -> None:
    settings.DEBUG = True
    settings.OUTBOUND_ALLOWED_NETWORKS = ["127.0.0.1"]
    answer = outbound.post("http://127.0.0.1:9/hook", content=b"{}", headers={}, timeout=5)
    assert answer.status_code is None
    assert answer.error == "Could not connect to 127.0.0.1."
    assert "refused" not in answer.error.lower()
