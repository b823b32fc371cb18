"""UDP and TCP on one port for the mesh, with sealing and a run-time fault filter.

UDP carries probes and gossip; TCP carries push-pull (one connection per
message, a 4-byte length prefix, then a sealed frame). Everything received is
opened and decoded here; anything that fails is dropped and counted by
reason, never raised into the node. Frames that fail authentication and the
outcome of TCP sends are also handed to the node's hooks (`on_rejected`,
`on_tcp_result`), which turn a key or label mismatch into a warning.
"""

from __future__ import annotations

import logging
import math
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from smg.mesh.keyring import NOT_MESH, Keyring, SealError, open_frame, seal
from smg.mesh.messages import Message
from smg.mesh.wire import FrameReader, WireError, decode_message, encode_message, frame_bytes

log = logging.getLogger("smg.mesh")

UDP_MAX = 65_507
RCVBUF = 4 * 1024 * 1024
TCP_TIMEOUT = 5.0
# one receive takes whatever a stream holds, up to this (more: malloc maps and unmaps the buffer every time)
RECEIVE_BYTES = 64 * 1024


@dataclass
class FaultFilter:
    """Faults injected at run time by tests and the chaos suite: drops by peer, random loss, and
    a delay on everything sent (this kernel has no `tc netem`, so latency is added here)."""

    drop_to: set[str] = field(default_factory=set)
    drop_from: set[str] = field(default_factory=set)
    loss: float = 0.0
    delay: float = 0.0  # seconds added before each packet, or each write of a stream's frames, leaves
    rng: random.Random = field(default_factory=random.Random)

    def outgoing_dropped(self, address: str) -> bool:
        return address in self.drop_to or (self.loss > 0 and self.rng.random() < self.loss)

    def incoming_dropped(self, host: str) -> bool:
        return host in self.drop_from


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class MeshTransport:
    def __init__(self, host: str, port: int, keyring: Keyring | None, deliver: Callable[[Message], None]) -> None:
        self.host = host
        self.port = port
        self.keyring = keyring
        self.deliver = deliver
        self.faults = FaultFilter()
        self.dropped: Counter[str] = Counter()
        self.sent_bytes = 0
        self.received_bytes = 0
        self.sent_packets = 0
        self.received_packets = 0
        self.on_rejected: Callable[[str, int, str, str], None] | None = None  # (host, port, "udp"/"tcp", cause)
        self.on_tcp_result: Callable[[str, str | None], None] | None = None  # (address, error or None)
        self._udp: trio.socket.SocketType | None = None
        self._nursery: trio.Nursery | None = None

    async def _bind(self) -> tuple[trio.socket.SocketType, list[trio.SocketListener]]:
        """UDP and TCP on one port number; with port 0, retry until a number is free for both."""
        for _ in range(20):
            udp = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
            udp.setsockopt(trio.socket.SOL_SOCKET, trio.socket.SO_RCVBUF, RCVBUF)
            try:
                await udp.bind((self.host, self.port))
            except OSError:
                udp.close()
                raise
            port = udp.getsockname()[1]
            try:
                listeners = await trio.open_tcp_listeners(port, host=self.host)
            except OSError:
                udp.close()
                if self.port:
                    raise
                continue  # the TCP side of that number is taken (often by an outgoing connection)
            self.port = port
            return udp, listeners
        raise OSError("no port number free for both UDP and TCP")

    async def run(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        udp, listeners = await self._bind()
        self._udp = udp
        with udp:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._udp_loop, udp)
                nursery.start_soon(trio.serve_listeners, self._tcp_handler, listeners)
                task_status.started(self.port)

    # -- receiving ----------------------------------------------------------------------

    def _accept(self, frame: bytes, host: str, port: int, via: str) -> None:
        self.received_bytes += len(frame)
        self.received_packets += 1
        if self.faults.incoming_dropped(host):
            self.dropped["fault_filter"] += 1
            return
        try:
            message = decode_message(open_frame(self.keyring, frame))
        except SealError as exc:
            self.dropped["unauthenticated"] += 1
            if self.on_rejected is not None:
                self.on_rejected(host, port, via, exc.cause)
            return
        except WireError:
            self.dropped["malformed"] += 1
            return
        self.deliver(message)

    async def _udp_loop(self, udp: trio.socket.SocketType) -> None:
        while True:
            frame, (host, port, *_) = await udp.recvfrom(UDP_MAX)
            self._accept(frame, host, port, "udp")

    async def _tcp_handler(self, stream: trio.SocketStream) -> None:
        """Frames until the peer closes: one for a push-pull, many on a per-peer stream. A frame
        begun must be complete within TCP_TIMEOUT; between frames, the stream may idle."""
        async with stream:
            host, port, *_ = stream.socket.getpeername()
            reader = FrameReader()
            begun = math.inf  # when the frame now arriving began (inf: none is)
            while True:
                try:
                    with trio.fail_at(begun + TCP_TIMEOUT):
                        data = await stream.receive_some(RECEIVE_BYTES)
                except (trio.TooSlowError, trio.BrokenResourceError):
                    data = b""  # stalled mid-frame, or reset: as a close
                frames = reader.feed(data)
                for frame in frames:
                    self._accept(frame, host, port, "tcp")
                if reader.refused:  # no smg frame is this long: someone else's protocol
                    self.dropped["oversize"] += 1
                    if self.on_rejected is not None:
                        self.on_rejected(host, port, "tcp", NOT_MESH)
                    return
                if not data:
                    if reader.pending:
                        self.dropped["truncated"] += 1
                    return
                if not reader.pending:
                    begun = math.inf
                elif frames or begun == math.inf:
                    begun = trio.current_time()

    # -- sending --------------------------------------------------------------------------

    async def send(self, address: str, message: Message, reliable: bool) -> None:
        if self.faults.outgoing_dropped(address):
            return
        if self.faults.delay:
            await trio.sleep(self.faults.delay)
        frame = seal(self.keyring, encode_message(message))
        self.sent_bytes += len(frame)
        self.sent_packets += 1
        host, port = split_address(address)
        if not reliable and len(frame) <= UDP_MAX:
            try:
                await self._udp.sendto(frame, (host, port))  # type: ignore[union-attr]
            except OSError as exc:
                log.debug("mesh: UDP to %s failed: %s", address, exc)
            return
        try:
            with trio.fail_after(TCP_TIMEOUT):
                stream = await trio.open_tcp_stream(host, port)
                async with stream:
                    await stream.send_all(frame_bytes(frame))
        except (OSError, trio.TooSlowError, trio.BrokenResourceError) as exc:
            log.debug("mesh: TCP to %s failed: %s", address, exc)
            if self.on_tcp_result is not None:
                self.on_tcp_result(address, str(exc) or type(exc).__name__)
            return
        if self.on_tcp_result is not None:
            self.on_tcp_result(address, None)

    def frame(self, message: Message) -> bytes:
        """A length-prefixed sealed frame, for a persistent stream (counted by `wrote`, once the
        kernel took it: a message framed again after a dropped connection counts once)."""
        return frame_bytes(seal(self.keyring, encode_message(message)))

    def wrote(self, frames: int, size: int) -> None:
        """A persistent stream's write of `frames` frames, `size` bytes in all, went out."""
        self.sent_bytes += size
        self.sent_packets += frames

    def send_soon(self, address: str, message: Message, reliable: bool) -> None:
        if self._nursery is not None:
            self._nursery.start_soon(self.send, address, message, reliable)
