"""One owner per client id across the cluster (issue 11), the agent's side.

Each client id with a session on some node has a record ``sessions/owners/<client id>``
in etcd: ``{"lease": <lease>, "node": <node>}``, attached to the owner node's
lease, so it vanishes with the node (a dead node's ids are free once its lease
expired). A claim writes it with one atomic swap (a put that returns the record
it replaced, ``prev_kv``: the compare-and-swap of a read and a put on its
revision, in one round trip), a session's end deletes it with a compare of its
value; its etcd revision is the fencing token of the session that went with it:
a takeover asked with an older token than the asked node's own is refused
(``NEWER``).

The router asks (``OWN``) when a CONNECT claims an id this node does not hold,
or holds only from its store (restored after a restart: it may be stale). The
agent answers (``OWNED``):

- ``FRESH``: no record was there, or it named a dead node or an old lease of this
  one: this node owns the id now; any copy of the session here is stale and is
  dropped without its will.
- ``KEEP``: the record named this node under its current lease: the node
  decides alone, exactly as without a cluster (workers hand over among
  themselves).
- ``REMOTE``: the record named another live node: the agent's swap wrote
  itself over it, then it asked that node's agent for the session (gRPC
  ``TakeoverSession``). That agent takes the session off its router as a worker
  would (``CLAIM``: the holding worker closes the connection with v5 DISCONNECT
  0x8E and hands over the whole record) and returns it; the router here grants
  it to the claiming worker, which answers session present = 1 and redelivers
  the inflight messages with DUP before the queue.
- ``REFUSED``: a newer CONNECT of the id won on another node, or the previous
  owner is alive but cannot be reached (the record is put back to it, compared
  on the revision of ours): the CONNECT is refused with 0x88 / 3 (server
  unavailable), so that an id never has two live sessions.

When a session ends on this node (``DISOWN``), the record goes (a delete that
compares the value: only this node's own record under its lease), batched with
the claims (``Batcher``).

A node that does not hold its lease (cluster/fence.py) hands nothing over: it
answers a TakeoverSession as an unreachable node would (gRPC UNAVAILABLE: the
asker puts the record back and refuses its CONNECT). A copy whose record this
node wrote under a lease it no longer holds is stale (``stale``: another node may
have owned the id since) and is never handed over (``NONE``: the asker starts
afresh). Both happen when a takeover request reaches a node late: sent during a
partition, it waits in the asker's TCP send queue (the asker gave up on it and
went on) and arrives when the link comes back. A late request that reaches a node still
under its lease finds the record put back to it (``_put_back_to_us``): nothing is handed
over, the session stays (answer ``NEWER``).
"""
from __future__ import annotations

import asyncio
import itertools
import json
import logging
import time

import grpc
import msgpack
from aetcd import rpc

from common.logs import kv
from core import ops as o
from core.ops import Own

from .etcd import RPC_TIMEOUT
from .keepalive import channel_options

log = logging.getLogger("shoal.agent")

# outside the range the agents read and watch (cluster/etcd.py RANGE_START..RANGE_END): every
# CONNECT writes one and its end deletes it, and each agent had every node's owner events on
# its watch, to be thrown away (measured: about a quarter of a cluster connect's CPU)
OWNERS = b"sessions/owners/"
TAKEOVER_TIMEOUT = 4.0  # seconds the previous owner has to hand a session over
ROUTER_TIMEOUT = 6.0  # seconds this node's router has to give a session up
BATCH = 100  # records per etcd transaction (etcd's default limit is 128 operations)
# owner transactions under way at once at most, and the records waiting that start one more
# beside those under way: the defaults of SHOAL_CLUSTER_OWNER_TXNS and SHOAL_CLUSTER_OWNER_FILL
# (common/settings.py; see Batcher)
INFLIGHT = 8
FILL = 1
DELETE_LINGER = 0.02  # seconds a session end's delete waits for claims to go with


