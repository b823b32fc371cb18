"""`--discovery-provider file` through a real gateway: a manifest written after the start registers
its workers, which then serve; taking one out of the manifest drains and removes it; a broken
manifest changes nothing. Two meshed gateways reading one manifest keep one record per worker."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import Proc, start_gateway, start_mesh_gateway, start_sim, wait_until

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}


@pytest.fixture(scope="module")
def sim() -> Iterator[Proc]:
    proc = start_sim(2, "--ttft-ms", "0", "--tpot-ms", "0")
    yield proc
    proc.stop()


def write(path: Path, workers: list[object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(workers))
    os.replace(tmp, path)  # as a config-map update lands: whole, at once


def labels(gateway: Proc, url: str) -> dict[str, str]:
    return next(w["labels"] for w in httpx.get(gateway.url + "/workers").json()["workers"] if w["url"] == url)


def worker_urls(gateway: Proc) -> set[str]:
    return {w["url"] for w in httpx.get(gateway.url + "/workers").json()["workers"]}


def test_a_manifest_written_after_the_start_registers_and_removes_workers(sim: Proc, tmp_path: Path) -> None:
    manifest = tmp_path / "workers.json"
    gateway = start_gateway(
        [],
        "--discovery-provider",
        "file",
        "--discovery-file",
        str(manifest),
        "--discovery-check-interval-secs",
        "2",
        "--health-check-interval-secs",
        "1",
        ready=False,
    )
    try:
        assert worker_urls(gateway) == set()
        write(manifest, [sim.urls[0], {"url": sim.urls[1], "labels": {"zone": "b"}}])
        wait_until(lambda: httpx.get(gateway.url + "/readiness").status_code == 200, "discovered workers ready")
        assert worker_urls(gateway) == set(sim.urls)
        assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).status_code == 200

        manifest.write_text("{not json")  # a half-written or broken manifest: nothing changes
        wait_until(lambda: "is not used (the workers stay as they were)" in gateway.log(), "the broken manifest reported")
        assert worker_urls(gateway) == set(sim.urls)

        write(manifest, [sim.urls[1]])
        wait_until(lambda: worker_urls(gateway) == {sim.urls[1]}, "the unlisted worker removed")
        assert httpx.post(gateway.url + "/v1/chat/completions", json=CHAT).headers["x-smg-routed-worker-id"] == sim.urls[1]
        assert labels(gateway, sim.urls[1]) == {}  # the entry no longer sets labels: back to none

        # removed behind discovery's back while still listed: added again at the next reread
        worker_id = next(w["id"] for w in httpx.get(gateway.url + "/workers").json()["workers"])
        assert httpx.delete(gateway.url + f"/workers/{worker_id}").status_code == 202
        wait_until(lambda: worker_urls(gateway) == set(), "the deleted worker gone")
        wait_until(lambda: worker_urls(gateway) == {sim.urls[1]}, "the listed worker registered again", deadline=30)
    finally:
        gateway.stop()


def test_meshed_gateways_reading_one_manifest_keep_one_record_per_worker(sim: Proc, tmp_path: Path) -> None:
    manifest = tmp_path / "workers.json"
    write(manifest, list(sim.urls))
    flags = ("--discovery-provider", "file", "--discovery-file", str(manifest))
    first = start_mesh_gateway([], *flags)
    second = start_mesh_gateway([], *flags, seeds=[first.mesh_address])
    try:
        for gateway in (first, second):
            wait_until(lambda g=gateway: worker_urls(g) == set(sim.urls), "both workers on every gateway")
        write(manifest, [sim.urls[0]])
        for gateway in (first, second):
            wait_until(lambda g=gateway: worker_urls(g) == {sim.urls[0]}, "the unlisted worker gone everywhere")
        for gateway in (first, second):  # one replicated record per worker, whichever gateway wrote it first
            records = httpx.get(gateway.url + "/mesh/workers").json()
            assert records["total"] == 1, records
    finally:
        second.stop()
        first.stop()
