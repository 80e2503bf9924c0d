"""The worker's side of the router link without ZeroMQ or circusd: a real Broker and real
Connections fed MQTT bytes written out by hand, the RouterBridge on a fake DEALER socket (the
router's ops fed in, the worker's ops collected) and a fake loop whose timers run on a fake
clock (issue 9, point 5)."""
from __future__ import annotations

import logging

from core import ops as o
from core.ops import WIRE_VERSION
from mqtt import Prop
from mqtt.packets import Connack
from worker.router_link import CLAIM_TIMEOUT, RATE_WINDOW, REPLAY_MARGIN
from tests.support import worker_rig as rig
from tests.support import wire

# MQTT 3.1.1 packets, written out
CONNECT_C5 = bytes.fromhex("100e 00044d515454 05 02 003c 00 0001 63")  # v5, client "c", clean start
CONNACK_3 = bytes.fromhex("20020003")  # 3.1.1: refused, server unavailable
CONNECT_C = bytes.fromhex("100d 00044d515454 04 02 003c 0001 63")  # client "c", clean session
CONNECT_P = bytes.fromhex("100d 00044d515454 04 02 003c 0001 70")  # client "p", clean session
CONNACK_OK = bytes.fromhex("20020000")
SUBSCRIBE_T = bytes.fromhex("8206 0001 0001 74 01")  # packet id 1, "t", QoS 1
SUBACK_1 = bytes.fromhex("9003 0001 01")
PUBLISH_T_QOS1 = bytes.fromhex("3206 0001 74 0002 78")  # "t", packet id 2, "x"
PUBACK_2 = bytes.fromhex("40020002")


def wire_msg(topic: str, payload: bytes = b"x", qos: int = 0) -> list:
    return [topic, payload, qos, False, None, None, ""]


class Worker(rig.Worker):
    def __init__(self, registered: bool = True, clustered: bool = False, **settings) -> None:
        # clustered: the node has an etcd (never dialled here), so the bridge keeps a LeaseGuard
        super().__init__(registered, **({"etcd_endpoints": "http://127.0.0.1:9"} if clustered else {}), **settings)

    def client(self, connect: bytes):
        return self.connection(connect)

    def granted(self, client_id: str) -> None:
        (claim,) = self.claims()
        assert claim.client_id == client_id
        self.router(o.Grant(client_id, claim.req, None))


run = rig.run


def test_hello_goes_first_and_pings_follow_on_the_clock():
    w = Worker(registered=False)
    w.bridge.queue(o.RouteAdd("early"))
    w.bridge.connect(loop=w.loop)
    ops = w.ops()
    assert isinstance(ops[0], o.Hello) and ops[0].wire == WIRE_VERSION
    assert [op.__class__ for op in ops[1:]] == [o.RouteAdd]
    w.loop.advance(1.0)
    assert [op.__class__ for op in w.ops()] == [o.Ping]
    w.loop.advance(2.0)
    assert [op.__class__ for op in w.ops()] == [o.Ping, o.Ping]


def test_connect_waits_for_the_routers_grant():
    def body():
        w = Worker()
        conn, t = w.client(CONNECT_C)
        assert bytes(t.data) == b""  # no CONNACK before the router granted the client id
        w.granted("c")
        assert bytes(t.data) == CONNACK_OK
        conn.connection_lost(None)
    run(body)


def test_an_unanswered_claim_is_served_locally_after_its_timeout(caplog):
    def body():
        w = Worker()
        conn, t = w.client(CONNECT_C)
        (claim,) = w.claims()
        w.loop.advance(CLAIM_TIMEOUT - 0.1)
        assert bytes(t.data) == b""
        with caplog.at_level(logging.WARNING, logger="shoal.link"):
            w.loop.advance(0.2)
        assert bytes(t.data) == CONNACK_OK
        assert any("did not answer a session claim" in r.getMessage() for r in caplog.records)
        w.router(o.Grant("c", claim.req, None))  # a late grant: ignored
        assert bytes(t.data) == CONNACK_OK
        conn.connection_lost(None)
    run(body)


