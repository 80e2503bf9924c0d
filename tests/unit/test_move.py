"""A session moving between nodes (issue 11 point 2), the parts that need no cluster:
the router of the node it left (router/away.py: its routes kept, what arrives for it
forwarded through the agent, the window on a fake clock), the worker of the node it
reached (worker/moved.py: a message that came both ways delivered once; the CONNACK
waits for the routes the session brought)."""
from __future__ import annotations

from core import ops as o
from core.message import Message
from core.session import Delivery, Session, SubOptions
from router.away import AWAY_MEMBER
from router.members import AGENT
from tests.unit.test_broker_routing import Client, Clock, connect, parse_publish, with_loop
from tests.unit.test_router import MEMBER_TIMEOUT, W1, W2, Node, msg, session
from worker.bridge import LocalBridge
from worker.broker import Broker
from common.settings import Settings

WINDOW = 5.0


def clustered() -> Node:
    n = Node(etcd_endpoints="http://127.0.0.1:1", cluster_move_window=WINDOW)
    n.hello(W1, ["t/#"], ["c"])
    n.hello(W2)
    n.hello(AGENT)
    n.feed(AGENT, o.Owned("c", 0, 1, None))  # (no claim: ignored)
    n.sock.clear()
    return n


def hand_to_other_node(n: Node, cid: str = "c", filters=("t/#",)) -> None:
    """The agent claims cid for another node; W1, its holder, hands the session over and
    withdraws its routes (HANDOFF first, as worker/router_link.py sends them)."""
    n.feed(AGENT, o.Claim(cid, 1 << 40, False))
    (t,) = n.take(W1, o.Takeover)
    n.feed(W1, o.Handoff(cid, t.req, session(cid, filters)), *[o.RouteDel(f) for f in filters])
    (g,) = n.take(AGENT, o.Grant)
    assert g.state is not None


def later(n: Node, dt: float) -> None:
    """Time passes; every member speaks meanwhile (a silent one is dropped after 3 s)."""
    for ident in (W1, W2, AGENT):
        n.feed(ident, o.Ping())
    n.tick(dt)
    n.take(W1, o.Pong), n.take(W2, o.Pong), n.take(AGENT, o.Pong)


def test_a_moved_sessions_route_stays_for_the_window_then_goes():
    n = clustered()
    hand_to_other_node(n)
    deltas = [d for r in n.take(AGENT, o.Routes) for d in r.delta]
    # the agent counts "away" before the worker leaves: routes/<node>/t/# stays in etcd
    assert deltas == [[1, AWAY_MEMBER, "t/#", None], [-1, "w1", "t/#"]]
    later(n, 2.0)
    later(n, WINDOW - 2.1)
    assert n.take(AGENT, o.Routes) == []
    later(n, 0.2)
    (r,) = n.take(AGENT, o.Routes)
    assert r.delta == [[-1, AWAY_MEMBER, "t/#"]]
    n.feed(W2, o.Pub(msg("t/x", qos=1), 5, n.clock.t))
    assert n.take(AGENT, o.DeliverDirect) == []  # the window is over
    (c,) = n.take(W2, o.Confirm)
    assert (c.token, c.ok) == (5, True)


def test_what_arrives_for_a_moved_session_follows_it_and_is_confirmed_once_owned_there():
    n = clustered()
    hand_to_other_node(n)
    n.sock.clear()
    n.feed(W2, o.Pub(msg("t/x", b"local", qos=1), 7, n.clock.t))  # a publisher of this node
    (d,) = n.take(AGENT, o.DeliverDirect)
    assert (d.client_id, d.qos, d.msg[1], d.ref) == ("c", 1, b"local", [W2, 7, "c"])
    assert len(d.msg) == 8  # stamped with its id
    assert n.take(W2, o.Confirm) == []  # the other node does not own it yet
    n.feed(AGENT, o.Delivered(d.ref))
    (c,) = n.take(W2, o.Confirm)
    assert (c.token, c.ok) == (7, True)
    # from another node (through the agent, stamped there): forwarded too, with its id
    m = msg("t/y", b"remote", qos=2) + [12345]
    n.feed(AGENT, o.RemotePub(m, True, [], 9, n.clock.t))
    (d,) = n.take(AGENT, o.DeliverDirect)
    assert (d.msg[1], d.msg[7], d.ref) == (b"remote", 12345, [AGENT, 9, "c"])
    n.feed(AGENT, o.Delivered(d.ref))
    (c,) = n.take(AGENT, o.Confirm)
    assert c.token == 9


