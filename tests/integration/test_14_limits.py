"""Limits that protect the node (issue 12, point 5): SHOAL_MAX_CONNECTIONS
(v5 CONNACK 0x97 Quota exceeded, 3.1.1 return code 3) shared out between the
workers, and SHOAL_MAX_PUBLISH_RATE (reading pauses; nothing is lost, nobody
is disconnected), each counted in $SYS and logged with the client id."""
from __future__ import annotations

import re
import time

import pytest

from mqtt import Disconnect, PubAck, Publish, ReasonCode, Subscribe, SubAck, Subscription
from tests.integration.test_20_multiworker import SysView
from tests.support.node import Node, wait_for
from tests.support.raw import RawClient, connect

QUOTA = {4: 3, 5: ReasonCode.QUOTA_EXCEEDED}


@pytest.fixture(scope="module")
def limited():
    n = Node(workers=1, max_connections=3, sys_interval=1)
    n.start()
    yield n
    n.stop()


def test_max_connections_refuses_past_the_limit_and_admits_again(limited, version):
    n = limited
    held = [_admitted(n.port, f"a14-held-{version}-{i}") for i in range(3)]
    try:
        with RawClient(n.port, version) as extra:
            ack = extra.connect(f"a14-extra-{version}")
            assert ack.reason_code == QUOTA[version]
            assert extra.expect_closed() == []
        # the held clients are untouched, and taking over one's own session is let in
        for c in held[1:]:
            assert c.barrier() == []
        again = connect(n.port, f"a14-held-{version}-0", 4)
        held[0].close()
        held[0] = again
        # one leaves: the next is admitted
        held.pop().close()
        wait_for(lambda: _tries(n.port, version, f"a14-next-{version}"), 15, 0.1, what="a free place")
    finally:
        for c in held:
            c.close()


def test_refusal_logged_with_client_id():
    """A refusal is logged naming the client (in a storm past the limit: one line a
    second, with the number of refusals not logged since the last)."""
    with Node(workers=1, max_connections=1) as n:
        with connect(n.port, "a14-log-held", 5):
            with RawClient(n.port, 5) as extra:
                assert extra.connect("a14-log-extra").reason_code == ReasonCode.QUOTA_EXCEEDED
            line = wait_for(lambda: re.search(r".*event='connect refused: connection limit'.*", n.log()), 10,
                            what="the log line").group(0)
            assert "client=a14-log-extra" in line and "limit=1" in line and "worker=1" in line
            assert "peer=127.0.0.1:" in line and "node=" in line


def _tries(port, version, cid) -> bool:
    with RawClient(port, version) as c:
        return c.connect(cid).reason_code == 0


def _admitted(port, cid):
    """A connected client, once the node has a place (the last test's clients may still be leaving)."""
    out = []

    def once():
        c = RawClient(port, 4)
        if c.connect(cid).reason_code == 0:
            out.append(c)
            return True
        c.close()
        return False

    wait_for(once, 15, 0.1, what=f"a place for {cid}")
    return out[0]


def test_refusals_counted_in_sys(limited):
    held = [_admitted(limited.port, f"a14-sys-{i}") for i in range(3)]
    try:
        view = SysView(held[0])
        before = view.node("clients/refused/max connections") or 0
        with RawClient(limited.port, 5) as extra:
            assert extra.connect("a14-sys-extra").reason_code == ReasonCode.QUOTA_EXCEEDED
        view.poll(lambda v: (v.node("clients/refused/max connections") or 0) > before, 15, "the refusal counted")
    finally:
        for c in held:
            c.close()


def test_max_connections_is_per_node_over_workers():
    """Two workers, SHOAL_MAX_CONNECTIONS=4: each takes its share of 2, so of 20
    clients exactly 4 connect (the kernel spreads them over both workers)."""
    with Node(workers=2, max_connections=4) as n:
        accepted, refused = [], 0
        try:
            for i in range(20):
                c = RawClient(n.port, 5)
                rc = c.connect(f"a14-split-{i}").reason_code
                if rc == 0:
                    accepted.append(c)
                else:
                    assert rc == ReasonCode.QUOTA_EXCEEDED
                    refused += 1
                    c.close()
            assert (len(accepted), refused) == (4, 16)
        finally:
            for c in accepted:
                c.close()


# -- SHOAL_MAX_PUBLISH_RATE -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rated():
    n = Node(workers=1, max_publish_rate=50, sys_interval=1)
    n.start()
    yield n
    n.stop()


def test_publish_rate_pauses_the_client_and_loses_nothing(rated, version, clients):
    """120 QoS 1 publishes sent at once at 50/s: the first second's worth goes at
    once, the rest at the rate; every one is acknowledged and delivered, the client
    is not disconnected, and the pause is logged once with its client id."""
    n = rated
    sub = clients.connect(n.port, f"a14-rate-sub-{version}", version)
    sub.send(Subscribe(1, [Subscription("a14/rate", 0)]))
    assert sub.expect(SubAck).reason_codes == [0]
    pub = clients.connect(n.port, f"a14-rate-pub-{version}", version)
    count = 120
    t0 = time.monotonic()
    pub.send_bytes(b"".join(_encoded(pub, Publish("a14/rate", str(i).encode(), 1, packet_id=i + 1))
                            for i in range(count)))
    acks = [pub.expect(PubAck, timeout=30).packet_id for _ in range(count)]
    elapsed = time.monotonic() - t0
    assert acks == list(range(1, count + 1))
    assert elapsed >= (count - 50) / 50 * 0.9  # ~1.4 s: held to the rate
    got = [sub.expect(Publish, timeout=30).payload for _ in range(count)]
    assert got == [str(i).encode() for i in range(count)]
    assert pub.barrier() == []  # still connected, no DISCONNECT
    lines = re.findall(rf".*event='publish rate limit reached, reading paused'.*client=a14-rate-pub-{version}\b.*",
                       n.log())
    assert len(lines) == 1 and "limit=50" in lines[0]


def _encoded(client, packet) -> bytes:
    from tests.support.wire import encode

    return encode(packet, client.version)


def test_publish_rate_counted_in_sys(rated, clients):
    c = clients.connect(rated.port, "a14-rate-sys", 5)
    view = SysView(clients.connect(rated.port, "a14-rate-view", 5))
    before = view.node("publish/throttled") or 0
    c.send_bytes(b"".join(_encoded(c, Publish("a14/rate/sys", b"x", 0)) for _ in range(80)))
    view.poll(lambda v: (v.node("publish/throttled") or 0) > before, 15, "throttling counted")
    got = c.barrier()
    assert not any(isinstance(p, Disconnect) for p in got)
