"""SUBSCRIBEs waiting for their routes, bounded (worker/subwait.py): a real Broker and real
Connections fed MQTT bytes, the RouterBridge on a fake DEALER socket (the router's SYNCED
answers fed in by hand) and a fake loop on a fake clock."""
from __future__ import annotations


from core import ops as o
from mqtt.packets import PubAck, Publish, SubAck
from tests.support import wire
from tests.support import worker_rig as rig
from tests.support.fakes import FakeTransport
from worker.message import Message
from worker.protocol import Connection


class Worker(rig.Worker):
    """Worker 1 of a two-worker node, registered with its router."""

    def __init__(self, **settings) -> None:
        super().__init__(True, **settings)
        self.ops()

    def client(self, client_id: str) -> tuple[Connection, FakeTransport]:
        conn, t = self.connection(wire.connect(client_id))
        (claim,) = self.claims()
        self.router(o.Grant(client_id, claim.req, None))
        t.take()
        return conn, t


run = rig.run


def subacks(t: FakeTransport) -> list:
    return wire.decode_all(t.take(), 4)


def test_pipelined_subscribes_are_handled_at_once_and_answered_in_order():
    def body():
        w = Worker()
        conn, t = w.client("c")
        conn.data_received(b"".join(wire.subscribe(i, [(f"p/{i}", 1)]) for i in (1, 2, 3)))
        ops = w.ops()
        assert [op.filter for op in ops if isinstance(op, o.RouteAdd)] == ["p/1", "p/2", "p/3"]
        syncs = [op.token for op in ops if isinstance(op, o.Sync)]
        assert len(syncs) == 3 and t.reading  # all three out at once, the client still read
        assert t.take() == b""
        w.router(o.Synced(syncs[2]))  # (an answer out of order: the SUBACKs still go in order)
        assert t.take() == b""
        w.router(o.Synced(syncs[0]))
        assert subacks(t) == [SubAck(1, [1])]
        w.router(o.Synced(syncs[1]))
        assert subacks(t) == [SubAck(2, [1]), SubAck(3, [1])]
        assert w.broker.subgate.filters == 0 and conn.sub_answers is None
        conn.connection_lost(None)
    run(body)


def test_a_connection_at_its_bound_is_not_read_until_a_suback_went():
    def body():
        w = Worker(max_subscribes_waiting=2)
        conn, t = w.client("c")
        conn.data_received(b"".join(wire.subscribe(i, [(f"b/{i}", 1)]) for i in (1, 2, 3)))
        ops = w.ops()
        assert [op.filter for op in ops if isinstance(op, o.RouteAdd)] == ["b/1", "b/2"]
        syncs = [op.token for op in ops if isinstance(op, o.Sync)]
        assert not t.reading  # two wait: the third is held, the socket not read
        w.router(o.Synced(syncs[0]))
        assert subacks(t) == [SubAck(1, [1])]
        ops = w.ops()
        assert [op.filter for op in ops if isinstance(op, o.RouteAdd)] == ["b/3"]  # the third goes now
        assert not t.reading  # (two wait again)
        w.router(o.Synced(syncs[1]), *[o.Synced(op.token) for op in ops if isinstance(op, o.Sync)])
        assert subacks(t) == [SubAck(2, [1]), SubAck(3, [1])]
        assert t.reading
        conn.connection_lost(None)
    run(body)


def test_a_packet_after_a_waiting_subscribe_waits_for_its_suback():
    def body():
        w = Worker()
        conn, t = w.client("c")
        conn.data_received(wire.subscribe(1, [("q", 1)]) + wire.publish("other", b"x", 1, packet_id=5)
                           + wire.subscribe(2, [("q2", 1)]))
        ops = w.ops()
        # the PUBLISH waits behind the first SUBSCRIBE, and the second SUBSCRIBE behind the PUBLISH
        assert [op.filter for op in ops if isinstance(op, o.RouteAdd)] == ["q"]
        assert not t.reading and t.take() == b""
        (sync,) = [op.token for op in ops if isinstance(op, o.Sync)]
        w.router(o.Synced(sync))
        got = subacks(t)
        assert got == [SubAck(1, [1]), PubAck(5)]
        ops = w.ops()
        assert [op.filter for op in ops if isinstance(op, o.RouteAdd)] == ["q2"]
        w.router(*[o.Synced(op.token) for op in ops if isinstance(op, o.Sync)])
        assert subacks(t) == [SubAck(2, [1])] and t.reading
        conn.connection_lost(None)
    run(body)


