"""How gunicorn serves the API: a gevent worker, so that slow clients cannot take it down,
and an access log that never holds a secret sent in a URL.

A threaded worker gives each connection a thread from a small pool (2 workers x 4 threads)
for as long as the client takes to send its headers and body: a dozen connections trickling
one header line every 2 s left ``/healthz`` unanswered. Under gevent each connection is a
greenlet (a few KB): thousands of slow clients wait side by side while others are served.
Headers must arrive within the keep-alive time (gunicorn's gevent worker bounds reading
them with ``keepalive``), and a connection that sends nothing for ``READ_IDLE_TIMEOUT_S``
mid-request is dropped. Uploads still stream: werkzeug reads the body from the socket as the
route consumes it, greenlet-friendly.

On shutdown gunicorn stops accepting and waits (up to the graceful timeout, 30 s) for every
connection's greenlet to end, and a kept-alive connection waiting for its next request would
hold it the whole time: any client with a pooled connection (the SDK, a load balancer) made
every restart take 30 s. The worker closes those idle connections as soon as it is told to
stop, as nginx does; requests in progress still get the graceful timeout, and gunicorn closes
their connections after the response.

Used by ``dorado run`` (``core.processes.api_server_options``) and the images
(``infra/gunicorn.conf.py``).
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator
from typing import Any

import gevent
from gunicorn.glogging import Logger
from gunicorn.workers.ggevent import GeventWorker as _GeventWorker

# Longer than the keep-alive (75 s, core.processes.KEEPALIVE_S): an idle kept-alive
# connection is closed by the side in front, never by this timeout first.
READ_IDLE_TIMEOUT_S = 90.0


class GeventWorker(_GeventWorker):
    """gunicorn's gevent worker, with psycopg2 made cooperative and a per-read timeout."""

    def init_process(self) -> None:
        # Without the wait callback, a query (or a database connect that hangs) would block
        # every greenlet of this process, not just its own request.
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()
        # Each connection's socket by its greenlet, and the greenlets now waiting for a
        # request (none in progress on their connection): those are closed at stop.
        self._clients: dict[Any, Any] = {}
        self._waiting: set[Any] = set()
        super().init_process()

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        client.settimeout(READ_IDLE_TIMEOUT_S)
        me = gevent.getcurrent()
        self._clients[me] = client
        try:
            super().handle(listener, client, addr)
        finally:
            self._clients.pop(me, None)

    @contextlib.contextmanager
    def _waiting_for_request(self) -> Iterator[None]:
        me = gevent.getcurrent()
        self._waiting.add(me)
        try:
            with super().timeout_ctx():
                yield
        finally:
            self._waiting.discard(me)

    def timeout_ctx(self) -> Any:
        # gunicorn wraps exactly the read of the next request's head in this context.
        return self._waiting_for_request()

    def notify(self) -> None:
        super().notify()
        if not self.alive:  # gunicorn calls notify every second while it drains
            self.close_idle_connections()

    def close_idle_connections(self) -> int:
        """End the connections that wait for a request; returns how many."""
        closed = 0
        for greenlet in list(self._waiting):
            client = self._clients.get(greenlet)
            if client is None:
                continue
            with contextlib.suppress(OSError):
                # The waiting read then sees the end of the stream: the connection ends
                # quietly (gunicorn logs it at debug level) and its greenlet exits.
                client.shutdown(socket.SHUT_RDWR)
                closed += 1
        return closed


# A query parameter that may carry a credential, or anything shaped like a Dorado key.
_SECRET_PARAM = re.compile(
    r"(?i)(^|[?&;])((?:api[_-]?key|key|token|access[_-]?token|secret|password|auth"
    r"|authorization|signature)=)[^&;#\s\"]*"
)
_DORADO_KEY = re.compile(r"dor-[A-Za-z0-9_-]{8,}")
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` (a URL, request line or query) without credential values."""
    text = _SECRET_PARAM.sub(lambda m: m.group(1) + m.group(2) + REDACTED, text)
    return _DORADO_KEY.sub(REDACTED, text)


class AccessLogger(Logger):
    """gunicorn's logger; access-log lines have credentials in URLs and headers redacted.

    Keys are only accepted in the ``Authorization`` header, but a client may still put one in
    ``?api_key=``: the request is refused (401), and the access log must not keep the key.
    """

    def atoms(self, resp: Any, req: Any, environ: dict, request_time: Any) -> dict:
        atoms = super().atoms(resp, req, environ, request_time)
        for name in ("r", "q", "f", "U", "{raw_uri}e", "{query_string}e", "{http_referer}e"):
            value = atoms.get(name)
            if isinstance(value, str):
                atoms[name] = redact(value)
        for name in ("{authorization}i", "{http_authorization}e", "{cookie}i", "{http_cookie}e"):
            if name in atoms:
                atoms[name] = REDACTED
        return atoms
