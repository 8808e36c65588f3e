"""A bounded slowloris on loopback: connections that trickle headers or a body while a
prober measures how long ``/healthz`` and an authenticated ``/v1`` call take to answer."""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field

import httpx2


@dataclass
class SlowReport:
    """The longest answers seen while the slow clients held their connections."""

    probes: int = 0
    worst_seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    slow_connections: int = 0


def _slow_headers(host: str, port: int, stop: threading.Event, interval: float) -> None:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")
        n = 0
        while not stop.wait(interval):
            n += 1
            sock.sendall(f"X-Slow-{n}: {n}\r\n".encode())


def _slow_body(host: str, port: int, stop: threading.Event, interval: float) -> None:
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/fine_tuning/jobs HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{"
        )
        while not stop.wait(interval):
            sock.sendall(b" ")


def slowloris(
    base_url: str,
    api_key: str,
    *,
    header_clients: int,
    body_clients: int,
    seconds: float,
    interval: float = 2.0,
) -> SlowReport:
    """Hold the slow connections for ``seconds`` while probing twice a second."""
    host, port = base_url.split("//", 1)[1].split(":")
    stop = threading.Event()
    report = SlowReport()
    errors: list[str] = []

    def run(target) -> None:
        try:
            target(host, int(port), stop, interval)
        except OSError as exc:  # the server dropping a slow client is fine: note it
            errors.append(repr(exc))

    attackers = [
        threading.Thread(target=run, args=(_slow_headers,), daemon=True)
        for _ in range(header_clients)
    ] + [threading.Thread(target=run, args=(_slow_body,), daemon=True) for _ in range(body_clients)]
    for thread in attackers:
        thread.start()
    time.sleep(min(3.0, seconds / 4))  # let every slow connection get accepted first
    report.slow_connections = sum(t.is_alive() for t in attackers)
    deadline = time.monotonic() + seconds
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx2.Client(timeout=5.0) as client:
        while time.monotonic() < deadline:
            for path, auth in (("/healthz", {}), ("/v1/models", headers)):
                started = time.monotonic()
                try:
                    client.get(base_url + path, headers=auth).raise_for_status()
                except httpx2.HTTPError as exc:
                    report.failures.append(f"{path}: {exc!r}")
                took = time.monotonic() - started
                report.probes += 1
                report.worst_seconds = max(report.worst_seconds, took)
            time.sleep(0.5)
    stop.set()
    for thread in attackers:
        thread.join(timeout=10)
    return report
