"""The node's router without ZeroMQ or circusd: typed ops in through Router.handle, ops out
through a fake ROUTER socket, time on a fake clock (issue 9, point 5)."""
from __future__ import annotations

import logging

import msgpack
import pytest

from common.settings import Settings
from core import ops as o
from core.ops import WIRE_VERSION, Own, pack
from router.forward import REPLAY_MARGIN, REPLAY_WINDOW
from router.members import MEMBER_TIMEOUT, SETTLE_TIMEOUT
from router.router import Router
from router.sessions import CLAIM_TIMEOUT
from tests.support.fake_link import FakeClock, FakeRouterSocket

W1, W2, W3 = b"w1", b"w2", b"w3"


def msg(topic: str, payload: bytes = b"x", qos: int = 0, retain: bool = False) -> list:
    return [topic, payload, qos, retain, None, None, ""]


def session(cid: str, filters=()) -> list:
    """A session record (core/records.py; the router reads only the filters, index 4)."""
    return [1, cid, 300, None, [[f, 1, False, False, 0, None] for f in filters], [], [], [], None, 1, None]


class Node:
    def __init__(self, workers: int = 2, **settings) -> None:
        self.clock = FakeClock()
        self.sock = FakeRouterSocket()
        self.router = Router(Settings(workers=workers, persistence=False, **settings), clock=self.clock, sock=self.sock)

    def feed(self, ident: bytes, *ops) -> None:
        self.router.handle(ident, pack(list(ops)))
        self.router.flush()

    def hello(self, ident: bytes, filters=(), client_ids=(), wire=WIRE_VERSION) -> o.Welcome | None:
        self.feed(ident, o.Hello(wire, list(filters), list(client_ids), []))
        got = self.sock.take(ident, o.Welcome)
        return got[0] if got else None

    def tick(self, dt: float) -> None:
        self.clock.t += dt
        self.router.check_timeouts(self.clock.t)
        self.router.flush()

    def take(self, ident: bytes, kind=None) -> list:
        return self.sock.take(ident, kind)


@pytest.fixture
def node() -> Node:
    n = Node()
    n.hello(W1)
    n.hello(W2)
    n.sock.clear()
    return n


# -- membership and the route table ------------------------------------------------------------
def test_welcome_carries_the_other_members_routes_and_the_version():
    n = Node()
    n.hello(W1, ["a/#", "b"])
    welcome = n.hello(W2, ["c"])
    assert sorted(map(tuple, welcome.routes)) == [("w1", "a/#"), ("w1", "b")]
    assert welcome.version == n.router.routes.version == 2  # w1's routes, then w2's
    assert welcome.epoch == n.router.epoch
    routes = n.take(W1, o.Routes)  # its own (version 1), then w2's
    assert [(r.version, r.delta) for r in routes][-1] == (2, [[1, "w2", "c", None]])


def test_route_changes_of_one_pass_are_one_version_sent_to_every_live_member(node):
    v = node.router.routes.version
    node.feed(W1, o.RouteAdd("x/+", 1000.0), o.RouteAdd("y", 1000.0), o.RouteDel("x/+"))
    for ident in (W1, W2):
        (routes,) = node.take(ident, o.Routes)
        assert routes.version == v + 1
        assert routes.delta == [[1, "w1", "x/+", 1000.0], [1, "w1", "y", 1000.0], [-1, "w1", "x/+"]]
    assert node.router.routes.member_filters(W1) == ["y"]


def test_a_second_add_of_the_same_filter_is_no_change(node):
    node.feed(W1, o.RouteAdd("y"))
    node.sock.clear()
    node.feed(W1, o.RouteAdd("y"))
    assert node.take(W2, o.Routes) == []


def test_unknown_member_is_asked_to_say_hello():
    n = Node()
    n.feed(W1, o.Ping())
    (pong,) = n.take(W1)
    assert isinstance(pong, o.Pong) and pong.epoch == n.router.epoch


