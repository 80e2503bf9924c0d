"""Issue 10's hot path (hotpath): confirmations batched into one op per loop pass (CONFIRMS
router -> worker and router -> a peer router that says it reads them, DELIVERED_MANY worker ->
router), and the hot ops read as wire lists. Ops are fed to a Router (fake ROUTER socket, fake
clock), to a worker's RouterBridge (fake DEALER, fake loop), and to a sending router whose peer is
a real ZeroMQ ROUTER socket; the messages as sent are checked byte for byte where the batched
form is the point (the fakes otherwise record a batched op as the single ops it stands for)."""
from __future__ import annotations

import logging

import msgpack

from core import ops as o
from core import peerdata
from core.ops import pack, unpack
from tests.support.fake_link import FakeRouterSocket
from tests.unit.test_router import AGENT, W1, W2, Node, msg
from core.message import Message
from tests.support.worker_rig import Worker
from tests.unit.test_router_sender import PeerRouter, drive, publish, sending_node


def wires_to(n: Node, ident: bytes) -> list:
    """Every wire op sent to ident, in order, as it went (batched forms unexpanded)."""
    return [w for to, data in n.sock.raw if to == ident for w in unpack(data)]


def two_pubs_delivered(n: Node) -> list:
    n.hello(W1)
    n.hello(W2, ["t"])
    n.sock.clear()
    n.feed(W1, o.Pub(msg("t", b"a", 1), 11, n.clock.t), o.Pub(msg("t", b"b", 1), 12, n.clock.t))
    ds = n.take(W2, o.Deliver)
    assert [d.msg[1] for d in ds] == [b"a", b"b"]
    return ds


# -- router -> worker: CONFIRMS ----------------------------------------------------------------
def test_the_confirms_of_one_pass_go_to_a_worker_as_one_op_in_order():
    n = Node()
    ds = two_pubs_delivered(n)
    n.sock.clear()
    n.feed(W2, o.DeliveredMany([d.ref for d in ds]))
    assert wires_to(n, W1) == [[o.CONFIRMS, True, [11, 12]]]


def test_single_delivered_ops_are_still_understood_and_confirmed():
    n = Node()
    ds = two_pubs_delivered(n)
    n.sock.clear()
    n.feed(W2, *[o.Delivered(d.ref) for d in ds])
    assert wires_to(n, W1) == [[o.CONFIRMS, True, [11, 12]]]


def test_a_confirm_is_never_merged_across_another_op_to_the_same_member():
    """CONFIRMS keeps the order of everything sent to a member: a DELIVER between two
    confirms splits them into two ops around it."""
    n = Node()
    n.hello(W1, ["back"])
    n.hello(W2, ["t"])
    n.sock.clear()
    n.feed(W1, o.Pub(msg("t", b"a", 1), 11, n.clock.t), o.Pub(msg("t", b"b", 1), 12, n.clock.t))
    d1, d2 = n.take(W2, o.Deliver)
    n.sock.clear()
    n.feed(W2, o.Delivered(d1.ref), o.Pub(msg("back", b"c", 0), None, n.clock.t), o.Delivered(d2.ref))
    got = wires_to(n, W1)
    assert [w[0] for w in got] == [o.CONFIRMS, o.DELIVER, o.CONFIRMS]
    assert got[0][2] == [11] and got[2][2] == [12] and got[1][1][1] == b"c"


def test_a_failed_confirm_is_not_merged_with_a_good_one():
    n = Node()
    ds = two_pubs_delivered(n)
    n.sock.clear()
    n.feed(W2, o.Delivered(ds[0].ref))
    n.router.membership.gone(W2)  # (the other's receiver died before it owned it)
    n.router.flush()
    got = [w for w in wires_to(n, W1) if w[0] != o.Op.ROUTES]  # (w2's routes go too)
    assert got == [[o.CONFIRMS, True, [11]], [o.CONFIRMS, False, [12]]]


def test_the_agent_still_gets_one_confirm_per_token():
    """The agent reads CONFIRM only (its code is not on this hot path): never CONFIRMS."""
    n = Node(etcd_endpoints="http://127.0.0.1:1")
    n.hello(W1, ["t"])
    n.hello(W2)
    n.hello(AGENT)
    n.sock.clear()
    m = msg("t", b"x", 1)
    n.feed(AGENT, o.RemotePub(m, True, [], 5, n.clock.t), o.RemotePub(m, True, [], 6, n.clock.t))
    ds = n.take(W1, o.Deliver)
    n.sock.clear()
    n.feed(W1, o.DeliveredMany([d.ref for d in ds]))
    assert wires_to(n, AGENT) == [[o.CONFIRM, 5, True], [o.CONFIRM, 6, True]]


def test_a_malformed_hot_op_costs_only_itself(caplog):
    n = Node()
    n.hello(W1)
    n.hello(W2, ["t"])
    n.sock.clear()
    with caplog.at_level(logging.ERROR, logger="shoal.router"):
        n.router.handle(W1, msgpack.packb([[o.PUB, 42, 1], [o.DELIVERED, None], [o.DELIVERED_MANY, 7],
                                           [o.PUB, msg("t", b"ok", 0)]], use_bin_type=True))
        n.router.flush()
    assert [d.msg[1] for d in n.take(W2, o.Deliver)] == [b"ok"]
    assert n.router.malformed == 3
    assert "error handling a member's op" in caplog.text


