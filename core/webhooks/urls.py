"""Which webhook URLs may be called: http(s) only, and (unless the operator allows private
networks) only hosts whose every address is public. Loopback, private, link-local (cloud
metadata at 169.254.169.254 included), shared, multicast and reserved addresses are refused.

The check resolves the name; the delivery then connects to an address from that same answer,
so a DNS record changed between the check and the request cannot point it inward.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from core.errors import InvalidRequest

MAX_URL_LENGTH = 2048
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``addresses``, in the resolver's order) and what to
    ask for."""

    scheme: str
    host: str
    port: int
    path: str
    addresses: tuple[str, ...]


def _refuse(message: str) -> InvalidRequest:
    return InvalidRequest(message, param="url", code="invalid_url")


def is_public(address: IPAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _refuse(f"The webhook URL's host '{host}' could not be resolved ({exc})") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]


def parse_url(url: object) -> tuple[str, str, int, str]:
    """(scheme, host, port, path-and-query) of a well-formed http(s) URL, else InvalidRequest."""
    if not isinstance(url, str) or not url.strip():
        raise _refuse("'url' must be a non-empty string")
    if len(url) > MAX_URL_LENGTH or any(ord(c) < 33 for c in url):
        raise _refuse(f"'url' must be at most {MAX_URL_LENGTH} characters, without spaces")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise _refuse("The webhook URL must start with https:// or http://")
    if parts.username is not None or parts.password is not None:
        raise _refuse("The webhook URL must not carry credentials")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise _refuse("The webhook URL's port is not a valid port number") from None
    if not parts.hostname:
        raise _refuse("The webhook URL has no host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, parts.hostname, port, path


def check_url(url: object, *, allow_private: bool) -> Target:
    """Resolve ``url`` and refuse it (InvalidRequest, a 400) unless every address it resolves
    to is public or ``allow_private`` is set."""
    scheme, host, port, path = parse_url(url)
    addresses = _resolve(host, port)
    if not addresses:
        raise _refuse(f"The webhook URL's host '{host}' has no address")
    if not allow_private:
        inward = [str(a) for a in addresses if not is_public(a)]
        if inward:
            raise _refuse(
                f"The webhook URL's host '{host}' resolves to a non-public address "
                f"({', '.join(sorted(set(inward)))}): loopback, private, link-local and "
                "metadata addresses are refused (an operator may allow them with "
                "DORADO_WEBHOOKS_ALLOW_PRIVATE=1)"
            )
    return Target(scheme, host, port, path, tuple(dict.fromkeys(str(a) for a in addresses)))