def test_ids_are_unique_and_a_message_already_stamped_keeps_its_id():
    n = clustered()
    for i in range(3):
        n.feed(W2, o.Pub(msg("t/x"), None, n.clock.t))
    ids = [d.msg[7] for d in n.take(W1, o.Deliver)]
    assert len(set(ids)) == 3
    n.feed(AGENT, o.RemotePub(msg("t/x") + [42], True, [], None, n.clock.t))
    (d,) = n.take(W1, o.Deliver)
    assert d.msg[7] == 42


def test_a_message_the_old_worker_still_had_follows_through_the_router_once():
    n = clustered()
    hand_to_other_node(n)
    n.sock.clear()
    n.feed(W1, o.Direct(msg("t/x", b"late", qos=1) + [77], "c", 1, False, []))  # worker/moved.py follow
    (d,) = n.take(AGENT, o.DeliverDirect)
    assert (d.client_id, d.msg[1], d.ref) == ("c", b"late", None)
    # one that came from another node for a session not here is not sent on again
    n.feed(AGENT, o.Direct(msg("t/x", b"bounced", qos=1) + [78], "c", 1, False, []))
    assert n.take(AGENT, o.DeliverDirect) == []


def test_a_copy_the_old_worker_had_is_part_of_its_publishers_confirmation():
    """W1 was given a QoS 1 message for c (DELIVER with W2's ref) before c's session went to
    another node; W1 forwards its copy (DIRECT with that ref) and then confirms its own part.
    W2's publish is confirmed only once the other node owns the forwarded copy; before, W1's
    confirmation alone confirmed it, and the copy was lost if the agent died before the other
    node had it. If the agent dies first, the publish is confirmed as failed."""
    for agent_dies in (False, True):
        n = clustered()
        n.feed(W2, o.Pub(msg("t/x", b"early", qos=1), 7, n.clock.t))
        (dl,) = n.take(W1, o.Deliver)
        assert dl.ref == [W2, 7]
        hand_to_other_node(n)
        n.sock.clear()
        n.feed(W1, o.Direct(dl.msg, "c", 1, False, [], dl.ref), o.Delivered(dl.ref))
        (d,) = n.take(AGENT, o.DeliverDirect)
        assert (d.client_id, d.msg[1], d.ref) == ("c", b"early", [W2, 7, "c"])
        assert n.take(W2, o.Confirm) == []  # W1 owns its part; the other node does not yet
        if agent_dies:
            n.clock.t += MEMBER_TIMEOUT / 2
            n.feed(W1, o.Ping())
            n.feed(W2, o.Ping())
            n.tick(MEMBER_TIMEOUT / 2 + 0.1)  # the agent silent: gone before the other node had it
            (c,) = n.take(W2, o.Confirm)
            assert (c.token, c.ok) == (7, False)
        else:
            n.feed(AGENT, o.Delivered(d.ref))
            (c,) = n.take(W2, o.Confirm)
            assert (c.token, c.ok) == (7, True)


def test_a_copy_whose_publish_was_confirmed_already_follows_without_a_ref():
    """A DIRECT whose ref no longer waits (the publish was confirmed, or its sender is not the
    worker named): forwarded as before, no confirmation of anyone's held."""
    n = clustered()
    hand_to_other_node(n)
    n.sock.clear()
    n.feed(W1, o.Direct(msg("t/x", b"late", qos=1) + [77], "c", 1, False, [], [W2, 99]))
    (d,) = n.take(AGENT, o.DeliverDirect)
    assert (d.msg[1], d.ref) == (b"late", None)


def test_a_copy_from_another_node_for_a_session_that_went_on_takes_a_second_hop():
    """c's session came here from node a and went on to a third node within the window (its
    client reconnected twice): a copy a forwards for it (the agent's DIRECT, with a token) goes
    on to the third node through the agent, and a is acknowledged (CONFIRM of the token) only
    once that node owns it. Before, it was dropped here and acknowledged: lost."""
    n = clustered()
    hand_to_other_node(n)
    n.sock.clear()
    n.feed(AGENT, o.Direct(msg("t/x", b"via", qos=1) + [88], "c", 1, False, [], None, 41))
    (d,) = n.take(AGENT, o.DeliverDirect)
    assert (d.client_id, d.msg[1], d.ref) == ("c", b"via", [AGENT, 41, "c"])
    assert n.take(AGENT, o.Confirm) == []
    n.feed(AGENT, o.Delivered(d.ref))
    (c,) = n.take(AGENT, o.Confirm)
    assert (c.token, c.ok) == (41, True)


