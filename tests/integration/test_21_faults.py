"""Faults in a node of several workers (issue 4, point 5).

A worker killed with SIGKILL is restarted by circus; its clients reconnect and
find their persistent sessions (acknowledged messages included) while the
other workers serve throughout. The router killed with SIGKILL is restarted;
every worker registers its routes, sessions and retained messages again, and
cross-worker routing is complete again (probes are published until they
arrive, under a deadline); a QoS 1 message published while the router was
down is acknowledged and delivered once it is back. A worker stalled for
longer than the router's member timeout (SIGSTOP) is dropped from the route
table and comes back whole.
"""
from __future__ import annotations

import os
import signal
import time

import pytest

from mqtt import Connack, Connect, Disconnect, Prop, PubAck, Publish, ReasonCode
from tests.integration.test_20_multiworker import all_workers, connect_on, open_on, others, sentinel_first, spread
from tests.support.clients import persistent, publish_all, receive, subscribe
from tests.support.node import Node, wait_for

WORKERS = 3


@pytest.fixture
def multinode():
    n = Node(workers=WORKERS, sys_interval=1)
    n.start()
    yield n
    n.stop()


def registered_again(n: Node, mark: int, wids) -> bool:
    log = n.log(mark)
    return all(f"worker={w} event='registered with the router'" in log for w in wids)


def publishes_on(c, topic: str, count: int, timeout: float = 5.0) -> list[Publish]:
    """The next `count` PUBLISHes on `topic` (acknowledged), skipping probes on other topics."""
    got = []
    while len(got) < count:
        p = c.expect(Publish, timeout)
        if p.qos == 1:
            c.send(PubAck(p.packet_id))
        if p.topic == topic:
            got.append(p)
    return got


def test_worker_sigkill_restarted_sessions_found_others_serve(multinode, clients):
    n = multinode
    # persistent sessions (3.1.1 and 5.0) on the victim worker, with messages waiting
    x4 = connect_on(clients, n, "f21-x4", 4, **persistent(4))
    victim = x4.worker
    x5 = connect_on(clients, n, "f21-x5", 5, victim, **persistent(5))
    for x in (x4, x5):
        subscribe(x, f"f21/x/{x.version}", 1)
    plain = connect_on(clients, n, "f21-plain", 5, victim)
    rest = others(n, x4)
    pub = connect_on(clients, n, "f21-pub", 5, rest)
    live_sub = connect_on(clients, n, "f21-live-sub", 5, rest - {pub.worker} or rest)
    subscribe(live_sub, "f21/live", 1)
    spread(x4, pub, live_sub)
    for x in (x4, x5):
        topic = f"f21/x/{x.version}"
        assert publish_all(pub, topic, [b"m1", b"m2"], 1) == [ReasonCode.SUCCESS] * 2
        got = [x.expect(Publish) for _ in range(2)]  # inflight, never acknowledged
        assert [p.payload for p in got] == [b"m1", b"m2"]
        x.send(Disconnect())
        assert x.expect_closed() == []
        assert publish_all(pub, topic, [b"q3", b"q4"], 1, first_pid=3) == [ReasonCode.SUCCESS] * 2  # queued

    old_pid = n.worker_pids()[victim]
    mark = n._log_size()
    rounds = []  # for each round trip: was the victim down while it ran?

    def served_until_restarted() -> bool:
        # the other workers serve throughout: a QoS 1 round trip between two of them
        i = len(rounds) + 1
        down = not registered_again(n, mark, [victim])
        pub.send(Publish("f21/live", b"live %d" % i, 1, packet_id=100 + i % 1000))
        assert pub.expect(PubAck).packet_id == 100 + i % 1000
        assert [p.payload for p in publishes_on(live_sub, "f21/live", 1)] == [b"live %d" % i]
        rounds.append(down and not registered_again(n, mark, [victim]))
        pid = n.worker_pids().get(victim)
        return pid not in (None, old_pid) and registered_again(n, mark, [victim])

    os.kill(old_pid, signal.SIGKILL)
    # a round trip at once, while circus has not yet started the new worker (under load the
    # reconnections below took longer than the restart, and no round ran while it was down)
    served_until_restarted()
    plain.expect_closed()  # its clients lose their connection...
    # ...and come back at once: the node answers once the session's worker is back
    back4 = open_on(clients, n, 4, all_workers(n) - {victim})
    back4.send(Connect(client_id="f21-x4", clean_start=False, keepalive=60, version=4))
    back5 = open_on(clients, n, 5, all_workers(n) - {victim})
    back5.send(Connect(client_id="f21-x5", clean_start=False, keepalive=60, version=5,
                       properties={Prop.SESSION_EXPIRY_INTERVAL: 300}))
    again = connect_on(clients, n, "f21-plain", 5, all_workers(n) - {victim})
    assert again.ack.session_present is False

    wait_for(served_until_restarted, 30, 0.1, "the killed worker restarted by circus")
    assert any(rounds), "no round trip ran while the killed worker was down"
    for back, version in ((back4, 4), (back5, 5)):
        ack = back.recv(timeout=15)
        assert isinstance(ack, Connack) and ack.reason_code == 0 and ack.session_present, ack
        got = receive(back, 4)
        assert [(p.payload, p.dup) for p in got] == [(b"m1", True), (b"m2", True), (b"q3", False), (b"q4", False)]
    # the restarted worker serves again, and routes across workers as before
    fresh = connect_on(clients, n, "f21-fresh", 5, victim)
    subscribe(fresh, "f21/live", 1)
    publish_all(pub, "f21/live", [b"after"], 1, first_pid=2000)
    assert [p.payload for p in publishes_on(fresh, "f21/live", 1)] == [b"after"]
    assert [p.payload for p in publishes_on(live_sub, "f21/live", 1)] == [b"after"]
    for back in (back4, back5):
        publish_all(pub, f"f21/x/{back.version}", [b"later"], 1, first_pid=3000)
        assert [p.payload for p in receive(back, 1)] == [b"later"]


