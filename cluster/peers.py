"""gRPC between the agents of a cluster (proto/cluster.proto).

Every agent serves ``Peer.Link`` on SHOAL_CLUSTER_ADDR and dials one Link to
every other node (`PeerOut`). On a Link the dialler sends publishes (batched:
what was queued during one loop pass leaves as one frame) and route-sync
requests; the receiver answers with the seqs it owns and the syncs it did.
What the receiver did not acknowledge is sent again after a reconnect; the
receiver drops a seq it already has (`Origin.seen`), so QoS 2 stays exactly once.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import OrderedDict, deque

import grpc

from common.logs import kv
from proto import cluster_pb2 as pb
from proto import cluster_pb2_grpc as pbg

from . import tcplink

log = logging.getLogger("shoal.agent")

CLUSTER_WIRE = 1  # version of the node-to-node protocol; a peer speaking another is refused
RECONNECT_MAX = 2.0  # seconds between reconnect attempts at most


class WireMismatch(Exception):
    pass


class Entry:
    __slots__ = ("seq", "pub", "ref", "at", "size")

    def __init__(self, seq, pub, ref, at, size=0):
        self.seq = seq
        self.pub = pub
        self.ref = ref  # (router ident, token) of the publish this node must confirm, or None
        self.at = at  # monotonic time it was queued (its wait counts against Message Expiry)
        self.size = size  # bytes of the message (a frame holds SHOAL_CLUSTER_FRAME_BYTES or one message)


def take(queue: deque, most: int, most_bytes: int) -> list:
    """The entries of the next frame, from the front of queue: at most `most` of
    them and, past the first, at most `most_bytes` bytes of messages."""
    out = []
    size = 0
    while queue and len(out) < most:
        e = queue[0]
        size += e.size
        if out and size > most_bytes:
            break
        out.append(queue.popleft())
    return out


def _aged(entries, now: float) -> list:
    """The entries' Pubs, each saying how long it waited here (whole milliseconds)."""
    pubs = []
    for e in entries:
        ms = int((now - e.at) * 1000)
        if ms:
            e.pub.queued_ms = ms
        pubs.append(e.pub)
    return pubs