def test_a_copy_from_another_node_is_confirmed_once_the_holding_worker_owns_it():
    """The session is held here (W1): the agent's DIRECT goes to W1 with a ref, and the
    token is confirmed when W1 answers DELIVERED; for a session neither held nor kept here,
    at once (nothing here will take it)."""
    n = clustered()
    n.feed(AGENT, o.Direct(msg("t/x", b"here", qos=1) + [89], "c", 1, False, [], None, 42))
    (d,) = n.take(W1, o.DeliverDirect)
    assert d.ref == [AGENT, 42] and n.take(AGENT, o.Confirm) == []
    n.feed(W1, o.Delivered(d.ref))
    assert [(c.token, c.ok) for c in n.take(AGENT, o.Confirm)] == [(42, True)]
    n.feed(AGENT, o.Direct(msg("t/x", b"nobody", qos=1) + [90], "zz", 1, False, [], None, 43))
    assert [(c.token, c.ok) for c in n.take(AGENT, o.Confirm)] == [(43, True)]


def test_a_session_claimed_back_is_not_forwarded_any_more():
    n = clustered()
    hand_to_other_node(n)
    n.feed(W1, o.Claim("c", 3, False))
    (own,) = n.take(AGENT, o.TakeOwnership)
    n.feed(AGENT, o.Owned("c", 3, 2, session("c", ["t/#"])))  # REMOTE: the session came back
    (g,) = n.take(W1, o.Grant)
    n.sock.clear()
    n.feed(W2, o.Pub(msg("t/x", qos=1), 4, n.clock.t))
    assert n.take(AGENT, o.DeliverDirect) == []
    assert [d.msg[0] for d in n.take(W1, o.Deliver)] == ["t/x"]


def test_the_forwarding_limit_drops_and_counts():
    n = Node(etcd_endpoints="http://127.0.0.1:1", cluster_move_window=WINDOW, cluster_move_max_messages=2)
    n.hello(W1, ["t/#"], ["c"])
    n.hello(W2)
    n.hello(AGENT)
    hand_to_other_node(n)
    n.sock.clear()
    for i in range(4):
        n.feed(W2, o.Pub(msg("t/x"), None, n.clock.t))
    assert len(n.take(AGENT, o.DeliverDirect)) == 2
    assert n.router.away.dropped == 2


# -- the worker of the node the session reached ----------------------------------------------
def arrived_broker(**settings):
    clock = Clock()
    b = Broker(Settings(persistence=False, workers=1, cluster_move_window=WINDOW, **settings), clock, None,
               LocalBridge(), 1)
    b.tick()
    s = Session("c", expiry_interval=300)
    s.subscriptions["t/#"] = SubOptions(qos=2)
    s.queue.append(Delivery(Message("t/q", b"q", 1, False, {}, None, "", 100), 1, False))
    b.sessions["c"] = s
    b.subscriptions.restore(s)
    b.moves.arrived(s)
    return b, clock, s


def test_a_message_that_came_both_ways_reaches_the_arrived_session_once():
    b, clock, s = arrived_broker()
    m = Message("t/x", b"x", 2, False, {}, None, "", 200)
    b.route_remote(m, True, [])  # routed here by its publisher's node
    b.deliver_direct(Message("t/x", b"x", 2, False, {}, None, "", 200), "c", 2, False, [])  # and via the old node
    b.deliver_direct(Message("t/q", b"q", 1, False, {}, None, "", 100), "c", 1, False, [])  # in the handed queue
    assert [d.msg.payload for d in s.queue] == [b"q", b"x"]
    assert b.metrics.moved_doubles_dropped == 2
    b.route_remote(Message("t/x", b"y", 2, False, {}, None, "", 201), True, [])  # another id
    b.route_remote(Message("t/x", b"z", 2, False, {}, None, "", None), True, [])  # no id: never dropped
    assert [d.msg.payload for d in s.queue] == [b"q", b"x", b"y", b"z"]


def test_the_arrived_sessions_ids_are_kept_for_twice_the_window_at_most():
    b, clock, s = arrived_broker(cluster_move_max_messages=2)
    for mid in (1, 2, 3):  # (3 forgets 100, the queued one, then 1)
        b.route_remote(Message("t/x", str(mid).encode(), 1, False, {}, None, "", mid), True, [])
    b.route_remote(Message("t/x", b"1", 1, False, {}, None, "", 1), True, [])
    assert [d.msg.payload for d in s.queue][1:] == [b"1", b"2", b"3", b"1"]
    b.route_remote(Message("t/x", b"3", 1, False, {}, None, "", 3), True, [])
    assert len(s.queue) == 5  # 3 is remembered
    clock.t += 2 * WINDOW + 0.1
    b.tick()
    assert b.arrivals == {}
    b.route_remote(Message("t/x", b"3", 1, False, {}, None, "", 3), True, [])
    assert len(s.queue) == 6  # the window is over: nothing is dropped any more