def test_another_wire_version_is_refused_counted_and_logged(caplog):
    n = Node()
    with caplog.at_level(logging.ERROR, logger="shoal.wire"):
        assert n.hello(W1, ["a"], wire=WIRE_VERSION + 1) is None
        n.hello(W1, ["a"], wire=WIRE_VERSION + 1)  # counted again, logged once
    assert n.router.wire.refused == 2
    assert W1 not in n.router.members
    lines = [r for r in caplog.records if "wire version" in r.getMessage()]
    assert len(lines) == 1 and "make install" in lines[0].getMessage()
    n.feed(W1, o.Ping())
    assert [op.__class__ for op in n.take(W1)] == [o.Pong]  # still unknown: asked to say hello


def test_undecodable_ops_are_dropped_and_counted_without_stopping_the_batch(node):
    node.router.handle(W1, msgpack.packb([[o.Op.PUB], [999, 1], "not an op", o.Ping().to_wire()]))
    node.router.handle(W1, b"\xc1 not msgpack")
    node.router.flush()
    assert node.router.malformed == 4
    assert [op.__class__ for op in node.take(W1)] == [o.Pong]


def test_a_silent_member_is_gone_its_routes_leave_and_it_comes_back_on_its_next_op(node):
    node.feed(W2, o.RouteAdd("t"))
    node.sock.clear()
    node.clock.t += MEMBER_TIMEOUT / 2
    node.feed(W1, o.Ping())  # w1 speaks, w2 stays silent
    node.tick(MEMBER_TIMEOUT / 2 + 0.1)
    assert not node.router.members[W2].alive and node.router.members[W1].alive
    (routes,) = node.take(W1, o.Routes)
    assert routes.delta == [[-1, "w2", "t"]]
    node.feed(W2, o.Ping())  # it was only slow
    assert node.router.members[W2].alive
    (welcome,) = node.take(W2, o.Welcome)
    assert welcome.version == node.router.routes.version
    assert [d for r in node.take(W1, o.Routes) for d in r.delta] == [[1, "w2", "t", None]]


def test_a_member_is_not_silent_while_the_router_has_not_read_its_socket_empty(node):
    """A router busy with a backlog (a SUBSCRIBE flood) has not read the PINGs behind it:
    silence counts up to the last time it read everything, not up to now."""
    node.router.read_all_at = node.clock.t  # read empty now, then busy
    node.tick(MEMBER_TIMEOUT + 1.0)
    assert node.router.members[W1].alive and node.router.members[W2].alive
    node.router.read_all_at = node.clock.t  # it read everything: nothing of w1 or w2 came
    node.tick(0.1)
    assert not node.router.members[W1].alive and not node.router.members[W2].alive


def test_publishes_wait_for_every_worker_to_register_or_the_settle_timeout():
    n = Node(workers=3)
    n.hello(W1, ["t"])
    n.hello(W2)
    n.feed(W2, o.Pub(msg("t"), None, n.clock.t))
    assert n.take(W1, o.Deliver) == []  # w3 has not registered: the table is not complete
    for step in (SETTLE_TIMEOUT / 2, SETTLE_TIMEOUT / 2 + 0.1):  # (the members ping meanwhile)
        n.clock.t += step
        n.feed(W1, o.Ping())
        n.feed(W2, o.Ping())
    n.tick(0.0)
    (d,) = n.take(W1, o.Deliver)
    assert d.msg[0] == "t" and d.normal


# -- SYNC (a SUBACK waits for it) -----------------------------------------------------------------
def test_sync_is_answered_once_every_other_member_applied_the_version(node):
    node.feed(W1, o.RouteAdd("t"), o.Sync(7))
    version = node.router.routes.version
    assert node.take(W1, o.Synced) == []
    node.feed(W2, o.RouteAck(version - 1))
    assert node.take(W1, o.Synced) == []
    node.feed(W2, o.RouteAck(version))
    assert [s.token for s in node.take(W1, o.Synced)] == [7]


