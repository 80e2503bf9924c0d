"""The generator's pre-encoded packets decode, with the mqtt codec, to what they claim."""
from __future__ import annotations

import struct

import pytest

from loadtest.client import PublishTemplate, Wire
from mqtt import Disconnect, Framer, PubAck, PubComp, Publish, PubRec, PubRel, decode


@pytest.mark.parametrize("version", [3, 4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
@pytest.mark.parametrize("size", [8, 100, 20_000])  # 20,000: a 3-byte remaining length
def test_publish_batch_decodes_to_stamped_publishes(version, qos, size):
    t = PublishTemplate("bench/topic/7", size, qos, False, version)
    batch = t.batch(5, 1_700_000_000_123_456_789)
    if qos:
        for k, pid in enumerate((1, 2, 65535, 3, 9)):
            struct.pack_into(">H", batch, t.pid_at + k * t.size, pid)
    frames = list(Framer().feed(bytes(batch)))
    assert len(frames) == 5
    packets = [decode(first, body, version) for first, body in frames]
    for p in packets:
        assert isinstance(p, Publish)
        assert (p.topic, p.qos, p.retain, p.dup, len(p.payload)) == ("bench/topic/7", qos, False, False, size)
        assert struct.unpack_from(">Q", p.payload)[0] == 1_700_000_000_123_456_789
        assert p.payload[8:] == bytes(size - 8)
    assert [p.packet_id for p in packets] == ([1, 2, 65535, 3, 9] if qos else [None] * 5)


def test_batch_restamps_the_template():
    t = PublishTemplate("t", 16, 0, True, 4)
    t.batch(1, 1)
    first, body = next(Framer().feed(bytes(t.batch(1, 2))))
    p = decode(first, body, 4)
    assert p.retain and struct.unpack_from(">Q", p.payload)[0] == 2


@pytest.mark.parametrize("version", [3, 4, 5])
def test_ack_templates_decode_with_the_spliced_id(version):
    wire = Wire(version)
    for template, cls in ((wire.puback, PubAck), (wire.pubrec, PubRec), (wire.pubrel, PubRel), (wire.pubcomp, PubComp)):
        packet = template.prefix + (4660).to_bytes(2, "big") + template.suffix
        ((first, body),) = Framer().feed(packet)
        assert decode(first, body, version) == cls(packet_id=4660)
    ((first, body),) = Framer().feed(wire.disconnect)
    assert decode(first, body, version) == Disconnect()
