"""The REST client behind the ``dorado`` user commands: it speaks only to the API under ``/v1``
(never to the database), with a key from ``DORADO_API_KEY`` or the user's config file.

Every failure reaches the commands as a :class:`ClientError` whose message is one line a person
can act on: the API's own error message, or what to set when no key or no server is found.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx2 as httpx

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

# The user commands' own variables (docs/cli.md): a client reads these, never the platform's
# settings, which describe a server it does not run.
CLIENT_VARIABLES = ("DORADO_API_KEY", "DORADO_BASE_URL", "DORADO_CONFIG", "DORADO_LOG_LEVEL")
DEFAULT_BASE_URL = "http://127.0.0.1:8000"  # `dorado run` serves the API on DORADO_PORT=8000
# Reads may wait on a busy CPU-bound server; connecting should not take long.
TIMEOUT = httpx.Timeout(120.0, connect=10.0)
# A generation or a merge on a CPU can take minutes (the API allows 10 and 30 minutes).
LONG_TIMEOUT = httpx.Timeout(1800.0, connect=10.0)
CHUNK = 256 * 1024

Progress = Callable[[int, int | None], None]
"""Called with (bytes done, total bytes or None) as a transfer advances."""


class ClientError(Exception):
    """Something the user must fix or know about, in one line."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(ClientError):
    """No API key, an unreadable config file, or a malformed base URL."""


class ConnectionFailed(ClientError):
    """The API could not be reached."""