def test_a_worker_at_its_bound_parks_the_next_subscribe_until_routes_are_in():
    def body():
        w = Worker(max_filters_waiting=2)
        a, ta = w.client("a")
        b, tb = w.client("b")
        a.data_received(wire.subscribe(1, [("a/1", 1), ("a/2", 1)]))
        (sync_a,) = [op.token for op in w.ops() if isinstance(op, o.Sync)]
        assert w.broker.subgate.filters == 2
        b.data_received(wire.subscribe(1, [("b/1", 1)]) + wire.subscribe(2, [("b/2", 1)]))
        assert w.ops(o.RouteAdd) == [] and not tb.reading  # b waits for room, unread
        assert w.broker.metrics.subscribe_limit_pauses == 1
        w.router(o.Synced(sync_a))
        assert subacks(ta) == [SubAck(1, [1, 1])]
        ops = w.ops()
        # room again: b's SUBSCRIBEs are handled (both: the bound counts filters already waiting)
        assert [op.filter for op in ops if isinstance(op, o.RouteAdd)] == ["b/1", "b/2"]
        w.router(*[o.Synced(op.token) for op in ops if isinstance(op, o.Sync)])
        assert subacks(tb) == [SubAck(1, [1]), SubAck(2, [1])] and tb.reading
        assert w.broker.subgate.filters == 0
        a.connection_lost(None)
        b.connection_lost(None)
    run(body)


def test_a_subscribe_bigger_than_the_bound_still_goes_and_a_closed_connection_frees_its_share():
    def body():
        w = Worker(max_filters_waiting=2)
        a, ta = w.client("a")
        a.data_received(wire.subscribe(1, [(f"big/{i}", 0) for i in range(5)]))
        (sync,) = [op.token for op in w.ops() if isinstance(op, o.Sync)]
        assert w.broker.subgate.filters == 5  # one SUBSCRIBE alone is never refused room
        a.connection_lost(None)
        b, tb = w.client("b")
        b.data_received(wire.subscribe(1, [("b", 0)]))
        assert w.ops(o.RouteAdd) == []  # still full: a's routes are on their way
        w.router(o.Synced(sync))  # a is gone, its routes came in: the room is b's
        ops = w.ops()
        assert [op.filter for op in ops if isinstance(op, o.RouteAdd)] == ["b"]
        w.router(*[o.Synced(op.token) for op in ops if isinstance(op, o.Sync)])
        assert subacks(tb) == [SubAck(1, [0])]
        b.connection_lost(None)
    run(body)


def test_the_retained_messages_of_a_suback_come_before_live_messages_held_meanwhile():
    def body():
        w = Worker()
        w.broker.set_retained(Message("r", b"retained", 0, True, {}, None, ""))
        sub, ts = w.client("sub")
        pub, tp = w.client("pub")
        sub.data_received(wire.subscribe(1, [("r", 0)]) + wire.subscribe(2, [("r2", 0)]))
        syncs = [op.token for op in w.ops() if isinstance(op, o.Sync)]
        pub.data_received(wire.publish("r", b"live") + wire.publish("r2", b"live2"))  # held: the SUBACKs wait
        assert ts.take() == b""
        w.router(o.Synced(syncs[0]))
        got = wire.decode_all(ts.take(), 4)
        assert [(type(p).__name__, getattr(p, "payload", None)) for p in got] == [("SubAck", None), ("Publish", b"retained")]
        w.router(o.Synced(syncs[1]))
        got = wire.decode_all(ts.take(), 4)
        assert got[0] == SubAck(2, [0])
        assert [p.payload for p in got[1:] if isinstance(p, Publish)] == [b"live", b"live2"]
        sub.connection_lost(None)
        pub.connection_lost(None)
    run(body)
