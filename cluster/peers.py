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
from .datalink import RESEND_AFTER, RESEND_CHECK, RESEND_MAX, SEND_RETRY, DataLink
from .keepalive import channel_options
from core import peerdata

log = logging.getLogger("shoal.agent")

CLUSTER_WIRE = 1  # version of the node-to-node protocol; a peer speaking another is refused
RECONNECT_MAX = 2.0  # seconds between reconnect attempts at most


class WireMismatch(Exception):
    pass


class Entry:
    __slots__ = ("seq", "topic", "body", "normal", "groups", "ref", "at", "size", "msg", "sent", "direct", "origin")

    def __init__(self, seq, topic, body, normal, groups, ref, at, msg=None, direct=None, origin=None):
        self.seq = seq
        self.topic = topic
        self.body = body  # the message packed (core/records.py's wire form)
        self.normal = normal
        self.groups = groups
        self.ref = ref  # (router ident, token) of the publish this node must confirm, or None
        self.at = at  # monotonic time it was queued (its wait counts against Message Expiry)
        self.size = len(body)  # bytes of the message (a frame holds SHOAL_CLUSTER_FRAME_BYTES or one message)
        self.msg = msg  # the message decoded, when known (the direct link counts its expiry down itself)
        self.sent = 0.0  # monotonic time it last went on the direct data link
        self.direct = direct  # a pb.Direct: for a session that moved (cluster/moves.py); only on the Link
        # [router instance, seq]: this node's router sent it first (SHOAL_CLUSTER_ROUTER_SENDS) and
        # handed it here; the receiving router takes it once by that origin
        self.origin = origin


def _peer_of(context) -> str:
    """The address of a Link's other end (gRPC's context.peer(), or the tcp link's)."""
    try:
        return str(context.peer())
    except Exception:  # (a context without one)
        return "?"


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
        pub = pb.Pub(seq=e.seq, topic=e.topic, msg=e.body, normal=e.normal,
                     groups=[pb.Group(group=g, filter=f) for g, f in e.groups])
        if e.direct is not None:
            pub.direct.CopyFrom(e.direct)
        if e.origin is not None:
            pub.origin_instance, pub.origin_seq = e.origin
        ms = int((now - e.at) * 1000)
        if ms:
            pub.queued_ms = ms
        pubs.append(pub)
    return pubs


def _seq_of(e: Entry) -> int:
    return e.seq


def _data_op(e: Entry, now: float) -> bytes | None:
    """The entry's REMOTE_PUB for the direct data link; its Message Expiry counts the time it
    waited here (None: it ran out meanwhile)."""
    body = e.body
    m = e.msg
    if m is not None:
        aged = peerdata.aged(m, e.at, now)
        if aged is None:
            return None
        if aged is not m:
            body = peerdata.packb(aged)
    return peerdata.remote_pub(body, e.normal, e.groups, e.seq)