class PeerOut:
    """The Link this node dials to one other node."""

    def __init__(self, agent, node: str, addr: str, link_addr: str | None = None):
        self.agent = agent
        self.node = node
        self.addr = addr  # gRPC
        self.link_addr = link_addr  # SHOAL_CLUSTER_LINK=tcp: the peer's tcp link (None: Peer.Link over gRPC)
        self.queue: deque[Entry] = deque()
        self.unacked: OrderedDict[int, Entry] = OrderedDict()
        self.syncs: dict[int, tuple[int, asyncio.Future]] = {}
        self.new_syncs: list[int] = []
        # seqs go on from the last link to that node: the receiver (the same process, when
        # that node was cut off or frozen and came back) keeps the seqs it saw from this
        # agent instance and drops them as sent again; numbering anew from 1 lost the next
        # messages (issue 11, the partition tests and the chaos run)
        self._seq = agent.peer_seqs.setdefault(node, itertools.count(1))
        self._sync_ids = itertools.count(1)
        self.wake = asyncio.Event()
        self.retry = asyncio.Event()
        self.connected = False
        self.closed = False
        self.failures = 0
        self.acked_hook = None  # called after acknowledgements came (the agent's push back check)
        self.task = asyncio.get_running_loop().create_task(self.run())

    def size(self) -> int:
        return len(self.queue) + len(self.unacked)

    def send(self, topic: str, body: bytes, normal: bool, groups: list, ref, qos: int, direct=None) -> None:
        """direct: a pb.Direct, for the one session named there (cluster/moves.py)."""
        seq = next(self._seq) if qos > 0 else 0
        pub = pb.Pub(seq=seq, topic=topic, msg=body, normal=normal,
                     groups=[pb.Group(group=g, filter=f) for g, f in groups])
        if direct is not None:
            pub.direct.CopyFrom(direct)
        self.queue.append(Entry(seq, pub, ref, time.monotonic(), len(body)))
        self.wake.set()

    def relink(self, addr: str, link_addr: str | None) -> None:
        """The node's record names other addresses: end the link; it is made again there
        (and sends again what that node did not confirm)."""
        self.addr, self.link_addr = addr, link_addr
        if self._call is not None:
            self._call.cancel()
        self.retry.set()

    _call = None

    def request_sync(self, revision: int) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        sid = next(self._sync_ids)
        self.syncs[sid] = (revision, fut)
        self.new_syncs.append(sid)
        self.wake.set()
        return fut

    def close(self) -> list:
        """The node left: stop, and return the refs it will never confirm."""
        self.closed = True
        self.task.cancel()
        for _, fut in self.syncs.values():
            if not fut.done():
                fut.set_result(False)
        self.syncs.clear()
        refs = [e.ref for e in self.unacked.values() if e.ref is not None]
        refs += [e.ref for e in self.queue if e.ref is not None]
        self.unacked.clear()
        self.queue.clear()
        return refs

    async def run(self) -> None:
        backoff = 0.05
        me = self.agent
        while not self.closed:
            channel = call = None
            try:
                if self.link_addr:
                    call = await tcplink.dial(self.link_addr, me.max_frame)
                else:
                    channel = grpc.aio.insecure_channel(self.addr)
                    call = pbg.PeerStub(channel).Link()
                self._call = call
                await call.write(pb.Frame(hello=pb.Hello(node=me.node, wire=CLUSTER_WIRE, instance=me.instance)))
                first = await call.read()
                if first is grpc.aio.EOF:
                    raise ConnectionError("closed before hello")
                if first.hello.wire != CLUSTER_WIRE:
                    raise WireMismatch(f"node {self.node} speaks cluster wire {first.hello.wire}, this node {CLUSTER_WIRE}: "
                                       "run the same Shoal version on every node")
                self.connected = True
                if self.failures:
                    log.info("peer link up again", extra=kv(peer=self.node, addr=self.link_addr or self.addr, resent=len(self.unacked)))
                self.failures = 0
                backoff = 0.05
                # what the peer did not confirm goes again, in order, before anything new
                resend = list(self.unacked.values())
                self.new_syncs = list(self.syncs)
                loop = asyncio.get_running_loop()
                reader = loop.create_task(self._read(call))
                writer = loop.create_task(self._write(call, resend))
                try:
                    # whichever ends first (the stream broke) ends the other
                    done, _ = await asyncio.wait([reader, writer], return_when=asyncio.FIRST_COMPLETED)
                finally:
                    reader.cancel()
                    writer.cancel()
                for t in done:
                    if not t.cancelled() and t.exception() is not None:
                        raise t.exception()
                raise ConnectionError("stream ended")
            except asyncio.CancelledError:
                if channel is not None:
                    await channel.close(None)
                elif call is not None:
                    call.cancel()
                raise
            except WireMismatch as e:
                log.error("peer refused: %s", e, extra=kv(peer=self.node, addr=self.addr))
                backoff = RECONNECT_MAX
            except Exception as e:
                self.failures += 1
                if self.failures == 1 or self.failures % 50 == 0:
                    log.warning("peer link down, reconnecting", extra=kv(peer=self.node, addr=self.link_addr or self.addr,
                                                                        error=str(e).splitlines()[0][:200] if str(e) else type(e).__name__,
                                                                        queued=self.size()))
            self.connected = False
            self._call = None
            if channel is not None:
                await channel.close(None)
            elif call is not None:
                call.cancel()
            if self.closed:
                return
            self.retry.clear()
            try:  # (relink() ends the wait: the node's record names a new address)
                await asyncio.wait_for(self.retry.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, RECONNECT_MAX)

    async def _write(self, call, resend: list) -> None:
        batch_max = self.agent.settings.cluster_batch
        bytes_max = self.agent.settings.cluster_frame_bytes
        resend = deque(resend)
        while resend:
            await call.write(pb.Frame(pubs=_aged(take(resend, batch_max, bytes_max), time.monotonic())))
        while True:
            if not self.queue and not self.new_syncs:
                self.wake.clear()
                await self.wake.wait()
                await asyncio.sleep(0)  # one loop pass more: gather what that pass queues
            out = take(self.queue, batch_max, bytes_max)
            unacked = self.unacked
            for e in out:
                if e.seq:
                    unacked[e.seq] = e
            pubs = _aged(out, time.monotonic())
            syncs = []
            if self.new_syncs:
                syncs = [pb.Sync(id=sid, revision=self.syncs[sid][0]) for sid in self.new_syncs if sid in self.syncs]
                self.new_syncs = []
            self.agent.frames_sent += 1
            await call.write(pb.Frame(pubs=pubs, syncs=syncs))

    async def _read(self, call) -> None:
        try:
            while True:
                frame = await call.read()
                if frame is grpc.aio.EOF:
                    break
                self.agent.frames_received += 1
                for seq in frame.acks:
                    e = self.unacked.pop(seq, None)
                    if e is not None and e.ref is not None:
                        self.agent.peer_confirmed(self.node, e.ref)
                for sid in frame.synced:
                    s = self.syncs.pop(sid, None)
                    if s is not None and not s[1].done():
                        s[1].set_result(True)
                if self.acked_hook is not None:
                    self.acked_hook()
        except asyncio.CancelledError:
            raise
        except Exception:
            pass
        call.cancel()


