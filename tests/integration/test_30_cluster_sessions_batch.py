"""The owner records' transactions (cluster/ownership.py Batcher) against a real etcd:
group commit (issue 11's connect rate) and a batch's deletes, each compared on its own.

The agent is constructed only (no router, no peers); its etcd connection and a lease are
real. To hold a transaction under way for as long as the test looks at what waits behind
it, etcd is frozen (SIGSTOP) and thawed again: nothing here waits on time.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import tempfile

import pytest

from cluster.ownership import OWNERS
from common.settings import Settings
from tests.support.cluster import Etcd

TIMEOUT = 20.0  # seconds for a batch once etcd runs again (a loaded machine)


@pytest.fixture(scope="module")
def etcd():
    e = Etcd().start()
    try:
        yield e
    finally:
        e.stop()


def with_agent(etcd, fn, **settings):
    """fn(agent, batcher, our record's value) on a running loop, the agent joined to etcd
    with a lease of its own (settings: more Settings fields)."""
    from cluster.agent import Agent

    async def main():
        with tempfile.TemporaryDirectory() as tmp:
            ag = Agent(Settings(node_name="b", etcd_endpoints=etcd.url, data_dir=tmp, run_dir=tmp, **settings))
            try:
                client = await ag.etcd.connect()
                ag.lease_id = (await client.lease(60)).id
                await fn(ag, ag.ownership.batcher, ag.ownership._value())
            finally:
                ag.link.sock.close(0)
                if ag.etcd.client is not None:
                    await ag.etcd.client.close()
    asyncio.run(main())


async def passes(n: int = 3) -> None:
    """Let the loop run n passes (what call_soon scheduled runs)."""
    for _ in range(n):
        await asyncio.sleep(0)


def key(name: str) -> bytes:
    return OWNERS + name.encode()


FILL = 32  # SHOAL_CLUSTER_OWNER_FILL of the group-commit test (the default before the setting)


def test_claims_behind_a_transaction_under_way_go_at_once_beside_it_up_to_the_setting(etcd):
    """SHOAL_CLUSTER_OWNER_FILL=1 (the default): each loop pass's claims start a transaction
    beside those under way (etcd takes them together), up to SHOAL_CLUSTER_OWNER_TXNS; more
    wait for one to end and go together. Before (32), a claim behind one under way waited for
    it to end."""
    async def body(ag, b, mine):
        os.kill(etcd.proc.pid, signal.SIGSTOP)
        try:
            futs = []
            for i in range(3):  # one claim per loop pass, as CONNECTs come in
                futs.append(b.claim(key(f"p{i}"), mine))
                await passes()
                assert b.inflight == i + 1  # (etcd is frozen: they stay under way)
            futs += [b.claim(key(f"q{i}"), mine) for i in range(2)]
            await passes()
            assert b.inflight == 3 and len(b.claims) == 2  # at the bound: they wait
        finally:
            os.kill(etcd.proc.pid, signal.SIGCONT)
        results = await asyncio.wait_for(asyncio.gather(*futs), TIMEOUT)
        assert b.txns == 4 and b.inflight == 0
        assert all(prev is None for _, prev, _ in results)
        revisions = [rev for rev, _, _ in results]
        assert len(set(revisions[:3])) == 3 and revisions[3] == revisions[4] > max(revisions[:3])
        for name in ("p0", "p1", "p2", "q0", "q1"):
            assert (await ag.etcd.client.get(key(name))).value == mine
    with_agent(etcd, body, cluster_owner_txns=3)


def test_with_a_fill_claims_behind_a_transaction_under_way_wait_and_go_together_in_the_next(etcd):
    """SHOAL_CLUSTER_OWNER_FILL=32 (group commit): while one transaction is under way, claims
    queued in later loop passes wait for it and then share one transaction; FILL of them
    waiting start one more beside it."""
    async def body(ag, b, mine):
        os.kill(etcd.proc.pid, signal.SIGSTOP)
        try:
            first = b.claim(key("g0"), mine)
            await passes()
            assert b.inflight == 1  # (etcd is frozen: it stays under way)
            behind = []
            for i in range(3):  # one claim per loop pass, as CONNECTs come in
                behind.append(b.claim(key(f"h{i}"), mine))
                await passes()
            assert b.inflight == 1 and len(b.claims) == 3  # they wait
        finally:
            os.kill(etcd.proc.pid, signal.SIGCONT)
        results = await asyncio.wait_for(asyncio.gather(first, *behind), TIMEOUT)
        assert b.txns == 2  # the first, then the three that waited, together
        assert all(prev is None for _, prev, _ in results)  # new ids: nobody owned them
        revisions = [rev for rev, _, _ in results]
        assert revisions[0] > 0 and len(set(revisions[1:])) == 1 and revisions[1] > revisions[0]

        os.kill(etcd.proc.pid, signal.SIGSTOP)
        try:
            lone = b.claim(key("g1"), mine)
            await passes()
            many = [b.claim(key(f"f{i}"), mine) for i in range(FILL)]
            await passes()
            assert b.inflight == 2 and b.claims == []  # FILL waiting: one more goes beside
        finally:
            os.kill(etcd.proc.pid, signal.SIGCONT)
        await asyncio.wait_for(asyncio.gather(lone, *many), TIMEOUT)
        assert b.txns == 4
        for name in ("g0", "h0", "h2", "g1", f"f{FILL - 1}"):
            assert (await ag.etcd.client.get(key(name))).value == mine
    with_agent(etcd, body, cluster_owner_fill=FILL)


def test_a_delete_that_finds_another_nodes_record_leaves_it_and_the_rest_of_the_batch_goes(etcd):
    """Each delete of a batch compares its own key: this node's record goes, another node's
    (it claimed the id since) stays, and the claims of the same transaction are written.
    Before, one failed compare sent the whole batch down the failure branch, whose reads
    sorted the deletes out for another transaction."""
    async def body(ag, b, mine):
        client = ag.etcd.client
        theirs = json.dumps({"lease": 1, "node": "a"}).encode()
        ours = b.claim(key("d-ours"), mine)
        await asyncio.wait_for(ours, TIMEOUT)
        await client.put(key("d-theirs"), theirs)
        txns = b.txns
        gone = b.delete(key("d-ours"), mine)
        kept = b.delete(key("d-theirs"), mine)
        claim = b.claim(key("d-new"), mine)
        await asyncio.wait_for(asyncio.gather(gone, kept, claim), TIMEOUT)
        assert b.txns == txns + 1  # one transaction for the three
        assert await client.get(key("d-ours")) is None
        assert (await client.get(key("d-theirs"))).value == theirs
        assert (await client.get(key("d-new"))).value == mine
        assert b.deletes == [] and b.claims == []
    with_agent(etcd, body)