def test_suback_waits_until_every_member_applied_the_route():
    def body():
        w = Worker()
        conn, t = w.client(CONNECT_C)
        w.granted("c")
        t.data.clear()
        w.clock.t += 0.5
        conn.data_received(SUBSCRIBE_T)
        ops = w.ops()
        add = next(op for op in ops if isinstance(op, o.RouteAdd))
        assert (add.filter, add.since) == ("t", w.clock.t)  # the moment it was handled, on the host clock
        (sync,) = [op for op in ops if isinstance(op, o.Sync)]
        assert bytes(t.data) == b""
        w.router(o.Synced(sync.token))
        assert bytes(t.data) == SUBACK_1
        conn.connection_lost(None)
    run(body)


def test_routes_are_applied_acknowledged_and_late_routes_get_a_replay():
    def body():
        w = Worker()
        p, t = w.client(CONNECT_P)
        w.granted("p")
        made = w.clock.t
        w.clock.t += 0.01
        p.data_received(bytes.fromhex("3004 0001 74 78"))  # QoS 0 "t": nobody else wants it (yet)
        assert not w.ops(o.Pub)
        assert not w.bridge.wants("t")
        w.router(o.Routes(1, [[1, "w2", "t", made], [1, "w2", "u", None]]))
        ops = w.ops()
        (replayed,) = [op for op in ops if isinstance(op, o.PubTo)]
        assert (replayed.member, replayed.msg[0]) == ("w2", "t")
        assert [a.version for a in ops if isinstance(a, o.RouteAck)] == [1]
        assert w.bridge.wants("t") and w.bridge.route_version == 1
        w.router(o.Routes(2, [[-1, "w2", "t"]]))
        assert not w.bridge.wants("t") and w.bridge.wants("u")
        p.connection_lost(None)
    run(body)


def test_a_qos0_read_just_before_a_remote_subscribe_is_replayed_but_not_one_read_long_before():
    def body():
        w = Worker()
        p, _ = w.client(CONNECT_P)
        w.granted("p")
        p.data_received(bytes.fromhex("3005 0001 74 7878"))  # "xx", long before
        w.clock.t += 10 * REPLAY_MARGIN
        p.data_received(bytes.fromhex("3004 0001 74 78"))  # "x", just before
        w.clock.t += REPLAY_MARGIN / 2
        w.router(o.Routes(1, [[1, "w2", "t", w.clock.t]]))
        assert [op.msg[1] for op in w.ops(o.PubTo)] == [b"x"]
        p.connection_lost(None)
    run(body)


def test_puback_waits_for_the_routers_confirm_and_unconfirmed_go_again_to_a_new_router():
    def body():
        w = Worker()
        w.router(o.Routes(1, [[1, "w2", "t", None]]))
        p, t = w.client(CONNECT_P)
        w.granted("p")
        t.data.clear()
        w.ops()
        read_at = w.clock.t
        p.data_received(PUBLISH_T_QOS1)
        (pub,) = w.ops(o.Pub)  # (below SHOAL_ROUTER_BATCH_RATE: at the end of the loop pass)
        assert pub.msg[0] == "t" and pub.token is not None and pub.at == read_at
        assert bytes(t.data) == b""
        w.router(o.Pong(8, 1))  # the router restarted (another epoch): register again
        ops = w.ops()
        assert isinstance(ops[0], o.Hello)
        assert [(op.msg[0], op.token) for op in ops if isinstance(op, o.Pub)] == [("t", pub.token)]
        w.router(o.Welcome(8, 1, [["w2", "t"]], []), o.Confirm(pub.token, True))
        assert bytes(t.data) == PUBACK_2
        assert w.bridge.unconfirmed == {}
        p.connection_lost(None)
    run(body)