class Origin:
    """What this node knows of one other node's agent instance that dials it."""

    def __init__(self, node: str, instance: str, keep: int):
        self.node = node
        self.instance = instance
        self.seen: OrderedDict[int, bool] = OrderedDict()  # seq -> owned here (False: in progress)
        self.keep = keep
        self.acks: list[int] = []
        self.synced: list[int] = []
        self.wake = asyncio.Event()
        self.link: object | None = None  # the newest Link of this origin (PeerService.Link): it answers

    def mark(self, seq: int) -> bool | None:
        """None: new; False: in progress; True: owned already."""
        st = self.seen.get(seq)
        if st is None:
            self.seen[seq] = False
            if len(self.seen) > self.keep:
                self.seen.popitem(last=False)
        return st

    def owned(self, seq: int) -> None:
        if seq in self.seen:
            self.seen[seq] = True
        self.acks.append(seq)
        self.wake.set()

    def sync_done(self, sid: int) -> None:
        self.synced.append(sid)
        self.wake.set()


class PeerService(pbg.PeerServicer):
    def __init__(self, agent):
        self.agent = agent
        self.origins: dict[tuple[str, str], Origin] = {}

    async def Link(self, request_iterator, context):  # noqa: N802 (gRPC's name)
        agent = self.agent
        first = await context.read()
        if first is grpc.aio.EOF or not first.HasField("hello") or not first.hello.node:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first frame must be a hello naming the node")
        hello = first.hello
        if hello.wire != CLUSTER_WIRE:
            log.error("peer refused: another cluster wire version", extra=kv(peer=hello.node, wire=hello.wire, ours=CLUSTER_WIRE))
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"node {agent.node} speaks cluster wire {CLUSTER_WIRE}, you speak {hello.wire}: "
                                "run the same Shoal version on every node")
        key = (hello.node, hello.instance)
        origin = self.origins.get(key)
        if origin is None:
            # a new instance of that node: forget the old ones
            for k in [k for k in self.origins if k[0] == hello.node]:
                del self.origins[k]
            origin = self.origins[key] = Origin(hello.node, hello.instance, 2 * agent.settings.cluster_max_queued + 1000)
        await context.write(pb.Frame(hello=pb.Hello(node=agent.node, wire=CLUSTER_WIRE, instance=agent.instance)))
        # the newest link of an origin answers for it: an older one may sit on a connection
        # that died unseen (a partition: no FIN came), and acks written there were lost while
        # the dialler, on its new link, waited for them
        me = origin.link = object()
        origin.wake.set()  # (an older link's answering task wakes and ends)
        writer = asyncio.get_running_loop().create_task(self._answer(context, origin, me))
        try:
            while True:
                frame = await context.read()
                if frame is grpc.aio.EOF or origin.link is not me:
                    break
                agent.frames_received += 1
                try:
                    agent.received(origin, frame)
                except Exception:
                    log.exception("bad frame from a peer", extra=kv(peer=hello.node))
        finally:
            writer.cancel()

    async def TakeoverSession(self, request, context):  # noqa: N802 (gRPC's name)
        return await self.agent.ownership.takeover_asked(request, context)

    async def AdoptSession(self, request, context):  # noqa: N802 (gRPC's name)
        return await self.agent.drain.adopt_asked(request)

    async def _answer(self, context, origin: Origin, me: object) -> None:
        while origin.link is me:
            if not origin.acks and not origin.synced:
                origin.wake.clear()
                await origin.wake.wait()
                await asyncio.sleep(0)
                if origin.link is not me:
                    return  # a newer link answers (what is waiting stays for it)
            acks, origin.acks = origin.acks, []
            synced, origin.synced = origin.synced, []
            self.agent.frames_sent += 1
            await context.write(pb.Frame(acks=acks, synced=synced))
