"""A gateway's place in the HA cluster: the mesh node plus the replicated stores.

The cluster node's nursery (inside the gateway's) owns the mesh node, the
flush task (replication messages due to live members, sent on the mesh's
ordered per-peer streams, woken by a local change at once or within its
store's send delay), the membership
watcher and the tombstone collector. Push-pull carries each store's digest:
a member whose digest differs gets the full state on the stream.
"""

from __future__ import annotations

import logging
import math
import random
import secrets
import socket
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

import msgpack
import trio

from smg import __version__
from smg.cluster import per_node
from smg.cluster.health_store import STORE as HEALTH
from smg.cluster.health_store import ReplicatedHealth
from smg.cluster.load_store import STORE as LOAD
from smg.cluster.load_store import ReplicatedLoad
from smg.cluster.metrics import ClusterCollector
from smg.cluster.pin_store import ReplicatedPins
from smg.cluster.prefix_store import SharedPrefixes
from smg.cluster.replication import CHANNELS, TRAFFIC_SECS, Replication, ReplicationError
from smg.cluster.worker_store import ReplicatedWorkers, wall_ms
from smg.config import GatewayConfig
from smg.context import GatewayContext
from smg.crdt.hlc import HybridClock
from smg.crdt.replica import new_replica_id
from smg.http.server import BindError, find_error
from smg.mesh.keyring import Keyring
from smg.mesh.messages import State
from smg.mesh.metrics import MeshCollector
from smg.mesh.node import MeshNode
from smg.mesh.seeds import DiscoveredSeeds, resolve_host
from smg.routing.policies import StickyPolicy, base_policy
from smg.routing.policies.sticky import LocalPins
from smg.settings import ConfigError

log = logging.getLogger("smg.cluster")

FLUSH_SECS = 1.0  # idle wake-up (the resend granularity); a local change flushes at once or within its store's send delay
GC_SECS = 10.0
RATE_LIMITS = "rate_limits"
SYNC_SECS = 5.0  # a joining node waits this long at most for its peers' state before it serves
LOAD_SECS = TRAFFIC_SECS  # a moved in-flight count is published within this, with the prefix hints
BIND_RETRY_SECS = 5.0  # a mesh that fails after its start-up bind runs again after this
# the cluster page: a member asks the others for their own views on the mesh's authenticated
# streams (not over HTTP: no credential leaves the gateway, and each process of --processes N,
# which share one HTTP port, answers for itself)
VIEW, VIEW_REPLY = "ui.view", "ui.view.reply"
VIEW_CACHE_SECS = 0.5  # one view built per half second however many pages ask: no amplification


LIVE = (State.ALIVE, State.SUSPECT)

MEMBER_EVENTS = {
    State.ALIVE: "alive",
    State.SUSPECT: "suspected of having failed",
    State.DEAD: "declared dead",
    State.LEFT: "left the cluster",
}


def advertise_host(config: GatewayConfig) -> str:
    """The address peers reach us at: given, the bind address, or the route toward the first seed."""
    if config.mesh_advertise_host:
        return config.mesh_advertise_host
    if config.mesh_host not in ("0.0.0.0", "::", ""):
        return config.mesh_host
    for seed in config.mesh_seeds:
        host, _, port = seed.rpartition(":")
        try:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                probe.connect((host, int(port)))  # no packet is sent: this only picks the route
                return str(probe.getsockname()[0])
        except OSError:
            continue
    raise ConfigError("--mesh-advertise-host is needed with --mesh-host 0.0.0.0 when no seed shows the route")