def test_deliver_reaches_the_local_subscriber_and_is_answered_delivered():
    def body():
        w = Worker()
        conn, t = w.client(CONNECT_C)
        w.granted("c")
        conn.data_received(SUBSCRIBE_T)
        (sync,) = w.ops(o.Sync)
        w.router(o.Synced(sync.token))
        t.data.clear()
        w.router(o.Deliver(wire_msg("t", b"hi", 0), True, [], [b"w2", 5]))
        assert bytes(t.data) == bytes.fromhex("3005 0001 74 6869")
        w.loop.advance(w.bridge.batch_delay)  # (DELIVERED is data: it waits for the batch)
        assert [d.ref for d in w.ops(o.Delivered)] == [[b"w2", 5]]
        assert w.bridge.figures[3] == 1
        conn.connection_lost(None)
    run(body)


def test_an_undecodable_op_from_the_router_is_skipped_and_the_next_one_handled(caplog):
    import msgpack

    w = Worker()
    with caplog.at_level(logging.WARNING, logger="shoal.link"):
        w.sock.inbox.append(msgpack.packb([[o.Op.SYNCED], [999], o.Pong(7, 3).to_wire(),
                                           o.NodeStats({"x": 1}, {}).to_wire()]))
        w.bridge._readable()
    assert w.bridge.node_stats == {"x": 1}
    assert sum("undecodable op" in r.getMessage() for r in caplog.records) == 2


def test_a_refused_grant_refuses_the_connect():
    def body():
        w = Worker()
        conn, t = w.client(CONNECT_C)
        (claim,) = w.claims()
        w.router(o.Grant("c", claim.req, None, o.Own.REFUSED))
        assert bytes(t.data)[:2] == b"\x20\x02" and bytes(t.data)[3] != 0  # a CONNACK that refuses
        conn.connection_lost(None)
    run(body)


def test_a_new_lease_before_the_old_ran_out_disconnects_the_clients_of_the_old():
    """A restarted agent found the node's lease expired and took a new one before the
    workers' deadline of the old one passed (a chaos run: its CONNECTs and another node's
    both lived on). The old lease's owner records are gone: its clients are disconnected
    (0x9C), and new CONNECTs are served under the new lease."""
    def body():
        w = Worker(clustered=True)
        w.router(o.Lease(w.clock() + 5.0, 41))
        old, t_old = w.client(CONNECT_C5)
        w.granted("c")
        w.router(o.Lease(w.clock() + 5.0, 41))  # renewed: nothing happens
        assert not old.closed
        w.router(o.Lease(w.clock() + 5.0, 42))
        assert old.closed
        (_, dis) = wire.decode_all(bytes(t_old.data), 5)
        assert dis.reason_code == 0x9C
        fresh, t = w.client(CONNECT_C)
        assert not fresh.closed and [c.client_id for c in w.claims()][-1] == "c"
    run(body)


def test_a_connect_waiting_for_its_grant_when_the_lease_goes_gets_a_refusing_connack():
    """The node lost its lease while a CONNECT waited for the router's grant: the client gets
    CONNACK 3 (3.1.1) / 0x88 (v5) and the late grant is given back. Before, the lease guard
    closed such a connection without any CONNACK (seen in test_30_cluster_embedded)."""
    def body():
        w = Worker(clustered=True)
        w.router(o.Lease(w.clock() + 5.0))
        old, t_old = w.client(CONNECT_P)
        w.granted("p")
        assert bytes(t_old.data) == CONNACK_OK
        waiting = [w.client(CONNECT_C), w.client(CONNECT_C5)]
        claims = w.claims()
        assert [c.client_id for c in claims] == ["c", "c"]
        assert all(bytes(t.data) == b"" for _, t in waiting)
        w.router(o.Lease(None))  # the agent lost the node's lease
        assert bytes(waiting[0][1].data) == CONNACK_3
        (ack,) = wire.decode_all(bytes(waiting[1][1].data), 5)
        assert isinstance(ack, Connack) and ack.reason_code == 0x88 and not ack.session_present
        assert "lease" in ack.properties[Prop.REASON_STRING]
        assert old.closed and bytes(t_old.data) == CONNACK_OK  # 3.1.1: closed, no DISCONNECT
        for claim in claims:
            w.router(o.Grant("c", claim.req, None))
        w.loop.advance(w.bridge.batch_delay)  # (a session's end waits for company as messages do)
        assert [op.client_id for op in w.ops(o.Release)] == ["p", "c", "c"]
        fresh, t = w.client(CONNECT_C)  # fenced: a new CONNECT is refused at once
        assert bytes(t.data) == CONNACK_3 and fresh.closed
    run(body)


