"""`--trust-tenant-header`: the tenant a trusted proxy names in a header, end to end (real
gateways over a simulated worker). The tenant feeds tenant rate limits and history scoping
as a `--tenant-api-key` key's tenant does; a tenant key's own tenant is never overridden by
the header; records stored without a tenant identity stay readable by every caller (but are
not a tenant's to change: 403)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.helpers import Proc, start_gateway

HEADER = "x-smg-tenant-id"
CHAT: dict[str, Any] = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
RESPONSE: dict[str, Any] = {"model": "sim-model", "input": "remember me", "max_output_tokens": 2}


@pytest.fixture(scope="module")
def trusting(sim: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    """No key checked: the header alone names the tenant; `red` may send 3 requests a minute."""
    limits = tmp_path_factory.mktemp("limits") / "limits.json"
    limits.write_text(json.dumps({"default": {"requests_per_minute": 1000}, "tenants": {"red": {"requests_per_minute": 3}}}))
    proc = start_gateway(sim.urls, "--trust-tenant-header", "--tenant-rate-limit-config", str(limits))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def keyed(sim: Proc) -> Iterator[Proc]:
    """A shared key (held by the proxy), one tenant key, and a header name of its own."""
    proc = start_gateway(
        sim.urls, "--api-key", "admin-key", "--tenant-api-key", "blue:blue-key",
        "--trust-tenant-header", "--tenant-header-name", "X-Org",
    )  # fmt: skip
    yield proc
    proc.stop()


def as_tenant(tenant: str | None = None, key: str | None = None, header: str = HEADER) -> dict[str, str]:
    headers = {} if tenant is None else {header: tenant}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    return headers


def create_response(gateway: Proc, headers: dict[str, str], **fields: Any) -> httpx.Response:
    return httpx.post(gateway.url + "/v1/responses", json={**RESPONSE, **fields}, headers=headers, timeout=30)


def test_each_header_tenant_has_its_own_rate_limit(trusting: Proc) -> None:
    red = openai.OpenAI(base_url=trusting.url + "/v1", api_key="unused", max_retries=0, default_headers=as_tenant("red"))
    admitted = 0
    with pytest.raises(openai.RateLimitError) as caught:
        for _ in range(8):  # 3 a minute: at most 6 if the run straddles a minute (the last one weighs in)
            red.chat.completions.create(**CHAT)
            admitted += 1
    assert 3 <= admitted <= 6
    error = caught.value.response.json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "tenant 'red'" in error["message"]
    # another tenant, and a caller naming none, are not held by red's count
    for headers in (as_tenant("green"), as_tenant(), as_tenant("")):  # an empty header names no tenant
        assert httpx.post(trusting.url + "/v1/chat/completions", json=CHAT, headers=headers).status_code == 200
    assert httpx.post(trusting.url + "/v1/chat/completions", json=CHAT, headers=as_tenant("red")).status_code == 429


def test_stored_records_are_scoped_to_the_header_tenant(trusting: Proc) -> None:
    base, teal, plum = trusting.url, as_tenant("teal"), as_tenant("plum")
    response = create_response(trusting, teal)
    assert response.status_code == 200, response.text
    response_id = response.json()["id"]
    conversation = httpx.post(base + "/v1/conversations", json={"items": [{"role": "user", "content": "x"}]}, headers=teal)
    conversation_id = conversation.json()["id"]
    assert httpx.get(f"{base}/v1/responses/{response_id}", headers=teal).status_code == 200
    assert httpx.get(f"{base}/v1/conversations/{conversation_id}/items", headers=teal).status_code == 200
    for method, path in [
        ("GET", f"/v1/responses/{response_id}"),
        ("GET", f"/v1/responses/{response_id}/input_items"),
        ("DELETE", f"/v1/responses/{response_id}"),
        ("GET", f"/v1/conversations/{conversation_id}"),
        ("GET", f"/v1/conversations/{conversation_id}/items"),
        ("DELETE", f"/v1/conversations/{conversation_id}"),
    ]:
        answer = httpx.request(method, base + path, headers=plum)
        assert answer.status_code == 404 and answer.json()["error"]["code"] == "not_found", (method, path)
    assert httpx.get(f"{base}/v1/responses/{response_id}").status_code == 404  # nor a caller naming no tenant
    for fields in ({"previous_response_id": response_id}, {"conversation": conversation_id}):
        answer = create_response(trusting, plum, **fields)
        assert answer.status_code == 404, fields
    assert httpx.get(f"{base}/v1/responses/{response_id}", headers=teal).status_code == 200  # untouched


def test_records_without_a_tenant_are_readable_by_all_and_changed_only_without_one(trusting: Proc) -> None:
    base, nobody, teal = trusting.url, as_tenant(), as_tenant("teal")
    response_id = create_response(trusting, nobody).json()["id"]
    conversation_id = httpx.post(base + "/v1/conversations", json={"items": [{"role": "user", "content": "x"}]}).json()["id"]
    assert httpx.get(f"{base}/v1/responses/{response_id}", headers=teal).status_code == 200
    assert httpx.get(f"{base}/v1/responses/{response_id}/input_items", headers=teal).status_code == 200
    assert httpx.get(f"{base}/v1/conversations/{conversation_id}", headers=teal).status_code == 200
    items = httpx.get(f"{base}/v1/conversations/{conversation_id}/items", headers=teal).json()["data"]
    assert httpx.get(f"{base}/v1/conversations/{conversation_id}/items/{items[0]['id']}", headers=teal).status_code == 200
    follow = create_response(trusting, teal, previous_response_id=response_id)  # continues it, stored as teal's
    assert follow.status_code == 200, follow.text
    assert httpx.get(f"{base}/v1/responses/{follow.json()['id']}", headers=nobody).status_code == 404
    assert create_response(trusting, teal, conversation=conversation_id, store=False).status_code == 200
    for method, path, body in [
        ("DELETE", f"/v1/responses/{response_id}", None),
        ("DELETE", f"/v1/conversations/{conversation_id}", None),
        ("POST", f"/v1/conversations/{conversation_id}", {"metadata": {"k": "v"}}),
        ("POST", f"/v1/conversations/{conversation_id}/items", {"items": [{"role": "user", "content": "y"}]}),
        ("DELETE", f"/v1/conversations/{conversation_id}/items/{items[0]['id']}", None),
        ("POST", "/v1/responses", {**RESPONSE, "conversation": conversation_id}),  # storing adds to it
    ]:
        answer = httpx.request(method, base + path, json=body, headers=teal, timeout=30)
        assert answer.status_code == 403, (method, path, answer.text)
        error = answer.json()["error"]
        assert error["type"] == "permission_error" and error["code"] == "permission_denied"
        assert "stored without a tenant" in error["message"]
    assert len(httpx.get(f"{base}/v1/conversations/{conversation_id}/items").json()["data"]) == 1  # unchanged
    assert httpx.delete(f"{base}/v1/responses/{response_id}").status_code == 200  # a caller without a tenant may


def test_bad_tenant_headers_are_refused_in_the_client_api_shape(trusting: Proc) -> None:
    for value in ("two words", "x" * 257, "default", "admin"):
        answer = httpx.post(trusting.url + "/v1/chat/completions", json=CHAT, headers=as_tenant(value))
        assert answer.status_code == 400, value
        error = answer.json()["error"]
        assert error["code"] == "invalid_tenant_header" and error["param"] == HEADER and HEADER in error["message"]
    message = {"model": "sim-model", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}
    answer = httpx.post(trusting.url + "/v1/messages", json=message, headers=as_tenant("two words"))
    assert answer.status_code == 400
    assert answer.json()["type"] == "error" and answer.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(trusting.url + "/v1/models", headers=as_tenant("two words")).status_code == 200  # open routes: no tenant


def test_a_tenant_key_wins_over_the_header_and_the_shared_key_may_name_a_tenant(keyed: Proc) -> None:
    blue = as_tenant("green", key="blue-key", header="x-org")  # a tenant key cannot act for another tenant
    green = as_tenant("green", key="admin-key", header="x-org")  # the proxy's key says for whom it calls
    admin = as_tenant(key="admin-key")
    blue_id = create_response(keyed, blue).json()["id"]
    green_id = create_response(keyed, green).json()["id"]
    readable = {
        (who, rid): httpx.get(f"{keyed.url}/v1/responses/{rid}", headers=headers).status_code
        for who, headers in [("blue", as_tenant(key="blue-key")), ("green", green), ("admin", admin)]
        for rid in (blue_id, green_id)
    }
    assert readable == {
        ("blue", blue_id): 200,
        ("blue", green_id): 404,
        ("green", blue_id): 404,
        ("green", green_id): 200,
        ("admin", blue_id): 404,
        ("admin", green_id): 404,
    }
    # the default header name means nothing here: the shared key alone is the admin tenant
    other_header = as_tenant("green", key="admin-key")
    assert httpx.get(f"{keyed.url}/v1/responses/{green_id}", headers=other_header).status_code == 404
    assert httpx.post(keyed.url + "/v1/chat/completions", json=CHAT, headers={"x-org": "green"}).status_code == 401
