"""Mesh nodes on real UDP/TCP sockets on 127.0.0.1, in one trio loop."""

from __future__ import annotations

import base64
import logging
import os
import socket
from functools import partial

import pytest
import trio

from smg.mesh import transport as transport_module
from smg.mesh.keyring import NOT_MESH, Keyring, open_frame, parse_key
from smg.mesh.messages import AppMessage, Message, State
from smg.mesh.node import MeshNode
from smg.mesh.streams import PeerStreams
from smg.mesh.swim import MemberEvent, SwimConfig
from smg.mesh.transport import MeshTransport
from smg.mesh.wire import FrameReader, decode_message

FAST = SwimConfig(probe_interval=0.1, probe_timeout=0.04, gossip_interval=0.05, push_pull_interval=2.0, reconnect_interval=1.0)
KEY = os.urandom(32)


def unused_address() -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


async def start(
    nursery: trio.Nursery, name: str, seeds: list[str], port: int = 0, key: bytes = KEY, label: str = "test"
) -> tuple[MeshNode, trio.CancelScope]:
    node = MeshNode(name, "127.0.0.1", port, seeds=seeds, keyring=Keyring([key], label), config=FAST)
    scope = trio.CancelScope()

    async def run(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with scope:
            await node.run(task_status=task_status)

    await nursery.start(run)
    return node, scope


async def until(predicate, seconds: float) -> None:  # type: ignore[no-untyped-def]
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.02)


async def probe_rounds(nodes: list[MeshNode], packets: int = 16) -> None:
    """Wait until every node has received `packets` more packets, all of which opened: a few
    protocol periods of pings and acks, in which a key no longer shared would have shown."""
    marks = [(n.transport.received_packets, n.transport.dropped["unauthenticated"]) for n in nodes]
    await until(lambda: all(n.transport.received_packets >= m + packets for n, (m, _) in zip(nodes, marks, strict=True)), 15)
    assert [n.transport.dropped["unauthenticated"] for n in nodes] == [d for _, d in marks]


def drain(stream: trio.MemoryReceiveChannel[MemberEvent]) -> list[MemberEvent]:
    """The events received so far, without waiting."""
    events = []
    while True:
        try:
            events.append(stream.receive_nowait())
        except trio.WouldBlock:
            return events


def sees(nodes: list[MeshNode], name: str, state: State) -> bool:
    return all(n.state_of(name) is state for n in nodes if n.name != name)


async def test_join_through_a_dead_first_seed_kill_and_restart(nursery: trio.Nursery) -> None:
    dead_seed = unused_address()
    a, _ = await start(nursery, "a", [])
    b, _ = await start(nursery, "b", [dead_seed, a.address])
    c, c_scope = await start(nursery, "c", [dead_seed, b.address])
    await until(lambda: all(sees([a, b, c], n, State.ALIVE) for n in "abc"), 5)
    port, incarnation = c.transport.port, c.swim.incarnation  # type: ignore[union-attr]
    c_scope.cancel()
    await until(lambda: sees([a, b], "c", State.DEAD), 8)
    reborn, _ = await start(nursery, "c", [a.address], port=port)
    await until(lambda: sees([a, b], "c", State.ALIVE), 5)
    assert reborn.swim.incarnation > incarnation  # type: ignore[union-attr]
    assert a.swim.members["c"].incarnation == reborn.swim.incarnation  # type: ignore[union-attr]


async def test_wrong_key_or_cluster_label_never_joins(nursery: trio.Nursery) -> None:
    a, _ = await start(nursery, "a", [])
    b, _ = await start(nursery, "b", [a.address])
    await until(lambda: sees([a, b], "b", State.ALIVE), 5)
    await start(nursery, "intruder", [a.address], key=os.urandom(32))
    await start(nursery, "other-cluster", [a.address], label="prod")
    await until(lambda: a.transport.dropped["unauthenticated"] >= 2, 5)  # both tried, and were refused
    assert a.state_of("intruder") is None and a.state_of("other-cluster") is None


