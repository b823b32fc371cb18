"""Control-plane answers in process: the profile fan-out and the reference's error shape.

The gateway's app runs over a context with ready workers (`tests.fakes.gateway`); the
registrar's httpx client is swapped for one over an `httpx.MockTransport`, so the fan-outs
reach fake workers that record what they were sent. `/start_profile` and `/stop_profile`
are put in the route table here if `smg.app` does not route them yet, as its table would.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import trio

from smg.app import GatewayApp
from smg.context import GatewayContext
from tests import fakes
from tests.fakes import FakeUpstream, Reply, UpstreamCall, gateway, worker_url


def no_upstream(call: UpstreamCall) -> Reply:
    raise AssertionError("the control plane never uses the data plane's upstream")


class Workers:
    """Fake workers' admin endpoints: what each was sent, and which answer 500."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.broken: set[str] = set()

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        self.calls.append((f"http://{request.url.host}:{request.url.port}", request.url.path, body))
        if request.url.host in self.broken:
            return httpx.Response(500)
        return httpx.Response(200, text="Profiling started.")


def setup(workers: int = 2) -> tuple[GatewayApp, GatewayContext, Workers]:
    ctx = gateway(FakeUpstream(no_upstream), workers)
    fake = Workers()
    ctx.registrar.client = httpx.AsyncClient(transport=httpx.MockTransport(fake.handle))
    app = GatewayApp(ctx)
    return app, ctx, fake


async def call(app: GatewayApp, method: str, path: str, body: bytes = b"") -> tuple[int, Any]:
    """`tests.fakes.call` on this app's context: the status and the JSON answer."""
    with trio.fail_after(10):
        client = await fakes.call(app.ctx, path, body, method=method)
    assert client.status is not None
    return client.status, client.json()


async def test_start_profile_fans_out_the_options_to_every_worker() -> None:
    app, _, fake = setup()
    options = {"output_dir": "/tmp/traces", "num_steps": 5, "activities": ["CPU", "GPU"], "ignored": 1}
    status, body = await call(app, "POST", "/start_profile", json.dumps(options).encode())
    assert status == 200
    assert body == {
        "status": "success",
        "message": "started profiling on 2 of 2 workers",
        "workers_profiled": 2,
        "total_workers": 2,
    }
    sent = {"output_dir": "/tmp/traces", "num_steps": 5, "activities": ["CPU", "GPU"], "profile_by_stage": False}
    assert sorted(fake.calls) == [(worker_url(i), "/start_profile", sent) for i in range(2)]


async def test_stop_profile_without_a_body_and_one_worker_picked_by_url() -> None:
    app, _, fake = setup()
    status, body = await call(app, "POST", "/stop_profile")
    assert (status, body["status"], body["workers_profiled"]) == (200, "success", 2)
    fake.calls.clear()
    status, body = await call(app, "POST", "/stop_profile", json.dumps({"url": worker_url(1) + "/"}).encode())
    assert (status, body["workers_profiled"], body["total_workers"]) == (200, 1, 1)
    assert fake.calls == [(worker_url(1), "/stop_profile", None)]


async def test_profile_errors_no_match_bad_json_bad_option_and_a_failing_worker() -> None:
    app, _, fake = setup()
    status, body = await call(app, "POST", "/start_profile", b'{"url": "http://nowhere:1"}')
    assert status == 404
    assert body == {
        "status": "error",
        "message": "No worker matching url 'http://nowhere:1'",
        "workers_profiled": 0,
        "total_workers": 0,
    }
    status, body = await call(app, "POST", "/start_profile", b"{not json")
    assert status == 400 and body["code"] == "BAD_REQUEST" and "not valid JSON" in body["error"]
    status, body = await call(app, "POST", "/start_profile", b'{"num_steps": true}')
    assert (status, body) == (400, {"error": "'num_steps' must be an integer", "code": "BAD_REQUEST"})
    assert fake.calls == []
    fake.broken.add("worker-0.test")
    status, body = await call(app, "POST", "/start_profile")
    assert status == 502 and body["status"] == "partial_success" and body["workers_profiled"] == 1
    assert body["successful"] == [worker_url(1)] and body["failed"] == [{"worker": worker_url(0), "error": "HTTP 500"}]


async def test_no_worker_at_all_is_404() -> None:
    app, _, _ = setup(workers=0)
    status, body = await call(app, "POST", "/stop_profile")
    assert status == 404 and body["message"] == "No workers available for profiling"


async def test_worker_errors_carry_code_at_the_top_level() -> None:
    app, ctx, _ = setup()
    worker = next(iter(ctx.registry))
    status, body = await call(app, "GET", "/workers/0123456789abcdef")
    assert (status, body) == (404, {"error": "Worker 0123456789abcdef not found", "code": "WORKER_NOT_FOUND"})
    status, body = await call(app, "POST", "/workers", json.dumps({"url": worker.url + "/"}).encode())
    assert status == 409 and body["code"] == "WORKER_ALREADY_EXISTS"
    assert body["error"] == (
        f"Worker already exists at URL '{worker.url}' with ID {worker.id}. "
        f"Use PUT /workers/{worker.id} to replace or PATCH /workers/{worker.id} to update."
    )
    status, body = await call(app, "PATCH", f"/workers/{worker.id}", b"[1]")
    assert (status, body) == (400, {"error": "request body is not valid JSON: expected a JSON object", "code": "BAD_REQUEST"})
    # the data plane keeps the OpenAI shape
    status, body = await call(app, "POST", "/v1/chat/completions", b'{"model": "nope", "messages": []}')
    assert status == 404 and body["error"]["code"] == "model_not_found"