class PeerOut:
    """The Link this node dials to one other node."""

    def __init__(self, agent, node: str, addr: str, link_addr: str | None = None, data_addr: str | None = None):
        self.agent = agent
        self.node = node
        self.addr = addr  # gRPC
        self.link_addr = link_addr  # SHOAL_CLUSTER_LINK=tcp: the peer's tcp link (None: Peer.Link over gRPC)
        # SHOAL_CLUSTER_LINK=direct: the publishes go to the peer's router (cluster/datalink.py),
        # the Link carries the route syncs only
        self.data_addr: str | None = None
        self.data: DataLink | None = None  # the data link the publishes go on now (None: the Link)
        # the data link while the publishes go over the Link because it had no connection for
        # SHOAL_CLUSTER_DATA_FALLBACK_AFTER (it tries again in the background; cluster/datalink.py)
        self.standby: DataLink | None = None
        self.fallen_back = False
        self.fallbacks = 0
        self._data_flush = None
        self._resender: asyncio.Task | None = None
        self.resend_after = RESEND_AFTER
        self.resent = 0
        self.queue: deque[Entry] = deque()
        self.link_queue: deque[Entry] = deque()  # (direct link on) messages for a moved session: on the Link
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
        if data_addr:
            self.set_data(data_addr)

    def size(self) -> int:
        return len(self.queue) + len(self.link_queue) + len(self.unacked)

    def send(self, topic: str, body: bytes, normal: bool, groups: list, ref, qos: int, direct=None,
             msg: list | None = None, origin: list | None = None) -> None:
        """direct: a pb.Direct, for the one session named there (cluster/moves.py); such a
        message always goes on the Link (the receiving agent hands it over), also when the
        others go on the direct data link."""
        seq = next(self._seq) if qos > 0 else 0
        e = Entry(seq, topic, body, normal, groups, ref, time.monotonic(), msg, direct, origin)
        if direct is not None and self.data is not None:
            self.link_queue.append(e)
            self.wake.set()
            return
        self.queue.append(e)
        if self.data is not None:
            if self._data_flush is None:
                self._data_flush = asyncio.get_running_loop().call_soon(self._flush_data)
        else:
            self.wake.set()

    # -- the direct data link (SHOAL_CLUSTER_LINK=direct) ---------------------------------
    def set_data(self, addr: str | None) -> None:
        """The peer's router listens for our publishes at addr (None: it does not: they go
        on the Link again). What it did not confirm goes again at once on the new link."""
        if addr == self.data_addr:
            return
        old = self.data
        self.data_addr = addr
        if old is not None:
            old.close()
            self.data = None
        if self.standby is not None:
            self.standby.close()
            self.standby = None
        was_fallen_back, self.fallen_back = self.fallen_back, False
        if not addr:
            if self._resender is not None:
                self._resender.cancel()
                self._resender = None
            if not was_fallen_back:  # (fallen back: the publishes go on the Link already)
                self.relink(self.addr, self.link_addr)  # (the Link's reconnect sends the unconfirmed again)
            self.wake.set()
            return
        self.fallen_back = was_fallen_back
        link = DataLink(self, addr)
        if self.fallen_back:
            self.standby = link  # (the publishes come back to it once it has a connection)
        else:
            self.data = link  # (what waits goes once it has a connection: data_up)
        if self._resender is None:
            self._resender = asyncio.get_running_loop().create_task(self._resend_loop())

    def data_up(self, link: DataLink, first: bool) -> None:
        """The data link has a connection: what the router did not confirm goes on it, in seq
        order, before anything newer (a message lost with a connection overtaken by later ones
        broke order per publisher); after a fall back, the publishes come back from the Link
        (what the Link carries unconfirmed goes here again too: the router takes each seq
        once, and this resend reaches it before anything sent here later)."""
        if link is self.standby:
            self.standby = None
            self.data = link
            self.fallen_back = False
            log.warning("peer router's data address reachable again: its publishes go on the direct data link",
                        extra=kv(peer=self.node, addr=link.addr, resent=len(self.unacked)))
        elif link is not self.data:
            return
        log.info("direct data link to the peer's router" if first else "data link to the peer's router up again",
                 extra=kv(peer=self.node, addr=link.addr, resent=len(self.unacked)))
        self.resend_after = RESEND_AFTER
        self._requeue_unacked()
        if self._data_flush is not None:
            self._data_flush.cancel()
        self._flush_data()

    def _requeue_unacked(self) -> None:
        """What was sent and not confirmed (but for moved sessions, which stay on the Link)
        goes to the front of the queue in seq order: the next carrier sends it first."""
        if not self.unacked:
            return
        again = sorted((e for e in self.unacked.values() if e.direct is None), key=_seq_of)
        for e in again:
            del self.unacked[e.seq]
        self.queue.extendleft(reversed(again))

    def data_down(self, link: DataLink, was_up: bool, why: str) -> None:
        if link is self.data and was_up:
            log.warning("data link to the peer's router lost: connecting again", extra=kv(
                peer=self.node, addr=link.addr, error=why, waiting=len(self.queue) + len(self.unacked)))

    def check_fallback(self, now: float) -> bool:
        """The data link had no connection for SHOAL_CLUSTER_DATA_FALLBACK_AFTER while
        messages wait for it, and the agents' Link is up: those messages, and what follows,
        go over the Link (in seq order, before anything new) until the data link has a
        connection again. True when it fell back."""
        d = self.data
        if d is None or d.up or not self.connected:
            return False
        after = self.agent.settings.cluster_data_fallback_after
        if now - d.down_since < after:
            return False
        if not self.queue and not any(e.direct is None for e in self.unacked.values()):
            return False
        self.data = None
        self.standby = d
        self.fallen_back = True
        self.fallbacks += 1
        self.agent.data_fallbacks += 1
        self._requeue_unacked()
        if self._data_flush is not None:
            self._data_flush.cancel()
            self._data_flush = None
        self.wake.set()
        log.warning("peer router's data address unreachable: its publishes go over the Link", extra=kv(
            peer=self.node, addr=d.addr, waited_s=round(now - d.down_since, 1), error=d.last_error,
            waiting=len(self.queue), fallbacks=self.fallbacks,
            fix=f"let this host reach {d.addr} (a firewall?), or set SHOAL_CLUSTER_DATA_ADDR on {self.node} "
                "to an address every node reaches"))
        return True

    def _flush_data(self) -> None:
        self._data_flush = None
        if self.data is not None and self.data.up and self.queue:
            self._send_entries(self.queue, time.monotonic(), True)

    def _send_entries(self, entries: deque, now: float, from_queue: bool) -> None:
        """Send entries (popped from the left) in batches on the data link. When the socket
        is full, what is left stays: in the queue (from_queue; retried shortly) or in
        unacked (a resend: retried at the next resend check)."""
        st = self.agent.settings
        data = self.data
        while entries and data is not None:
            out = take(entries, st.cluster_batch, st.cluster_frame_bytes)
            ops = []
            sent = []
            for e in out:
                if e.direct is not None:  # (queued before the data link came) for a moved session: the Link
                    self.link_queue.append(e)
                    self.wake.set()
                    continue
                op = _data_op(e, now)
                if op is None:  # its Message Expiry ran out while it waited here
                    self.agent.expired_in_queue += 1
                    self.unacked.pop(e.seq, None)
                    if e.ref is not None:
                        self.agent.peer_confirmed(self.node, e.ref)
                    continue
                ops.append(op)
                sent.append(e)
            if not ops:
                continue
            if not data.send(peerdata.batch(ops)):
                if from_queue:
                    entries.extendleft(reversed(sent))
                    self._data_flush = asyncio.get_running_loop().call_later(SEND_RETRY, self._flush_data)
                return
            self.agent.frames_sent += 1
            unacked = self.unacked
            for e in sent:
                if e.seq:
                    e.sent = now
                    unacked[e.seq] = e

    def confirmed(self, seqs: list) -> None:
        """The peer's router owns these (every member that got them does)."""
        got = False
        for seq in seqs:
            e = self.unacked.pop(seq, None)
            if e is not None:
                got = True
                if e.ref is not None:
                    self.agent.peer_confirmed(self.node, e.ref)
        if got:
            self.resend_after = RESEND_AFTER
            if self.acked_hook is not None:
                self.acked_hook()

    def resend_due(self, now: float) -> int:
        """Send again what waited resend_after unconfirmed; the wait doubles (to RESEND_MAX)
        while the peer confirms nothing. Returns how many went again."""
        if self.data is None or not self.data.up or not self.unacked:
            return 0
        limit = now - self.resend_after
        due = deque(e for e in self.unacked.values() if e.sent <= limit and e.direct is None)
        if not due:
            return 0
        n = len(due)
        self.resent += n
        log.warning("peer router did not confirm: sending again", extra=kv(peer=self.node, addr=self.data_addr,
                                                                         resent=n, waited_s=self.resend_after))
        self._send_entries(due, now, False)
        self.resend_after = min(self.resend_after * 2, RESEND_MAX)
        return n

    async def _resend_loop(self) -> None:
        while True:
            await asyncio.sleep(RESEND_CHECK)
            now = time.monotonic()
            for link in (self.data, self.standby):
                if link is not None:
                    link.check(now)
            if not self.check_fallback(now):
                self.resend_due(now)

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
        if self.data is not None:
            self.data.close()
            self.data = None
        if self.standby is not None:
            self.standby.close()
            self.standby = None
        if self._resender is not None:
            self._resender.cancel()
        if self._data_flush is not None:
            self._data_flush.cancel()
        for _, fut in self.syncs.values():
            if not fut.done():
                fut.set_result(False)
        self.syncs.clear()
        refs = [e.ref for e in self.unacked.values() if e.ref is not None]
        refs += [e.ref for e in self.queue if e.ref is not None]
        refs += [e.ref for e in self.link_queue if e.ref is not None]
        self.unacked.clear()
        self.queue.clear()
        self.link_queue.clear()
        return refs

    async def run(self) -> None:
        backoff = 0.05
        me = self.agent
        while not self.closed:
            channel = call = None
            try:
                if self.link_addr:
                    call = await tcplink.dial(self.link_addr, me.max_frame, me.settings.cluster_link_dead_after)
                else:
                    channel = grpc.aio.insecure_channel(self.addr, options=channel_options(me.settings))
                    call = pbg.PeerStub(channel).Link()
                self._call = call
                await call.write(pb.Frame(hello=pb.Hello(node=me.node, wire=CLUSTER_WIRE, instance=me.instance)))
                try:
                    first = await asyncio.wait_for(call.read(), me.settings.cluster_hello_timeout)
                except asyncio.TimeoutError:
                    raise ConnectionError(f"no hello within {me.settings.cluster_hello_timeout:g} s "
                                          "(SHOAL_CLUSTER_HELLO_TIMEOUT)") from None
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
                # (on the direct data link, when there is one: cluster/datalink.py)
                resend = [e for e in self.unacked.values() if self.data is None or e.direct is not None]
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
            if not (self.queue and self.data is None) and not self.link_queue and not self.new_syncs:
                self.wake.clear()
                await self.wake.wait()
                await asyncio.sleep(0)  # one loop pass more: gather what that pass queues
            if self.data is None:
                self.queue.extendleft(reversed(self.link_queue))  # (the data link went: all on the Link)
                self.link_queue.clear()
                out = take(self.queue, batch_max, bytes_max)
            else:
                out = take(self.link_queue, batch_max, bytes_max)
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
        try:
            first = await asyncio.wait_for(context.read(), agent.settings.cluster_hello_timeout)
        except asyncio.TimeoutError:
            log.warning("peer link sent no hello: closed", extra=kv(
                addr=_peer_of(context), seconds=agent.settings.cluster_hello_timeout))
            await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                f"no hello within {agent.settings.cluster_hello_timeout:g} s")
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
