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


class _Stream(asyncio.Protocol):
    """One TCP connection carrying frames both ways: frames read are queued for read()."""

    def __init__(self, max_frame: int):
        self.reader = FrameReader(max_frame)
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
            raise ConnectionError("link closed")
        self.transport.write(encode(frame))
        while self.paused and not self.closed:  # the peer does not read: wait (push back)
            self.drained = asyncio.get_running_loop().create_future()
            await self.drained
        if self.closed:
            raise ConnectionError("link closed")

    def cancel(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def dial(addr: str, max_frame: int) -> _Stream:
    """The dialler's side of a Link to host:port."""
    host, _, port = addr.rpartition(":")
    loop = asyncio.get_running_loop()
    _, stream = await loop.create_connection(lambda: _Stream(max_frame), host.strip("[]"), int(port))
    return stream


class _Context:
    """The receiver's side, as a gRPC servicer context: read, write, abort."""

    def __init__(self, stream: _Stream):
        self.stream = stream
        self.read = stream.read
        self.write = stream.write

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


async def serve(addr: str, link, max_frame: int) -> LinkServer:
    """Listen on host:port (port 0: any) and run `link(None, context)` (PeerService.Link)
    for every connection."""
    host, _, port = addr.rpartition(":")
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task] = set()  # (a task nobody holds may be collected)

    def make():
        stream = _Stream(max_frame)
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
