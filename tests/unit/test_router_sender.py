"""The router sends the other nodes' publishes itself (SHOAL_CLUSTER_ROUTER_SENDS,
router/sender.py): the agent's ops in (PEER, PEER_ROUTE, PEERS) through Router.handle, the
members' ops out through a fake ROUTER socket, time on a fake clock; the peer's router is a
real ZeroMQ ROUTER socket on 127.0.0.1 where a test needs one."""
from __future__ import annotations

import time

import pytest
import zmq

from core import ops as o
from core import peerdata
from core.ops import pack, unpack
from router.forward import RemoteSeen
from router.sender import PEER
from tests.unit.test_router import W1, W2, Node, msg

AGENT = b"agent"
_made: list = []


@pytest.fixture(autouse=True)
def _close_links():
    """Every test's data links (real DEALER sockets) closed after it."""
    yield
    while _made:
        _made.pop().router.sender.close()


def sending_node(**settings) -> Node:
    n = Node(etcd_endpoints="http://127.0.0.1:1", cluster_link="direct", cluster_router_sends=True, **settings)
    n.router.sender.attach(zmq.Poller())
    _made.append(n)
    n.hello(W1)
    n.hello(W2)
    n.hello(AGENT, ["t/#"])  # the agent's union of the other nodes' filters
    n.feed(AGENT, o.Lease(n.clock.t + 1000, 7))  # (a node holding its lease keeps the agent's routes while it is away)
    n.sock.clear()
    return n


def flush(n: Node) -> None:
    n.router.sender.tick(n.clock.t)
    n.router.sender.flush(n.clock.t)
    n.router.flush()


def publish(n: Node, topic: str, qos: int, token: int | None, payload: bytes = b"x", expiry=None) -> None:
    m = msg(topic, payload, qos)
    m[5] = expiry
    n.feed(W1, o.Pub(m, token, n.clock.t))
    flush(n)


class PeerRouter:
    """Another node's data port: a real ROUTER socket; takes REMOTE_PUBs, answers CONFIRMs."""

    def __init__(self):
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.bind("tcp://127.0.0.1:*")
        self.addr = self.sock.getsockopt(zmq.LAST_ENDPOINT).decode().removeprefix("tcp://")

    def take(self, n: Node, want: int, timeout: float = 30.0) -> list:
        """[(dialler identity, REMOTE_PUB wire list)], driving the sending router meanwhile."""
        got = []
        deadline = time.monotonic() + timeout
        poller = n.router.sender.poller
        while len(got) < want:
            assert time.monotonic() < deadline, f"{len(got)} of {want} publishes came"
            n.router.sender.poll(dict(poller.poll(10)), n.clock.t)
            flush(n)
            while self.sock.get(zmq.EVENTS) & zmq.POLLIN:
                ident, data = self.sock.recv_multipart()
                got += [(ident, w) for w in unpack(data)]
        return got

    def confirm(self, ident: bytes, *seqs: int, ok: bool = True) -> None:
        self.sock.send_multipart([ident, pack([o.Confirm(s, ok) for s in seqs])])

    def close(self):
        self.sock.close(0)