class HoldingBridge(LocalBridge):
    """A node whose claim grants a session from another node and whose route SYNC the
    test answers."""

    def __init__(self, state: Session) -> None:
        self.state = state
        self.syncs: list = []

    def claim(self, conn, connect) -> None:
        self.broker.claimed(conn, connect, self.state, True)

    def sync(self, fn) -> None:
        self.syncs.append(fn)


@with_loop
def test_connack_of_a_session_from_another_node_waits_for_its_routes():
    clock = Clock()
    s = Session("c", expiry_interval=300)
    s.subscriptions["t/#"] = SubOptions(qos=1)
    s.queue.append(Delivery(Message("t/q", b"queued", 1, False, {}, None, "", 100), 1, False))
    bridge = HoldingBridge(s)
    b = Broker(Settings(persistence=False, workers=1), clock, None, bridge, 1)
    b.tick()
    c = Client(b).send(connect("c", clean=False, expiry=300))
    assert c.received() == []  # no CONNACK before every node has the session's routes
    assert len(bridge.syncs) == 1
    b.route_remote(Message("t/live", b"live", 1, False, {}, None, "", 300), True, [])
    assert c.received() == []  # held
    bridge.syncs[0]()
    got = c.received()
    assert [f >> 4 for f, _ in got] == [2, 3, 3]
    assert got[0][1][0] == 1  # session present
    assert [parse_publish(f, body)["payload"] for f, body in got[1:]] == [b"queued", b"live"]


# -- the agents' side (cluster/moves.py, cluster/ownership.py): a real Agent, no etcd ----------
# A takeover request that reached the node the session was on late (sent during a partition,
# it waited in the asker's TCP send queue and arrived when the link came back) made that node
# hand its fenced, stale copy over and forward what came for it: the asker, which had given up
# on that request and started the session afresh, delivered the stale copy's message
# (test_30_cluster_partitions' c33/stale).

def agent_ops(ag) -> list:
    """The ops the agent queued for its router (core/ops.py types), taken."""
    import msgpack

    out = [o.decode(msgpack.unpackb(b, raw=False, strict_map_key=False)) for b in ag.link.out]
    ag.link.out.clear()
    return out


def with_agent(fn):
    """fn(agent) on a running loop: an Agent of node "b" (constructed only: no etcd, no router)."""
    import asyncio
    import tempfile

    from cluster.agent import Agent

    def run():
        async def main():
            with tempfile.TemporaryDirectory() as tmp:
                ag = Agent(Settings(node_name="b", etcd_endpoints="http://127.0.0.1:1", data_dir=tmp, run_dir=tmp,
                                    cluster_move_window=WINDOW))
                try:
                    await fn(ag)
                finally:
                    ag.link.sock.close(0)
        asyncio.run(main())
    run.__name__, run.__doc__ = fn.__name__, fn.__doc__  # (not functools.wraps: pytest would want fn's argument)
    return run


def direct_pub(seq: int, cid: str = "c", topic: str = "t/1"):
    from proto import cluster_pb2 as pb

    w = [topic, b"x", 1, False, None, None, "pub", 7]
    p = pb.Pub(seq=seq, topic=topic, normal=False)
    p.direct.CopyFrom(pb.Direct(client_id=cid, qos=1, retain=False, sub_ids=[]))
    return p, w


@with_agent
async def test_a_direct_message_is_taken_only_from_the_node_the_session_came_from(ag):
    from cluster.peers import Origin

    a, x = Origin("a", "i-a", 100), Origin("x", "i-x", 100)
    ag.link.out.clear()
    # no takeover of ours gave us c: what a node forwards for it is refused (and acknowledged)
    ag.moves.arrived(a, *direct_pub(1))
    assert agent_ops(ag) == [] and a.acks == [1] and ag.moves.refused == 1
    ag.moves.took("c", "a")  # our claim got c's session from a (TakeoverSession)
    ag.moves.arrived(a, *direct_pub(2))
    (d,) = agent_ops(ag)
    assert isinstance(d, o.Direct) and d.client_id == "c" and d.token is not None
    # acknowledged to a once the router confirms (its worker owns it, or the node it went on to)
    assert a.acks == [1]
    ag.on_router_ops([o.Confirm(d.token, True)])
    assert a.acks == [1, 2] and not ag.moves.pending
    ag.moves.arrived(x, *direct_pub(1))  # another node's: not the session's
    assert agent_ops(ag) == [] and x.acks == [1] and ag.moves.refused == 2
    # the session went on to x and came back from it within the window: both nodes' count
    ag.moves.took("c", "x")
    ag.moves.arrived(x, *direct_pub(2))
    ag.moves.arrived(a, *direct_pub(3))
    assert [type(op) for op in agent_ops(ag)] == [o.Direct, o.Direct] and ag.moves.refused == 2