async def test_key_rotation_keeps_the_cluster_up(nursery: trio.Nursery) -> None:
    nodes = [(await start(nursery, "a", []))[0]]
    for name in "bc":
        nodes.append((await start(nursery, name, [nodes[0].address]))[0])
    await until(lambda: all(sees(nodes, n, State.ALIVE) for n in "abc"), 5)
    streams = [node.subscribe() for node in nodes]
    new = os.urandom(32)
    for node in nodes:  # install everywhere, then use, then remove the old key
        node.transport.keyring.install(new)  # type: ignore[union-attr]
    for node in nodes:
        node.transport.keyring.use(new)  # type: ignore[union-attr]
        await trio.sleep(0.2)
    for node in nodes:
        node.transport.keyring.remove(KEY)  # type: ignore[union-attr]
    await probe_rounds(nodes)
    assert all(sees(nodes, n, State.ALIVE) for n in "abc")
    events = [event for stream in streams for event in drain(stream)]
    assert all(e.state is State.ALIVE for e in events), events  # no suspicion, no death


def test_parse_key() -> None:
    assert parse_key(base64.b64encode(KEY).decode()) == KEY
    for bad in ("not base64!", base64.b64encode(b"short").decode()):
        try:
            parse_key(bad)
        except ValueError:
            continue
        raise AssertionError(f"{bad!r} was accepted")


async def test_event_stream_push_pull_hooks_and_metrics(nursery: trio.Nursery) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from smg.mesh.metrics import MeshCollector

    received: list[tuple[str, bytes]] = []
    a = MeshNode("a", "127.0.0.1", 0, keyring=Keyring([KEY], "test"), config=FAST)
    a.app_state = lambda: b"state-of-a"
    a.merge_app_state = lambda source, data: received.append((source, data))
    await nursery.start(a.run)
    events = a.subscribe()
    b = MeshNode(
        "b", "127.0.0.1", 0, seeds=[a.address], keyring=Keyring([KEY], "test"), config=FAST, meta={"http": "127.0.0.1:30000"}
    )
    b.app_state = lambda: b"state-of-b"
    await nursery.start(b.run)
    with trio.fail_after(5):
        event = await events.receive()
    assert event.name == "b" and event.state is State.ALIVE
    await until(lambda: ("b", b"state-of-b") in received, 5)  # b's join push-pull carried its state
    assert {m["name"]: m["meta"] for m in a.members()}["b"] == {"http": "127.0.0.1:30000"}
    registry = CollectorRegistry()
    registry.register(MeshCollector(a))
    text = generate_latest(registry).decode()
    assert 'smg_mesh_members{state="alive"} 2.0' in text
    assert "smg_mesh_packets_dropped_total" in text and "smg_mesh_local_health" in text
    await until(lambda: a.swim.rtt_count > 0, 5)  # type: ignore[union-attr]
    assert "smg_mesh_probe_rtt_seconds_bucket" in generate_latest(registry).decode()