# -- worker <-> router -------------------------------------------------------------------------
def test_a_worker_answers_the_deliveries_of_one_read_with_one_delivered_many():
    w = Worker()
    m = msg("t", b"x", 1)
    w.router([o.DELIVER, m, True, [], [b"w2", 5]], [o.DELIVER, m, True, [], [b"w2", 6]])
    w.loop.advance(w.bridge.batch_delay)
    sent = [x for data in w.sock.raw for x in unpack(data) if x[0] in (o.DELIVERED, o.DELIVERED_MANY)]
    assert sent == [[o.DELIVERED_MANY, [[b"w2", 5], [b"w2", 6]]]]
    assert w.bridge.figures[3] == 2  # (deliveries received)


def test_a_worker_takes_confirms_and_single_confirms():
    w = Worker()
    got = []
    for payload in (b"a", b"b", b"c"):
        w.bridge.forward(Message("t", payload, 1, False, {}, None, ""), got.append)
    w.loop.advance(w.bridge.batch_delay)
    pubs = w.ops(o.Pub)
    assert [p.msg[1] for p in pubs] == [b"a", b"b", b"c"]
    w.router(o.Confirms(True, [pubs[0].token, pubs[1].token]), o.Confirm(pubs[2].token, False))
    assert got == [True, True, False]
    assert w.bridge.unconfirmed == {} and w.bridge.confirms == {}


def test_a_malformed_op_from_the_router_costs_only_itself(caplog):
    w = Worker()
    got = []
    w.bridge.forward(Message("t", b"a", 1, False, {}, None, ""), got.append)
    w.loop.advance(w.bridge.batch_delay)
    (pub,) = w.ops(o.Pub)
    with caplog.at_level(logging.WARNING, logger="shoal.link"):
        w.router([o.CONFIRMS, True, [[1]]], [o.DELIVER, 5, True, [], None], [999, 1], [o.CONFIRMS, True, [pub.token]])
    assert got == [True]
    assert "error handling a router message" in caplog.text and "undecodable op" in caplog.text


# -- router -> peer router: CONFIRMS only to a dialler that says it reads them ------------------
def test_a_peer_router_that_says_so_gets_confirms_and_an_older_dialler_gets_confirm():
    n = Node(etcd_endpoints="http://127.0.0.1:1", cluster_link="direct")
    n.router.peer_data.sock = FakeRouterSocket()
    n.hello(W1, ["t"])
    n.hello(W2)
    n.hello(AGENT)
    n.sock.clear()
    new = peerdata.identity("n2", "r00" + peerdata.CONFIRMS_MARK)  # a router of this build
    old = peerdata.identity("n3", "inst1")  # an agent, or a router of an older build
    for ident in (new, old):
        body = [peerdata.remote_pub(msgpack.packb(msg("t", b"x", 1), use_bin_type=True), True, [], seq)
                for seq in (1, 2)]
        n.router.peer_data.handle(ident, peerdata.batch(body), n.clock.t)
    n.router.flush()
    ds = n.take(W1, o.Deliver)
    assert len(ds) == 4
    n.feed(W1, o.DeliveredMany([d.ref for d in ds]))
    raw = n.router.peer_data.sock.raw
    assert [w for to, data in raw if to == new for w in unpack(data)] == [[o.CONFIRMS, True, [1, 2]]]
    assert [w for to, data in raw if to == old for w in unpack(data)] == [[o.CONFIRM, 1, True], [o.CONFIRM, 2, True]]


def test_the_sending_router_says_it_reads_confirms_and_takes_both_forms():
    n = sending_node()
    peer = PeerRouter()
    try:
        assert n.router.sender.instance.endswith(peerdata.CONFIRMS_MARK)
        n.feed(AGENT, o.PeerInfo("n2", peer.addr, "inst", True, ["t/#"]))
        for token in (11, 12, 13):
            publish(n, "t/1", 1, token)
        got = peer.take(n, 3)
        ident = got[0][0]
        assert peerdata.parse_identity(ident)[1].endswith(peerdata.CONFIRMS_MARK)
        assert [w[4] for _, w in got] == [1, 2, 3]
        peer.sock.send_multipart([ident, pack([o.Confirms(True, [1, 2]), o.Confirm(3, True),
                                               [o.CONFIRMS, True, "not a list"], [o.CONFIRMS, True, [[9]]]])])
        drive(n, lambda: len([op for _, op in n.sock.sent if op.__class__ is o.Confirm]) == 3)
        assert [(c.token, c.ok) for c in n.take(W1, o.Confirm)] == [(11, True), (12, True), (13, True)]
        assert n.router.sender.peers["n2"].unacked == {}
    finally:
        peer.close()
        n.router.sender.close()