@with_agent
async def test_direct_messages_waiting_for_our_claim_go_only_if_it_took_the_session_from_their_node(ag):
    import asyncio

    from cluster.ownership import Pending
    from cluster.peers import Origin

    a = Origin("a", "i-a", 100)
    for took in (False, True):
        ag.link.out.clear()
        p = ag.ownership.claiming["c"] = Pending()
        ag.moves.arrived(a, *direct_pub(10 + took))
        assert agent_ops(ag) == [] and not a.acks  # (held until the claim is decided)
        if took:
            ag.moves.took("c", "a")
        p.done.set()
        del ag.ownership.claiming["c"]
        for _ in range(100):  # (loop passes, no time: the held ones go once the claim is done)
            if a.acks or ag.moves.pending:
                break
            await asyncio.sleep(0)
        got = agent_ops(ag)
        assert [type(op) for op in got] == ([o.Direct] if took else [])
        if took:  # (acknowledged on the router's CONFIRM)
            assert not a.acks
            ag.on_router_ops([o.Confirm(got[0].token, True)])
        assert a.acks == [10 + took]
        a.acks.clear()


class Aborted(Exception):
    pass


class Context:
    """grpc.aio's servicer context, as far as takeover_asked uses it."""

    def __init__(self):
        self.code = None

    async def abort(self, code, details=""):
        self.code = code
        raise Aborted(details)


@with_agent
async def test_a_node_without_its_lease_hands_nothing_over(ag):
    import grpc
    import pytest

    from proto import cluster_pb2 as pb

    ag.joined_once = True  # it held a lease; the fence has no deadline now (lost)
    ag.link.out.clear()
    ctx = Context()
    with pytest.raises(Aborted):
        await ag.ownership.takeover_asked(pb.TakeoverRequest(client_id="c", node="a", token=15), ctx)
    assert ctx.code == grpc.StatusCode.UNAVAILABLE  # as an unreachable node: the asker refuses its CONNECT
    assert agent_ops(ag) == []  # no CLAIM: the copy stays where it is
    assert "c" not in ag.moves.to  # and nothing is forwarded for it


@with_agent
async def test_a_copy_owned_under_a_lease_since_lost_is_never_handed_over(ag):
    import time

    from proto import cluster_pb2 as pb

    ag.joined_once = True
    ag.fence.until = time.monotonic() + 60  # holding a lease: the new one
    ag.ownership.owned["c"] = 10  # written under the old lease
    ag.ownership.lease_changed()
    ag.link.out.clear()
    for token in (15, 16):  # (two late requests: neither gets it)
        reply = await ag.ownership.takeover_asked(pb.TakeoverRequest(client_id="c", node="a", token=token))
        assert reply.result == pb.TakeoverReply.NONE  # the asker starts afresh
    assert agent_ops(ag) == [] and "c" not in ag.moves.to


def test_a_member_that_registers_within_the_window_gets_the_kept_routes_in_its_welcome():
    """The routes kept for a moved session are in the WELCOME of a member that registers
    meanwhile (the agent or a worker restarted): the agent keeps routes/<node>/<filter> in
    etcd, a worker sends its own matching publishes to the router. Before, only the ROUTES
    deltas carried them, and a member registered within the window did not know them."""
    n = clustered()
    hand_to_other_node(n)
    n.sock.clear()
    w = n.hello(AGENT)
    assert ["away", "t/#"] in w.routes
    w = n.hello(W2)
    assert ["away", "t/#"] in w.routes
    n.take(AGENT, o.Routes)
    later(n, 2.5)
    later(n, WINDOW - 2.5 + 0.2)
    (r,) = n.take(AGENT, o.Routes)
    assert r.delta == [[-1, AWAY_MEMBER, "t/#"]]
    assert ["away", "t/#"] not in n.hello(AGENT).routes