def test_sync_gives_up_waiting_after_its_timeout(node):
    node.feed(W1, o.RouteAdd("t"), o.Sync(8))
    node.tick(node.router.sync_timeout - 0.1)
    assert node.take(W1, o.Synced) == []
    node.clock.t += 0.2
    node.feed(W2, o.Ping())  # w2 is alive but never acknowledges
    node.tick(0.0)
    assert [s.token for s in node.take(W1, o.Synced)] == [8]


def test_sync_does_not_wait_for_a_member_that_is_gone(node):
    node.feed(W1, o.RouteAdd("t"), o.Sync(9))
    node.router.membership.gone(W2)
    node.tick(0.0)
    assert [s.token for s in node.take(W1, o.Synced)] == [9]


# -- forwarding and CONFIRM tokens --------------------------------------------------------------
def test_publish_goes_once_to_each_interested_member_and_confirms_once_all_own_it():
    n = Node(workers=3)
    n.hello(W1, ["t/#"])
    n.hello(W2, ["t/+", "t/a"])
    n.hello(W3)
    n.sock.clear()
    n.feed(W3, o.Pub(msg("t/a", qos=1), 5, n.clock.t))
    refs = []
    for ident in (W1, W2):
        (d,) = n.take(ident, o.Deliver)
        assert d.normal and d.ref == [W3, 5]
        refs.append(d.ref)
    assert n.take(W3, o.Confirm) == []
    n.feed(W1, o.Delivered(refs[0]))
    assert n.take(W3, o.Confirm) == []
    n.feed(W2, o.Delivered(refs[1]))
    (c,) = n.take(W3, o.Confirm)
    assert (c.token, c.ok) == (5, True)
    assert n.router.forward.pending == {}


def test_publish_nobody_wants_is_confirmed_at_once(node):
    node.feed(W1, o.Pub(msg("nobody", qos=1), 3, node.clock.t))
    (c,) = node.take(W1, o.Confirm)
    assert (c.token, c.ok) == (3, True)
    assert node.take(W2, o.Deliver) == []


def test_confirm_fails_when_a_receiver_is_gone_before_it_owned_the_message(node):
    node.feed(W2, o.RouteAdd("t"))
    node.feed(W1, o.Pub(msg("t", qos=1), 4, node.clock.t))
    node.clock.t += MEMBER_TIMEOUT / 2
    node.feed(W1, o.Ping())
    node.tick(MEMBER_TIMEOUT / 2 + 0.1)  # w2 silent: gone
    (c,) = node.take(W1, o.Confirm)
    assert (c.token, c.ok) == (4, False)


def test_shared_group_gets_one_member_per_message_in_turn():
    n = Node(workers=3)
    n.hello(W1, ["$share/g/t"])
    n.hello(W2, ["$share/g/t"])
    n.hello(W3)
    n.sock.clear()
    for _ in range(4):
        n.feed(W3, o.Pub(msg("t"), None, n.clock.t))
    got = [ident for ident, op in n.sock.take(kind=o.Deliver)]
    assert sorted(got) == [W1, W1, W2, W2]
    assert got[0] != got[1]


def test_the_agent_counts_once_per_other_node_holding_a_shared_group():
    """ROUTE_ADD with a weight (the agent: the group is on 2 other nodes): of 6 messages the
    agent gets 4, the node's one member 2, so that 3 nodes get 2 each."""
    n = Node(workers=2)
    n.hello(W1, ["$share/g/t"])
    n.hello(b"agent")
    n.hello(W2)
    n.feed(b"agent", o.RouteAdd("$share/g/t", None, 2))
    n.sock.clear()
    for _ in range(6):
        n.feed(W2, o.Pub(msg("t"), None, n.clock.t))
    got = [ident for ident, op in n.sock.take(kind=o.Deliver)]
    assert sorted(got) == [b"agent"] * 4 + [W1] * 2
    n.feed(b"agent", o.RouteDel("$share/g/t"))  # the weight goes with the route
    assert n.router.forward.share_weight == {}


