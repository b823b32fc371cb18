"""Durability: every response the gateway answered is still there after a kill -9 and a restart."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.helpers import Proc, start_gateway
from tests.storage_backends import postgres_database

COUNT = 1000


def write_and_reread(worker: Proc, flags: list[str]) -> None:
    gateway = start_gateway(worker.urls, *flags)
    body = {"model": "sim-model", "max_output_tokens": 1}
    try:
        with httpx.Client(base_url=gateway.url, timeout=30) as client, ThreadPoolExecutor(8) as pool:

            def create(n: int) -> str:
                response = client.post("/v1/responses", json={**body, "input": f"durable {n}"})
                response.raise_for_status()
                return response.json()["id"]

            ids = list(pool.map(create, range(COUNT)))
    finally:
        gateway.stop()  # SIGKILL right after the last answer: no shutdown, no flush
    assert len(set(ids)) == COUNT
    again = start_gateway(worker.urls, *flags)
    try:
        with httpx.Client(base_url=again.url, timeout=30) as client, ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(lambda i: client.get(f"/v1/responses/{i}").status_code, ids))
            assert statuses.count(200) == COUNT, f"{COUNT - statuses.count(200)} of {COUNT} responses lost"
            first = client.get(f"/v1/responses/{ids[0]}/input_items").json()
            assert first["data"][0]["content"][0]["text"] == "durable 0"
    finally:
        again.stop()


@pytest.mark.timeout(300)
def test_sqlite_keeps_every_answered_response_through_kill_9(worker: Proc, tmp_path: Path) -> None:
    write_and_reread(worker, ["--history-db-path", str(tmp_path / "history.db")])


@pytest.mark.timeout(300)
def test_postgres_keeps_every_answered_response_through_kill_9(worker: Proc) -> None:
    with postgres_database() as url:
        write_and_reread(worker, ["--history-backend", "postgres", "--postgres-db-url", url])


def test_gateways_sharing_postgres_serve_each_others_records(worker: Proc) -> None:
    with postgres_database() as url:
        flags = ["--history-backend", "postgres", "--postgres-db-url", url]
        first, second = start_gateway(worker.urls, *flags), start_gateway(worker.urls, *flags)
        try:
            created = httpx.post(
                first.url + "/v1/responses", json={"model": "sim-model", "input": "shared", "max_output_tokens": 2}
            )
            created.raise_for_status()
            answer_id = created.json()["id"]
            follow = httpx.post(
                second.url + "/v1/responses",
                json={"model": "sim-model", "input": "and then?", "previous_response_id": answer_id, "max_output_tokens": 2},
            )
            assert follow.status_code == 200, follow.text
            assert httpx.get(first.url + f"/v1/responses/{follow.json()['id']}").status_code == 200
        finally:
            first.stop()
            second.stop()
