"""Errors raised by the client: one exception per kind of failure, each carrying the server's
message (which names the field, feature or dataset that was wrong)."""

from __future__ import annotations

import re
from typing import Optional


class QuiverError(Exception):
    """A call to a Quiver server failed. ``code`` is the gRPC status name
    (``"NOT_FOUND"``, ``"INVALID_ARGUMENT"``, ...), ``message`` the server's message."""

    def __init__(self, message: str, code: str = "UNKNOWN"):
        super().__init__(message)
        self.message = message
        self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class NotFoundError(QuiverError):
    """A feature, view, service, dataset or model the request names does not exist."""


class InvalidArgumentError(QuiverError):
    """The request is malformed (a bad spine column, an unknown field, a bad value)."""


class FailedPreconditionError(QuiverError):
    """The request came before what it depends on, or the data refuses it."""


class PermissionDeniedError(QuiverError):
    """The server's rules forbid the request."""


class UnauthenticatedError(QuiverError):
    """The server wants a token and got none, or an unknown one."""


class UnavailableError(QuiverError):
    """The server, or a store behind it, cannot be reached now; retry later."""


class ResourceExhaustedError(QuiverError):
    """The server is at a limit (held uploads, queued jobs, message size)."""


class AbortedError(QuiverError):
    """Another writer changed what the request was computed from; retry."""


_BY_CODE = {
    "NOT_FOUND": NotFoundError,
    "INVALID_ARGUMENT": InvalidArgumentError,
    "FAILED_PRECONDITION": FailedPreconditionError,
    "PERMISSION_DENIED": PermissionDeniedError,
    "UNAUTHENTICATED": UnauthenticatedError,
    "UNAVAILABLE": UnavailableError,
    "RESOURCE_EXHAUSTED": ResourceExhaustedError,
    "ABORTED": AbortedError,
}


def from_code(code: str, message: str) -> QuiverError:
    """The exception for a gRPC status ``code`` (its name) and message."""
    return _BY_CODE.get(code, QuiverError)(message, code)


def from_grpc(e: "grpc.RpcError") -> QuiverError:  # noqa: F821
    """The exception for a failed gRPC call."""
    code = e.code().name if hasattr(e, "code") and e.code() is not None else "UNKNOWN"
    details = e.details() if hasattr(e, "details") else None
    return from_code(code, details or str(e))


# pyarrow.flight words its errors "Flight returned <kind> error, with message: <message>.
# gRPC client debug context: ..."; the message between is the server's.
_FLIGHT = re.compile(
    r"(?:Flight returned (?P<kind>[a-z ]+?) error, with message: )?(?P<message>.*?)"
    r"(?:\. gRPC client debug context:.*|\. Client context:.*|\. Detail: .*)?$",
    re.S,
)
_FLIGHT_KIND = {
    "invalid argument": "INVALID_ARGUMENT",
    "not found": "NOT_FOUND",
    "failed precondition": "FAILED_PRECONDITION",
    "unavailable": "UNAVAILABLE",
    "unauthenticated": "UNAUTHENTICATED",
    "unauthorized": "PERMISSION_DENIED",
    "permission denied": "PERMISSION_DENIED",
    "resource exhausted": "RESOURCE_EXHAUSTED",
    "aborted": "ABORTED",
}


def from_flight(e: Exception) -> QuiverError:
    """The exception for a failed Flight call (pyarrow raises its own classes)."""
    text = str(e)
    m = _FLIGHT.match(text)
    kind: Optional[str] = m.group("kind") if m else None
    message = (m.group("message") if m else text).strip()
    code = _FLIGHT_KIND.get(kind or "", None)
    if code is None:
        import pyarrow as pa
        import pyarrow.flight as fl

        if isinstance(e, pa.ArrowInvalid):
            code = "INVALID_ARGUMENT"
        elif isinstance(e, (KeyError, pa.ArrowKeyError)):
            code = "NOT_FOUND"
        elif isinstance(e, fl.FlightUnavailableError):
            code = "UNAVAILABLE"
        elif isinstance(e, fl.FlightUnauthenticatedError):
            code = "UNAUTHENTICATED"
        elif isinstance(e, fl.FlightUnauthorizedError):
            code = "PERMISSION_DENIED"
        else:
            code = "UNKNOWN"
    return from_code(code, message)
