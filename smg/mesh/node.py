"""A mesh node: the SWIM core driven by trio time and the UDP/TCP transport.

The node's nursery owns the transport and the timer task. Every packet goes
to `Swim.receive`, the timer task calls `Swim.tick` at `next_deadline()`
(woken early when a packet moved a deadline), and every `Send` the core
returns leaves through the transport. Shutdown is cancellation.

A node that cannot join says why: frames it could not open (a wrong key or
cluster label on either side) and seeds that take our push-pulls but never
answer are logged at most once a minute per address and reported by
`diagnostics()` (see `smg.mesh.diagnostics`).
"""

from __future__ import annotations

import logging
import random
import secrets
from collections.abc import Callable
from typing import Any

import msgpack
import trio

from smg.mesh.diagnostics import JOIN_WARN_AFTER, Rejections, SeedWatch
from smg.mesh.keyring import Keyring
from smg.mesh.messages import AppMessage, Message, State
from smg.mesh.seeds import Resolve, has_names, resolve_host, resolve_seeds
from smg.mesh.streams import PeerStreams
from smg.mesh.swim import MemberEvent, Send, Swim, SwimConfig
from smg.mesh.transport import MeshTransport

log = logging.getLogger("smg.mesh")

SEED_CHECK_SECS = 1.0