class ApiError(ClientError):
    """The API refused the request; fields from its OpenAI-shaped error body."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        problems: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.param = param
        self.problems = problems or []

    def as_dict(self) -> dict[str, Any]:
        """The error as the API sent it (for ``--json``)."""
        body: dict[str, Any] = {
            "status": self.status,
            "message": self.message,
            "code": self.code,
            "param": self.param,
        }
        if self.problems:
            body["problems"] = self.problems
        return body


def config_path() -> Path:
    """``DORADO_CONFIG``, else ``$XDG_CONFIG_HOME/dorado/config.toml`` (``~/.config``)."""
    explicit = os.environ.get("DORADO_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "dorado" / "config.toml"


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None


@dataclass(frozen=True)
class ClientConfig:
    """Where the API is and which key to send."""

    base_url: str
    api_key: str | None
    config_file: Path = field(default_factory=config_path)

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1"


def normalize_base_url(url: str) -> str:
    """``http://host:8000``, ``http://host:8000/`` and ``http://host:8000/v1`` all name the
    same server."""
    url = url.strip().rstrip("/")
    if url.endswith("/v1"):
        url = url[: -len("/v1")]
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"the base URL must start with http:// or https:// (got {url!r})")
    return url


def load_config(base_url: str | None = None) -> ClientConfig:
    """Settings by precedence: the ``--base-url`` option, then ``DORADO_BASE_URL`` /
    ``DORADO_API_KEY``, then the config file's ``base_url`` / ``api_key``, then the default
    URL."""
    path = config_path()
    file_values = _read_config_file(path)
    url = base_url or os.environ.get("DORADO_BASE_URL") or file_values.get("base_url")
    key = os.environ.get("DORADO_API_KEY") or file_values.get("api_key")
    if key is not None and not isinstance(key, str):
        raise ConfigError(f"api_key in {path} must be a string")
    return ClientConfig(normalize_base_url(str(url or DEFAULT_BASE_URL)), key or None, path)


def _error_from(response: httpx.Response) -> ApiError:
    """An :class:`ApiError` from the API's ``{"error": {...}}`` body (or the bare status)."""
    try:
        body = json.loads(response.read())
        error = body["error"]
        message = str(error.get("message") or response.reason_phrase)
        return ApiError(
            response.status_code,
            message,
            code=error.get("code"),
            param=error.get("param"),
            problems=error.get("problems"),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return ApiError(
            response.status_code,
            f"HTTP {response.status_code} {response.reason_phrase} from {response.url}",
        )


class _CountingReader:
    """A binary file that reports how much of it has been read: the upload's progress while
    httpx streams it in chunks (the file is never read whole into memory)."""

    def __init__(self, handle: IO[bytes], total: int, progress: Progress | None) -> None:
        self._handle = handle
        self._total = total
        self._progress = progress
        self._done = 0

    def read(self, size: int = -1) -> bytes:
        chunk = self._handle.read(size)
        self._done += len(chunk)
        if self._progress is not None:
            self._progress(self._done, self._total)
        return chunk

    def fileno(self) -> int:  # lets httpx send a Content-Length (os.fstat)
        return self._handle.fileno()

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._done = 0 if (offset, whence) == (0, os.SEEK_SET) else self._done
        return self._handle.seek(offset, whence)

    def tell(self) -> int:
        return self._handle.tell()


class DoradoClient:
    """A thin, typed wrapper over the ``/v1`` endpoints the CLI uses."""

    def __init__(self, config: ClientConfig, transport: httpx.BaseTransport | None = None):
        if not config.api_key:
            raise ConfigError(
                "no API key: set DORADO_API_KEY, or api_key in "
                f"{config.config_file} (the key `dorado run` printed)"
            )
        self.config = config
        self._http = httpx.Client(
            base_url=config.api_url,
            headers={"Authorization": f"Bearer {config.api_key}", "User-Agent": "dorado-cli"},
            timeout=TIMEOUT,
            transport=transport,
            trust_env=False,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DoradoClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # --- plumbing --------------------------------------------------------------------------
    def _unreachable(self, exc: Exception) -> ConnectionFailed:
        return ConnectionFailed(
            f"cannot reach the Dorado API at {self.config.base_url} ({type(exc).__name__}); "
            "start it with `dorado run`, or set DORADO_BASE_URL / --base-url"
        )

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send one request; the decoded JSON body, or :class:`ApiError`."""
        try:
            response = self._http.request(method, path, **kwargs)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable(exc) from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(
                f"the connection to {self.config.base_url} failed: {type(exc).__name__} {exc}"
            ) from None
        if response.status_code >= 400:
            raise _error_from(response)
        try:
            return response.json()
        except ValueError:
            raise ClientError(
                f"the server at {self.config.base_url} did not answer with JSON; "
                "is DORADO_BASE_URL pointing at a Dorado API?"
            ) from None

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params={k: v for k, v in params.items() if v is not None})

    def post(self, path: str, body: dict[str, Any] | None = None) -> Any:
        return self.request("POST", path, json=body or {})

    # --- files -----------------------------------------------------------------------------
    def upload_file(
        self, path: Path, purpose: str, progress: Progress | None = None
    ) -> dict[str, Any]:
        """``POST /v1/files``, streaming ``path`` from disk; the file object (validated)."""
        total = path.stat().st_size
        with path.open("rb") as handle:
            reader = _CountingReader(handle, total, progress)
            return self.request(
                "POST",
                "/files",
                data={"purpose": purpose},
                files={"file": (path.name, reader, "application/jsonl")},
                timeout=LONG_TIMEOUT,
            )

    # --- jobs ------------------------------------------------------------------------------
    def new_events(
        self, job_id: str, last_seen: str | None, *, page_size: int = 100
    ) -> list[dict[str, Any]]:
        """The job's events after ``last_seen`` (all when None), oldest first.

        The API lists events newest first and ``after=`` pages towards older ones, so this
        reads pages from the newest until it meets ``last_seen``."""
        newest_first: list[dict[str, Any]] = []
        after: str | None = None
        while True:
            page = self.get(f"/fine_tuning/jobs/{job_id}/events", limit=page_size, after=after)
            for event in page["data"]:
                if event["id"] == last_seen:
                    return list(reversed(newest_first))
                newest_first.append(event)
            if not page.get("has_more") or not page["data"]:
                return list(reversed(newest_first))
            after = page["data"][-1]["id"]

    def download(
        self,
        path: str,
        dest: IO[bytes],
        *,
        params: dict[str, str] | None = None,
        progress: Progress | None = None,
    ) -> None:
        """Stream ``GET path`` into ``dest`` chunk by chunk."""
        try:
            with self._http.stream("GET", path, params=params, timeout=LONG_TIMEOUT) as response:
                if response.status_code >= 400:
                    raise _error_from(response)
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                done = 0
                for chunk in response.iter_bytes(CHUNK):
                    dest.write(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable(exc) from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"the download broke off: {type(exc).__name__} {exc}") from None

    # --- chat ------------------------------------------------------------------------------
    def stream_chat(self, body: dict[str, Any]) -> Iterator[str]:
        """``POST /v1/chat/completions`` with ``stream: true``; yields content deltas."""
        try:
            with self._http.stream(
                "POST",
                "/chat/completions",
                json={**body, "stream": True},
                headers={"Accept": "text/event-stream"},
                timeout=LONG_TIMEOUT,
            ) as response:
                if response.status_code >= 400:
                    raise _error_from(response)
                for event in httpx.EventSource(response):
                    if event.data == "[DONE]":
                        return
                    chunk = json.loads(event.data)
                    if "error" in chunk:
                        error = chunk["error"]
                        raise ApiError(
                            response.status_code,
                            str(error.get("message")),
                            code=error.get("code"),
                        )
                    for choice in chunk.get("choices") or []:
                        text = (choice.get("delta") or {}).get("content")
                        if text:
                            yield text
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise self._unreachable(exc) from None
        except httpx.TransportError as exc:
            raise ConnectionFailed(f"the answer broke off: {type(exc).__name__} {exc}") from None


def debug_logging() -> bool:
    """``DORADO_LOG_LEVEL=DEBUG``: show the HTTP client's log lines too."""
    return os.environ.get("DORADO_LOG_LEVEL", "").upper() == "DEBUG"
