"""The peer Link's plain TCP carrier (cluster/tcplink.py) and the frame cutting of the
sender (cluster/peers.py take): bytes split anywhere, bounds, garbage, and a real
loopback connection between a dialler and a server."""
from __future__ import annotations

import asyncio
import struct
from collections import deque

import pytest

from cluster import tcplink
from cluster.peers import Entry, take
from proto import cluster_pb2 as pb


def frames() -> list[pb.Frame]:
    return [
        pb.Frame(hello=pb.Hello(node="n1", wire=1, instance="abc")),
        pb.Frame(pubs=[pb.Pub(seq=1, topic="a/b", msg=b"\x97" + b"x" * 300, normal=True, queued_ms=5),
                       pb.Pub(seq=0, topic="a/c", msg=b"", groups=[pb.Group(group="g", filter="a/#")])]),
        pb.Frame(),  # an empty frame is a frame (0 bytes)
        pb.Frame(acks=[1, 2, 3], synced=[9]),
    ]


def test_frames_split_at_every_offset():
    wire = b"".join(tcplink.encode(f) for f in frames())
    for cut in range(len(wire) + 1):
        r = tcplink.FrameReader(1 << 20)
        got = r.feed(wire[:cut]) + r.feed(wire[cut:])
        assert got == frames(), cut
        assert not r.buf


def test_frames_fed_a_byte_at_a_time():
    wire = b"".join(tcplink.encode(f) for f in frames())
    r = tcplink.FrameReader(1 << 20)
    got = []
    for i in range(len(wire)):
        got += r.feed(wire[i:i + 1])
    assert got == frames()


def test_a_frame_longer_than_the_bound_is_refused_at_its_header():
    r = tcplink.FrameReader(1000)
    assert r.feed(tcplink.encode(pb.Frame(acks=list(range(100))))) != []
    with pytest.raises(tcplink.FrameError, match="1001 bytes, more than 1000"):
        r.feed(struct.pack(">I", 1001))  # refused before its body arrives
    with pytest.raises(tcplink.FrameError):
        r.feed(tcplink.encode(pb.Frame()))  # and nothing after it is read


def test_the_frames_before_bad_bytes_are_returned():
    r = tcplink.FrameReader(1000)
    good = pb.Frame(acks=[4])
    assert r.feed(tcplink.encode(good) + struct.pack(">I", 5000)) == [good]
    assert "5000 bytes" in str(r.error)


def test_bytes_that_are_no_frame_raise_frame_error_only():
    r = tcplink.FrameReader(1 << 20)
    with pytest.raises(tcplink.FrameError, match="not a frame"):
        r.feed(struct.pack(">I", 5) + b"\xff\xff\xff\xff\xff")


def _entry(seq: int, size: int) -> Entry:
    return Entry(seq, "t", b"x" * size, True, [], None, 0.0)


def test_take_bounds_a_frame_by_count_and_by_bytes():
    q = deque(_entry(i, 400) for i in range(1, 11))
    assert [e.seq for e in take(q, 3, 10_000)] == [1, 2, 3]  # count
    assert [e.seq for e in take(q, 100, 1000)] == [4, 5]  # 800 bytes; a third makes 1,200
    assert [e.seq for e in take(q, 100, 10)] == [6]  # one message always goes, whatever its size
    assert [e.seq for e in take(q, 100, 10_000)] == [7, 8, 9, 10]
    assert take(q, 100, 10_000) == []


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, 30))


def test_dial_and_serve_carry_frames_both_ways():
    """A server whose Link answers every frame with the seqs of its pubs, as PeerService does."""

    async def link(_requests, context):
        while True:
            f = await context.read()
            if f is tcplink.EOF:
                return
            await context.write(pb.Frame(acks=[p.seq for p in f.pubs]))

    async def main():
        server = await tcplink.serve("127.0.0.1:0", link, 1 << 20)
        try:
            call = await tcplink.dial(f"127.0.0.1:{server.port}", 1 << 20)
            for i in range(1, 201):
                await call.write(pb.Frame(pubs=[pb.Pub(seq=i, topic="t", msg=b"m" * i)]))
            acks = []
            while len(acks) < 200:
                f = await call.read()
                assert f is not tcplink.EOF
                acks += f.acks
            assert acks == list(range(1, 201))
            call.cancel()
            assert await call.read() is tcplink.EOF
        finally:
            server.close()

    _run(main())


def test_abort_and_garbage_end_that_connection_only():
    """abort() (a peer of another wire version) and a peer sending bytes that are no frame
    each end their own connection; the server goes on serving the next one."""
    seen = []

    async def link(_requests, context):
        f = await context.read()
        seen.append(f.hello.node)
        if f.hello.wire != 1:
            import grpc

            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, "another wire")
        await context.write(pb.Frame(hello=pb.Hello(node="srv", wire=1)))
        while (await context.read()) is not tcplink.EOF:
            pass

    async def main():
        server = await tcplink.serve("127.0.0.1:0", link, 1000)
        addr = f"127.0.0.1:{server.port}"
        try:
            bad = await tcplink.dial(addr, 1000)
            await bad.write(pb.Frame(hello=pb.Hello(node="old", wire=99)))
            assert await bad.read() is tcplink.EOF  # refused: the stream ends
            _, w = await asyncio.open_connection("127.0.0.1", server.port)
            w.write(tcplink.encode(pb.Frame(hello=pb.Hello(node="garbler", wire=1))))
            w.write(struct.pack(">I", 1 << 30))  # longer than the bound: that link closes
            await w.drain()
            good = await tcplink.dial(addr, 1000)
            await good.write(pb.Frame(hello=pb.Hello(node="good", wire=1)))
            f = await good.read()
            assert f.hello.node == "srv"
            good.cancel()
            w.close()
        finally:
            server.close()
        assert sorted(seen) == ["garbler", "good", "old"]

    _run(main())


def test_both_ends_of_a_link_close_a_connection_whose_peer_went_dead():
    """SHOAL_CLUSTER_LINK_DEAD_AFTER: keep-alive probes and TCP_USER_TIMEOUT on the dialled
    and the accepted socket (without them an idle link to a dead host stayed open until TCP
    gave up); none without the setting, as before."""
    import socket

    seen = []

    async def link(_requests, context):
        seen.append(context.stream.transport.get_extra_info("socket"))
        await context.read()

    def opts(sock):
        return (sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) != 0,
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT))

    async def main():
        server = await tcplink.serve("127.0.0.1:0", link, 1 << 20, 15.0)
        plain = await tcplink.serve("127.0.0.1:0", link, 1 << 20)
        try:
            call = await tcplink.dial(f"127.0.0.1:{server.port}", 1 << 20, 15.0)
            old = await tcplink.dial(f"127.0.0.1:{plain.port}", 1 << 20)
            while len(seen) < 2:
                await asyncio.sleep(0.01)  # (polling for the accepts, bounded by _run's 30 s)
            assert opts(call.transport.get_extra_info("socket")) == (True, 5, 3, 3, 15000)
            accepted = {s.getsockname()[1]: s for s in seen}
            assert opts(accepted[server.port]) == (True, 5, 3, 3, 15000)
            assert opts(old.transport.get_extra_info("socket"))[0] is False
            assert opts(accepted[plain.port])[0] is False
            call.cancel()
            old.cancel()
        finally:
            server.close()
            plain.close()

    _run(main())
