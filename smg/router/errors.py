"""OpenAI-shaped errors: one exception type, one body shape, one header."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from smg.asgi import Send, dump_json, send_bytes

ERROR_CODE_HEADER = b"x-smg-error-code"

# HTTP status -> OpenAI error type, for errors raised without an explicit type.
_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def error_type_for(status: int) -> str:
    return _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error")


def error_body(status: int, code: str, message: str, *, param: str | None = None, type: str | None = None) -> dict[str, Any]:
    return {
        "error": {
            "type": type or error_type_for(status),
            "code": code,
            "message": message,
            "param": param,
        }
    }


class GatewayError(Exception):
    """An error answered to the client as `{"error": {...}}` with `x-smg-error-code`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        param: str | None = None,
        type: str | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param
        self.type = type or error_type_for(status)
        self.headers = headers or []

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.code, self.message, param=self.param, type=self.type)

    def sse_event(self) -> bytes:
        """The error as a final SSE event, for a stream that already started."""
        return b"data: " + dump_json(self.body()) + b"\n\n"

    async def send(
        self,
        send: Send,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
        shape: Callable[[GatewayError], dict[str, Any]] | None = None,
    ) -> None:
        """Answer with this error; `shape` gives another API's error body (Anthropic's)."""
        headers = [(ERROR_CODE_HEADER, self.code.encode()), *self.headers]
        if extra_headers:
            headers.extend(extra_headers)
        await send_bytes(send, self.status, dump_json(shape(self) if shape else self.body()), headers)


def invalid_json(detail: str) -> GatewayError:
    return GatewayError(400, "invalid_json", f"request body is not valid JSON: {detail}")


def missing_parameter(name: str) -> GatewayError:
    return GatewayError(400, "missing_required_parameter", f"missing required parameter: '{name}'", param=name)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(404, "model_not_found", f"the model '{model}' does not exist or is not served", param="model")


def load_json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object, or raise `invalid_json`."""
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_json(str(exc)) from None
    if not isinstance(obj, dict):
        raise invalid_json("expected a JSON object")
    return obj