class ClusterNode:
    def __init__(self, config: GatewayConfig, ctx: GatewayContext) -> None:
        self.config = config
        self.ctx = ctx
        host = advertise_host(config)
        keys = config.mesh_key_list()
        keyring = Keyring(keys, config.mesh_cluster_label) if keys else None
        if config.mesh_cluster_label and keyring is None:
            # the label is AES-GCM's associated data: unencrypted frames carry none, so it separates nothing
            log.warning("--mesh-cluster-label has no effect without --mesh-key: clusters with different labels would merge")
        # with Kubernetes discovery, the gateway pods --router-selector matches are seeds too (fed by discovery)
        self.router_seeds = DiscoveredSeeds(config.mesh_port) if config.router_selector and config.kubernetes_discovery else None
        seeds = list(config.mesh_seeds) + ([self.router_seeds.seed] if self.router_seeds is not None else [])
        self.mesh = MeshNode(
            config.mesh_server_name,
            config.mesh_host,
            config.mesh_port,
            advertise_host=host,
            seeds=seeds,
            keyring=keyring,
            resolve=self.router_seeds.resolver() if self.router_seeds is not None else resolve_host,
        )
        self.replication: Replication | None = None
        self.workers: ReplicatedWorkers | None = None
        self.health: ReplicatedHealth | None = None
        self.load: ReplicatedLoad | None = None
        self.prefixes: SharedPrefixes | None = None
        self.pins: ReplicatedPins | None = None
        self._synced = not seeds  # the first node has nothing to catch up with
        self._started = trio.current_time()  # built inside the gateway's trio run
        self.replication_errors = 0
        self.error: str | None = None  # why the mesh is not running, if it is not
        self._kick = trio.Event()
        self._flush_wait: trio.CancelScope | None = None  # the flush task's wait, for an earlier deadline
        self._change_due: float | None = None  # a delayed local change is flushed by then (`changed`)
        # this node's own view for the cluster page (set by the gateway: `smg.ui.views.peer_view`)
        self.describe: Callable[[bool], dict[str, Any]] | None = None
        self._views: dict[bool, tuple[float, bytes]] = {}  # series? -> (built at, packed view)
        self._view_requests: dict[str, tuple[dict[str, Any], set[str], trio.Event]] = {}
        self._digests: tuple[float, dict[str, dict[str, Any]]] = (-math.inf, {})
        ctx.metrics.registry.register(MeshCollector(self.mesh))
        ctx.metrics.registry.register(ClusterCollector(self))

    @property
    def name(self) -> str:
        return self.mesh.name

    async def run(self, http_url: str, *, task_status: trio.TaskStatus[ClusterNode] = trio.TASK_STATUS_IGNORED) -> None:
        mesh = self.mesh
        mesh.meta = {"http": http_url, "version": __version__, "host": socket.gethostname()}
        if self.config.process_index is not None:  # one of the processes of --processes N on that host
            mesh.meta["process"] = self.config.process_index
        mesh.app_state = self._app_state
        mesh.merge_app_state = self._merge_app_state
        mesh.on_app_message = self._on_app_message
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._flush)
            nursery.start_soon(self._watch_members)
            nursery.start_soon(self._collect_garbage)
            if self.router_seeds is not None:
                nursery.start_soon(self._follow_router_seeds, self.router_seeds)
            try:
                await nursery.start(self._run_mesh)
            except* OSError as group:  # the bind failed: a start-up error, one line naming the flag (exit 2)
                config = self.config
                error = find_error(group, OSError)
                assert error is not None
                raise BindError.from_os_error("--mesh-port", config.mesh_port, error, config.mesh_host) from None
            task_status.started(self)

    async def _run_mesh(self, *, task_status: trio.TaskStatus[MeshNode] = trio.TASK_STATUS_IGNORED) -> None:
        """The mesh node, bound before `run` reports started; should it fail later, it starts again after a pause."""
        while True:
            try:
                # the name (and so the replica id) may come from the bound port: the stores
                # are built once bound, before the join's push-pull asks for their digests
                await self.mesh.run(on_bound=self._setup_stores, task_status=task_status)
            except* OSError as group:  # (nursery errors come grouped)
                if self.replication is None:
                    raise  # never bound: `run` reports it
                self.error = f"mesh stopped: {group.exceptions[0]}"
                log.error("%s; serving from local state, restarting in %gs", self.error, BIND_RETRY_SECS)
            task_status = trio.TASK_STATUS_IGNORED  # started once, with the first bind
            await trio.sleep(BIND_RETRY_SECS)

    def _setup_stores(self) -> None:
        self.error = None
        replica = new_replica_id(self.mesh.name)
        self.mesh.meta["boot"] = replica
        self.replication = Replication(self.mesh.name, HybridClock(replica))
        self.replication.on_change = self.changed
        self.workers = ReplicatedWorkers(self.ctx, self.replication)
        self.health = ReplicatedHealth(
            self.ctx, self.replication, self.mesh.name, self.alive_members, self.config.mesh_health_owners
        )
        # in-flight counts of alive members only: a killed gateway's requests died with it (the
        # workers see their connections close), so its counts leave the others' view as soon as
        # it is suspected, not seconds later when it is declared dead; a false suspicion only
        # hides a peer's share until it refutes
        self.load = ReplicatedLoad(self.ctx, self.replication, self.mesh.name, self._alive_names)
        self.ctx.registry.on_in_flight = self._in_flight_moved
        limiter = self.ctx.limiter
        if limiter is not None:  # counts of every node, read as one sliding window
            limiter.adopt_replica(replica)
            self.replication.add_store(RATE_LIMITS, limiter.counter, vet=limiter.vet)  # type: ignore[arg-type]
            limiter.on_delta = partial(self.replication.changed, RATE_LIMITS)
            limiter.share = self.limit_share
            limiter.sequence = partial(self.replication.sequence, RATE_LIMITS)
            limiter.confirmed = self._limits_confirmed
            limiter.admitters = self._admitters
        policy = base_policy(self.ctx.policy)
        if hasattr(policy, "shared"):  # cache_aware: match and record over every gateway's choices
            self.prefixes = SharedPrefixes(
                self.replication, self.config.mesh_prefix_budget, int(self.config.mesh_prefix_ttl_secs * 1000)
            )
            policy.shared = self.prefixes
        sticky = self.ctx.policy
        if isinstance(sticky, StickyPolicy):  # manual, --routing-key-override: a key's pin holds on every gateway
            self.pins = ReplicatedPins(self.replication, self.config.max_idle_secs, sticky.pins.max_keys)
            if isinstance(sticky.pins, LocalPins):
                self.pins.adopt(sticky.pins)
            sticky.pins = self.pins
        self.ctx.worker_sink = self.workers
        self.ctx.health_sink = self.health.checked
        self.ctx.registrar.should_check = self.health.should_check
        for worker in self.ctx.registry:  # --worker-urls: an explicit operator action, published
            self.workers.added(worker)

    # -- membership ---------------------------------------------------------------------

    @property
    def synced(self) -> bool:
        """Ready to serve: caught up with a peer's state (or nobody answered within SYNC_SECS)."""
        if not self._synced:
            if self.replication is not None and self.replication.synced():
                self._synced = True
                log.info("cluster %s: caught up with the cluster's state", self.name)
            elif trio.current_time() - self._started > SYNC_SECS:
                self._synced = True
                log.warning("cluster %s: no peer state within %gs; serving from local state", self.name, SYNC_SECS)
        return self._synced

    async def leave(self) -> None:
        """Leave gracefully: peers mark us `left`, not `dead`."""
        if self.mesh.swim is not None:
            await self.mesh.leave()

    def _states(self) -> list[tuple[str, State]]:
        """Every known member's name and state, read from SWIM directly: the member lists below
        are read per received message, flush and admission, so they build no member records."""
        swim = self.mesh.swim
        return [(m.name, m.state) for m in swim.members.values()] if swim is not None else []

    def known_members(self) -> list[str]:
        """Every member that still holds back tombstone GC: all but those that left."""
        return [name for name, state in self._states() if state is not State.LEFT]

    def alive_members(self) -> list[str]:
        """Members (us included) that own health checks: alive or suspect (load counts only the
        alive ones: `_alive_names`)."""
        return [name for name, state in self._states() if state in LIVE]

    def limit_share(self) -> float:
        """The part of a cluster-wide limit this side may use: alive / known members.

        Known members include the dead but not yet reaped, so during a partition
        each side keeps to its share and the total stays near the limit. A
        suspect counts as away: an isolated node cannot have its suspicions
        confirmed, so it declares the others dead only after Lifeguard's longest
        timeout, and until then it would apply the whole limit. Erring this way
        under-admits briefly on a false suspicion, never over-admits.
        """
        states = [state for _, state in self._states()]
        known = sum(1 for state in states if state is not State.LEFT)
        alive = sum(1 for state in states if state is State.ALIVE)
        return alive / known if known else 1.0

    def _alive_names(self) -> list[str]:
        """The alive members' names, sorted (read on the request path)."""
        return sorted(name for name, state in self._states() if state is State.ALIVE)

    def _limits_confirmed(self) -> int:
        """How far every alive peer has merged this node's rate-limit counts (suspects count as away)."""
        assert self.replication is not None
        return self.replication.confirmed(RATE_LIMITS, self._alive_names())

    def _admitters(self) -> tuple[int, int]:
        """Nodes admitting against the limit at once (the alive members, this one included), and
        this node's rank among them by name: the limiter splits the last units of room by it."""
        alive = self._alive_names()
        if self.name not in alive:
            return 1, 0
        return len(alive), alive.index(self.name)

    def live_peers(self) -> list[str]:
        """The other members that are alive or suspect: replication goes to them."""
        return [name for name, state in self._states() if state in LIVE and name != self.name]

    async def _watch_members(self) -> None:
        events = self.mesh.subscribe()
        async for event in events:
            text = MEMBER_EVENTS.get(event.state, event.state.value)
            severity = "warning" if event.state in (State.SUSPECT, State.DEAD) else "info"
            self.ctx.events.record(time.time(), "member", event.name, f"{text} (incarnation {event.incarnation})", severity)
            if event.state is State.LEFT and self.replication is not None:
                self.replication.forget(event.name)
            if self.health is not None and self.load is not None:
                self.health.apply()  # owners move with membership
                self.load.apply()
            self._kick.set()

    # -- replication --------------------------------------------------------------------

    def changed(self, delay: float = 0.0) -> None:
        """Something local changed: flush now, or within `delay` (`Replication.add_store`'s
        `send_delay`; any earlier flush takes the change along)."""
        if delay <= 0:
            self._kick.set()
            return
        due = trio.current_time() + delay
        if self._change_due is None or due < self._change_due:
            self._change_due = due
            wait = self._flush_wait
            if wait is not None and due < wait.deadline:
                wait.deadline = due

    async def _flush(self) -> None:
        """Send what is due, woken by a change, an ack, a membership change, a push-pull that
        found a store differing, a delayed change's deadline, or every FLUSH_SECS (the resend
        granularity). What goes out is still paced per peer and store by `Replication`: a
        change behind an unacknowledged interval waits for its ack."""
        while True:
            deadline = trio.current_time() + FLUSH_SECS
            if self._change_due is not None:
                deadline = min(deadline, self._change_due)
            with trio.move_on_at(deadline) as self._flush_wait:
                await self._kick.wait()
            self._flush_wait = None
            if self.load is not None:  # the in-flight counts as they are now ride with whatever goes
                self.load.publish()
            self._kick, self._change_due = trio.Event(), None
            replication = self.replication
            if replication is None:
                continue
            for peer, channel, payload in replication.outgoing(self.live_peers(), trio.current_time(), wall_ms()):
                self.mesh.send_to(peer, channel, payload)

    def _on_app_message(self, source: str, channel: str, payload: bytes) -> None:
        if channel in (VIEW, VIEW_REPLY):
            self._on_view_message(source, channel, payload)
            return
        replication = self.replication
        if channel not in CHANNELS or replication is None:
            log.warning("cluster %s: message on unknown channel '%s' from %s dropped", self.name, channel, source)
            return
        try:
            replies = replication.receive(source, channel, payload, self.known_members(), wall_ms())
        except ReplicationError as exc:
            self.replication_errors += 1
            log.warning("cluster %s: replication message from %s dropped: %s", self.name, source, exc)
            return
        for peer, reply_channel, reply in replies:
            self.mesh.send_to(peer, reply_channel, reply)  # (an ack calls `changed` through `Replication.on_change`)

    def _app_state(self) -> bytes:
        # not the soft stores changing with the traffic: they differ by their deltas in flight
        digests = self.replication.digests(at=trio.current_time()) if self.replication is not None else {}
        return cast(bytes, msgpack.packb({"digests": digests}, use_bin_type=True))

    def _merge_app_state(self, source: str, data: bytes) -> None:
        if self.replication is None:
            return
        try:
            body = msgpack.unpackb(data, raw=False)
            digests = body.get("digests") if isinstance(body, dict) else None
            differing = self.replication.compare(source, digests, trio.current_time())
        except (ValueError, ReplicationError) as exc:
            self.replication_errors += 1
            log.warning("cluster %s: push-pull state from %s ignored: %s", self.name, source, exc)
            return
        if differing:
            log.debug("cluster %s: stores %s differ from %s's: full state next", self.name, differing, source)
            self._kick.set()

    async def _follow_router_seeds(self, seeds: DiscoveredSeeds) -> None:
        """Gateway pods found by discovery are tried at once (the node may have started alone)."""
        while True:
            await seeds.changed.wait()
            seeds.changed = trio.Event()
            await self.mesh.reseed()

    def _in_flight_moved(self) -> None:
        """A request started or ended on a worker: its count goes with the flush due within
        LOAD_SECS (the prefix record of a routed request is due then too), so an idle node has
        no load timer to wake for and a busy one sends its counts in the traffic's flushes."""
        self.changed(LOAD_SECS)

    def _forget_removed_workers(self) -> None:
        """Delete this node's health reports and load counts of workers no longer registered."""
        replication = self.replication
        if replication is None:
            return
        registered = self.ctx.registry.get
        for store in (HEALTH, LOAD):
            records = replication.state(store)
            for key in per_node.orphans(records, self.name, lambda worker_id: registered(worker_id) is not None):
                replication.changed(store, records.delete(key, replication.stamp(wall_ms())))

    async def _collect_garbage(self) -> None:
        # the first round after 0.5-1.5 periods: members started together do not collect (and
        # send their raised floors to everyone) at the same instant every period
        wait = GC_SECS * random.uniform(0.5, 1.5)
        while True:
            await trio.sleep(wait)
            wait = GC_SECS
            self._forget_removed_workers()
            if self.pins is not None:
                self.pins.sweep()
            if self.replication is not None:
                for store, count in self.replication.collect(self.known_members()).items():
                    if count:
                        log.info("cluster %s: collected %d tombstones of %s", self.name, count, store)

    # -- the cluster page: each member's own view ------------------------------------------

    async def ask_views(self, series: bool, timeout: float) -> dict[str, dict[str, Any] | str]:
        """Every live peer's own view (`describe`), asked on the mesh; a peer that does not answer
        within `timeout` gets the reason instead."""
        peers = self.live_peers()
        request = secrets.token_hex(8)
        results: dict[str, dict[str, Any] | str] = {}
        done = trio.Event()
        waiting = set(peers)
        self._view_requests[request] = (results, waiting, done)
        payload = msgpack.packb({"id": request, "series": series}, use_bin_type=True)
        for peer in peers:
            if not self.mesh.send_to(peer, VIEW, payload):
                results[peer] = "its mesh stream is full"
                waiting.discard(peer)  # no answer can come: do not wait the timeout for it
        try:
            if waiting:
                with trio.move_on_after(timeout):
                    await done.wait()
        finally:
            del self._view_requests[request]
        for peer in peers:
            results.setdefault(peer, f"no answer on the mesh within {timeout:g}s")
        return results

    def _own_view(self, series: bool) -> bytes:
        """This node's view, packed; rebuilt at most every VIEW_CACHE_SECS."""
        now = trio.current_time()
        cached = self._views.get(series)
        if cached is not None and now - cached[0] < VIEW_CACHE_SECS:
            return cached[1]
        assert self.describe is not None
        packed = cast(bytes, msgpack.packb(self.describe(series), use_bin_type=True))
        self._views[series] = (now, packed)
        return packed

    def _on_view_message(self, source: str, channel: str, payload: bytes) -> None:
        try:
            body = msgpack.unpackb(payload, raw=False)
            if not isinstance(body, dict) or not isinstance(body.get("id"), str):
                raise ValueError("not a view message")
            if channel == VIEW:
                if self.describe is not None:
                    reply = {"id": body["id"], "view": self._own_view(body.get("series") is not False)}
                    self.mesh.send_to(source, VIEW_REPLY, msgpack.packb(reply, use_bin_type=True))
                return
            pending = self._view_requests.get(body["id"])
            if pending is None:
                return  # asked too long ago
            results, waiting, done = pending
            if source not in waiting:
                return
            view = msgpack.unpackb(body.get("view"), raw=False) if isinstance(body.get("view"), bytes) else None
            results[source] = view if isinstance(view, dict) else "its answer was not a view"
            waiting.discard(source)
            if not waiting:
                done.set()
        except (ValueError, TypeError) as exc:  # msgpack's unpack errors are ValueErrors
            log.warning("cluster %s: malformed view message from %s dropped: %s", self.name, source, exc)

    def store_digests(self, max_age: float = 0.0) -> dict[str, dict[str, Any]]:
        """Each store's entries and digest; computed again when older than `max_age` seconds
        (the cluster page's polls pass DIGEST_CACHE_SECS: digests sort and hash whole stores)."""
        now = trio.current_time()
        if now - self._digests[0] < max_age:
            return self._digests[1]
        stores = {}
        if self.replication is not None:
            for name, digest in self.replication.digests().items():
                stores[name] = {"entries": len(self.replication.state(name)), "digest": digest}
        self._digests = (now, stores)
        return stores

    # -- views for /mesh/* ---------------------------------------------------------------

    def status(self, digest_age: float = 0.0) -> dict[str, Any]:
        members = self.mesh.members()
        nodes = [
            {
                "name": m["name"],
                "address": m["address"],
                "http_address": m["meta"].get("http"),
                "host": m["meta"].get("host"),
                "process": m["meta"].get("process"),
                "status": m["status"],
                "incarnation": m["incarnation"],
            }
            for m in sorted(members, key=lambda m: m["name"])
        ]
        stores = self.store_digests(digest_age)
        status = {
            "node_name": self.name,
            "node_count": sum(1 for n in nodes if n["status"] in (State.ALIVE.value, State.SUSPECT.value)),
            "nodes": nodes,
            "stores": stores,
        }
        if self.error:
            status["error"] = self.error
        return status