# -- the replay window --------------------------------------------------------------------------
def test_a_publish_routed_after_a_subscription_was_made_reaches_it_when_its_route_arrives(node):
    made = node.clock.t
    node.clock.t += 0.01
    node.feed(W1, o.Pub(msg("t"), None, node.clock.t))  # nobody had a route for it yet
    node.feed(W2, o.RouteAdd("t", made))  # the subscription was made before that publish
    (d,) = node.take(W2, o.Deliver)
    assert d.msg[0] == "t"


def test_replay_window_rules(node):
    t = node.clock.t
    node.feed(W1, o.Pub(msg("t/old"), None, t - 2 * REPLAY_MARGIN))  # well before the SUBSCRIBE
    node.feed(W1, o.Pub(msg("t/q0"), None, t - REPLAY_MARGIN / 2))  # QoS 0 just before: concurrent
    node.feed(W1, o.Pub(msg("t/q1", qos=1), None, t - REPLAY_MARGIN / 2))  # QoS 1 before: maybe acked
    node.feed(W1, o.Pub(msg("t/r", retain=True), None, t + 0.001))  # retained: comes as retained
    node.feed(W1, o.Pub(msg("u/other"), None, t + 0.001))  # another topic
    node.feed(W1, o.Pub(msg("t/q1after", qos=1), None, t + 0.001))  # QoS 1 after it: replayed
    node.sock.clear()
    node.feed(W2, o.RouteAdd("t/#", t))
    assert sorted(d.msg[0] for d in node.take(W2, o.Deliver)) == ["t/q0", "t/q1after"]


def test_replay_window_forgets_what_is_older_than_the_window(node):
    t0 = node.clock.t
    step = REPLAY_WINDOW / 100
    for i in range(1000):
        node.feed(W1, o.Pub(msg(f"t/{i}"), None, t0 + i * step))
    recent = node.router.forward.recent
    assert len(recent) <= 257  # trimmed once past 256 entries, to the window
    node.sock.clear()
    node.feed(W2, o.RouteAdd("t/#", t0))  # made long before: only the window's publishes come
    got = node.take(W2, o.Deliver)
    assert 0 < len(got) <= 257 and got[0].msg[0] == "t/999"  # (newest first)
    assert "t/0" not in {d.msg[0] for d in got}


def test_replays_to_the_agent_carry_the_filter_and_the_read_time(node):
    """cluster/replay.py: the agent sends them on to the nodes whose route is new."""
    node.hello(b"agent")
    t = node.clock.t
    node.feed(W1, o.Pub(msg("t/a"), None, t + 0.001))  # nobody had a route for it
    node.sock.clear()
    node.feed(b"agent", o.RouteAdd("t/#", t))
    (d,) = node.take(b"agent", o.Deliver)
    assert (d.msg[0], d.filter, d.at) == ("t/a", "t/#", t + 0.001)
    node.feed(W2, o.RouteAdd("t/a", t))  # to a worker: the plain form
    (d,) = node.take(W2, o.Deliver)
    assert d.to_wire() == [22, d.msg, True, [], None]
    node.feed(W2, o.PubTo(msg("t/b"), "agent", "t/#", t))  # a worker's replay, to the agent
    (d,) = node.take(b"agent", o.Deliver)
    assert (d.msg[0], d.filter, d.at) == ("t/b", "t/#", t)
    node.feed(b"agent", o.PubTo(msg("t/c"), "w2", "t/#", t))
    (d,) = node.take(W2, o.Deliver)
    assert d.filter is None and d.msg[0] == "t/c"


# -- the session registry -------------------------------------------------------------------------
def test_claim_of_a_free_client_id_is_granted_at_once(node):
    node.feed(W1, o.Claim("c", 1, True))
    (g,) = node.take(W1, o.Grant)
    assert (g.client_id, g.req, g.state, g.flag) == ("c", 1, None, Own.KEEP)
    assert node.router.sessions.registry["c"] == W1


