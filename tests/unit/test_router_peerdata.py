"""The router's side of the direct data link (router/peerdata.py): publishes of other nodes'
agents in through PeerData.handle as the bytes core/peerdata.py makes, CONFIRMs out through
a fake ROUTER socket standing for the data port, time on a fake clock."""
from __future__ import annotations

import logging

import msgpack

from core import ops as o
from core import peerdata
from tests.support.fake_link import FakeRouterSocket
from tests.unit.test_router import AGENT, W1, W2, Node, msg

PEER = peerdata.identity("n2", "inst1")


def direct_node() -> Node:
    n = Node(etcd_endpoints="http://127.0.0.1:1", cluster_link="direct")
    n.router.peer_data.sock = FakeRouterSocket()
    n.hello(W1, ["t"])
    n.hello(W2)
    n.hello(AGENT, ["t"])  # another node wants "t" too: a remote message must never go back out
    n.sock.clear()
    return n


def from_peer(n: Node, *ops: bytes, ident: bytes = PEER) -> None:
    n.router.peer_data.handle(ident, peerdata.batch(list(ops)), n.clock.t)
    n.router.flush()


def pub(seq: int, topic: str = "t", payload: bytes = b"x", qos: int = 2) -> bytes:
    return peerdata.remote_pub(msgpack.packb(msg(topic, payload, qos), use_bin_type=True), True, [], seq)


def confirms(n: Node) -> list:
    return [(c.token, c.ok) for c in n.router.peer_data.sock.take(PEER, o.Confirm)]


def test_the_agent_hears_where_the_router_takes_other_nodes_publishes():
    n = Node(etcd_endpoints="http://127.0.0.1:1", cluster_link="direct")
    n.router.peer_data.address = "127.0.0.1:5555"  # (bind() sets it)
    n.hello(W1)
    assert n.hello(AGENT).data_addr == "127.0.0.1:5555"
    assert n.hello(W2).data_addr is None  # (workers do not link to other nodes)


def test_a_peer_publish_reaches_the_workers_only_and_is_confirmed_once_they_own_it():
    n = direct_node()
    from_peer(n, pub(7))
    (d,) = n.take(W1, o.Deliver)
    assert d.msg[0] == "t" and d.msg[2] == 2
    assert n.take(AGENT) == [] and n.take(W2) == []  # never back out to a third node
    assert confirms(n) == []  # w1 does not own it yet
    n.feed(W1, o.Delivered(d.ref))
    assert confirms(n) == [(7, True)]
    assert n.take(W1, o.Confirm) == []


def test_a_publish_sent_again_is_taken_once():
    """In progress: the copy gets the first one's outcome; taken: confirmed at once, not routed."""
    n = direct_node()
    from_peer(n, pub(5))
    (d,) = n.take(W1, o.Deliver)
    from_peer(n, pub(5))
    assert n.take(W1, o.Deliver) == [] and confirms(n) == []
    n.feed(W1, o.Delivered(d.ref))
    assert confirms(n) == [(5, True), (5, True)]
    from_peer(n, pub(5))
    assert n.take(W1, o.Deliver) == []
    assert confirms(n) == [(5, True)]
    # another instance of that node's agent numbers anew: its seq 5 is a new message
    from_peer(n, pub(5), ident=peerdata.identity("n2", "inst2"))
    assert len(n.take(W1, o.Deliver)) == 1


def test_qos0_is_routed_and_never_confirmed():
    n = direct_node()
    from_peer(n, pub(0, qos=0))
    (d,) = n.take(W1, o.Deliver)
    assert d.ref is None
    assert confirms(n) == []


def test_bad_input_is_dropped_counted_and_logged_and_the_next_publish_routed(caplog):
    n = direct_node()
    pd = n.router.peer_data
    with caplog.at_level(logging.WARNING, logger="shoal.router"):
        pd.handle(b"intruder", peerdata.batch([pub(1)]), n.clock.t)  # not ours
        pd.handle(peerdata.PREFIX + b"2/n2/i", peerdata.batch([pub(1)]), n.clock.t)  # another data wire
        pd.handle(PEER, b"\xc1", n.clock.t)  # no msgpack
        pd.handle(PEER, msgpack.packb({"a": 1}), n.clock.t)  # not a list of ops
        from_peer(n, msgpack.packb([1, 2]),  # not a publish
                  msgpack.packb([17, ["t", "str payload", 1, False, None, None, ""], True, [], 2, None]),
                  msgpack.packb([17, msg("t"), True, [["g"]], 3, None]),  # a malformed group
                  msgpack.packb([17, msg("t"), True, [], -1, None]),  # a bad token
                  pub(4))
    assert pd.refused == 2
    assert pd.malformed == 6
    (refused,) = [r for r in caplog.records if r.getMessage() == "data link refused"]  # (the first of each is logged)
    assert refused.kv["peer"] == "intruder" and refused.kv["error"] == "not a Shoal data link"
    (bad,) = [r for r in caplog.records if r.getMessage() == "bad data from another node dropped"]
    assert bad.kv["peer"] == "n2" and bad.kv["what"] == "undecodable message"
    (d,) = n.take(W1, o.Deliver)
    n.feed(W1, o.Delivered(d.ref))
    assert confirms(n) == [(4, True)]


def test_a_publish_before_the_router_settled_is_dropped_unconfirmed_for_the_sender_to_resend():
    n = Node(workers=2, etcd_endpoints="http://127.0.0.1:1", cluster_link="direct")
    n.router.peer_data.sock = FakeRouterSocket()
    n.hello(W1, ["t"])  # w2 has not registered: the router is not settled
    n.sock.clear()
    from_peer(n, pub(9))
    assert n.take(W1, o.Deliver) == [] and confirms(n) == []
    n.hello(W2)
    from_peer(n, pub(9))  # the sender's resend
    (d,) = n.take(W1, o.Deliver)
    n.feed(W1, o.Delivered(d.ref))
    assert confirms(n) == [(9, True)]


def test_confirms_to_a_dialler_that_cannot_take_them_are_dropped_not_held():
    """(It sends those publishes again and they are confirmed at once.) A slow member holds the
    router's reading; a slow dialler must not."""
    n = direct_node()
    from_peer(n, pub(3))
    (d,) = n.take(W1, o.Deliver)
    n.router.peer_data.sock.slow.add(PEER)
    n.feed(W1, o.Delivered(d.ref))
    assert n.router.out == {}  # nothing kept for it
    n.router.peer_data.sock.slow.clear()
    from_peer(n, pub(3))
    assert n.take(W1, o.Deliver) == [] and confirms(n) == [(3, True)]


def test_an_address_that_cannot_be_bound_stops_the_router_saying_so(caplog):
    import pytest

    n = Node(etcd_endpoints="http://127.0.0.1:1", cluster_link="direct", cluster_data_addr="192.0.2.1:9")
    try:
        with caplog.at_level(logging.ERROR, logger="shoal.router"), pytest.raises(SystemExit) as e:
            n.router.peer_data.bind()  # (TEST-NET-1: no interface of this host has it)
        assert e.value.code == 3
        (rec,) = caplog.records
        assert "SHOAL_CLUSTER_DATA_ADDR" in rec.getMessage() and rec.kv["addr"] == "192.0.2.1:9"
    finally:
        n.router.peer_data.close()
