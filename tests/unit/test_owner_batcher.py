"""The owner transactions' batching (cluster/ownership.py Batcher; issue 11's connect rate):
what goes in which etcd transaction and when, with a real Agent whose etcd is a stand-in for
etcd's KV stub (each Txn call is held until the test answers it) on an asyncio loop whose
clock the test moves (a session end's delete lingers DELETE_LINGER on that clock). Nothing
here waits on time: a loop pass is `await passes()`.

Against a real etcd (frozen with SIGSTOP to hold a transaction under way):
tests/integration/test_30_cluster_sessions_batch.py."""
from __future__ import annotations

import asyncio
import json
import tempfile

from aetcd import rpc

from cluster.ownership import DELETE_LINGER, FILL, INFLIGHT, OWNERS
from common.settings import Settings

LEASE = 7


class FakeTimeLoop(asyncio.SelectorEventLoop):
    """asyncio's loop on a clock of the test's: timers run once advance() moved past them."""

    def __init__(self):
        super().__init__()
        self.now = 1000.0

    def time(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


class Txn:
    """One Txn call etcd was asked: its request, answered by the test."""

    def __init__(self, request: rpc.TxnRequest):
        self.request = request
        self.reply: asyncio.Future = asyncio.get_running_loop().create_future()

    @property
    def puts(self) -> list[bytes]:
        return [op.request_put.key[len(OWNERS):] for op in self.request.success if op.HasField("request_put")]

    @property
    def deletes(self) -> list[bytes]:
        return [op.request_txn.success[0].request_delete_range.key[len(OWNERS):]
                for op in self.request.success if op.HasField("request_txn")]

    def answer(self, revision: int, prev: dict | None = None) -> None:
        """Every put at revision; prev: key -> (value, lease) a put replaced."""
        prev = prev or {}
        out = []
        for op in self.request.success:
            if op.HasField("request_put"):
                put = rpc.PutResponse(header=rpc.ResponseHeader(revision=revision))
                k = op.request_put.key[len(OWNERS):]
                if k in prev:
                    put.prev_kv.CopyFrom(rpc.KeyValue(key=op.request_put.key, value=prev[k][0], lease=prev[k][1]))
                out.append(rpc.ResponseOp(response_put=put))
            else:
                out.append(rpc.ResponseOp(response_txn=rpc.TxnResponse(succeeded=True)))
        self.reply.set_result(rpc.TxnResponse(responses=out))


class FakeKV:
    def __init__(self):
        self.calls: list[Txn] = []

    async def Txn(self, request, timeout=None, metadata=None):
        t = Txn(request)
        self.calls.append(t)
        return await t.reply


class FakeClient:
    """What the Batcher uses of aetcd's client: its KV stub and call metadata."""

    metadata = None

    def __init__(self):
        self.kvstub = FakeKV()


def with_batcher(**settings):
    """fn(loop, batcher, stub, our record's value): a real Agent of node "b" (constructed only:
    no router, no peers), its etcd client the stand-in, on a FakeTimeLoop."""
    def wrap(fn):
        def run():
            from cluster.agent import Agent

            async def main(loop):
                with tempfile.TemporaryDirectory() as tmp:
                    ag = Agent(Settings(node_name="b", etcd_endpoints="http://127.0.0.1:1", data_dir=tmp, run_dir=tmp,
                                        **settings))
                    try:
                        client = FakeClient()
                        ag.etcd.client = client
                        ag.lease_id = LEASE
                        await fn(loop, ag.ownership.batcher, client.kvstub, ag.ownership._value())
                    finally:
                        for t in list(ag.ownership.tasks):  # (transactions the test left unanswered)
                            t.cancel()
                        await passes()
                        ag.link.sock.close(0)

            loop = FakeTimeLoop()
            try:
                loop.run_until_complete(main(loop))
            finally:
                loop.close()
        run.__name__, run.__doc__ = fn.__name__, fn.__doc__
        return run
    return wrap


async def passes(n: int = 4) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def key(name: str) -> bytes:
    return OWNERS + name.encode()


def test_the_settings_their_defaults_and_bounds():
    import pytest

    from common.settings import SettingsError, load

    s = Settings()
    assert (s.cluster_owner_txns, s.cluster_owner_fill) == (INFLIGHT, FILL) == (8, 1)
    s = load({"SHOAL_CLUSTER_OWNER_TXNS": "2", "SHOAL_CLUSTER_OWNER_FILL": "32"})
    assert (s.cluster_owner_txns, s.cluster_owner_fill) == (2, 32)
    with pytest.raises(SettingsError) as e:
        load({"SHOAL_CLUSTER_OWNER_TXNS": "0", "SHOAL_CLUSTER_OWNER_FILL": "101"})
    assert e.value.problems == ["SHOAL_CLUSTER_OWNER_TXNS='0': should be a number from 1 to 64",
                                "SHOAL_CLUSTER_OWNER_FILL='101': should be a number from 1 to 100"]


@with_batcher()
async def test_the_claims_of_one_loop_pass_go_in_one_transaction_at_its_end(loop, b, kv, mine):
    futs = [b.claim(key(f"c{i}"), mine) for i in range(3)]
    assert kv.calls == []  # (not before the end of the pass)
    await passes()
    (t,) = kv.calls
    assert t.puts == [b"c0", b"c1", b"c2"] and t.deletes == []
    put = t.request.success[0].request_put
    assert (put.value, put.lease, put.prev_kv) == (mine, LEASE, True)
    theirs = json.dumps({"lease": 3, "node": "a"}).encode()
    t.answer(41, {b"c1": (theirs, 3)})
    await passes()
    assert [f.result() for f in futs] == [(41, None, 0), (41, theirs, 3), (41, None, 0)]
    assert (b.txns, b.records, b.inflight) == (1, 3, 0)


@with_batcher(cluster_owner_txns=3)
async def test_claims_behind_a_transaction_under_way_go_at_once_up_to_the_setting_then_wait(loop, b, kv, mine):
    """SHOAL_CLUSTER_OWNER_FILL=1 (the default): each loop pass's claims start a transaction of
    their own beside those under way, up to SHOAL_CLUSTER_OWNER_TXNS; past it they wait for one
    to end and go together. Before (group commit with 32), a claim behind one under way waited
    for it to end: a whole transaction's time more (a third of a cluster CONNECT's wait)."""
    futs = []
    for i in range(3):  # one claim per loop pass, as CONNECTs come in
        futs.append(b.claim(key(f"c{i}"), mine))
        await passes()
        assert len(kv.calls) == i + 1 and b.inflight == i + 1
    for i in range(3, 5):
        futs.append(b.claim(key(f"c{i}"), mine))
        await passes()
    assert len(kv.calls) == 3 and [len(c) for c in (b.claims,)] == [2]  # three under way: they wait
    kv.calls[1].answer(50)  # (one ends, not the oldest)
    await passes()
    assert len(kv.calls) == 4 and kv.calls[3].puts == [b"c3", b"c4"] and b.claims == []
    assert futs[1].result()[0] == 50 and not futs[0].done()
    for rev, t in zip((49, 51, 52), (kv.calls[0], kv.calls[2], kv.calls[3])):
        t.answer(rev)
    await passes()
    assert [f.result()[0] for f in futs] == [49, 50, 51, 52, 52] and b.inflight == 0 and b.txns == 4


@with_batcher(cluster_owner_fill=4)
async def test_with_a_fill_claims_wait_for_the_one_under_way_until_that_many_wait(loop, b, kv, mine):
    """SHOAL_CLUSTER_OWNER_FILL above 1: group commit. Behind one under way claims wait and go
    together when it ends; once FILL records wait, one more goes beside it."""
    first = b.claim(key("g0"), mine)
    await passes()
    assert len(kv.calls) == 1
    for i in range(3):
        b.claim(key(f"h{i}"), mine)
        await passes()
    assert len(kv.calls) == 1 and len(b.claims) == 3  # they wait
    b.claim(key("h3"), mine)  # the fourth waiting: one more goes beside
    await passes()
    assert len(kv.calls) == 2 and kv.calls[1].puts == [b"h0", b"h1", b"h2", b"h3"]
    b.claim(key("h4"), mine)
    await passes()
    assert len(kv.calls) == 2
    kv.calls[0].answer(9)
    await passes()
    assert first.result()[0] == 9 and len(kv.calls) == 2  # one is still under way: h4 waits for it
    kv.calls[1].answer(10)
    await passes()
    assert len(kv.calls) == 3 and kv.calls[2].puts == [b"h4"]


@with_batcher()
async def test_a_session_ends_delete_rides_with_the_next_claims_or_goes_after_its_linger(loop, b, kv, mine):
    gone = b.delete(key("d0"), mine)
    await passes()
    assert kv.calls == []  # it waits for claims to ride with
    loop.advance(DELETE_LINGER / 2)
    await passes()
    assert kv.calls == []
    b.claim(key("c0"), mine)
    await passes()
    (t,) = kv.calls
    assert (t.puts, t.deletes) == ([b"c0"], [b"d0"])  # one transaction for both
    cmp = t.request.success[1].request_txn.compare[0]
    assert (cmp.key, cmp.value, cmp.target) == (key("d0"), mine, rpc.Compare.VALUE)  # only our own record
    t.answer(3)
    await passes()
    assert gone.result() is None
    later = b.delete(key("d1"), mine)
    loop.advance(DELETE_LINGER - 0.001)
    await passes()
    assert len(kv.calls) == 1
    loop.advance(0.002)  # its linger is over: it goes alone
    await passes()
    assert len(kv.calls) == 2 and (kv.calls[1].puts, kv.calls[1].deletes) == ([], [b"d1"])
    kv.calls[1].answer(4)
    await passes()
    assert later.result() is None and b.linger is None


@with_batcher()
async def test_a_delete_waiting_goes_at_once_when_an_op_of_its_id_waits_for_it(loop, b, kv, mine):
    b.delete(key("d0"), mine)
    b.flush()  # (Ownership._spawn: the id's next op waits for this delete)
    await passes()
    (t,) = kv.calls
    assert (t.puts, t.deletes) == ([], [b"d0"])
    t.answer(2)
    await passes()


@with_batcher()
async def test_a_failed_transaction_fails_its_claims_and_lets_its_deletes_go_with_the_lease(loop, b, kv, mine):
    claim = b.claim(key("c0"), mine)
    gone = b.delete(key("d0"), mine)
    await passes()
    (t,) = kv.calls
    t.reply.set_exception(ConnectionError("etcd went away"))
    await passes()
    assert isinstance(claim.exception(), ConnectionError) and gone.result() is None and b.inflight == 0
    nxt = b.claim(key("c1"), mine)  # the next claims go as before
    await passes()
    kv.calls[1].answer(5)
    await passes()
    assert nxt.result() == (5, None, 0)


@with_batcher()
async def test_at_most_a_hundred_records_a_transaction(loop, b, kv, mine):
    for i in range(150):
        b.claim(key(f"c{i}"), mine)
    for i in range(30):
        b.delete(key(f"d{i}"), mine)
    await passes()
    assert [(len(t.puts), len(t.deletes)) for t in kv.calls] == [(100, 0), (50, 30)]