def test_hand_over_between_members_moves_the_session_and_its_routes(node):
    node.feed(W1, o.Claim("c", 1, False))
    node.take(W1)
    node.feed(W2, o.Claim("c", 2, False))
    (t,) = node.take(W1, o.Takeover)
    assert (t.client_id, t.req, t.clean_start) == ("c", 2, False)
    state = session("c", ["s/1"])
    node.clock.t += 0.25
    node.feed(W1, o.Handoff("c", 2, state))
    (g,) = node.take(W2, o.Grant)
    assert g.state == state
    (moved,) = node.take(W1, o.Moved)
    assert moved.filters == ["s/1"]
    assert "s/1" in node.router.routes.member_filters(W2)
    assert node.router.sessions.registry["c"] == W2
    h = node.router.sessions.handover_seconds
    assert sum(h.counts) == 1 and h.sum == pytest.approx(0.25)


def test_claims_of_one_client_id_queue_up(node):
    node.feed(W1, o.Claim("c", 1, False))
    node.feed(W2, o.Claim("c", 2, False), o.Claim("c", 3, False))
    node.take(W1, o.Grant)
    assert len(node.take(W1, o.Takeover)) == 1  # only the head of the queue is in progress
    node.feed(W1, o.Handoff("c", 2, None))
    assert [g.req for g in node.take(W2, o.Grant)] == [2, 3]  # w2 holds it now: its next claim is local


def test_a_hand_over_that_is_not_answered_times_out_to_an_empty_session(node):
    node.feed(W1, o.Claim("c", 1, False))
    node.take(W1)
    node.feed(W2, o.Claim("c", 2, False))
    node.take(W1, o.Takeover)
    node.clock.t += CLAIM_TIMEOUT - 0.5
    node.feed(W1, o.Ping())  # the holder is alive, it just does not answer
    node.tick(0.0)
    assert node.take(W2, o.Grant) == []
    node.clock.t += 0.6
    node.feed(W1, o.Ping())
    node.tick(0.0)
    (g,) = node.take(W2, o.Grant)
    assert (g.req, g.state) == (2, None)
    assert "c" in node.router.members[W1].orphans  # it drops its copy when it speaks again
    node.feed(W1, o.Handoff("c", 2, session("c")))  # a late answer: ignored
    assert node.take(W2, o.Grant) == []


def test_clean_start_claim_of_a_dead_holders_id_is_granted_and_the_holder_drops_it_when_back(node):
    node.feed(W1, o.Claim("c", 1, False))
    node.router.membership.gone(W1)
    node.sock.clear()
    node.feed(W2, o.Claim("c", 2, True))
    (g,) = node.take(W2, o.Grant)
    assert g.state is None
    node.feed(W1, o.Ping())  # back: told to drop the stale copy
    (t,) = node.take(W1, o.Takeover)
    assert (t.client_id, t.clean_start) == ("c", True)


def test_claim_of_a_dead_holders_id_waits_for_it_to_restart_and_asks_again(node):
    node.feed(W1, o.Claim("c", 1, False))
    node.router.membership.gone(W1)
    node.sock.clear()
    node.feed(W2, o.Claim("c", 2, False))
    assert node.take(W2, o.Grant) == []
    node.hello(W1, client_ids=["c"])  # circus restarted it; its store had the session
    (t,) = node.take(W1, o.Takeover)
    assert (t.client_id, t.req) == ("c", 2)


def test_release_forgets_the_holder(node):
    node.feed(W1, o.Claim("c", 1, True), o.Release("c"))
    assert "c" not in node.router.sessions.registry
    node.feed(W2, o.Release("d"))  # not its own: nothing happens
    assert node.router.sessions.registry == {}


def test_clustered_claim_asks_the_agent_first_and_refuses_when_it_does_not_answer():
    n = Node(etcd_endpoints="http://127.0.0.1:1")
    if not n.router.settings.clustered:
        pytest.fail("Settings(etcd_endpoints=...) should make the node clustered")
    n.hello(W1)
    n.hello(W2)
    n.hello(b"agent")
    n.sock.clear()
    n.feed(W1, o.Claim("c", 1, False))
    (own,) = n.take(b"agent", o.TakeOwnership)
    assert (own.client_id, own.req) == ("c", 1)
    n.feed(b"agent", o.Owned("c", 1, Own.KEEP, None))
    (g,) = n.take(W1, o.Grant)
    assert g.flag == Own.KEEP
    n.feed(W2, o.Claim("d", 2, False))
    n.take(b"agent", o.TakeOwnership)
    n.clock.t += CLAIM_TIMEOUT + 0.1
    for ident in (W1, W2, b"agent"):
        n.feed(ident, o.Ping())
    n.tick(0.0)
    (g,) = n.take(W2, o.Grant)
    assert (g.client_id, g.flag) == ("d", Own.REFUSED)  # never two sessions of one id