def test_router_sigkill_workers_register_again(multinode, clients):
    n = multinode
    wids = sorted(all_workers(n))
    subs = [connect_on(clients, n, f"f21-r-sub-{w}", 5, w, **persistent(5)) for w in wids]
    pubs = [connect_on(clients, n, f"f21-r-pub-{w}", 4, w) for w in wids]
    for s in subs:
        subscribe(s, "f21/r/#", 1)
    spread(*subs)
    held = connect_on(clients, n, "f21-r-held", 5, wids[0], **persistent(5))
    publish_all(pubs[1], "f21/r/retained", [b"kept"], 1, retain=True)
    for s in subs:
        assert [p.payload for p in publishes_on(s, "f21/r/retained", 1)] == [b"kept"]

    old = n.router_pid()
    mark = n._log_size()
    os.kill(old, signal.SIGKILL)
    # published while the router is down: acknowledged and delivered once it is back
    pubs[0].send(Publish("f21/r/during", b"during", 1, packet_id=1))
    wait_for(lambda: n.router_pid() not in (None, old) and registered_again(n, mark, wids), 30, 0.1,
             "router restarted and every worker registered again")
    assert pubs[0].expect(PubAck, timeout=10).packet_id == 1
    for s in subs:
        if s.worker != pubs[0].worker:
            assert [p.payload for p in publishes_on(s, "f21/r/during", 1)] == [b"during"]

    # probes until every subscriber hears every publisher on another worker
    heard = {(s.worker, p.worker) for s in subs for p in pubs if s.worker == p.worker}
    want = {(s.worker, p.worker) for s in subs for p in pubs}
    rounds = [0]

    def complete() -> bool:
        rounds[0] += 1
        for p in pubs:
            p.send(Publish("f21/r/probe", b"%d" % p.worker, 0))
        for s in subs:
            while True:
                try:
                    got = s.recv(timeout=0.05)
                except TimeoutError:
                    break
                if isinstance(got, Publish) and got.topic == "f21/r/probe":
                    heard.add((s.worker, int(got.payload)))
                elif isinstance(got, Publish) and got.qos == 1:
                    s.send(PubAck(got.packet_id))
        return heard == want

    wait_for(complete, 15, 0, "cross-worker routing complete after the router restart")
    # every publisher reaches every subscriber exactly once
    for i, p in enumerate(pubs):
        publish_all(p, "f21/r/after", [b"after %d" % i], 1, first_pid=10 + i)
    for s in subs:
        assert sorted(x.payload for x in publishes_on(s, "f21/r/after", len(pubs))) == [b"after %d" % i for i in range(len(pubs))]
    # retained messages: one node-wide view again
    fresh = connect_on(clients, n, "f21-r-fresh", 5, wids[2])
    subscribe(fresh, "f21/r/retained", 1)
    assert [(p.payload, p.retain) for p in receive(fresh, 1)] == [(b"kept", True)]
    # sessions: the router knows again which worker holds a client id
    dup = open_on(clients, n, 5, others(n, held))
    ack = dup.connect("f21-r-held", **persistent(5))
    assert isinstance(ack, Connack) and ack.reason_code == 0 and ack.session_present
    assert [(type(d), d.reason_code) for d in held.expect_closed(timeout=2)] == [(Disconnect, ReasonCode.SESSION_TAKEN_OVER)]


