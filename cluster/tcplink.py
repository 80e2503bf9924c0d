"""The peer Link over a plain TCP connection (SHOAL_CLUSTER_LINK=tcp).

The same `Frame` messages as gRPC's ``Peer.Link`` (proto/cluster.proto), each
sent as a 4-byte big-endian length and the serialised Frame. The objects here
have the read/write/cancel of a gRPC stream call (the dialler's side) and the
read/write/abort of a gRPC servicer context (the receiver's side), so
cluster/peers.py runs one protocol over either carrier.

Why: on the cross-node path an agent's gRPC frame costs several thread hand-offs
(grpc.aio's poller thread, the event-engine threads) per read and per write;
a frame on a socket the event loop reads itself costs one system call each way.
Figures in docs/architecture.md ("How a publish crosses nodes").

`FrameReader` cuts frames out of bytes (no I/O, so unit tests feed it bytes
split anywhere); a length above the bound or bytes that are not a Frame raise
`FrameError`, which ends that connection (logged), never the agent.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque

import grpc
from google.protobuf.message import DecodeError

from common.logs import kv
from proto import cluster_pb2 as pb

log = logging.getLogger("shoal.agent")

HEADER = struct.Struct(">I")
EOF = grpc.aio.EOF  # what read() returns at the end of the stream, as gRPC's calls do


class FrameError(Exception):
    """The peer sent something that is not a frame of ours (too long, or not a Frame)."""


class LinkAborted(Exception):
    """The receiver refused the link (abort); the connection is closed."""


def encode(frame: pb.Frame) -> bytes:
    data = frame.SerializeToString()
    return HEADER.pack(len(data)) + data


class FrameReader:
    """Bytes in, Frames out. At most `max_frame` bytes per frame. The frames before
    bad bytes are returned; `error` then says what was wrong (and feed raises it)."""

    def __init__(self, max_frame: int):
        self.max_frame = max_frame
        self.buf = bytearray()
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> list[pb.Frame]:
        if self.error is not None:
            raise self.error
        buf = self.buf
        buf += data
        out = []
        pos = 0
        n = len(buf)
        while n - pos >= 4:
            (size,) = HEADER.unpack_from(buf, pos)
            if size > self.max_frame:
                self.error = FrameError(f"frame of {size} bytes, more than {self.max_frame}")
                break
            if n - pos - 4 < size:
                break
            frame = pb.Frame()
            try:
                frame.ParseFromString(bytes(buf[pos + 4:pos + 4 + size]))
            except DecodeError as e:
                self.error = FrameError(f"not a frame: {e}")
                break
            out.append(frame)
            pos += 4 + size
        if self.error is not None:
            buf.clear()
            if not out:
                raise self.error
        elif pos:
            del buf[:pos]
        return out


def dead_after(sock: socket.socket | None, seconds: float) -> None:
    """Close the connection about `seconds` after its peer went away without a word: TCP
    keep-alive probes while it is idle (a third of the time before the first, then three
    more), TCP_USER_TIMEOUT while sent data waits unacknowledged. (Without them an idle
    link to a dead host stayed open until TCP gave up, about 15 minutes.)"""
    if sock is None:
        return
    idle = max(1, int(seconds / 3))
    interval = max(1, int((seconds - idle) / 3))
    for level, opt, value in ((socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
                              (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", None), idle),
                              (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", None), interval),
                              (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", None), 3),
                              (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", None), int(seconds * 1000))):
        if opt is not None:
            try:
                sock.setsockopt(level, opt, value)
            except OSError:
                pass  # (not on this platform)


class _Stream(asyncio.Protocol):
    """One TCP connection carrying frames both ways: frames read are queued for read()."""

    def __init__(self, max_frame: int, dead_s: float = 0.0):
        self.reader = FrameReader(max_frame)
        self.dead_s = dead_s
        self.frames: deque = deque()
        self.waiter: asyncio.Future | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.error: Exception | None = None
        self.drained: asyncio.Future | None = None
        self.paused = False

    # -- asyncio.Protocol ----------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        if self.dead_s:
            dead_after(transport.get_extra_info("socket"), self.dead_s)

    def data_received(self, data: bytes) -> None:
        try:
            frames = self.reader.feed(data)
        except FrameError as e:
            frames = []
            self.error = e
        if frames:
            self.frames.extend(frames)
            self._wake()
        if self.reader.error is not None:  # (the frames before the bad bytes are read first)
            self.error = self.reader.error
            self.transport.abort()

    def eof_received(self):
        return False  # close

    def connection_lost(self, exc) -> None:
        self.closed = True
        self._wake()
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.drained is not None and not self.drained.done():
            self.drained.set_result(None)

    def _wake(self) -> None:
        w = self.waiter
        if w is not None and not w.done():
            w.set_result(None)

    # -- the call's side -------------------------------------------------------
    async def read(self):
        while not self.frames:
            if self.closed:
                if self.error is not None:
                    raise self.error
                return EOF
            self.waiter = asyncio.get_running_loop().create_future()
            await self.waiter
            self.waiter = None
        return self.frames.popleft()

    async def write(self, frame: pb.Frame) -> None:
        if self.closed:
            raise self._why()
        self.transport.write(encode(frame))
        while self.paused and not self.closed:  # the peer does not read: wait (push back)
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained
        if self.closed:
            raise self._why()

    def _why(self) -> Exception:
        """Why a closed link cannot be written: the bad bytes that closed it, if they did
        (logged as such, whichever of read and write comes first), else the link closed."""
        return self.error if self.error is not None else ConnectionError("link closed")

    def cancel(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def dial(addr: str, max_frame: int, dead_s: float = 0.0) -> _Stream:
    """The dialler's side of a Link to host:port."""
    host, _, port = addr.rpartition(":")
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_connection(lambda: _Stream(max_frame, dead_s), host.strip("[]"), int(port))
    return stream


