"""A gRPC status as the gateway answers it (`smg.upstream.grpc.status`): the reference's HTTP
mapping, which statuses are retried, and stable error codes."""

from __future__ import annotations

import grpc
import pytest

from smg.upstream.grpc.status import EngineStatusError, status_error

# status: (HTTP status, retried)
TABLE = {
    "INVALID_ARGUMENT": (400, False),
    "FAILED_PRECONDITION": (400, False),
    "OUT_OF_RANGE": (400, False),
    "UNAUTHENTICATED": (401, False),
    "PERMISSION_DENIED": (403, False),
    "NOT_FOUND": (404, False),
    "ABORTED": (409, False),
    "ALREADY_EXISTS": (409, False),
    "RESOURCE_EXHAUSTED": (429, True),
    "INTERNAL": (500, False),
    "UNKNOWN": (500, False),
    "DATA_LOSS": (500, False),
    "UNIMPLEMENTED": (501, False),
    "CANCELLED": (502, True),
    "UNAVAILABLE": (503, True),
    "DEADLINE_EXCEEDED": (504, True),
}


@pytest.mark.parametrize(("status", "expected"), sorted(TABLE.items()))
def test_every_status_maps_as_the_reference(status: str, expected: tuple[int, bool]) -> None:
    error = status_error(status, "the engine said so")
    assert isinstance(error, EngineStatusError)
    assert (error.http_status, error.retryable) == expected
    assert error.status == status and error.details == "the engine said so"
    assert error.code == "upstream_" + status.lower()
    assert str(error) == f"{status}: the engine said so"


def test_the_table_covers_every_grpc_status_but_ok() -> None:
    names = {code.name for code in grpc.StatusCode} - {"OK"}
    assert names == set(TABLE)


def test_an_unknown_status_name_is_a_plain_500_not_retried() -> None:
    error = status_error("SOMETHING_NEW", "")
    assert (error.http_status, error.retryable, error.code) == (500, False, "upstream_error")
    assert str(error) == "SOMETHING_NEW"