def test_stalled_worker_comes_back_with_its_routes(multinode, clients):
    """A worker silent for longer than the router's member timeout (SIGSTOP) is
    dropped from the route table, and comes back whole when it speaks again."""
    n = multinode
    sub = connect_on(clients, n, "f21-stall-sub", 5)
    victim = sub.worker
    subscribe(sub, "f21/stall", 1)
    held = connect_on(clients, n, "f21-stall-held", 5, victim, **persistent(5))
    pub = connect_on(clients, n, "f21-stall-pub", 5, others(n, sub))
    spread(sub, pub)
    pid = n.worker_pids()[victim]
    mark = n._log_size()
    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for(lambda: f"event='member silent, dropping its routes' member=w{victim}" in n.log(mark), 10, 0.1,
                 "the router dropping the stalled worker")
        # the node goes on: a client id held by the stalled worker is granted elsewhere
        t0 = time.monotonic()
        again = connect_on(clients, n, "f21-stall-held", 5, others(n, sub), clean_start=True)
        # granted without waiting for the stalled holder (that would be the router's 5 s claim timeout)
        assert time.monotonic() - t0 < 4 and again.ack.session_present is False
        # and a route appears that the stalled worker has not heard of
        newcomer = connect_on(clients, n, "f21-stall-newcomer", 5, others(n, sub))
        subscribe(newcomer, "f21/stall/back", 1)
    finally:
        os.kill(pid, signal.SIGCONT)
    wait_for(lambda: f"event='member back' member=w{victim}" in n.log(mark), 10, 0.1, "the worker back")

    def probe_arrived() -> bool:
        pub.send(Publish("f21/stall", b"probe", 0))
        try:
            p = sub.recv(timeout=0.1)
        except TimeoutError:
            return False
        return isinstance(p, Publish) and p.payload == b"probe"

    wait_for(probe_arrived, 10, 0, "routes of the stalled worker back")
    publish_all(pub, "f21/stall", [b"after"], 1, first_pid=1)
    while (p := publishes_on(sub, "f21/stall", 1)[0]).payload != b"after":
        assert p.payload == b"probe", p  # probes still on their way come first
    sentinel_first(sub, pub, "f21/stall")  # and "after" came once
    # it learned the route added while it was stalled
    publish_all(sub, "f21/stall/back", [b"news"], 1, first_pid=1)
    assert [p.payload for p in publishes_on(newcomer, "f21/stall/back", 1)] == [b"news"]
    # its stale copy of the session granted elsewhere is gone, connection included
    assert [(type(d), d.reason_code) for d in held.expect_closed(timeout=3)] == [(Disconnect, ReasonCode.SESSION_TAKEN_OVER)]