def drive(n: Node, cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    poller = n.router.sender.poller
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        n.router.sender.poll(dict(poller.poll(10)), n.clock.t)
        flush(n)


def test_a_publish_goes_to_the_peers_router_and_is_confirmed_once_it_owns_it():
    n = sending_node()
    peer = PeerRouter()
    try:
        n.feed(AGENT, o.PeerInfo("n2", peer.addr, "inst", True, ["t/#"]))
        publish(n, "t/1", 1, 11, b"one")
        ((ident, w),) = peer.take(n, 1)
        assert peerdata.parse_identity(ident) == (n.router.settings.node, n.router.sender.instance)
        assert w[0] == o.Op.REMOTE_PUB and w[1][:3] == ["t/1", b"one", 1] and w[2] is True and w[4] == 1
        assert n.take(AGENT) == []  # the agent is off the data path
        assert n.take(W1, o.Confirm) == []  # the PUBACK waits for n2
        peer.confirm(ident, 1)
        drive(n, lambda: n.sock.sent)
        assert [(c.token, c.ok) for c in n.take(W1, o.Confirm)] == [(11, True)]
        publish(n, "other", 1, 12)  # no node wants it: confirmed at once, nothing sent
        assert [(c.token, c.ok) for c in n.take(W1, o.Confirm)] == [(12, True)]
    finally:
        peer.close()


def test_what_was_not_confirmed_is_sent_again_with_the_same_seq():
    n = sending_node()
    peer = PeerRouter()
    try:
        n.feed(AGENT, o.PeerInfo("n2", peer.addr, "inst", True, ["t/#"]))
        publish(n, "t/a", 2, 1)
        publish(n, "t/b", 2, 2)
        first = peer.take(n, 2)
        assert [w[4] for _, w in first] == [1, 2]
        n.clock.t += 1.1  # (RESEND_AFTER)
        again = peer.take(n, 2)
        assert [w[4] for _, w in again] == [1, 2] and n.router.sender.resent == 2
        peer.confirm(first[0][0], 1, 2)
        drive(n, lambda: len([op for _, op in n.sock.sent if op.__class__ is o.Confirm]) == 2)
    finally:
        peer.close()


def test_a_failed_confirmation_is_not_taken_for_one_and_the_message_goes_again():
    """The other node's router answers ok False when a receiver there died before it owned the
    message (it forgets the origin, so a resend is routed anew). The publisher's PUBACK waits;
    the message goes again with its seq after the resend wait and is confirmed by a good answer.
    (Before, any answer counted: the PUBACK came for a message nobody owned.)"""
    from core.ops import Confirms

    n = sending_node()
    peer = PeerRouter()
    try:
        n.feed(AGENT, o.PeerInfo("n2", peer.addr, "inst", True, ["t/#"]))
        publish(n, "t/a", 1, 21)
        publish(n, "t/b", 1, 22)
        first = peer.take(n, 2)
        ident = first[0][0]
        peer.confirm(ident, 1, ok=False)
        peer.sock.send_multipart([ident, pack([Confirms(False, [2])])])
        drive(n, lambda: not n.router.sender.peers["n2"].link.sock.get(zmq.EVENTS) & zmq.POLLIN)
        assert n.take(W1, o.Confirm) == []  # no PUBACK for what the other node did not own
        n.clock.t += 1.1  # (RESEND_AFTER)
        again = peer.take(n, 2)
        assert [w[4] for _, w in again] == [1, 2]
        peer.sock.send_multipart([ident, pack([Confirms(True, [1, 2])])])
        drive(n, lambda: len([op for _, op in n.sock.sent if op.__class__ is o.Confirm]) == 2)
        assert sorted((c.token, c.ok) for c in n.take(W1, o.Confirm)) == [(21, True), (22, True)]
    finally:
        peer.close()


def test_a_peer_without_a_data_address_gets_its_publishes_through_the_agent_with_their_origin():
    n = sending_node()
    n.feed(AGENT, o.PeerInfo("n2", None, "inst", True, ["t/#"]))
    publish(n, "t/1", 1, 5)
    (pp,) = n.take(AGENT, o.PeerPub)
    assert pp.node == "n2" and pp.msg[0] == "t/1" and pp.origin == [n.router.sender.instance, 1]
    assert n.take(W1, o.Confirm) == []
    n.feed(AGENT, o.Delivered([o.HANDED, pp.token]))  # the agent: n2 acknowledged it
    assert [(c.token, c.ok) for c in n.take(W1, o.Confirm)] == [(5, True)]
    publish(n, "t/0", 0, None)  # QoS 0: no token, no origin
    (pp,) = n.take(AGENT, o.PeerPub)
    assert pp.token is None and pp.origin is None


def test_an_unreachable_data_address_falls_back_to_the_agent_after_the_setting():
    n = sending_node(cluster_data_fallback_after=5.0)
    dead = PeerRouter()
    addr = dead.addr
    dead.close()  # (nothing listens there now: connection refused)
    n.feed(AGENT, o.PeerInfo("n2", addr, "inst", True, ["t/#"]))
    publish(n, "t/1", 1, 1)
    publish(n, "t/2", 1, 2)
    assert n.take(AGENT, o.PeerPub) == []  # waits for the data link
    n.clock.t += 5.1
    flush(n)
    pps = n.take(AGENT, o.PeerPub)
    assert [p.msg[0] for p in pps] == ["t/1", "t/2"] and [p.origin[1] for p in pps] == [1, 2]  # in seq order
    assert n.router.sender.fallbacks == 1
    publish(n, "t/3", 1, 3)  # what follows goes the same way, after them
    assert [p.msg[0] for p in n.take(AGENT, o.PeerPub)] == ["t/3"]


def test_a_peer_that_left_counts_as_done_and_an_agent_gone_gets_nothing_lost():
    n = sending_node()
    n.feed(AGENT, o.PeerInfo("n2", None, "inst", True, ["t/#"]), o.PeerInfo("n3", None, "i3", True, ["t/#"]))
    publish(n, "t/1", 1, 9)
    assert sorted(p.node for p in n.take(AGENT, o.PeerPub)) == ["n2", "n3"]
    n.router.membership.gone(AGENT)  # the agent died: what it had comes back to the router
    n.sock.clear()
    n.hello(AGENT, ["t/#"])  # a new agent
    flush(n)
    assert n.take(AGENT, o.PeerPub) == []  # not before it announced the peers
    publish(n, "t/2", 1, 10)  # (the nodes of its filters not known yet: through the agent, as without the setting)
    (d,) = n.take(AGENT, o.Deliver)
    assert d.msg[0] == "t/2" and d.normal
    n.feed(AGENT, o.Delivered(d.ref))
    n.sock.clear()
    n.feed(AGENT, o.PeerInfo("n2", None, "inst", True, ["t/#"]), o.Peers(["n2"]))  # n3 left meanwhile
    flush(n)
    (pp,) = n.take(AGENT, o.PeerPub)
    assert pp.node == "n2" and pp.origin == [n.router.sender.instance, 1]  # the same origin: taken once there
    assert n.take(W1, o.Confirm) == []
    n.feed(AGENT, o.PeerInfo("n2", None, "inst", False))  # n2's lease gone
    assert [(c.token, c.ok) for c in n.take(W1, o.Confirm)] == [(9, True)]
    assert n.router.sender.peers == {}
    n.feed(AGENT, o.PeerInfo("n2", None, "inst", True, ["t/#"]))  # back (cut off, and the cut healed)
    publish(n, "t/1", 1, 11)
    (pp,) = n.take(AGENT, o.PeerPub)
    assert pp.origin == [n.router.sender.instance, 2]  # its seqs go on: n2's router still knows seq 1
    assert not any(PEER in k for k in n.router.forward.pending.values())


def test_a_full_peer_queue_pauses_the_router_and_drops_qos0_counted():
    n = sending_node(cluster_max_queued=2)
    dead = PeerRouter()
    addr = dead.addr
    dead.close()
    n.feed(AGENT, o.PeerInfo("n2", addr, "inst", True, ["t/#"]))
    publish(n, "t/1", 1, 1)
    assert not n.router.sender.paused
    publish(n, "t/2", 1, 2)
    assert n.router.sender.paused  # the router stops reading its members (router.py run)
    assert n.router.sender.blocked()  # (the agent could take them: a fall back in time)
    publish(n, "t/3", 0, None)
    assert n.router.sender.dropped_qos0 == 1
    n.router.membership.gone(AGENT)  # now only the agent's news could move the queue: read on,
    assert not n.router.sender.blocked()  # but a QoS 1/2 publish for that peer is refused meanwhile
    n.sock.clear()
    publish(n, "t/4", 1, 4)
    assert [(c.token, c.ok) for c in n.take(W1, o.Confirm)] == [(4, False)] and n.router.sender.refused == 1
    n.hello(AGENT, ["t/#"])
    n.feed(AGENT, o.PeerInfo("n2", None, "inst", False))  # (it left: the queue counts as done)
    assert not n.router.sender.paused
    assert sorted(c.token for c in n.take(W1, o.Confirm)) == [1, 2]


def test_message_expiry_counts_the_wait_here():
    n = sending_node()
    n.feed(AGENT, o.PeerInfo("n2", None, "inst", True, ["t/#"]))
    n.router.membership.gone(AGENT)  # (no agent: the publishes wait here)
    publish(n, "t/short", 1, 1, expiry=2)
    publish(n, "t/long", 1, 2, expiry=60)
    n.clock.t += 3
    n.hello(AGENT, ["t/#"])
    n.feed(AGENT, o.PeerInfo("n2", None, "inst", True, ["t/#"]))
    flush(n)
    (pp,) = n.take(AGENT, o.PeerPub)
    assert pp.msg[0] == "t/long" and 56 < pp.msg[5] < 58  # 60 less the 3 s it waited
    assert n.router.sender.expired == 1
    assert [c.token for c in n.take(W1, o.Confirm)] == [1]  # (expired: nothing there will own it)


def test_routes_per_node_and_a_new_route_gets_what_was_sent_elsewhere_since_its_subscribe():
    n = sending_node()
    n.feed(AGENT, o.PeerInfo("n2", None, "i2", True, ["t/#"]), o.PeerInfo("n3", None, "i3", True, []))
    publish(n, "t/x", 0, None)
    assert [p.node for p in n.take(AGENT, o.PeerPub)] == ["n2"]
    since = n.clock.t - 0.01
    n.clock.t += 0.1
    # n3 subscribed before that publish was read: the agent's new filter, then its node
    n.feed(AGENT, o.RouteAdd("t/x", since), o.PeerRoute("n3", "t/x", True, since))
    flush(n)
    assert [(p.node, p.msg[0]) for p in n.take(AGENT, o.PeerPub)] == [("n3", "t/x")]
    n.feed(AGENT, o.PeerRoute("n2", "t/#", False), o.RouteDel("t/#"))
    publish(n, "t/x", 0, None)
    assert [p.node for p in n.take(AGENT, o.PeerPub)] == ["n3"]


def test_remote_seen_keeps_a_nodes_agent_and_router_instances_apart():
    seen = RemoteSeen(100)
    assert seen.mark(["n2", "agent-inst", 1]) is None
    seen.done(["n2", "agent-inst", 1], True)
    assert seen.mark(["n2", "r-inst", 1]) is None  # the router's seq 1 is another message
    seen.done(["n2", "r-inst", 1], True)
    assert seen.mark(["n2", "agent-inst", 1]) is True  # the agent's is still known
    assert seen.mark(["n2", "r-inst", 1]) is True
    for i in range(RemoteSeen.INSTANCES):
        seen.mark(["n2", f"new{i}", 1])
    assert seen.mark(["n2", "agent-inst", 1]) is None  # (the oldest instances are forgotten)


def test_without_the_setting_the_agent_sends_as_before():
    n = Node(etcd_endpoints="http://127.0.0.1:1", cluster_link="direct", cluster_router_sends=False)
    assert n.router.sender is None
    n.hello(W1)
    n.hello(W2)
    n.hello(AGENT, ["t/#"])
    n.sock.clear()
    n.feed(W1, o.Pub(msg("t/1", b"x", 1), 3, n.clock.t))
    (d,) = n.take(AGENT, o.Deliver)
    assert d.msg[0] == "t/1" and d.ref == [W1, 3]


def test_only_ok_answers_confirm_for_both_senders():
    """core/peerdata.confirmed_seqs, read by the router's sender and the agent's data link:
    CONFIRM and CONFIRMS with ok true count, ok false and anything malformed do not."""
    wires = unpack(pack([o.Confirm(1, True), o.Confirm(2, False), o.Confirms(True, [3, 4]), o.Confirms(False, [5])]))
    wires += [[o.CONFIRMS, True, "not a list"], [o.CONFIRMS, True, [[9], 6]], [o.CONFIRM, "7", True], "junk"]
    assert peerdata.confirmed_seqs(wires) == [1, 3, 4, 6]
    assert peerdata.confirmed_seqs({"not": "a list"}) == []
