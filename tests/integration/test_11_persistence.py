"""Durable sessions: what a node acknowledged survives SIGKILL and restart (issue 5)."""
import pytest

from mqtt import Connack, PubAck, PubComp, PubRec, PubRel, Publish, Subscribe, SubAck, Subscription
from mqtt import Prop

from tests.support.node import Node
from tests.support.raw import RawClient


def persistent_connect(port, cid, version, clients):
    c = clients.open(port, version)
    props = {Prop.SESSION_EXPIRY_INTERVAL: 3600} if version == 5 else {}
    ack = c.connect(cid, clean_start=False, properties=props)
    assert isinstance(ack, Connack) and ack.reason_code == 0
    return c, ack


def receive_all(sub, count):
    """Receive `count` publishes, acknowledging QoS 1 and 2 as a client does."""
    got, open_rel = [], 0
    while len(got) < count or open_rel:
        p = sub.recv()
        if isinstance(p, Publish):
            got.append(p.payload)
            if p.qos == 1:
                sub.send(PubAck(p.packet_id))
            elif p.qos == 2:
                sub.send(PubRec(p.packet_id))
                open_rel += 1
        elif isinstance(p, PubRel):
            sub.send(PubComp(p.packet_id))
            open_rel -= 1
    return got


@pytest.mark.parametrize("workers", [1, 2], ids=["1w", "2w"])
@pytest.mark.parametrize("kill", ["worker", "node"])
def test_acknowledged_messages_survive_sigkill(version, workers, kill, clients):
    n = Node(workers=workers)
    n.start()
    try:
        sub, _ = persistent_connect(n.port, "p-sub", version, clients)
        sub.send(Subscribe(1, [Subscription("dur/#", 2)]))
        sub.expect(SubAck)
        sub.close()
        pub = clients.connect(n.port, "p-pub", version)
        for i in range(20):
            qos = 1 if i % 2 == 0 else 2
            pub.send(Publish("dur/x", f"m{i}".encode(), qos, packet_id=i + 1))
            ack = pub.expect(PubAck if qos == 1 else PubRec)
            assert ack.packet_id == i + 1
            if qos == 2:
                pub.send(PubRel(i + 1))
                pub.expect(PubComp)
        pub.close()
        if kill == "node":
            n.kill()
            n.start()
        else:
            import os
            import signal

            from tests.support.node import wait_for
            for wid, pid in n.worker_pids().items():
                os.kill(pid, signal.SIGKILL)
            n._log_mark = n._log_size()
            n.wait_ready()
        sub, ack = persistent_connect(n.port, "p-sub", version, clients)
        assert ack.session_present
        got = receive_all(sub, 20)
        assert got == [f"m{i}".encode() for i in range(20)]
        assert sub.barrier() == []
    except BaseException:
        print(n.log())
        raise
    finally:
        n.stop()