def test_will_without_an_agent_is_published_by_the_worker(node):
    node.feed(W1, o.WillFire("c", msg("will")))
    (go,) = node.take(W1, o.WillGo)
    assert go.msg[0] == "will"


# -- a node that held its cluster lease (issue 11: partitions) ----------------------------------
AGENT = b"agent"


def clustered(**settings) -> Node:
    n = Node(etcd_endpoints="http://127.0.0.1:1", **settings)
    n.hello(W1)
    n.hello(W2)
    n.hello(AGENT)
    n.sock.clear()
    return n


def own(n: Node, ident: bytes, cid: str, req: int) -> None:
    n.feed(ident, o.Claim(cid, req, False))
    (ask,) = n.take(AGENT, o.TakeOwnership)
    assert ask.client_id == cid
    n.feed(AGENT, o.Owned(cid, req, Own.KEEP, None))
    (g,) = n.take(ident, o.Grant)
    assert g.flag == Own.KEEP


@pytest.mark.parametrize("lapse", ["renewed", "lost", "ran out", "replaced"])
def test_ids_held_here_are_verified_in_etcd_again_after_the_lease_lapsed(lapse):
    n = clustered()
    n.feed(AGENT, o.Lease(n.clock.t + 5.0, 41))
    own(n, W1, "c", 1)
    if lapse == "lost":
        n.feed(AGENT, o.Lease(None, 41))
    elif lapse == "ran out":
        n.clock.t += 5.0  # (the news of the renewal came after the lease it renewed expired)
    # replaced: a restarted agent found lease 41 expired and took 42 before the old deadline
    n.feed(AGENT, o.Lease(n.clock.t + 5.0, 42 if lapse == "replaced" else 41))
    n.sock.clear()
    n.feed(W2, o.Claim("c", 2, False))
    asked = n.take(AGENT, o.TakeOwnership)
    if lapse == "renewed":
        assert asked == []  # owned by this node all along: a hand-over between workers
        (t,) = n.take(W1, o.Takeover)
        assert t.client_id == "c"
    else:  # owned elsewhere meanwhile, maybe: etcd decides (never resume a fenced stale copy)
        assert [(a.client_id, a.req) for a in asked] == [("c", 2)]
        assert n.take(W1, o.Takeover) == []


def agent_gone(n: Node) -> None:
    n.clock.t += MEMBER_TIMEOUT / 2
    n.feed(W1, o.Ping())
    n.feed(W2, o.Ping())
    n.clock.t += MEMBER_TIMEOUT / 2 + 0.1
    n.feed(W1, o.Ping())
    n.feed(W2, o.Ping())
    n.tick(0.0)
    assert not n.router.members[AGENT].alive


def test_other_nodes_routes_stay_while_the_agent_of_a_node_that_held_a_lease_is_gone():
    n = clustered()
    n.feed(AGENT, o.RouteAdd("t"))  # a subscriber on another node
    n.feed(AGENT, o.Lease(n.clock.t + 60.0))
    agent_gone(n)
    n.sock.clear()
    n.feed(W1, o.Pub(msg("t", qos=1), 7, n.clock.t))
    assert n.take(W1, o.Confirm) == []  # waits for the agent, never confirmed and lost
    n.hello(AGENT)  # a new agent: what the old one was to own never reaches the other node
    (c,) = n.take(W1, o.Confirm)
    assert (c.token, c.ok) == (7, False)  # (the worker answers 0x97)


