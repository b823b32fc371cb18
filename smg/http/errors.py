"""OpenAI-shaped errors: one exception type, one body shape, one header."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic_core import from_json

from smg.http.asgi import Send, dump_json, send_bytes

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


# A value in a request body sits inside at most this many arrays and objects (an empty one may
# be one level deeper). It is the limit of jiter, the Rust parser under `pydantic_core.from_json`,
# so it costs nothing: no Python recursion while parsing, no walk of the parsed value afterwards.
# Everything downstream that recurses over a body (the C `json` encoder and decoder, `deepcopy`
# in the memory store, the routing text of nested prompts: one or two frames a level) stays far
# below Python's 1,000 frames. The Rust reference (serde_json) stops at 128, so whatever it
# accepts is accepted here too. tests/e2e/test_bad_input.py pins the limit, should jiter move it.
MAX_JSON_DEPTH = 200


def load_json_object(body: bytes) -> dict[str, Any]:
    """Parse a request body that must be a JSON object, or raise `invalid_json` (400).

    One parse serves every JSON route, so a bad body is a client error everywhere: malformed
    JSON, invalid UTF-8, lone surrogates, nesting past `MAX_JSON_DEPTH` and `NaN`/`Infinity`
    (not JSON; `json.loads` takes them, and a worker would be sent them) are all refused.
    jiter is also faster than `json.loads`: 3.6 µs against 6.2 µs for a 2 KB chat body.
    """
    try:
        obj = parse_json(body)
    except ValueError as exc:
        raise invalid_json(str(exc)) from None
    if not isinstance(obj, dict):
        raise invalid_json("expected a JSON object")
    return obj


def parse_json(data: bytes) -> Any:
    """Any JSON value under the same rules (depth, no NaN/Infinity, strict UTF-8); raises
    ValueError saying which rule was broken. For JSON that is not a request body (manifests)."""
    try:
        return from_json(data, allow_inf_nan=False)
    except ValueError as exc:
        raise ValueError(_json_problem(str(exc), data)) from None


def _json_problem(detail: str, body: bytes) -> str:
    """jiter's message, said in terms of the rule a client broke (only on the error path)."""
    if detail.startswith("recursion limit exceeded"):
        return f"arrays and objects nest more than {MAX_JSON_DEPTH} levels deep (the limit)"
    if b"NaN" in body or b"Infinity" in body:
        return f"{detail} (NaN and Infinity are not JSON numbers)"
    return detail
