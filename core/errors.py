"""Domain errors. Only api/errors.py maps them to HTTP statuses."""

from __future__ import annotations


class DoradoError(Exception):
    """Base of every error a client may be shown. ``param`` names the offending field."""

    code: str = "error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class InvalidRequest(DoradoError):
    code = "invalid_request"


class InvalidFile(InvalidRequest):
    """An uploaded or referenced file that cannot be used for training."""

    code = "invalid_file"

    def __init__(
        self, message: str, *, param: str | None = "file", problems: list[dict] | None = None
    ):
        super().__init__(message, param=param)
        self.problems = problems or []


class NotFound(DoradoError):
    code = "not_found"


class Conflict(DoradoError):
    """The object exists but is in a state that forbids the action."""

    code = "conflict"


class PermissionDenied(DoradoError):
    code = "permission_denied"


class AuthenticationFailed(DoradoError):
    code = "invalid_api_key"


class PayloadTooLarge(DoradoError):
    code = "payload_too_large"


class QuotaExceeded(DoradoError):
    """An organization reached one of its limits (queued jobs, storage...)."""

    code = "quota_exceeded"


class ConfigurationError(Exception):
    """A setting that cannot work. Its message is one line that names the variable, the bad
    value and the fix: entry points print it and exit non-zero (no traceback)."""


class DatabaseUrlError(ConfigurationError):
    """A database URL with an unknown scheme or a driver that is not installed."""


class DatabaseUnavailable(ConfigurationError):
    """The database URL is well-formed but nothing answers there."""
