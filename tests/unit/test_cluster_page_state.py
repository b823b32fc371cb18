"""The cluster page's state, in process: the event log, the time series and their rates, one
gateway's view and the digest agreement across views."""

from __future__ import annotations

from typing import Any

import msgpack
import trio

from smg.cli import build_parser, gateway_config_from
from smg.cluster.node import VIEW, VIEW_CACHE_SECS, VIEW_REPLY, ClusterNode
from smg.context import GatewayContext
from smg.dataplane.relay import count_usage
from smg.dataplane.usage import Usage
from smg.http.exchange import Exchange
from smg.observability.events import EventLog
from smg.observability.series import Rates, SeriesSet
from smg.ui.sampler import sample
from smg.ui.views import agreement, node_view


def test_the_event_log_keeps_the_newest_and_counts_every_one() -> None:
    events = EventLog(keep=3)
    for i in range(5):
        events.record(100.0 + i, "worker", f"http://w{i}", "ready", "info")
    recent = events.recent()
    assert [e["subject"] for e in recent] == ["http://w4", "http://w3", "http://w2"]  # newest first
    assert events.total == 5
    assert [e["subject"] for e in events.recent(1)] == ["http://w4"]
    assert events.recent(0) == []


def test_series_share_one_time_axis_with_gaps_for_late_and_stopped_series() -> None:
    series = SeriesSet(step=1.0, window=4.0)  # 4 points
    series.add(1.0, {"a": 1.0})
    series.add(2.0, {"a": 2.0, "b": 20.0})  # b appears late: a gap before it
    series.add(3.0, {"b": 30.0})  # a stops: a gap
    body = series.as_json()
    assert body["t"] == [1.0, 2.0, 3.0]
    assert body["values"] == {"a": [1.0, 2.0, None], "b": [None, 20.0, 30.0]}
    for at in (4.0, 5.0, 6.0):
        series.add(at, {"b": at})
    assert "a" not in series.as_json()["values"]  # no value left in the window: dropped
    assert series.as_json()["t"] == [3.0, 4.0, 5.0, 6.0]
    assert set(series.as_json("b")["values"]) == {"b"}


def test_the_number_of_series_is_bounded() -> None:
    series = SeriesSet(step=1.0, window=10.0, max_series=2)
    series.add(1.0, {"a": 1.0, "b": 1.0, "c": 1.0})
    assert set(series.as_json()["values"]) == {"a", "b"}


def test_rates_are_per_second_and_a_reset_is_a_gap_not_a_negative_spike() -> None:
    rates = Rates()
    assert rates.rate("n", 10.0, 100) is None  # first sample
    assert rates.rate("n", 15.0, 150) == 10.0
    assert rates.rate("n", 20.0, 5) is None  # the counter went down (a restart)
    assert rates.rate("n", 25.0, 55) == 10.0
    assert rates.ratio("hit", 0, 0) is None
    assert rates.ratio("hit", 30, 100) == 0.3
    assert rates.ratio("hit", 30, 100) is None  # no new prompt tokens in the step: no rate
    rates.forget({"n"})
    assert rates.ratio("hit", 40, 110) is None  # forgotten: starts again


def test_digests_agree_only_when_every_view_has_the_same() -> None:
    def view(digest: str) -> dict:
        return {"replication": {"stores": {"workers": {"entries": 1, "digest": "w"}, "health": {"entries": 1, "digest": digest}}}}

    views = {"a": view("x"), "b": view("x"), "c": {"error": "no answer"}}
    assert agreement(views) == {"health": True, "workers": True}
    views["b"] = view("y")
    assert agreement(views) == {"health": False, "workers": True}


async def test_a_gateways_view_and_its_samples_follow_its_traffic() -> None:
    ctx = GatewayContext.create(gateway_config_from(build_parser("launch").parse_args(["--history-backend", "none"])))
    async with trio.open_nursery() as nursery:
        await nursery.start(ctx.registrar.run)
        _check_view_and_samples(ctx)
        nursery.cancel_scope.cancel()