@pytest.mark.parametrize("settings", [{}, {"cluster_lease_loss": "serve"}], ids=["never held a lease", "serve"])
def test_without_a_lease_to_keep_the_gone_agents_routes_leave(settings):
    n = clustered(**settings)
    n.feed(AGENT, o.RouteAdd("t"))
    if settings:
        n.feed(AGENT, o.Lease(n.clock.t + 60.0))
    agent_gone(n)
    n.sock.clear()
    n.feed(W1, o.Pub(msg("t", qos=1), 8, n.clock.t))
    (c,) = n.take(W1, o.Confirm)
    assert (c.token, c.ok) == (8, True)  # nobody here wants it: the node decides alone


# -- retained -----------------------------------------------------------------------------------
def test_retained_message_goes_to_the_other_members_and_is_confirmed(node):
    node.feed(W1, o.Retain(msg("r", b"v", retain=True), 11))
    (c,) = node.take(W1, o.Confirm)
    assert (c.token, c.ok) == (11, True)
    (r,) = node.take(W2, o.Retained)
    assert r.msg[0] == "r"
    welcome = node.hello(W3)
    assert [m[0] for m in welcome.retained] == ["r"]
    node.feed(W2, o.Retain(msg("r", b"", retain=True)))  # cleared
    assert node.router.retained.messages == {}


def test_a_retained_publish_is_confirmed_once_the_agent_answers_for_the_cluster(node):
    node.hello(b"agent")
    node.sock.clear()
    node.feed(W1, o.Retain(msg("r", b"v", retain=True), 12))
    (r,) = node.take(b"agent", o.Retained)
    assert r.ref == [W1, 12]
    (r,) = node.take(W2, o.Retained)
    assert r.ref is None
    assert node.take(W1, o.Confirm) == []  # waits for etcd and every live node
    node.feed(b"agent", o.Delivered(r.ref or [W1, 12]))
    (c,) = node.take(W1, o.Confirm)
    assert (c.token, c.ok) == (12, True)
    node.feed(W1, o.Retain(msg("$SYS/x", b"v", retain=True), 13))  # $SYS: not the cluster's
    (c,) = node.take(W1, o.Confirm)
    assert c.token == 13
    assert node.take(b"agent", o.Retained)[0].ref is None


# -- stats ----------------------------------------------------------------------------------------
def test_node_stats_sum_the_members_figures(node):
    node.feed(W1, o.Stats({"messages_received": 2, "uptime": 5}))
    node.feed(W2, o.Stats({"messages_received": 3, "uptime": 9}))
    (s,) = node.take(W1, o.NodeStats)[-1:]
    assert s.sums["messages_received"] == 5 and s.sums["uptime"] == 9
    assert set(s.members) == {"w1", "w2"}


# -- messages from other nodes across an agent restart ---------------------------------------
AGENT = b"agent"


def clustered_node() -> Node:
    n = Node(etcd_endpoints="http://127.0.0.1:1")
    n.hello(W1, ["t"])
    n.hello(W2)
    n.hello(AGENT)
    n.sock.clear()
    return n


def remote(n: Node, token: int, seq: int, instance: str = "i1") -> None:
    n.feed(AGENT, o.RemotePub(msg("t", qos=2), True, [], token, n.clock.t, ["n2", instance, seq]))


def test_a_remote_message_resent_after_the_agent_restarted_is_taken_once():
    """The agent passed n2's message 7 on and died before acknowledging it to n2; n2 resends
    it to the new agent, which cannot know: the router takes it once (chaos run: QoS 2 twice)."""
    n = clustered_node()
    remote(n, 1, 7)
    (d,) = n.take(W1, o.Deliver)
    n.feed(W1, o.Delivered(d.ref))
    assert [(c.token, c.ok) for c in n.take(AGENT, o.Confirm)] == [(1, True)]
    remote(n, 2, 8)  # on its way to w1 when the agent dies
    (d8,) = n.take(W1, o.Deliver)
    n.hello(AGENT)  # the agent restarted: its tokens start again
    n.sock.clear()
    remote(n, 1, 7)  # n2 resends both, the new agent numbers them anew
    remote(n, 2, 8)
    assert n.take(W1, o.Deliver) == []
    assert [(c.token, c.ok) for c in n.take(AGENT, o.Confirm)] == [(1, True), (2, True)]
    assert n.router.forward.remote_repeats == 2
    n.feed(W1, o.Delivered(d8.ref))  # the old agent's late answer confirms nothing of the new one
    assert n.take(AGENT, o.Confirm) == []
    remote(n, 3, 9)  # new messages are routed as ever
    (d,) = n.take(W1, o.Deliver)
    assert d.msg[0] == "t"


