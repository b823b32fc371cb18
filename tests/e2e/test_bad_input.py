"""Bad client input is a 400 on every JSON route, never a 500 (issue 13 §3).

Bodies nested past the depth limit, `NaN`/`Infinity`, wrong types in known fields (named in
`param`), then a fuzz: random JSON values, mutated valid bodies, random bytes, deep nesting
and non-finite numbers against a real gateway over simulated workers. Every answer must be
below 500 with a well-shaped error body, the gateway's log must hold no traceback, and the
gateway must still serve a valid request after each route's fuzz.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from smg.http.errors import MAX_JSON_DEPTH, GatewayError, load_json_object
from tests.helpers import Proc, start_gateway, start_sim, wait_until

JUNK_WORKER = "http://127.0.0.1:9"  # discard port: registered, probed, never healthy, never leaves loopback
EXAMPLES_PER_ROUTE = 100


# -- the parse itself -------------------------------------------------------------------------


def nested(depth: int, inner: bytes = b"1") -> bytes:
    return b'{"a":' + b"[" * (depth - 1) + inner + b"]" * (depth - 1) + b"}"


def test_the_depth_limit_is_pinned() -> None:
    """jiter's limit is ours: a jiter release that moved it would show here."""
    assert load_json_object(nested(MAX_JSON_DEPTH))["a"]
    for depth in (MAX_JSON_DEPTH + 1, 1000, 100_000):
        with pytest.raises(GatewayError) as info:
            load_json_object(nested(depth))
        assert info.value.status == 400 and info.value.code == "invalid_json"
        assert f"more than {MAX_JSON_DEPTH} levels" in info.value.message


@pytest.mark.parametrize(
    "body",
    [
        b'{"temperature": NaN}',
        b'{"temperature": Infinity}',
        b'{"temperature": -Infinity}',
        b'{"a": [1, NaN]}',
        b'{"a": "\\ud800"}',  # a lone surrogate: UTF-8 cannot encode it, for a tokenizer or a store
        b'{"a": "\xff"}',
        b"\xef\xbb\xbf{}",
        b'{"a": 1} x',
        b"",
        b"[1, 2]",
        b'"text"',
    ],
)
def test_what_the_parse_refuses(body: bytes) -> None:
    with pytest.raises(GatewayError) as info:
        load_json_object(body)
    assert info.value.status == 400 and info.value.code == "invalid_json"


def test_what_the_parse_keeps() -> None:
    body = '{"a": [1, -0.5, 1e300, 123456789012345678901234567890, true, null], "b": "é\\ud83d\\ude00", "a2": {}}'
    assert load_json_object(body.encode()) == json.loads(body)
    assert load_json_object(b'{"k": 1, "k": 2}') == {"k": 2}  # as json.loads: the last one wins


# -- a gateway over simulated workers -----------------------------------------------------------


@pytest.fixture(scope="module")
def workers() -> Iterator[tuple[Proc, Proc]]:
    openai_sim = start_sim(1, "--ttft-ms", "0", "--tpot-ms", "0")
    native_sim = start_sim(1, "--owned-by", "anthropic", "--model", "claude-sim", "--ttft-ms", "0", "--tpot-ms", "0")
    yield openai_sim, native_sim
    openai_sim.stop()
    native_sim.stop()


