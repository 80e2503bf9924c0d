"""tests/support/wire.py, the tests' own MQTT bytes, checked against the examples
printed in the specifications (MQTT 3.1.1 OASIS Standard, MQTT 5.0 OASIS
Standard), then against the broker's codec both ways: a disagreement is a bug
on one side, and the spec's bytes say which.
"""
from __future__ import annotations

import pytest

import mqtt
from mqtt.packets import (
    Connack,
    Connect,
    Disconnect,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    Subscription,
    UnsubAck,
    Unsubscribe,
    Will,
)
from tests.support import wire

# 3.1.1 table 2.4 / 5.0 table 1-1: Size of Variable Byte Integer (the bounds of each length)
VARINTS = [
    (0, "00"), (127, "7F"), (128, "8001"), (16_383, "FF7F"), (16_384, "808001"),
    (2_097_151, "FFFF7F"), (2_097_152, "80808001"), (268_435_455, "FFFFFF7F"),
]


@pytest.mark.parametrize("n,hexed", VARINTS)
def test_remaining_length_as_the_spec_tables_it(n, hexed):
    assert wire.varint(n) == bytes.fromhex(hexed)
    first, body = 0x30, bytes(n) if n < 20_000 else None
    if body is not None:
        assert wire.frames(wire.frame(first, body)) == [(first, body)]


def test_utf8_string_example():
    # 3.1.1 1.5.3 Figure 1.3 / 5.0 1.5.4 Figure 1-1: "A\u2A6D4" is 00 05 41 F0 AA 9B 94
    assert wire.utf8("A\U0002A6D4") == bytes.fromhex("0005 41 F0AA9B94")


def test_connect_variable_header_examples():
    # 3.1.1 Figure 3.6: "MQTT", level 4, flags CE (user, password, will QoS 1, will, clean), keepalive 10
    will = Will("w", b"p", qos=1)
    c311 = wire.connect("c", 4, clean=True, keepalive=10, username="u", password=b"pw", will=will)
    first, body = wire.frames(c311)[0]
    assert first == 0x10
    assert body[:10] == bytes.fromhex("0004 4D515454 04 CE 000A")
    assert body[10:] == bytes.fromhex("0001 63" "0001 77" "0001 70" "0001 75" "0002 7077")
    # 5.0 3.1.2.11 (variable header example): the same, version 5, properties length 5, Session Expiry Interval 10
    c5 = wire.connect("c", 5, clean=True, keepalive=10, username="u", password=b"pw", will=will,
                      props={0x11: 10})
    _, body5 = wire.frames(c5)[0]
    assert body5[:16] == bytes.fromhex("0004 4D515454 05 CE 000A 05 110000000A")


def test_publish_variable_header_examples():
    # 3.1.1 Figure 3.11: topic "a/b", packet identifier 10
    assert wire.publish("a/b", b"", 1, 10) == bytes.fromhex("32 07 0003 612F62 000A")
    # 5.0 3.3.2 (variable header example): the same, then property length 0
    assert wire.publish("a/b", b"", 1, 10, version=5) == bytes.fromhex("32 08 0003 612F62 000A 00")
    assert wire.publish("a/b", b"x", 0, retain=True) == bytes.fromhex("31 06 0003 612F62 78")


def test_subscribe_payload_examples():
    # 3.1.1 Figure 3.21/3.22: packet identifier 10; "a/b" QoS 1, "c/d" QoS 2
    assert wire.subscribe(10, [("a/b", 1), ("c/d", 2)]) == bytes.fromhex("82 0E 000A 0003612F62 01 0003632F64 02")
    # 5.0 3.8.2 / 3.8.3 (examples): property length 0 after the identifier
    assert wire.subscribe(10, [("a/b", 1), ("c/d", 2)], 5) == bytes.fromhex("82 0F 000A 00 0003612F62 01 0003632F64 02")


def test_suback_payload_example():
    # 3.1.1 Figure 3.26: packet identifier 10; Success QoS 0, Success QoS 2, Failure
    assert wire.decode(0x90, bytes.fromhex("000A 00 02 80"), 4) == SubAck(10, [0, 2, 0x80])
    assert wire.decode(0x90, bytes.fromhex("000A 00 00 02 80"), 5) == SubAck(10, [0, 2, 0x80])


def test_unsubscribe_payload_example():
    # 3.1.1 Figure 3.30: packet identifier 10; "a/b", "c/d"
    assert wire.unsubscribe(10, ["a/b", "c/d"]) == bytes.fromhex("A2 0C 000A 0003612F62 0003632F64")