class _Context:
    """The receiver's side, as a gRPC servicer context: read, write, abort."""

    def __init__(self, stream: _Stream):
        self.stream = stream
        self.read = stream.read
        self.write = stream.write

    def peer(self) -> str:
        """As gRPC's context.peer(): the other end's address."""
        t = self.stream.transport
        name = t.get_extra_info("peername") if t is not None else None
        return f"tcp:{name[0]}:{name[1]}" if name else "tcp:?"

    async def abort(self, code, details: str):
        # gRPC would send the status; here the refused dialler sees the stream end (it
        # reads our hello first when it is the wire version that differs)
        self.stream.cancel()
        raise LinkAborted(f"{code.name}: {details}")


class LinkServer:
    def __init__(self, server: asyncio.AbstractServer, running: set):
        self.server = server
        self.running = running

    @property
    def port(self) -> int:
        return self.server.sockets[0].getsockname()[1]

    def close(self) -> None:
        """Stop listening and end every link."""
        self.server.close()
        for t in list(self.running):
            t.cancel()


async def serve(addr: str, link, max_frame: int, dead_s: float = 0.0) -> LinkServer:
    """Listen on host:port (port 0: any) and run `link(None, context)` (PeerService.Link)
    for every connection."""
    host, _, port = addr.rpartition(":")
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task] = set()  # (a task nobody holds may be collected)

    def make():
        stream = _Stream(max_frame, dead_s)
        orig = stream.connection_made

        def made(transport):
            orig(transport)
            t = loop.create_task(_run(stream))
            running.add(t)
            t.add_done_callback(running.discard)

        stream.connection_made = made
        return stream

    async def _run(stream: _Stream) -> None:
        peer = stream.transport.get_extra_info("peername")
        try:
            await link(None, _Context(stream))
        except LinkAborted:
            pass
        except FrameError as e:
            log.warning("bad frame from a peer: link closed", extra=kv(addr=str(peer), error=str(e)[:200]))
        except (ConnectionError, asyncio.CancelledError):
            pass
        except Exception:
            log.exception("peer link failed", extra=kv(addr=str(peer)))
        finally:
            stream.cancel()

    server = await loop.create_server(make, host.strip("[]") or None, int(port))
    return LinkServer(server, running)