PUBLISH_T_QOS0 = bytes.fromhex("3004 0001 74 78")  # "t", "x"


def test_below_the_batch_rate_each_message_leaves_at_the_end_of_its_loop_pass():
    """SHOAL_ROUTER_BATCH_RATE (2,000/s, counted over RATE_WINDOW): a worker publishing less
    sends each loop pass's messages at its end, also right after another send (they waited
    SHOAL_ROUTER_BATCH_MS before, whenever the last send was less than that ago)."""
    def body():
        w = Worker()
        w.router(o.Routes(1, [[1, "w2", "t", None]]))
        p, _ = w.client(CONNECT_P)
        w.granted("p")
        w.ops()
        for _ in range(30):  # one message every 0.6 ms: 1,667/s
            p.data_received(PUBLISH_T_QOS0)
            assert len(w.ops(o.Pub)) == 1  # no time passed: nothing waited for a timer
            w.clock.t += 0.0006
        for _ in range(30):  # ten together every 10 ms (publishers that send at once): 1,000/s
            p.data_received(PUBLISH_T_QOS0 * 10)
            assert len(w.ops(o.Pub)) == 10
            w.clock.t += RATE_WINDOW
        p.connection_lost(None)
    run(body)


def test_above_the_batch_rate_a_message_close_behind_a_send_waits_the_interval_for_company():
    def body():
        w = Worker()
        w.router(o.Routes(1, [[1, "w2", "t", None]]))
        p, _ = w.client(CONNECT_P)
        w.granted("p")
        w.ops()
        n = int(w.bridge.batch_min) + 1  # past the rate within one window
        p.data_received(PUBLISH_T_QOS0 * n)
        assert len(w.ops(o.Pub)) == n  # (the first was below it: the pass's send took them all)
        w.clock.t += w.bridge.batch_delay / 10
        p.data_received(PUBLISH_T_QOS0)
        assert w.ops(o.Pub) == []  # waits the interval for company
        w.clock.t += w.bridge.batch_delay / 10
        p.data_received(PUBLISH_T_QOS0 * 2)
        assert w.ops(o.Pub) == []
        w.loop.advance(w.bridge.batch_delay)
        assert len(w.ops(o.Pub)) == 3  # one send: the three that waited
        w.clock.t += 1.5 * w.bridge.batch_delay  # still above the rate, but no send for the interval
        p.data_received(PUBLISH_T_QOS0)
        assert len(w.ops(o.Pub)) == 1  # at once: nothing to wait behind
        w.clock.t += w.bridge.batch_delay / 10
        p.data_received(PUBLISH_T_QOS0)
        assert w.ops(o.Pub) == []  # (still above the rate: close behind that send, it waits)
        w.loop.advance(w.bridge.batch_delay)
        assert len(w.ops(o.Pub)) == 1
        w.clock.t += 2 * RATE_WINDOW  # a quiet spell: the rate fell
        p.data_received(PUBLISH_T_QOS0)
        assert len(w.ops(o.Pub)) == 1
        p.connection_lost(None)
    run(body)


def test_router_batch_ms_0_sends_every_loop_pass_whatever_the_rate():
    def body():
        w = Worker(router_batch_ms=0)
        w.router(o.Routes(1, [[1, "w2", "t", None]]))
        p, _ = w.client(CONNECT_P)
        w.granted("p")
        w.ops()
        for _ in range(3):
            p.data_received(PUBLISH_T_QOS0 * 40)
            assert len(w.ops(o.Pub)) == 40
        p.connection_lost(None)
    run(body)