@pytest.fixture(scope="module")
def gateway(workers: tuple[Proc, Proc], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """cache_aware reads the routing text, a token limit makes every request count its prompt
    (and a stream ask for usage), the memory store deep-copies: the paths that read a body."""
    limits = tmp_path_factory.mktemp("limits") / "limits.json"
    limits.write_text(json.dumps({"default": {"tokens_per_minute": 10**12}}))
    proc = start_gateway(
        [worker.url for worker in workers],
        "--policy",
        "cache_aware",
        "--history-backend",
        "memory",
        "--tenant-rate-limit-config",
        str(limits),
        "--max-payload-size",
        "1000000",
    )
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def ids(gateway: Proc, client: httpx.Client) -> dict[str, str]:
    """A junk worker to PATCH and PUT, and a conversation to update and add items to."""
    worker = client.post(gateway.url + "/workers", json={"url": JUNK_WORKER})
    assert worker.status_code == 202, worker.text
    conversation = client.post(gateway.url + "/v1/conversations", json={})
    assert conversation.status_code == 200, conversation.text
    return {"worker_id": worker.json()["worker_id"], "conversation_id": conversation.json()["id"]}


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # with {worker_id} / {conversation_id}
    valid: dict[str, Any]
    anthropic: bool = False
    control: bool = False  # the control plane answers errors as the reference does: {"error": msg, "code": CODE}
    ok: tuple[int, ...] = (200,)
    id: str = field(default="", compare=False)


CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
STREAMED = {"stream": True, "stream_options": {"include_usage": False}}  # the gateway asks for usage itself
ITEM = {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hi"}]}
ROUTES = [
    Route("POST", "/v1/chat/completions", CHAT, id="chat"),
    Route("POST", "/v1/chat/completions", {**CHAT, **STREAMED}, id="chat-stream"),
    Route("POST", "/v1/completions", {"model": "sim-model", "prompt": "hi", "max_tokens": 4}, id="completions"),
    Route("POST", "/v1/embeddings", {"model": "sim-model", "input": "hi"}, id="embeddings"),
    Route("POST", "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 4}}, id="generate"),
    Route("POST", "/v1/rerank", {"model": "sim-model", "query": "q", "documents": ["a", "b"], "top_k": 1}, id="rerank"),
    Route(
        "POST",
        "/v1/responses",
        {
            "model": "sim-model",
            "input": [ITEM],
            "instructions": "be brief",
            "max_output_tokens": 4,
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": "auto",
            "metadata": {"k": "v"},
        },
        id="responses",
    ),
    Route("POST", "/v1/conversations", {"metadata": {"k": "v"}, "items": [ITEM]}, id="conversations-create"),
    Route("POST", "/v1/conversations/{conversation_id}", {"metadata": {"k": "v"}}, id="conversations-update"),
    Route("POST", "/v1/conversations/{conversation_id}/items", {"items": [ITEM]}, id="conversations-items"),
    Route(
        "POST",
        "/v1/messages",
        {
            "model": "sim-model",
            "max_tokens": 4,
            "system": [{"type": "text", "text": "be brief"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto"},
        },
        anthropic=True,
        id="messages",
    ),
    Route("POST", "/v1/messages", {**CHAT, "model": "claude-sim"}, anthropic=True, id="messages-native"),
    Route(
        "POST",
        "/workers",
        {"url": JUNK_WORKER + "/fuzz", "priority": 5, "labels": {"a": "b"}},
        ok=(202, 409),
        control=True,
        id="workers",
    ),
    Route("PATCH", "/workers/{worker_id}", {"priority": 5, "cost": 1.5, "labels": {"a": "b"}}, control=True, id="workers-patch"),
    Route("PUT", "/workers/{worker_id}", {"url": JUNK_WORKER, "priority": 5}, ok=(202,), control=True, id="workers-put"),
]


def send(client: httpx.Client, gateway: Proc, ids: dict[str, str], route: Route, body: bytes) -> httpx.Response:
    url = gateway.url + route.path.format(**ids)
    return client.request(route.method, url, content=body, headers={"content-type": "application/json"})


def assert_well_answered(r: httpx.Response, route: Route) -> None:
    """Below 500; an error has the gateway's shape (OpenAI's, or Anthropic's on /v1/messages).
    An error a worker sent is relayed as the worker shaped it: only its JSON is checked. The one
    5xx allowed: an unknown model is 503 while a worker whose models are not known yet (the junk
    worker, never healthy) might serve it."""
    unavailable = r.status_code == 503 and r.headers.get("x-smg-error-code") == "no_available_workers"
    assert r.status_code < 500 or unavailable, f"{r.status_code}: {r.text[:500]}"
    if r.status_code < 400:
        return
    body = r.json()
    if r.headers.get("x-smg-routed-worker-id") is not None:
        assert isinstance(body, dict) and "error" in body, r.text[:500]
        return
    code = r.headers["x-smg-error-code"]
    if route.control:
        assert set(body) == {"error", "code"} and body["code"] == code and isinstance(body["error"], str), r.text
        return
    if route.anthropic:
        assert set(body) == {"type", "error"} and body["type"] == "error", r.text
        assert set(body["error"]) == {"type", "message"}, r.text
        assert isinstance(body["error"]["type"], str) and isinstance(body["error"]["message"], str), r.text
        return
    error = body["error"]
    assert set(error) == {"type", "code", "message", "param"}, r.text
    assert error["code"] == code and isinstance(error["type"], str) and error["message"], r.text
    assert error["param"] is None or isinstance(error["param"], str), r.text


def error_of(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    return body["error"]


# -- deep bodies and NaN on every route -----------------------------------------------------------


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_deep_nan_and_at_the_limit(route: Route, gateway: Proc, client: httpx.Client, ids: dict[str, str]) -> None:
    """The 2 KB body nested 1,000 deep of the issue is a 400 `invalid_json` on every route, as is
    NaN; a body nested exactly to the limit in a field the gateway reads is served or refused,
    never a 500 (nothing downstream recurses into trouble)."""
    deep = b'{"a":' + b"[" * 1000 + b"]" * 1000 + b"}"
    assert len(deep) > 2000
    for body in (deep, splice(route.valid, "temperature", b"NaN"), splice(route.valid, "x", b"-Infinity")):
        r = send(client, gateway, ids, route, body)
        expected = "BAD_REQUEST" if route.control else "invalid_json"
        assert r.status_code == 400 and r.headers["x-smg-error-code"] == expected, r.text
        assert_well_answered(r, route)
    for key in [*route.valid, "extra"]:
        r = send(client, gateway, ids, route, splice(route.valid, key, at_depth(MAX_JSON_DEPTH - 1)))
        assert_well_answered(r, route)
    assert "Traceback" not in gateway.log()


def test_a_deep_prompt_goes_through_routing_text(gateway: Proc, client: httpx.Client) -> None:
    """A completions prompt of nested lists is walked recursively for the routing text."""
    prompt = "[" * (MAX_JSON_DEPTH - 1) + '"x"' + "]" * (MAX_JSON_DEPTH - 1)
    body = f'{{"model": "sim-model", "max_tokens": 2, "prompt": {prompt}}}'.encode()
    r = client.post(gateway.url + "/v1/completions", content=body)
    assert r.status_code == 200, r.text


# -- typed fields ------------------------------------------------------------------------------------


MESSAGE = {"model": "sim-model", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
RESPONSE = {"model": "sim-model", "input": "x"}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/chat/completions", {"model": "sim-model", "messages": "hi"}, "messages"),
        ("/v1/chat/completions", {**CHAT, "stream": "yes"}, "stream"),
        ("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": 5}, "stream_options"),
        ("/v1/chat/completions", {**CHAT, "model": ["sim-model"]}, "model"),
        ("/v1/completions", {"model": "sim-model", "prompt": {"a": 1}}, "prompt"),
        ("/v1/embeddings", {"model": "sim-model", "input": 5}, "input"),
        ("/generate", {"text": "x", "sampling_params": "greedy"}, "sampling_params"),
        ("/v1/rerank", {"model": "sim-model", "query": ["q"], "documents": ["a"]}, "query"),
        ("/v1/responses", {**RESPONSE, "tool_choice": {"type": ["x"]}}, "tool_choice.type"),
        ("/v1/responses", {**RESPONSE, "tools": [{"type": "function", "name": 5}]}, "tools[0].name"),
        (
            "/v1/responses",
            {**RESPONSE, "input": [{"role": "user", "content": [{"type": "input_text", "text": 5}]}]},
            "input[0].content[0].text",
        ),
        (
            "/v1/responses",
            {**RESPONSE, "input": [{"type": "function_call_output", "call_id": 5, "output": "x"}]},
            "input[0].call_id",
        ),
        ("/v1/responses", {**RESPONSE, "temperature": "hot"}, "temperature"),
        ("/v1/responses", {**RESPONSE, "max_output_tokens": 4.5}, "max_output_tokens"),
        ("/v1/responses", {**RESPONSE, "stream": 1}, "stream"),
        ("/v1/responses", {**RESPONSE, "conversation": {"id": 7}}, "conversation.id"),
        ("/v1/conversations", {"items": [{"role": "user", "content": [{"text": "x"}]}]}, "items[0].content[0].type"),
        ("/v1/conversations", {"metadata": {"k": 1}}, "metadata.k"),
        ("/workers", {"url": JUNK_WORKER, "priority": 2**70}, "priority"),
        ("/workers", {"url": JUNK_WORKER, "cost": 10**400}, "cost"),
    ],
)
def test_a_wrong_type_is_a_400_naming_the_field(
    path: str, body: dict[str, Any], param: str, gateway: Proc, client: httpx.Client
) -> None:
    r = client.post(gateway.url + path, json=body)
    assert r.status_code == 400, r.text
    if path == "/workers":  # the control plane's shape, as the reference's: {"error": msg, "code": CODE}
        assert r.json()["code"] == "BAD_REQUEST" and f"'{param}'" in r.json()["error"], r.text
        return
    assert error_of(r)["param"] == param and error_of(r)["type"] == "invalid_request_error", r.text
    assert f"'{param}'" in error_of(r)["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**MESSAGE, "tool_choice": {"type": ["x"]}, "tools": [{"name": "t"}]}, "tool_choice.type"),
        (
            {**MESSAGE, "messages": [{"role": "user", "content": [{"type": "image", "source": 5}]}]},
            "messages[0].content[0].source",
        ),
        (
            {**MESSAGE, "messages": [{"role": "user", "content": [{"type": "tool_use", "input": 5}]}]},
            "messages[0].content[0].input",
        ),
        ({**MESSAGE, "tools": [{"name": "t", "input_schema": "x"}]}, "tools[0].input_schema"),
        ({**MESSAGE, "max_tokens": "4"}, "max_tokens"),
        ({**MESSAGE, "model": "claude-sim", "stream": "yes"}, "stream"),
        ({**MESSAGE, "temperature": 1e999}, "temperature"),
    ],
)
def test_messages_answers_a_wrong_type_in_anthropics_shape(
    body: dict[str, Any], field: str, gateway: Proc, client: httpx.Client
) -> None:
    r = client.post(gateway.url + "/v1/messages", content=json.dumps(body).replace("Infinity", "1e999").encode())
    assert r.status_code == 400, r.text
    assert r.headers["x-smg-error-code"] == "invalid_value"
    error = r.json()["error"]
    assert r.json()["type"] == "error" and error["type"] == "invalid_request_error"
    assert f"'{field}'" in error["message"], r.text


def test_client_errors_are_logged_at_info(gateway: Proc, client: httpx.Client) -> None:
    """A client's mistake is one access line at info, with no traceback."""
    marker = "bad-input-log-check"
    r = client.post(gateway.url + "/v1/chat/completions", content=b"[" * 5000, headers={"x-request-id": marker})
    assert r.status_code == 400

    def lines() -> list[str]:
        return [line for line in gateway.log().splitlines() if marker in line]

    wait_until(lambda: lines(), "the access line (written in batches)", deadline=5)
    assert len(lines()) == 1 and "INFO" in lines()[0] and "invalid_json" in lines()[0], lines()
    assert "Traceback" not in gateway.log()


# -- the fuzz --------------------------------------------------------------------------------------

KNOWN_KEYS = [
    "model", "messages", "role", "content", "type", "text", "stream", "stream_options", "prompt", "input", "tools",
    "tool_choice", "name", "metadata", "items", "max_tokens", "max_output_tokens", "temperature", "system", "source",
    "tool_use_id", "call_id", "output", "arguments", "conversation", "previous_response_id", "store", "background",
    "instructions", "query", "documents", "top_k", "sampling_params", "input_ids", "url", "labels", "priority", "cost",
    "api_key", "id", "parameters", "input_schema", "stop", "stop_sequences", "user", "image_url", "include_usage",
]  # fmt: skip
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["sim-model", "claude-sim", "user", "assistant", "message", "function", "text", "auto", ""])
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KNOWN_KEYS) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
# one value of each JSON type (and a few shapes handlers look into): a known field swapped for
# one of these is the likeliest way to reach code that trusted its type
OTHER_TYPES = st.sampled_from([None, True, 7, -1, 2.5, "", "x", [], ["x"], [7], [{}], {}, {"type": "text"}, {"type": ["x"]}])
TOKEN_LIMITS = ("max_tokens", "max_new_tokens", "max_output_tokens", "max_completion_tokens")
BRACKETS = [b"[", b'{"a":', b'[{"b":']


def splice(valid: dict[str, Any], key: str, raw: bytes) -> bytes:
    """`valid` with `key` set to the raw JSON text `raw` (which may be no JSON at all)."""
    return json.dumps({**valid, key: "\x00slot\x00"}).encode().replace(b'"\\u0000slot\\u0000"', raw)


def at_depth(depth: int) -> bytes:
    """A value inside `depth` arrays: with its field's object, `depth + 1` levels from the top."""
    return b"[" * depth + b'"x"' + b"]" * depth


def tame(value: Any) -> Any:
    """Keep the fuzz bounded and on loopback: token limits small (the simulated worker would
    generate a billion tokens) and a worker URL a local discard port."""
    if isinstance(value, dict):
        out = {k: tame(v) for k, v in value.items()}
        for key in TOKEN_LIMITS:
            if isinstance(out.get(key), int) and not isinstance(out[key], bool) and out[key] > 8:
                out[key] = 8
        if isinstance(out.get("url"), str):
            out["url"] = JUNK_WORKER + "/fuzz"
        return out
    if isinstance(value, list):
        return [tame(v) for v in value]
    return value


def _slots(value: Any) -> Iterator[tuple[Any, Any]]:
    """Every (container, key) in `value`, to replace or delete at."""
    members = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, member in members:
        yield value, key
        yield from _slots(member)


@st.composite
def mutated(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    holder = [copy.deepcopy(valid)]  # so that the whole body can be replaced too
    for _ in range(draw(st.integers(1, 3))):
        container, key = draw(st.sampled_from(list(_slots(holder))))
        action = draw(st.sampled_from(["replace", "replace", "delete", "add"]))
        target = container[key]
        if action == "delete" and container is not holder:
            del container[key]
        elif action == "add" and isinstance(target, dict):
            target[draw(st.sampled_from(KNOWN_KEYS))] = copy.deepcopy(draw(JSON_VALUES))
        elif action == "add" and isinstance(target, list):
            target.append(copy.deepcopy(draw(JSON_VALUES)))
        else:  # a copy: a later mutation must not change the strategy's own constants
            container[key] = copy.deepcopy(draw(OTHER_TYPES | JSON_VALUES))
    return json.dumps(tame(holder[0])).encode()


@st.composite
def deep(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    depth = draw(st.integers(MAX_JSON_DEPTH + 1, 3000))
    opener = draw(st.sampled_from(BRACKETS))
    closer = b"]" if opener == b"[" else b"}]" if opener == b'[{"b":' else b"}"
    inner = opener * depth + b"1" + closer * depth * draw(st.sampled_from([0, 1]))  # closed, or not
    return splice(valid, draw(st.sampled_from([*valid, "extra"])), inner)


@st.composite
def non_finite(draw: st.DrawFn, valid: dict[str, Any]) -> bytes:
    token = draw(st.sampled_from([b"NaN", b"Infinity", b"-Infinity", b"[NaN]", b'{"a": Infinity}']))
    return splice(valid, draw(st.sampled_from([*valid, "temperature", "extra"])), token)


def bodies(route: Route) -> st.SearchStrategy[tuple[str, bytes]]:
    """(kind, body): `refused` ones must be a 400 `invalid_json`; the others only well answered."""
    return st.one_of(
        st.tuples(st.just("mutated"), mutated(route.valid)),
        st.tuples(st.just("mutated"), mutated(route.valid)),
        st.tuples(st.just("random"), JSON_VALUES.map(lambda v: json.dumps(tame(v)).encode())),
        st.tuples(st.just("bytes"), st.binary(max_size=64)),
        st.tuples(st.just("refused"), deep(route.valid)),
        st.tuples(st.just("refused"), non_finite(route.valid)),
        st.tuples(
            st.just("overflow"), st.sampled_from([*route.valid, "temperature"]).map(lambda k: splice(route.valid, k, b"1e999"))
        ),
    )


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.id)
def test_fuzz(route: Route, gateway: Proc, client: httpx.Client, ids: dict[str, str]) -> None:
    @settings(
        max_examples=EXAMPLES_PER_ROUTE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
    )
    @given(bodies(route))
    def one(case: tuple[str, bytes]) -> None:
        kind, body = case
        r = send(client, gateway, ids, route, body)
        assert_well_answered(r, route)
        if kind == "refused":
            expected = "BAD_REQUEST" if route.control else "invalid_json"
            assert r.status_code == 400 and r.headers["x-smg-error-code"] == expected, r.text

    logged = len(gateway.log())
    one()
    r = send(client, gateway, ids, route, json.dumps(route.valid).encode())
    assert r.status_code in route.ok, r.text  # still serving
    assert "Traceback" not in gateway.log()[logged:]


def test_the_log_holds_no_traceback(gateway: Proc) -> None:
    log = gateway.log()
    assert "Traceback" not in log and "internal_error" not in log, log[-5000:]