class Batcher:
    """Claims and deletes of owner records gathered into few etcd transactions. A claim is
    a put that returns the record it replaced (``prev_kv``): one round trip both makes this
    node the owner and says who was (none, an old lease of ours, a node that is gone, or a
    live node to take the session from); it is atomic, so it is the compare-and-swap of a
    read followed by a put on its revision, without the second round trip. A delete
    compares that the key still holds this node's value (a transaction of its own inside
    the batch's: a delete that finds another node's record, or none, leaves it and the
    others go on). One transaction holds both (txn_request).

    What gathers in one loop pass goes at its end in one transaction (the claims of a router
    message, which carries every claim the router read in its own pass), also while others
    are under way, up to ``most`` (SHOAL_CLUSTER_OWNER_TXNS) at once: a claim never waits a
    whole transaction behind another (etcd writes the proposals that reach it meanwhile with
    one WAL fsync). With ``fill`` (SHOAL_CLUSTER_OWNER_FILL) above 1, one goes beside those
    under way only once that many records wait; fewer wait for one to end and go together
    in the next (group commit: fewer transactions, each claim waiting up to one transaction
    longer; the default before, with 32). At ``most`` under way what comes waits for one to
    end. Measured in docs/architecture.md ("Fourth pass")."""

    def __init__(self, own):
        self.own = own
        st = own.agent.settings
        self.most = st.cluster_owner_txns  # under way at once (SHOAL_CLUSTER_OWNER_TXNS)
        self.fill = st.cluster_owner_fill  # waiting that start one more beside (SHOAL_CLUSTER_OWNER_FILL)
        self.claims: list = []  # (key, value, future)
        self.deletes: list = []  # (key, value, future)
        self.scheduled = False
        self.inflight = 0
        self.linger: asyncio.TimerHandle | None = None  # when the deletes go without claims
        self.due = False  # the deletes go with the next transaction, claims or not
        # figures (/metrics, loadtest): transactions sent, records they carried
        self.txns = 0
        self.records = 0

    def claim(self, key: bytes, value: bytes) -> asyncio.Future:
        """Future of (revision of our record, the value it replaced or None, that value's lease)."""
        fut = asyncio.get_running_loop().create_future()
        self.claims.append((key, value, fut))
        self._schedule()
        return fut

    def delete(self, key: bytes, value: bytes) -> asyncio.Future:
        """Nobody waits for a delete but the next op of its id (flush()): it rides along with
        the next claims' transaction, or goes DELETE_LINGER seconds later."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self.deletes.append((key, value, fut))
        if self.linger is None:
            self.linger = loop.call_later(DELETE_LINGER, self.flush)
        return fut

    def flush(self) -> None:
        """The deletes go now (the linger is over, or an op of one of their ids waits)."""
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        self.due = True
        self._schedule()

    def _waiting(self) -> int:
        """Records that would go in the next transaction."""
        return len(self.claims) + (len(self.deletes) if self.claims or self.due else 0)

    def _room(self) -> bool:
        """Whether one more transaction goes now: none is under way, or ``fill`` records wait
        and fewer than ``most`` are under way. Otherwise what waits goes when one ends."""
        return self.inflight == 0 or (self.inflight < self.most and self._waiting() >= self.fill)

    def _schedule(self) -> None:
        if not self.scheduled and self._room():
            self.scheduled = True
            asyncio.get_running_loop().call_soon(self._go)

    def _go(self) -> None:
        self.scheduled = False
        while (self.claims or (self.deletes and self.due)) and self._room():
            claims, self.claims = self.claims[:BATCH], self.claims[BATCH:]
            room = BATCH - len(claims)
            deletes, self.deletes = self.deletes[:room], self.deletes[room:]
            if not self.deletes:
                self.due = False
                if self.linger is not None:
                    self.linger.cancel()
                    self.linger = None
            self.inflight += 1
            self.own._spawn_task(self._run(claims, deletes))

    async def _run(self, claims: list, deletes: list) -> None:
        try:
            await self._txn(claims, deletes)
        finally:
            self.inflight -= 1
            if self.claims or (self.deletes and self.due):
                self._schedule()
            elif self.deletes and self.linger is None:
                self.linger = asyncio.get_running_loop().call_later(DELETE_LINGER, self.flush)

    async def _txn(self, claims: list, deletes: list) -> None:
        try:
            client = self.own.agent.etcd.client
            if client is None:
                raise ConnectionError("etcd not connected")
            self.txns += 1
            self.records += len(claims) + len(deletes)
            reply = await client.kvstub.Txn(txn_request(claims, deletes, self.own.agent.lease_id),
                                            timeout=RPC_TIMEOUT, metadata=client.metadata)
        except Exception as e:
            for _, _, fut in claims:
                if not fut.done():
                    fut.set_exception(e)
            if deletes:
                log.warning("could not remove owner records (they go with the lease)",
                            extra=kv(records=len(deletes), error=(str(e) or type(e).__name__)[:200]))
            for _, _, fut in deletes:
                if not fut.done():
                    fut.set_result(None)
            return
        responses = reply.responses
        for (_, _, fut), r in zip(claims, responses):
            if not fut.done():
                put = r.response_put
                prev = put.prev_kv if put.HasField("prev_kv") else None
                fut.set_result((put.header.revision, prev.value if prev is not None else None,
                                prev.lease if prev is not None else 0))
        # (a delete whose compare failed found another node's record, or none: not ours to delete)
        for _, _, fut in deletes:
            if not fut.done():
                fut.set_result(None)


def txn_request(claims: list, deletes: list, lease: int) -> rpc.TxnRequest:
    """One etcd transaction for a batch: each claim a put returning the record it replaced
    (prev_kv), each delete a transaction of its own inside it that deletes the key only if
    it still holds this node's value. Nothing compares at the top, so every claim goes
    whatever the deletes find. (Before, the deletes' compares guarded the whole batch: the
    claims were written twice in the request, once per branch, and a failed compare sent
    the deletes still ours again in the next transaction.)"""
    ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v, lease=lease, prev_kv=True))
           for k, v, _ in claims]
    for k, v, _ in deletes:
        ops.append(rpc.RequestOp(request_txn=rpc.TxnRequest(
            compare=[rpc.Compare(result=rpc.Compare.EQUAL, target=rpc.Compare.VALUE, key=k, value=v)],
            success=[rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k))])))
    return rpc.TxnRequest(success=ops)


class Pending:
    """A claim of this node in progress for one client id."""

    __slots__ = ("token", "written", "done", "superseded")

    def __init__(self):
        self.token = 0  # revision of our record once written
        self.written = asyncio.Event()  # set once the first CAS round is decided
        self.done = asyncio.Event()  # set once the router has our answer (OWNED)
        self.superseded = False  # a newer claim of another node asked us meanwhile


class Ownership:
    def __init__(self, agent):
        self.agent = agent
        self.owned: dict[str, int] = {}  # client id -> revision of our owner record (the token)
        # client ids whose record we wrote under a lease we no longer hold (lease_changed)
        self.stale: set[str] = set()
        self.claiming: dict[str, Pending] = {}
        self.takes: dict[int, asyncio.Future] = {}  # our CLAIM req to the router -> future of the state
        self._req = itertools.count(1 << 40)  # apart from the workers' request numbers
        self.channels: dict[str, tuple[str, grpc.aio.Channel]] = {}
        self.tasks: set[asyncio.Task] = set()
        self.chain: dict[str, asyncio.Future] = {}  # client id -> its last op (a task, or a delete's future)
        self.batcher = Batcher(self)
        self._value_for: tuple = (None, b"")  # (lease, this node's record under it)
        # figures ($SYS/broker/cluster/sessions/..., logs)
        self.taken_in = 0
        self.taken_out = 0
        self.refused = 0
        # the router's ids to check against etcd (its WELCOME), and the check under way
        self.to_verify: dict[str, bool] = {}  # client id -> decided alone (no record was written)
        self._verifying: asyncio.Task | None = None
        self.not_ours = 0  # copies found owned by another node, dropped
        # this agent found the lease an earlier agent of this node held expired (it was down,
        # or frozen, past the TTL): a copy the router holds whose record is gone was written
        # under that lease, and is stale as lease_changed makes the ones it knew
        self.lapsed = False
        self.fenced_on_check = 0  # such copies found by the check (marked stale)

    # -- the router's ops ----------------------------------------------------------
    def on_op(self, op) -> None:
        if op.__class__ is o.TakeOwnership:
            if op.client_id in self.chain:
                self._spawn(op.client_id, self._own, op.client_id, op.req, bool(op.clean_start))
            else:
                self._own_now(op.client_id, op.req, bool(op.clean_start))  # (most claims: no task)
        elif op.__class__ is o.Disown:
            if op.client_id in self.chain:
                self._spawn(op.client_id, self._disown, op.client_id)
            else:
                self._disown_now(op.client_id)  # (most ends: no task, the delete's future is the chain)
        elif op.__class__ is o.Grant:
            fut = self.takes.pop(op.req, None)
            if fut is not None and not fut.done():
                fut.set_result(op.state)

    def _spawn(self, cid: str, fn, *args) -> None:
        """One op at a time per client id, in the router's order (a DISOWN then an OWN)."""
        prev = self.chain.get(cid)
        if prev is not None and self.batcher.deletes:
            self.batcher.flush()  # (its DISOWN's delete may be lingering)

        async def run():
            await asyncio.wait([prev])
            await fn(*args)

        t = self._spawn_task(run() if prev is not None else fn(*args))
        self._chain(cid, t)

    def _chain(self, cid: str, t: asyncio.Future) -> None:
        """t is cid's last op: the next one waits for it."""
        self.chain[cid] = t

        def done(t):
            if self.chain.get(cid) is t:
                del self.chain[cid]

        t.add_done_callback(done)

    def _spawn_task(self, coro) -> asyncio.Task:
        t = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(t)
        t.add_done_callback(self.tasks.discard)
        return t

    def _value(self) -> bytes:
        """This node's owner record under its current lease (made again when the lease changes)."""
        lease = self.agent.lease_id
        if self._value_for[0] != lease:
            self._value_for = (lease, json.dumps({"lease": lease, "node": self.agent.node}, separators=(",", ":"),
                                                 sort_keys=True).encode())
        return self._value_for[1]

    def lease_changed(self) -> None:
        """The node holds a new lease: the records written under the old one went with it,
        and the copies here of those sessions may have been owned elsewhere since."""
        self.stale.update(self.owned)
        self.owned.clear()

    async def _own(self, cid: str, req: int, clean_start: bool) -> None:
        """A claim after an earlier op of the id (a DISOWN, a will), in a task of its own."""
        t0 = time.monotonic()
        self.stale.discard(cid)  # (decided anew: a stale copy here is dropped with FRESH)
        p = self.claiming[cid] = Pending()
        verdict, state = Own.REFUSED, None
        try:
            verdict, state = await self._decide(cid, clean_start, p)
        except Exception as e:
            self._failed(cid, e)
        self._owned(cid, req, p, verdict, state, t0)

    def _own_now(self, cid: str, req: int, clean_start: bool) -> None:
        """A claim of an id with no op under way, as _own without its task (a connect storm's
        claims: a task, three coroutines and their awaits each were a tenth of the agent's
        CPU): decided in the claim's callback, unless the record names another live node,
        whose TakeoverSession goes on in a task (_ask_previous)."""
        t0 = time.monotonic()
        self.stale.discard(cid)
        p = self.claiming[cid] = Pending()
        verdict = self._precheck()
        if verdict is not None:
            self._owned(cid, req, p, verdict, None, t0)
            return
        mine = self._value()
        claim = self.batcher.claim(OWNERS + cid.encode(), mine)
        done = claim.get_loop().create_future()  # the id's op until OWNED went (the next one waits)
        self._chain(cid, done)

        def claimed(f: asyncio.Future) -> None:
            asking = False
            try:
                try:
                    token, value, prev_lease = f.result()
                except (Exception, asyncio.CancelledError) as e:
                    self._failed(cid, e)
                    self._owned(cid, req, p, Own.REFUSED, None, t0)
                    return
                p.token = self.owned[cid] = token
                p.written.set()
                verdict, prev_node = self._verdict(value, mine)
                if verdict is not None:
                    self._owned(cid, req, p, verdict, None, t0)
                    return
                ask = self._spawn_task(self._ask_previous(self.agent.etcd.client, cid, clean_start, token, value,
                                                          prev_lease, prev_node))
                ask.add_done_callback(asked)
                asking = True
            finally:
                if not asking and not done.done():
                    done.set_result(None)

        def asked(t: asyncio.Task) -> None:
            try:
                verdict, state = Own.REFUSED, None
                if not t.cancelled():
                    if t.exception() is not None:
                        self._failed(cid, t.exception())
                    else:
                        verdict, state = t.result()
                self._owned(cid, req, p, verdict, state, t0)
            finally:
                if not done.done():
                    done.set_result(None)

        claim.add_done_callback(claimed)

    def _failed(self, cid: str, e: BaseException) -> None:
        log.warning("could not own a client id; refusing its CONNECT",
                    extra=kv(client=cid, error=(str(e) or type(e).__name__).splitlines()[0][:200]))

    def _owned(self, cid: str, req: int, p: Pending, verdict: int, state, t0: float) -> None:
        """The claim is decided: OWNED to the router."""
        if verdict == Own.REFUSED:
            self.refused += 1
        # OWNED goes to the router before any CLAIM a newer owner's TakeoverSession makes
        # (it waits for p.done): the router grants first, then takes the session away again
        self.agent.link.queue(o.Owned(cid, req, int(verdict), state))
        p.written.set()
        p.done.set()
        if self.claiming.get(cid) is p:
            del self.claiming[cid]
        if verdict == Own.REMOTE:
            log.info("session taken over from another node", extra=kv(client=cid, ms=round((time.monotonic() - t0) * 1000, 1)))

    def _precheck(self):
        """The verdict when etcd is not asked at all (None: it is)."""
        ag = self.agent
        if ag.draining:
            return Own.REFUSED  # leaving (SIGTERM): the client connects elsewhere
        client = ag.etcd.client
        if ag.fence.on and ag.owner_once and (not ag.connected or client is None or not ag.fence.holding()):
            return Own.REFUSED  # no lease: this node owns nothing now (cluster/fence.py)
        if not ag.connected or client is None:
            # etcd unreachable, SHOAL_CLUSTER_LEASE_LOSS=serve: served anyway (issue 10), the node decides alone
            return Own.KEEP
        return None

    def _verdict(self, value, mine: bytes):
        """(verdict, None) from the record our claim replaced, or (None, its node) when that is
        another live node, to be asked for the session."""
        if value is None:
            return Own.FRESH, None  # no owner before
        if value == mine:
            return Own.KEEP, None  # ours under this lease already: the node decides alone
        try:
            prev_node = json.loads(value)["node"]
        except (ValueError, KeyError, TypeError):
            prev_node = ""
        if prev_node == self.agent.node or prev_node not in self.agent.members:
            return Own.FRESH, None  # an old lease of ours, or a node that is gone: its copy is stale
        return None, prev_node

    async def _decide(self, cid: str, clean_start: bool, p: Pending):
        verdict = self._precheck()
        if verdict is not None:
            return verdict, None
        return await self._rounds(self.agent.etcd.client, cid, clean_start, p)

    async def _rounds(self, client, cid: str, clean_start: bool, p: Pending):
        mine = self._value()
        if p.superseded:
            return Own.REFUSED, None
        token, value, prev_lease = await self.batcher.claim(OWNERS + cid.encode(), mine)
        p.token = self.owned[cid] = token
        p.written.set()
        verdict, prev_node = self._verdict(value, mine)
        if verdict is not None:
            return verdict, None
        return await self._ask_previous(client, cid, clean_start, token, value, prev_lease, prev_node)

    async def _ask_previous(self, client, cid: str, clean_start: bool, token: int, value: bytes, prev_lease: int,
                            prev_node: str):
        """Our claim replaced the record of prev_node, alive: it hands the session over."""
        key = OWNERS + cid.encode()
        tx = client.transactions
        result, state = await self._ask(prev_node, cid, clean_start, token)
        if result is None:
            # alive but unreachable: put its record back, refuse here (never two live sessions)
            ok, _ = await client.transaction(compare=[tx.mod(key) == token],
                                             success=[tx.put(key, value, prev_lease)], failure=[])
            self.owned.pop(cid, None)
            log.warning("previous owner unreachable; CONNECT refused",
                        extra=kv(client=cid, owner=prev_node, restored=ok, token=token))
            return Own.REFUSED, None
        if result == 2:  # NEWER: that node's claim is newer than ours
            self.owned.pop(cid, None)
            log.info("takeover refused: newer claim there", extra=kv(client=cid, owner=prev_node, token=token))
            return Own.REFUSED, None
        if state is None or clean_start:
            return Own.FRESH, None
        self.agent.moves.took(cid, prev_node)  # (what prev_node forwards for it is taken: cluster/moves.py)
        self.taken_in += 1
        return Own.REMOTE, state

    async def _ask(self, node: str, cid: str, clean_start: bool, token: int):
        """TakeoverSession on node: (result, state) or (None, None) when unreachable."""
        from proto import cluster_pb2 as pb
        from proto import cluster_pb2_grpc as pbg

        addr = self.agent.members.get(node, {}).get("addr")
        if not addr:
            return None, None
        ch = self.channels.get(node)
        if ch is None or ch[0] != addr:
            if ch is not None:
                await ch[1].close(None)
            ch = self.channels[node] = (addr, grpc.aio.insecure_channel(addr, options=channel_options(self.agent.settings)))
        try:
            reply = await pbg.PeerStub(ch[1]).TakeoverSession(
                pb.TakeoverRequest(client_id=cid, clean_start=clean_start, node=self.agent.node, token=token),
                # (a channel still backing off from the node's last life failed at once with
                # UNAVAILABLE, though the node was back and held the session: the asker took
                # it for unreachable, and a chaos run had a twin from it)
                timeout=TAKEOVER_TIMEOUT, wait_for_ready=True)
        except grpc.aio.AioRpcError as e:
            log.warning("TakeoverSession failed", extra=kv(client=cid, peer=node, code=str(e.code())))
            return None, None
        if reply.result == pb.TakeoverReply.SESSION:
            return 1, msgpack.unpackb(reply.session, raw=False, strict_map_key=False, use_list=True)
        return int(reply.result), None

    # -- another node takes a session of ours --------------------------------------------
    async def takeover_asked(self, request, context=None):
        from proto import cluster_pb2 as pb

        cid = request.client_id
        ag = self.agent
        if ag.fence.on and ag.owner_once and not ag.fence.holding():
            # no lease: this node owns nothing now, and its copy may be stale: as unreachable
            # (as its own CONNECTs are refused meanwhile: _decide)
            log.info("takeover asked while this node holds no lease: not answered",
                     extra=kv(client=cid, peer=request.node, token=request.token))
            if context is not None:
                await context.abort(grpc.StatusCode.UNAVAILABLE, "this node holds no lease")
            return pb.TakeoverReply(result=pb.TakeoverReply.NEWER)  # (no context: refused all the same)
        if cid in self.stale and cid not in self.owned:
            # our record went with a lease we lost: the copy here is fenced, never handed over
            # (it is dropped at the next claim of the id here)
            log.info("takeover asked for a stale copy: not handed over",
                     extra=kv(client=cid, peer=request.node, token=request.token))
            return pb.TakeoverReply(result=pb.TakeoverReply.NONE)
        p = self.claiming.get(cid)
        if p is not None:
            try:
                await asyncio.wait_for(p.written.wait(), TAKEOVER_TIMEOUT / 2)
            except asyncio.TimeoutError:
                pass
            if p.token > request.token:
                return pb.TakeoverReply(result=pb.TakeoverReply.NEWER)
            # our claim is older: it goes on to its end (it may be asking an even older
            # owner for the session: tokens only grow along a chain of asks, so no cycle),
            # then the session, wherever it ended up here, goes to the asker
            p.superseded = True
            try:
                await asyncio.wait_for(p.done.wait(), TAKEOVER_TIMEOUT - 1.0)
            except asyncio.TimeoutError:
                pass
        mine = self.owned.get(cid)
        if mine is not None and mine > request.token:
            return pb.TakeoverReply(result=pb.TakeoverReply.NEWER)
        back = await self._put_back_to_us(cid)
        if back:
            # the asker gave up on this request (it reached us late: a partition healed within
            # our lease) and put the record back to us: it refused its CONNECT and waits for
            # no session; handing ours over now lost it (it stays here, owned, fenced anew)
            self.owned[cid] = back
            log.info("takeover asked after the asker gave up (the record is ours again): session kept",
                     extra=kv(client=cid, peer=request.node, token=request.token, revision=back))
            return pb.TakeoverReply(result=pb.TakeoverReply.NEWER)
        self.owned.pop(cid, None)
        if not request.clean_start:
            # (before the CLAIM: what the router forwards for the session comes with its GRANT)
            self.agent.moves.handed(cid, request.node)
        state = await self.take_from_router(cid, request.clean_start)
        self._spawn(cid, self.agent.wills.forget, cid)  # its will record is not ours any more
        if state is None:
            # (loadtest/ownership_history.py reads this line and the next: the id was let go for that token)
            log.info("takeover asked: no session here", extra=kv(client=cid, peer=request.node, token=request.token))
            return pb.TakeoverReply(result=pb.TakeoverReply.NONE)
        self.taken_out += 1
        log.info("session handed to another node", extra=kv(client=cid, peer=request.node, token=request.token))
        return pb.TakeoverReply(result=pb.TakeoverReply.SESSION, session=msgpack.packb(state, use_bin_type=True))

    async def _put_back_to_us(self, cid: str) -> int:
        """The revision of cid's owner record when it holds this node's own value under its
        lease now (0 otherwise, or when etcd cannot say). An asker swaps its own record in
        before it asks, and puts ours back only once it gave up on its request; a later claim
        of another node holds that node's value. So our value here means: nobody waits for
        this request's session. One linearizable read per takeover."""
        client = self.agent.etcd.client
        if client is None or not self.agent.connected:
            return 0
        try:
            cur = await asyncio.wait_for(client.get(OWNERS + cid.encode()), TAKEOVER_TIMEOUT / 4)
        except Exception as e:
            log.warning("could not read an owner record before a handover; handing over",
                        extra=kv(client=cid, error=(str(e) or type(e).__name__).splitlines()[0][:200]))
            return 0
        if cur is None or cur.value != self._value():
            return 0
        return cur.mod_revision

    # -- the router's sessions, checked when this agent registers --------------------------
    def verify_held(self, client_ids) -> None:
        """The ids this node's router holds (its WELCOME): each is checked against its owner
        record once etcd is reachable. An agent killed in the middle of a takeover (the router
        granted a session it took over; another node's claim then went on without this node,
        which could not answer) left the router holding a session another node owns now: two
        live sessions of one id (a chaos run). With the same lease after a quick restart no
        fence says so; this check does."""
        ag = self.agent
        # a node that never held a lease (or serves without one, SHOAL_CLUSTER_LEASE_LOSS=serve)
        # decided its ids alone, writing no record: those it claims now; with the fence, an id
        # with no record went with a lease this node lost, and its next claim drops it (FRESH)
        alone = not (ag.fence.on and ag.owner_once)
        for cid in client_ids:
            self.to_verify[cid] = alone
        if self.to_verify and self._verifying is None and ag.connected and ag.etcd.client is not None:
            self._verifying = self._spawn_task(self._verify())

    async def _verify(self) -> None:
        ag = self.agent
        others: list[str] = []
        fenced = 0
        try:
            while self.to_verify:
                client = ag.etcd.client
                if client is None or not ag.connected:
                    return  # (the next full sync starts it again)
                chunk = sorted(self.to_verify)[:BATCH]
                tx = client.transactions
                responses = await self._records(client, chunk)
                mine = self._value()
                for cid, r in zip(chunk, responses):
                    alone = self.to_verify.pop(cid, False)
                    if cid in self.claiming or cid in self.owned:
                        continue  # decided since, by a claim of ours
                    if r and r[0][0] == mine:
                        self.owned[cid] = r[0][1].mod_revision  # ours: its token again
                        continue
                    if not r and not alone:
                        # (unverified in the router: its next claim here starts afresh)
                        if self.lapsed:
                            # written under the lease that lapsed, so never handed over either
                            # (another node may have owned and ended the id meanwhile); before,
                            # the stale marks lived only in the agent that held that lease
                            self.stale.add(cid)
                            fenced += 1
                        continue
                    if not r:
                        key = OWNERS + cid.encode()
                        ok, resp = await client.transaction(compare=[tx.create(key) == 0],
                                                            success=[tx.put(key, mine, ag.lease_id)], failure=[])
                        if ok:
                            self.owned[cid] = resp[0].response_put.header.revision
                            continue
                    # another node's record: that node owns the id (a takeover went on without
                    # this node, or both served it alone during a split), or is taking it over
                    # now: its TakeoverSession may be on its way (it swaps its record in first)
                    others.append(cid)
            if fenced:
                self.fenced_on_check += fenced
                log.info("sessions here were written under a lease this node lost: fenced, never handed over",
                         extra=kv(sessions=fenced))
            if others:
                # what is still ours to give after a takeover's deadline is an orphan: dropped
                await asyncio.wait_for(self._settled_others(others), TAKEOVER_TIMEOUT * 4)
        except Exception as e:
            log.warning("could not check the sessions held here against etcd; again at the next sync",
                        extra=kv(sessions=len(self.to_verify), error=(str(e) or type(e).__name__).splitlines()[0][:200]))
        finally:
            self._verifying = None

    @staticmethod
    async def _records(client, cids: list[str]) -> list:
        """The owner records of cids (at most BATCH), read in one transaction: per id, [] when
        it has none, else [(value, Get)]."""
        tx = client.transactions
        _, responses = await client.transaction(
            compare=[], success=[tx.get(OWNERS + cid.encode()) for cid in cids], failure=[])
        return responses

    async def _settled_others(self, others: list[str]) -> None:
        """Ids held here whose records named another node: once a takeover would have asked
        for them (TakeoverSession's deadline, and a second), those whose record still names
        another node and that no claim of ours took since are dropped (NOT_OURS; the router
        ignores one it no longer holds: handed over meanwhile, or claimed anew)."""
        ag = self.agent
        await asyncio.sleep(TAKEOVER_TIMEOUT + 1.0)
        client = ag.etcd.client
        if client is None or not ag.connected:
            return
        for i in range(0, len(others), BATCH):
            chunk = others[i:i + BATCH]
            responses = await self._records(client, chunk)
            mine = self._value()
            for cid, r in zip(chunk, responses):
                if cid in self.claiming or cid in self.owned or not r or r[0][0] == mine:
                    continue
                log.warning("a session here is owned by another node: dropping it",
                            extra=kv(client=cid, record=r[0][0][:200].decode(errors="replace")))
                self.not_ours += 1
                ag.link.queue(o.NotOurs(cid))

    async def take_from_router(self, cid: str, clean_start: bool):
        """The session of cid off this node (None: none here, or discarded: clean start)."""
        req = next(self._req)
        fut = asyncio.get_running_loop().create_future()
        self.takes[req] = fut
        self.agent.link.queue(o.Claim(cid, req, clean_start))
        try:
            return await asyncio.wait_for(fut, ROUTER_TIMEOUT)
        except asyncio.TimeoutError:
            self.takes.pop(req, None)
            log.warning("router did not give a session up", extra=kv(client=cid))
            return None

    # -- a session ended here -------------------------------------------------------------
    async def _disown(self, cid: str) -> None:
        fut = self._delete(cid)
        if fut is not None:
            await fut

    def _disown_now(self, cid: str) -> None:
        fut = self._delete(cid)
        if fut is not None:
            self._chain(cid, fut)

    def _delete(self, cid: str) -> asyncio.Future | None:
        self.owned.pop(cid, None)
        self.stale.discard(cid)  # (the copy here ended)
        ag = self.agent
        if not ag.connected or ag.etcd.client is None:
            return None
        return self.batcher.delete(OWNERS + cid.encode(), self._value())

    async def close(self) -> None:
        if self.batcher.linger is not None:
            self.batcher.linger.cancel()  # (the records go with the lease)
        for t in list(self.tasks):
            t.cancel()
        for _, ch in self.channels.values():
            await ch.close(None)