def test_claims_and_session_ends_close_behind_a_send_go_together_and_a_lone_claim_at_once():
    """A connect storm (issue 11's connect rate): a CONNECT's CLAIM, a session end's RELEASE
    and a clustered node's cleared will go as messages do: close behind a send they wait the
    batch interval and leave together in one send; after a quiet spell a CLAIM goes at once
    (a lone CONNECT waits for nothing). Before, each left at the end of its loop pass in a
    ZeroMQ message of its own: 1.1 to 1.5 messages to the router per cluster connect, 0.5 to
    0.8 with this. (This is the rule above SHOAL_ROUTER_BATCH_RATE; 0 here: at any rate.
    Below it each loop pass's ops leave at its end, claims as messages.)"""
    def body():
        w = Worker(clustered=True, router_batch_rate=0)
        w.router(o.Lease(w.clock() + 5.0))
        w.loop.advance(0.5)  # a quiet spell (no PING due: one a second)
        w.sock.sent.clear()
        a, _ = w.client(CONNECT_C)
        w.loop.run()
        assert [[op.__class__ for op in batch] for batch in w.sock.sent] == [[o.Claim]]  # at once
        (claim,) = w.ops(o.Claim)
        w.router(o.Grant("c", claim.req, None))  # its cleared will waits: the CLAIM went just before
        assert w.sock.sent == []
        a.connection_lost(None)  # the session ends: its RELEASE waits too
        w.client(CONNECT_P)  # and the next CONNECT's CLAIM
        w.loop.run()
        assert w.sock.sent == []
        w.loop.advance(w.bridge.batch_delay)
        assert [[op.__class__ for op in batch] for batch in w.sock.sent] == [[o.Will, o.Release, o.Claim]]
    run(body)


CONNECT_C_KEEP = bytes.fromhex("100d 00044d515454 04 00 003c 0001 63")  # client "c", clean session 0


def test_a_deliver_for_a_session_handed_over_follows_it_with_its_ref():
    """c's session was handed over (the router's TAKEOVER) just before a QoS 1 DELIVER for it
    arrived: the worker forwards its copy (DIRECT) with the DELIVER's ref, so the router counts
    the copy in the publisher's confirmation (router/forward.py direct), then confirms its own
    part (DELIVERED); a QoS 0 one follows without a ref."""
    def body():
        w = Worker()
        conn, t = w.client(CONNECT_C_KEEP)
        w.granted("c")
        conn.data_received(SUBSCRIBE_T)
        (sync,) = w.ops(o.Sync)
        w.router(o.Synced(sync.token))
        w.router(o.Takeover("c", 9, False))
        (h,) = w.ops(o.Handoff)
        assert h.client_id == "c" and h.state is not None
        w.router(o.Deliver(wire_msg("t", b"hi", 1), True, [], [b"w2", 5]),
                 o.Deliver(wire_msg("t", b"q0", 0), True, [], [b"w2", 6]))
        w.loop.advance(w.bridge.batch_delay)
        got = w.ops()
        assert [(d.client_id, d.qos, d.ref) for d in got if d.__class__ is o.Direct] == [("c", 1, [b"w2", 5]), ("c", 0, None)]
        assert [d.ref for d in got if d.__class__ is o.Delivered] == [[b"w2", 5], [b"w2", 6]]
        # the router reads the copy before the worker's own confirmation (one ordered stream)
        kinds = [d.__class__ for d in got if d.__class__ in (o.Direct, o.Delivered)]
        assert kinds.index(o.Direct) < kinds.index(o.Delivered)
    run(body)


def test_a_direct_copy_with_a_ref_is_answered_delivered_once_owned():
    """A copy from another node for a session held here (the router's DELIVER_DIRECT with
    the agent's ref): delivered to the client, then DELIVERED ref, so the node it came from
    is acknowledged only once this worker owns it."""
    def body():
        w = Worker()
        conn, t = w.client(CONNECT_C_KEEP)
        w.granted("c")
        t.data.clear()
        w.router(o.DeliverDirect(wire_msg("t", b"hi", 1), "c", 1, False, [], [b"agent", 42]))
        assert bytes(t.data)[:1] == b"\x32"  # a QoS 1 PUBLISH to the client
        w.loop.advance(w.bridge.batch_delay)
        assert [d.ref for d in w.ops(o.Delivered)] == [[b"agent", 42]]
        conn.connection_lost(None)
    run(body)