def _check_view_and_samples(ctx: GatewayContext) -> None:
    worker = ctx.add_worker("http://127.0.0.1:9")
    ex = Exchange({"type": "http", "headers": []}, None, None, "r", "/v1/chat/completions")  # type: ignore[arg-type]
    rates = Rates()
    first = sample(ctx, rates, 100.0)
    assert first["gateway||requests_per_s"] is None and first[f"worker|{worker.url}|hit_rate"] is None
    count_usage(ctx, ex, worker, "m", Usage(prompt=100, completion=5, cached=60))
    count_usage(ctx, ex, worker, "m", Usage(prompt=100, completion=5, cached=20))
    ctx.answered += 10
    second = sample(ctx, rates, 105.0)
    assert second["gateway||requests_per_s"] == 2.0
    assert second[f"worker|{worker.url}|hit_rate"] == 0.4  # 80 of 200 prompt tokens in the step

    view = node_view(ctx)
    (shown,) = view["workers"]
    assert shown["url"] == worker.url
    assert shown["cache"] == {"m": {"prompt_tokens": 200, "cached_tokens": 80, "hit_rate": 0.4}}
    assert view["requests_answered"] == 10
    assert [e["text"] for e in view["events"]] == ["added"]
    assert "replication" not in view  # no --ha-mesh
    assert "api_key" not in str(view)


def _cluster_node() -> tuple[Any, list[tuple[str, str, bytes]]]:
    args = ["--history-backend", "none", "--ha-mesh", "--mesh-host", "127.0.0.1", "--mesh-server-name", "a"]
    config = gateway_config_from(build_parser("launch").parse_args(args))
    node = ClusterNode(config, GatewayContext.create(config))
    sent: list[tuple[str, str, bytes]] = []
    node.mesh.send_to = lambda peer, channel, payload: sent.append((peer, channel, payload)) or True  # type: ignore[method-assign]
    return node, sent


async def test_a_view_request_is_answered_from_one_view_built_per_half_second(autojump_clock: Any) -> None:
    node, sent = _cluster_node()
    built = []
    node.describe = lambda series: built.append(series) or {"node_name": "a", "series": series}
    ask = msgpack.packb({"id": "q1", "series": True})
    node._on_app_message("b", VIEW, ask)
    node._on_app_message("c", VIEW, ask)
    assert built == [True]  # two askers, one view
    (peer_b, channel, reply), (peer_c, _, _) = sent
    assert (peer_b, peer_c, channel) == ("b", "c", VIEW_REPLY)
    body = msgpack.unpackb(reply)
    assert body["id"] == "q1" and msgpack.unpackb(body["view"]) == {"node_name": "a", "series": True}
    await trio.sleep(VIEW_CACHE_SECS)
    node._on_app_message("b", VIEW, ask)
    assert built == [True, True]


async def test_views_come_back_from_the_peers_asked_and_silence_is_named(autojump_clock: Any) -> None:
    node, sent = _cluster_node()
    node.live_peers = lambda: ["b", "c", "d"]  # type: ignore[method-assign]

    async def answer() -> None:
        await trio.sleep(0.1)
        request = msgpack.unpackb(sent[0][2])["id"]
        view = msgpack.packb({"node_name": "b", "workers": []})
        node._on_app_message("b", VIEW_REPLY, msgpack.packb({"id": request, "view": view}))
        node._on_app_message("x", VIEW_REPLY, msgpack.packb({"id": request, "view": view}))  # not asked: ignored
        node._on_app_message("c", VIEW_REPLY, msgpack.packb({"id": request, "view": msgpack.packb([1, 2])}))
        node._on_app_message("d", VIEW_REPLY, b"\x93garbage")  # malformed: dropped, d stays silent

    async with trio.open_nursery() as nursery:
        nursery.start_soon(answer)
        results = await node.ask_views(True, timeout=2.0)
    assert [peer for peer, channel, _ in sent] == ["b", "c", "d"]
    assert results["b"] == {"node_name": "b", "workers": []}
    assert "x" not in results
    assert results["c"] == "its answer was not a view"
    assert results["d"] == "no answer on the mesh within 2s"
    assert node._view_requests == {}  # nothing left behind