def test_a_repeat_while_the_first_copy_is_in_progress_gets_its_outcome():
    n = clustered_node()
    remote(n, 1, 5)
    (d,) = n.take(W1, o.Deliver)
    remote(n, 2, 5)  # the same message again before w1 owned it
    assert n.take(W1, o.Deliver) == [] and n.take(AGENT, o.Confirm) == []
    n.feed(W1, o.Delivered(d.ref))
    assert sorted((c.token, c.ok) for c in n.take(AGENT, o.Confirm)) == [(1, True), (2, True)]


def test_a_remote_message_not_taken_is_routed_again_when_resent_and_a_new_instance_starts_afresh():
    n = clustered_node()
    remote(n, 1, 5)
    n.take(W1, o.Deliver)
    n.clock.t += MEMBER_TIMEOUT / 2
    n.feed(AGENT, o.Ping())
    n.feed(W2, o.Ping())
    n.tick(MEMBER_TIMEOUT / 2 + 0.1)  # w1 silent: gone before it owned message 5
    assert [(c.token, c.ok) for c in n.take(AGENT, o.Confirm)] == [(1, False)]
    n.hello(W1, ["t"])
    n.sock.clear()
    remote(n, 2, 5)  # resent: routed anew
    (d,) = n.take(W1, o.Deliver)
    n.feed(W1, o.Delivered(d.ref))
    assert [(c.token, c.ok) for c in n.take(AGENT, o.Confirm)] == [(2, True)]
    remote(n, 3, 5, instance="i2")  # seq 5 of n2's next agent instance is another message
    assert len(n.take(W1, o.Deliver)) == 1


def test_another_nodes_claim_of_an_id_whose_holder_seems_gone_makes_the_holder_drop_it_when_back():
    """The worker holding "c" was only slow (taken for gone): another node's claim gets no
    session from it, and once it speaks again it closes that client and drops its copy, so
    the id is not live on two nodes (a twin in the chaos run)."""
    n = clustered_node()
    n.feed(W1, o.Claim("c", 1, False))
    (own,) = n.take(AGENT, o.TakeOwnership)
    n.feed(AGENT, o.Owned("c", 1, Own.FRESH, None))
    assert n.take(W1, o.Grant)
    n.router.membership.gone(W1)
    n.sock.clear()
    n.feed(AGENT, o.Claim("c", 9, False))  # another node's TakeoverSession
    (g,) = n.take(AGENT, o.Grant)
    assert (g.client_id, g.req, g.state) == ("c", 9, None)
    n.feed(W1, o.Ping())  # it was only slow
    (t,) = n.take(W1, o.Takeover)
    assert (t.client_id, t.clean_start) == ("c", True)
    assert "c" not in n.router.sessions.registry


@pytest.mark.parametrize("member_before", [False, True])
def test_without_an_agent_a_node_that_was_a_member_refuses_claims(tmp_path, member_before):
    """Right after a restart (the agent not registered yet): a node that never joined a
    cluster decides alone (issue 10); one that was a member refuses, since the id may live on
    another node by now (issue 11: a twin in the chaos run)."""
    if member_before:
        (tmp_path / "cluster-member").write_text("{}\n")
    n = Node(etcd_endpoints="http://127.0.0.1:1", data_dir=str(tmp_path))
    n.hello(W1)
    n.hello(W2)
    n.sock.clear()
    n.feed(W1, o.Claim("c", 1, False))
    (g,) = n.take(W1, o.Grant)
    assert g.flag == (Own.REFUSED if member_before else Own.KEEP)