class MeshNode:
    def __init__(
        self,
        name: str | None,
        host: str = "0.0.0.0",
        port: int = 39527,
        *,
        advertise_host: str | None = None,
        seeds: list[str] | None = None,
        keyring: Keyring | None = None,
        config: SwimConfig | None = None,
        meta: dict[str, Any] | None = None,
        seed_warn_after: float = JOIN_WARN_AFTER,
        resolve: Resolve = resolve_host,
    ) -> None:
        if keyring is None:
            log.warning("mesh runs unencrypted: set a mesh key outside development")
        self.name = name or ""  # empty: named after its address once bound
        self.advertise_host = advertise_host or host
        self.seeds = list(seeds or [])  # as given: DNS names stand for all their addresses
        self.resolve = resolve
        self.config = config or SwimConfig()
        self.meta = dict(meta or {})
        self.transport = MeshTransport(host, port, keyring, self._on_message)
        self.swim: Swim | None = None
        self.rejections = Rejections()
        self.seed_watch: SeedWatch | None = None  # while seeds were given
        self.seed_warn_after = seed_warn_after
        self.transport.on_rejected = self._on_rejected
        self.transport.on_tcp_result = self._on_tcp_result
        self._subscribers: list[trio.MemorySendChannel[MemberEvent]] = []
        self._kick = trio.Event()
        self.app_state: Callable[[], bytes] | None = None  # push-pull hooks, set before run()
        self.merge_app_state: Callable[[str, bytes], None] | None = None
        self.on_app_message: Callable[[str, str, bytes], None] | None = None  # (source, channel, payload)
        self.on_broadcast: Callable[[str, bytes], None] | None = None  # (origin, data), best effort
        self.streams = PeerStreams(self.name, self.transport, self._address_of)
        self._key_requests: dict[str, tuple[dict[str, str | None], set[str], trio.Event]] = {}

    @property
    def address(self) -> str:
        return f"{self.advertise_host}:{self.transport.port}"

    async def run(
        self,
        *,
        on_bound: Callable[[], None] | None = None,
        task_status: trio.TaskStatus[MeshNode] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Bind, call `on_bound` (the name is final then), join the seeds, run until cancelled."""
        async with trio.open_nursery() as nursery:
            await nursery.start(self.transport.run)
            if not self.name:
                self.name = self.streams.source = self.address
            if on_bound is not None:
                on_bound()
            await nursery.start(self.streams.run)
            now = trio.current_time()
            self.swim = Swim(self.name, self.address, self.config, random.Random(), now, self.meta)
            self.swim.app_state, self.swim.merge_app_state = self.app_state, self.merge_app_state
            sends = self.swim.join(await resolve_seeds(self.seeds, self.resolve), now)
            if self.swim.seeds:
                self.seed_watch = SeedWatch(self.swim.seeds, self.address, now, self.seed_warn_after)
                nursery.start_soon(self._watch_seeds, self.swim, self.seed_watch)
            self._dispatch(sends)
            nursery.start_soon(self._timer)
            if has_names(self.seeds):
                nursery.start_soon(self._re_resolve, self.swim)
            log.info("mesh node %s listening on %s (seeds: %s)", self.name, self.address, ", ".join(self.seeds) or "none")
            task_status.started(self)

    def _on_message(self, message: Message) -> None:
        if isinstance(message, AppMessage):
            if message.channel.startswith("mesh."):
                self._on_control(message)
            elif self.on_app_message is not None:
                self.on_app_message(message.source, message.channel, message.payload)
            return
        if self.swim is None:
            return
        self._dispatch(self.swim.receive(message, trio.current_time()))
        self._kick.set()

    def _on_rejected(self, host: str, port: int, via: str, cause: str) -> None:
        line = self.rejections.record(host, port, via, cause, trio.current_time())
        if line is not None:
            log.warning("mesh %s: %s", self.name, line)

    def _on_tcp_result(self, address: str, error: str | None) -> None:
        if self.seed_watch is not None:
            self.seed_watch.delivered(address, error)

    @staticmethod
    def _alone(swim: Swim) -> bool:
        """No seed answered and nobody found us: a cluster of one, though seeds were given."""
        return not swim.joined and swim.live_count() <= 1

    async def _watch_seeds(self, swim: Swim, watch: SeedWatch) -> None:
        """While not joined, say why the seeds do not answer (rate-limited per seed)."""
        while not swim.joined:
            await trio.sleep(SEED_CHECK_SECS)
            for line in watch.check(trio.current_time(), self._alone(swim)):
                log.warning("mesh %s: %s", self.name, line)

    def diagnostics(self) -> dict[str, Any]:
        """For `/mesh/health`: recent frames this node could not open, and (while alone) its seeds."""
        now = trio.current_time()
        report: dict[str, Any] = {"unauthenticated_peers": self.rejections.report(now)}
        if self.swim is not None and self.seed_watch is not None and self._alone(self.swim):
            report["seeds"] = self.seed_watch.report()
            report["reason"] = self.seed_watch.reason(now)
        return report

    async def reseed(self) -> None:
        """Seeds changed outside the reconnect cycle (a discovery source found gateway pods): a node
        still alone joins them now rather than at its next rejoin attempt; a joined one keeps them
        for later rejoins."""
        swim = self.swim
        if swim is None:
            return
        addresses = await resolve_seeds(self.seeds, self.resolve)
        if self._alone(swim):
            self._dispatch(swim.join(addresses, trio.current_time()))
            self._kick.set()
        else:
            swim.set_seeds(addresses)

    async def _re_resolve(self, swim: Swim) -> None:
        """Seeds named by DNS are resolved again every reconnect interval: the rejoin attempts
        then reach gateways that appeared after the start (a headless Service growing)."""
        while True:
            await trio.sleep(self.config.reconnect_interval)
            swim.set_seeds(await resolve_seeds(self.seeds, self.resolve))

    async def _timer(self) -> None:
        swim = self.swim
        assert swim is not None
        while True:
            with trio.move_on_at(swim.next_deadline()):
                await self._kick.wait()
            self._kick = trio.Event()
            now = trio.current_time()
            if now >= swim.next_deadline():
                self._dispatch(swim.tick(now))

    def _dispatch(self, sends: list[Send]) -> None:
        for send in sends:
            self.transport.send_soon(send.address, send.message, send.reliable)
        if self.swim is not None:
            for broadcast in self.swim.pop_broadcasts():
                if self.on_broadcast is not None:
                    self.on_broadcast(broadcast.origin, broadcast.data)
            for event in self.swim.pop_events():
                log.info("mesh %s: %s is %s (incarnation %d)", self.name, event.name, event.state.value, event.incarnation)
                if event.state in (State.DEAD, State.LEFT, State.ALIVE):
                    self.streams.reset(event.name)  # gone, or back: either way no stale connection
                for channel in list(self._subscribers):
                    try:
                        channel.send_nowait(event)
                    except trio.WouldBlock:
                        log.warning("mesh %s: a slow event subscriber lost an event", self.name)
                    except trio.BrokenResourceError:
                        self._subscribers.remove(channel)

    def subscribe(self, buffer: int = 1024) -> trio.MemoryReceiveChannel[MemberEvent]:
        """A stream of membership events (join/alive, suspect, dead, left) from now on."""
        send, receive = trio.open_memory_channel[MemberEvent](buffer)
        self._subscribers.append(send)
        return receive

    def members(self) -> list[dict[str, Any]]:
        """Every known member until reaped: name, address, state, incarnation, metadata."""
        if self.swim is None:
            return []
        return [
            {"name": m.name, "address": m.address, "status": m.state.value, "incarnation": m.incarnation, "meta": dict(m.meta)}
            for m in self.swim.members.values()
        ]

    def _address_of(self, name: str) -> str | None:
        member = self.swim.members.get(name) if self.swim is not None else None
        if member is None or member.state in (State.DEAD, State.LEFT):
            return None
        return member.address

    def broadcast(self, data: bytes) -> None:
        """Spread a small message (<= 512 bytes) to every member on gossip, best effort."""
        if self.swim is None:
            raise RuntimeError("the mesh node is not running")
        self.swim.broadcast(data)
        self._kick.set()

    def send_to(self, peer: str, channel: str, payload: bytes) -> bool:
        """Queue application data for a member on its ordered stream (see `PeerStreams`)."""
        return self.streams.send(peer, channel, payload)

    # -- cluster-wide key operations ------------------------------------------------------

    def apply_key_op(self, op: str, key: bytes) -> str | None:
        """Apply one keyring operation here; returns an error message, or None."""
        keyring = self.transport.keyring
        if keyring is None:
            return "this node runs unencrypted"
        try:
            {"install": keyring.install, "use": keyring.use, "remove": keyring.remove}[op](key)
        except KeyError:
            return f"unknown key operation '{op}'"
        except ValueError as exc:
            return str(exc) or "key not installed"
        log.info("mesh %s: key %s", self.name, op)
        return None

    async def key_op(self, op: str, key: bytes, timeout: float = 5.0) -> dict[str, str | None]:
        """Apply `op` on every live member; returns each member's error (None: done)."""
        request = secrets.token_hex(8)
        results: dict[str, str | None] = {self.name: self.apply_key_op(op, key)}
        members = [m["name"] for m in self.members() if m["status"] in ("alive", "suspect") and m["name"] != self.name]
        done = trio.Event()
        self._key_requests[request] = (results, set(members), done)
        payload = msgpack.packb({"id": request, "op": op, "key": key}, use_bin_type=True)
        for member in members:
            self.send_to(member, "mesh.keys", payload)
        if members:
            with trio.move_on_after(timeout):
                await done.wait()
        del self._key_requests[request]
        for member in members:
            results.setdefault(member, "no answer")
        return results

    def _on_control(self, message: AppMessage) -> None:
        try:
            body = msgpack.unpackb(message.payload, raw=False)
            if not isinstance(body, dict):
                raise ValueError("not a map")
            if message.channel == "mesh.keys":
                error = self.apply_key_op(str(body["op"]), bytes(body["key"]))
                reply = msgpack.packb({"id": body["id"], "error": error}, use_bin_type=True)
                self.send_to(message.source, "mesh.keys.reply", reply)
            elif message.channel == "mesh.keys.reply":
                pending = self._key_requests.get(str(body["id"]))
                if pending is not None:
                    results, waiting, done = pending
                    results[message.source] = body.get("error")
                    waiting.discard(message.source)
                    if not waiting:
                        done.set()
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("mesh %s: malformed control message from %s: %s", self.name, message.source, exc)

    def state_of(self, name: str) -> State | None:
        return None if self.swim is None else self.swim.state_of(name)

    async def leave(self) -> None:
        """Tell the cluster we are leaving, give the announcement a moment, then return."""
        if self.swim is not None:
            self._dispatch(self.swim.leave(trio.current_time()))
            await trio.sleep(self.config.gossip_interval * 2)
