"""A failed gRPC call to an engine, as the gateway answers it (sans-IO).

The engines report failures only as the call's gRPC status (the responses carry no error
message since `GenerateError` was removed from the protocol), so the status decides what the
client sees and whether another worker is tried. The mapping is the reference's
(`../shared/reference/smg-grpc-contract.md`, "Errors"): INVALID_ARGUMENT and FAILED_PRECONDITION
400, NOT_FOUND 404, ABORTED 409, RESOURCE_EXHAUSTED 429, INTERNAL 500, UNIMPLEMENTED 501,
CANCELLED 502, UNAVAILABLE 503, DEADLINE_EXCEEDED 504; the statuses it does not name get the HTTP
status of the same meaning (PERMISSION_DENIED 403, UNAUTHENTICATED 401, ALREADY_EXISTS 409,
OUT_OF_RANGE 400), anything else 500. RESOURCE_EXHAUSTED, UNAVAILABLE, DEADLINE_EXCEEDED and
CANCELLED are retried on another attempt: the engine was busy, gone, slow or cut off, not wrong
about the request.

Statuses are handled by name (`grpc.StatusCode.X.name`) so this module needs no grpcio.
"""

from __future__ import annotations

# status name -> HTTP status
HTTP_STATUS: dict[str, int] = {
    "CANCELLED": 502,
    "UNKNOWN": 500,
    "INVALID_ARGUMENT": 400,
    "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "PERMISSION_DENIED": 403,
    "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400,
    "ABORTED": 409,
    "OUT_OF_RANGE": 400,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
    "UNAVAILABLE": 503,
    "DATA_LOSS": 500,
    "UNAUTHENTICATED": 401,
}

RETRYABLE = frozenset({"RESOURCE_EXHAUSTED", "UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED"})

# The error code a client sees: `upstream_<status>`, one per gRPC status, so logs and metrics tell
# an engine's refusal (upstream_invalid_argument) from its absence (upstream_unavailable).
_CODES: dict[str, str] = {name: "upstream_" + name.lower() for name in HTTP_STATUS}
UNKNOWN_CODE = "upstream_error"


class EngineStatusError(Exception):
    """A gRPC call failed with `status` (grpc.StatusCode name, e.g. "UNAVAILABLE")."""

    __slots__ = ("code", "details", "http_status", "retryable", "status")

    def __init__(self, status: str, details: str) -> None:
        super().__init__(f"{status}: {details}" if details else status)
        self.status = status
        self.details = details
        self.http_status = HTTP_STATUS.get(status, 500)
        self.code = _CODES.get(status, UNKNOWN_CODE)
        self.retryable = status in RETRYABLE


def status_error(status_name: str, details: str) -> EngineStatusError:
    """The error for a call that ended with `status_name` (an unknown name counts as UNKNOWN's
    500, not retried, but keeps its name for the message)."""
    return EngineStatusError(status_name, details)