async def test_ordered_peer_streams_survive_a_restart(nursery: trio.Nursery) -> None:
    got: list[bytes] = []

    def make(name: str, seeds: list[str], port: int = 0) -> MeshNode:
        node = MeshNode(name, "127.0.0.1", port, seeds=seeds, keyring=Keyring([KEY], "test"), config=FAST)
        node.on_app_message = lambda source, channel, payload: got.append(payload) if channel == "crdt" else None
        return node

    a = make("a", [])
    await nursery.start(a.run)
    b = make("b", [a.address])
    b_scope = trio.CancelScope()

    async def run_b(node: MeshNode, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with b_scope:
            await node.run(task_status=task_status)

    await nursery.start(run_b, b)
    await until(lambda: a.state_of("b") is State.ALIVE, 5)
    for i in range(200):
        assert a.send_to("b", "crdt", b"%d" % i)
    await until(lambda: len(got) == 200, 5)
    assert got == [b"%d" % i for i in range(200)]  # in order
    port = b.transport.port
    b_scope.cancel()
    await until(lambda: a.state_of("b") is State.DEAD, 8)
    got.clear()
    reborn = make("b", [a.address], port)
    await nursery.start(reborn.run)
    await until(lambda: a.state_of("b") is State.ALIVE, 5)
    a.send_to("b", "crdt", b"after restart")
    await until(lambda: got == [b"after restart"], 5)


async def test_cluster_wide_key_rotation_reports_each_member(nursery: trio.Nursery) -> None:
    nodes = [(await start(nursery, "a", []))[0]]
    for name in "bc":
        nodes.append((await start(nursery, name, [nodes[0].address]))[0])
    await until(lambda: all(sees(nodes, n, State.ALIVE) for n in "abc"), 5)
    new = os.urandom(32)
    a = nodes[0]
    assert await a.key_op("install", new) == {"a": None, "b": None, "c": None}
    assert await a.key_op("use", new) == {"a": None, "b": None, "c": None}
    refused = await a.key_op("remove", new)  # the primary now: every member refuses
    assert set(refused) == {"a", "b", "c"} and all("primary" in (e or "") for e in refused.values())
    assert await a.key_op("remove", KEY) == {"a": None, "b": None, "c": None}
    assert all(node.transport.keyring.keys == [new] for node in nodes)  # type: ignore[union-attr]
    await probe_rounds(nodes)
    assert all(sees(nodes, n, State.ALIVE) for n in "abc")


@pytest.mark.parametrize(
    ("seed_key", "joiner_key", "joiner_label", "hint"),
    [
        (KEY, os.urandom(32), "test", "wrong --mesh-key or --mesh-cluster-label?"),
        (KEY, KEY, "prod", "wrong --mesh-key or --mesh-cluster-label?"),
        (KEY, None, "test", "the peer runs without --mesh-key"),
        (None, KEY, "test", "the peer runs with --mesh-key while this node has none"),
    ],
    ids=["key", "label", "joiner-unencrypted", "seed-unencrypted"],
)
async def test_a_mismatch_is_logged_on_both_sides_and_reported(
    nursery: trio.Nursery,
    caplog: pytest.LogCaptureFixture,
    seed_key: bytes | None,
    joiner_key: bytes | None,
    joiner_label: str,
    hint: str,
) -> None:
    caplog.set_level(logging.WARNING, logger="smg.mesh")
    seed = MeshNode("seed", "127.0.0.1", 0, keyring=Keyring([seed_key], "test") if seed_key else None, config=FAST)
    await nursery.start(seed.run)
    joiner_keyring = Keyring([joiner_key], joiner_label) if joiner_key else None
    joiner = MeshNode("joiner", "127.0.0.1", 0, seeds=[seed.address], keyring=joiner_keyring, config=FAST, seed_warn_after=1.0)
    await nursery.start(joiner.run)

    def lines(prefix: str) -> list[str]:
        return [r.getMessage() for r in caplog.records if r.getMessage().startswith(prefix)]

    seed_side, joiner_side = "mesh seed: ", f"mesh joiner: seed {seed.address} accepts connections but has not answered"
    await until(lambda: lines(seed_side) and lines(joiner_side), 5)
    assert "127.0.0.1:" in lines(seed_side)[0] and "could not be opened: " + hint in lines(seed_side)[0]
    assert "--mesh-key or --mesh-cluster-label" in lines(joiner_side)[0]
    await until(lambda: seed.rejections.report(trio.current_time())[0]["frames"] >= 3, 5)  # join retries keep coming
    assert len(lines(seed_side)) == 1 and len(lines(joiner_side)) == 1  # at most once a minute per peer
    (peer,) = seed.diagnostics()["unauthenticated_peers"]
    assert peer["address"].startswith("127.0.0.1:") and peer["transport"] == "tcp" and hint in peer["hint"]
    assert peer["last_seen_secs_ago"] < 5
    report = joiner.diagnostics()
    assert report["seeds"] == [
        {
            "address": seed.address,
            "reachable": True,
            "connections": report["seeds"][0]["connections"],
            "failures": 0,
            "last_error": None,
        }
    ]
    assert "--mesh-cluster-label" in report["reason"] and seed.state_of("joiner") is None


async def test_an_unreachable_seed_is_named_with_its_error(nursery: trio.Nursery, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="smg.mesh")
    dead_seed = unused_address()
    node = MeshNode("lonely", "127.0.0.1", 0, seeds=[dead_seed], keyring=Keyring([KEY], "test"), config=FAST, seed_warn_after=0.5)
    await nursery.start(node.run)
    await until(lambda: any(f"seed {dead_seed} is unreachable" in r.getMessage() for r in caplog.records), 5)
    assert node.diagnostics()["seeds"][0]["reachable"] is False


async def test_tcp_frames_in_one_write_cut_frames_strangers_and_stalls(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stream reader: several frames in one write all arrive; a frame cut by a close, a
    stranger's protocol, and a frame that stalls mid-way are each dropped and counted."""
    monkeypatch.setattr(transport_module, "TCP_TIMEOUT", 0.3)
    delivered: list[Message] = []
    rejected: list[str] = []
    transport = MeshTransport("127.0.0.1", 0, None, delivered.append)
    transport.on_rejected = lambda host, port, via, cause: rejected.append(cause)
    port = await nursery.start(transport.run)
    hellos = [AppMessage(f"n{i}", "chan", b"x" * (i * 300)) for i in range(5)]

    async def send(data: bytes, close: bool = True) -> trio.SocketStream:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        await stream.send_all(data)
        if close:
            await stream.aclose()
        return stream

    await send(b"".join(transport.frame(m) for m in hellos))
    await until(lambda: len(delivered) == 5, 5)
    assert delivered == hellos
    await send(transport.frame(hellos[1]) + transport.frame(hellos[2])[:-3])  # the second cut by the close
    await until(lambda: transport.dropped["truncated"] == 1, 5)
    assert delivered[5:] == [hellos[1]]
    await send(b"GET / HTTP/1.1\r\nHost: mesh\r\n\r\n")
    await until(lambda: transport.dropped["oversize"] == 1, 5)
    assert rejected == [NOT_MESH]
    stalled = await send(transport.frame(hellos[3])[:10], close=False)  # then nothing: the sender hangs
    await until(lambda: transport.dropped["truncated"] == 2, 5)  # after TCP_TIMEOUT, not never
    await stalled.aclose()
    assert len(delivered) == 6


async def test_a_stream_may_idle_between_frames_longer_than_a_frame_may_take(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(transport_module, "TCP_TIMEOUT", 1.0)
    delivered: list[Message] = []
    transport = MeshTransport("127.0.0.1", 0, None, delivered.append)
    port = await nursery.start(transport.run)
    one, two, three = (transport.frame(AppMessage("n", "chan", b"%d" % i)) for i in range(3))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(one)
    await until(lambda: len(delivered) == 1, 5)
    await trio.sleep(1.5)  # idle past TCP_TIMEOUT: the stream stays
    await stream.send_all(two + three[:4])  # a frame completed and the next begun in one receive
    await until(lambda: len(delivered) == 2, 5)
    await trio.sleep(0.1)  # within TCP_TIMEOUT of the frame it began
    await stream.send_all(three[4:])
    await until(lambda: len(delivered) == 3, 5)
    await stream.aclose()
    assert [m.payload for m in delivered] == [b"0", b"1", b"2"]  # type: ignore[union-attr]
    assert transport.dropped["truncated"] == 0


async def test_a_stream_dropped_in_the_middle_of_a_batch_sends_every_message_once(nursery: trio.Nursery) -> None:
    """The writer resends the messages whose frames the kernel had not wholly taken (the peer
    drops the cut one), and none it had taken."""
    received = [bytearray(), bytearray()]  # per connection, in order
    first_may_read = trio.Event()
    accepted = 0

    async def peer(stream: trio.SocketStream) -> None:
        nonlocal accepted
        index, accepted = accepted, accepted + 1
        if index == 0:
            await first_may_read.wait()  # reading nothing yet: the writer blocks in mid-batch
        async for chunk in stream:
            received[index] += chunk

    listeners = await nursery.start(partial(trio.serve_tcp, peer, 0, host="127.0.0.1"))
    address = f"127.0.0.1:{listeners[0].socket.getsockname()[1]}"
    framing = MeshTransport("127.0.0.1", 0, None, lambda message: None)  # (frames only: never run)
    streams = PeerStreams("a", framing, lambda name: address)
    await nursery.start(streams.run)
    payloads = [b"%05d" % i + b"x" * 4096 for i in range(2000)]  # 8 MB: more than the socket buffers hold
    for payload in payloads:
        assert streams.send("b", "chan", payload)
    await trio.sleep(0.3)  # the writer fills the buffers and waits
    streams.reset("b")  # as when the member is declared dead: the connection is dropped mid-batch
    first_may_read.set()

    def frames() -> list[bytes]:
        out = []
        for data in received:
            reader = FrameReader()
            out += [decode_message(open_frame(None, frame)).payload for frame in reader.feed(bytes(data))]  # type: ignore[union-attr]
        return out

    await until(lambda: len(frames()) >= len(payloads), 20)
    assert accepted == 2
    assert frames() == payloads  # each once, in order
