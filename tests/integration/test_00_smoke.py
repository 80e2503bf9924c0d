"""The node starts under circusd and moves a message end to end."""
from mqtt import Publish, Subscribe, SubAck, Subscription


def test_publish_subscribe_roundtrip(node, version, clients):
    sub = clients.connect(node.port, "smoke-sub", version)
    sub.send(Subscribe(1, [Subscription("smoke/#", 1)]))
    assert sub.expect(SubAck).reason_codes == [1]
    pub = clients.connect(node.port, "smoke-pub", version)
    pub.send(Publish("smoke/a", b"hello", 0))
    pub.barrier()
    msg = sub.expect(Publish)
    assert (msg.topic, msg.payload, msg.qos) == ("smoke/a", b"hello", 0)