def test_fixed_packets():
    # 3.1.1 3.12, 3.13, 3.14: PINGREQ, PINGRESP, DISCONNECT are two bytes each
    assert wire.PINGREQ == bytes.fromhex("C000")
    assert wire.decode(0xD0, b"") == PingResp()
    assert wire.disconnect() == bytes.fromhex("E000")
    # 3.1.1 3.6.1: PUBREL's fixed header flags are 0010
    assert wire.pubrel(10) == bytes.fromhex("62 02 000A")
    assert wire.puback(10, 0x10, 5) == bytes.fromhex("40 03 000A 10")
    assert wire.connect("", 4, keepalive=0) == bytes.fromhex("10 0C 0004 4D515454 04 02 0000 0000")


def test_connack_examples():
    assert wire.decode(0x20, bytes.fromhex("0100"), 4) == Connack(True, 0)
    # v5: Receive Maximum 20, Assigned Client Identifier "id"
    body = bytes.fromhex("00 00 08 210014 1200026964")
    assert wire.decode(0x20, body, 5) == Connack(False, 0, {0x21: 20, 0x12: "id"})


def test_reader_splits_a_stream_at_every_offset():
    stream = wire.connect("abc", 5, props={0x11: 7}) + wire.publish("t", bytes(300), 1, 3, version=5) + wire.PINGREQ
    whole = wire.frames(stream)
    for cut in range(len(stream) + 1):
        r = wire.Reader()
        assert r.feed(stream[:cut]) + r.feed(stream[cut:]) == whole


def test_bad_bytes_are_refused():
    with pytest.raises(wire.Malformed):
        wire.frames(b"\x30\x05ab")  # left over
    with pytest.raises(wire.Malformed):
        wire.decode(0x40, b"\x00", 4)  # packet ends inside the identifier
    with pytest.raises(wire.Malformed):
        wire.decode(0x90, bytes.fromhex("000A 02 FF00"), 5)  # unknown property 0xFF


# -- cross-checked with the broker's codec, both ways --------------------------------
CLIENT_PACKETS = [
    (Connect("c1", True, 60, 4), 4),
    (Connect("c1", False, 30, 5, "user", b"pw", Will("w/t", b"bye", 1, True, {0x18: 5}),
             {0x11: 300, 0x21: 10, 0x26: [("k", "v")]}), 5),
    (Publish("a/b", b"payload", 0), 4),
    (Publish("a/b", b"payload", 2, True, True, 65535), 4),
    (Publish("a/b", b"p", 1, False, False, 7, {0x02: 30, 0x23: 3, 0x26: [("a", "1"), ("b", "2")]}), 5),
    (PubAck(1), 4), (PubRec(2), 5), (PubRel(3, 0x92), 5), (PubComp(4), 4),
    (Subscribe(9, [Subscription("a/#", 1), Subscription("+/b", 2)]), 4),
    (Subscribe(9, [Subscription("a/#", 1, True, True, 2)], {0x0B: [5]}), 5),
    (Unsubscribe(10, ["a/#", "x"]), 4),
    (Unsubscribe(10, ["a/#"]), 5),
    (Disconnect(0x04, {0x11: 0}), 5),
]


@pytest.mark.parametrize("packet,version", CLIENT_PACKETS, ids=lambda v: type(v).__name__ if not isinstance(v, int) else f"v{v}")
def test_client_packets_agree_with_the_codec(packet, version):
    ours = wire.encode(packet, version)
    (first, body), = wire.frames(ours)
    assert mqtt.decode(first, body, version) == packet
    assert ours == mqtt.encode(packet, version)


BROKER_PACKETS = [
    (Connack(False, 0), 4), (Connack(True, 0, {0x21: 100, 0x27: 1024, 0x13: 60}), 5),
    (Publish("t", b"x", 1, False, False, 5, {0x0B: [1, 2]}), 5),
    (PubAck(5, 0x10), 5), (PubRel(6), 4), (SubAck(7, [0, 1, 0x80]), 4),
    (SubAck(7, [0x87], {0x1F: "nope"}), 5), (UnsubAck(8), 4), (UnsubAck(8, [0, 0x11]), 5),
    (Disconnect(0x8E), 5), (PingResp(), 4),
]


@pytest.mark.parametrize("packet,version", BROKER_PACKETS, ids=lambda v: type(v).__name__ if not isinstance(v, int) else f"v{v}")
def test_broker_packets_agree_with_the_codec(packet, version):
    data = mqtt.encode(packet, version)
    (first, body), = wire.frames(data)
    assert wire.decode(first, body, version) == packet
