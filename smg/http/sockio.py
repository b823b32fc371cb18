"""A write that skips trio's machinery when the kernel takes the bytes at once.

trio's `SocketStream.send_all` checks for a conflicting sender, tries the send, and then
yields to the scheduler (`cancel_shielded_checkpoint`) even though nothing blocked; a caller
that bounds the write also registers a deadline. For the small writes of a proxy (a request
to a worker, an answer or one SSE chunk to a client) that costs more than the system call.
`write_now` gives the bytes straight to the non-blocking descriptor; the caller sends what
did not fit the trio way, bounded as before. Only for plain sockets: a TLS stream's bytes
must go through its SSL object.
"""

from __future__ import annotations

import os

import trio


def stream_fd(stream: trio.abc.Stream) -> int:
    """The descriptor of a plain TCP stream, for `write_now`; -1 for any other stream."""
    return stream.socket.fileno() if type(stream) is trio.SocketStream else -1


def write_now(fd: int, data: bytes) -> int:
    """Write what the socket's send buffer takes now; the number of bytes written (0 when it is
    full). Raises `trio.BrokenResourceError` when the peer is gone or the socket is closed.

    The caller must stop using `fd` once it closes the stream: a descriptor number is reused."""
    try:
        return os.write(fd, data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(str(exc)) from exc
