"""One HTTP POST to a checked webhook target: connect to the address the URL check resolved
(not to whatever the name resolves to a moment later), follow no redirect, keep only a short
excerpt of the answer, and give up after the timeout."""

from __future__ import annotations

import time
from dataclasses import dataclass

import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError

from core.webhooks.urls import Target

EXCERPT_BYTES = 512
USER_AGENT = "Dorado-Webhooks/1"


@dataclass(frozen=True)
class Outcome:
    """What one attempt got: a status code (None when no answer came) and how long it took."""

    status_code: int | None
    latency_ms: int
    excerpt: str | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def _host_header(target: Target) -> str:
    host = f"[{target.host}]" if ":" in target.host else target.host
    default = 443 if target.scheme == "https" else 80
    return host if target.port == default else f"{host}:{target.port}"


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> Outcome:
    """POST ``body`` to ``target``; never raises for network trouble (it is the outcome).
    An address that refuses the connection is skipped for the next one (nothing was sent)."""
    started = time.monotonic()
    error = "no address"
    for address in target.addresses:
        try:
            return _post_to(address, target, body, headers, timeout, started)
        except NewConnectionError as exc:
            error = _describe(exc)
        except (HTTPError, OSError) as exc:
            return Outcome(None, _ms_since(started), None, _describe(exc))
    return Outcome(None, _ms_since(started), None, error)


def _ms_since(started: float) -> int:
    return int((time.monotonic() - started) * 1000)


def _post_to(
    address: str,
    target: Target,
    body: bytes,
    headers: dict[str, str],
    timeout: float,
    started: float,
) -> Outcome:
    timeouts = urllib3.Timeout(connect=timeout, read=timeout)
    pool: urllib3.HTTPConnectionPool
    if target.scheme == "https":
        pool = urllib3.HTTPSConnectionPool(
            address,
            target.port,
            timeout=timeouts,
            retries=False,
            maxsize=1,
            server_hostname=target.host,
            assert_hostname=target.host,
            cert_reqs="CERT_REQUIRED",
        )
    else:
        pool = urllib3.HTTPConnectionPool(
            address, target.port, timeout=timeouts, retries=False, maxsize=1
        )
    try:
        response = pool.urlopen(
            "POST",
            target.path,
            body=body,
            headers={
                **headers,
                "Host": _host_header(target),
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
            },
            redirect=False,
            retries=False,
            preload_content=False,
            assert_same_host=False,
        )
        try:
            excerpt = response.read(EXCERPT_BYTES).decode("utf-8", errors="replace")
        finally:
            response.release_conn()
        return Outcome(response.status, _ms_since(started), excerpt or None)
    finally:
        pool.close()


def _describe(exc: BaseException) -> str:
    name = type(exc).__name__
    if "Timeout" in name:
        return "timed out"
    return f"{name}: {exc}"[:300]
