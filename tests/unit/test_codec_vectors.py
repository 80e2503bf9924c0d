"""Byte-exact codec vectors written by hand from the MQTT 3.1.1 and 5.0 specs,
and a table of invalid inputs with the error each must raise.

Every valid vector is fed to a Framer split at every offset (two feeds), decoded,
compared with the packet written out by hand, and encoded back to the same bytes.
"""
from __future__ import annotations

import pytest

from mqtt import (
    DISCONNECT_V4_BYTES, PINGREQ_BYTES, PINGRESP_BYTES, Auth, Connack, ConnackCode311, Connect,
    Disconnect, Framer, MalformedPacket, MQTTError, PacketTooLarge, PacketType, PingReq, PingResp, Prop,
    ProtocolError, PubAck, PubComp, Publish, PubRec, PubRel, ReasonCode, SubAck, Subscribe, Subscription,
    UnsubAck, Unsubscribe, UnsupportedProtocolVersion, Will, connack_code_311, decode, encode,
    encode_publish_split, encode_varint,
)


def h(text: str) -> bytes:
    return bytes.fromhex(text)


ZEROS_200 = bytes(200)

# (id, version, wire bytes, packet)
VECTORS = [
    # ---- CONNECT
    ("connect-v311-will-user-pass", 4,
     h("10 22 0004 4d515454 04 ee 003c 0003 636964 0003 772f74 0002 6279 0004 75736572 0002 7077"),
     Connect("cid", True, 60, 4, "user", b"pw", Will("w/t", b"by", 1, True))),
    ("connect-v31-minimal", 3,
     h("10 11 0006 4d5149736470 03 02 000a 0003 636964"),
     Connect("cid", True, 10, 3)),
    ("connect-v311-empty-id-persistent", 4,
     h("10 0c 0004 4d515454 04 00 0000 0000"),
     Connect("", False, 0, 4)),
    ("connect-v5-will-user-pass-props", 5,
     h("10 41 0004 4d515454 05 d6 003c"
       " 0f 11 00000078 21 0014 26 0001 6b 0001 76"
       " 0003 636964"
       " 0e 18 00000005 03 0004 74657874 01 01"
       " 0003 772f74 0002 6279 0004 75736572 0002 7077"),
     Connect("cid", True, 60, 5, "user", b"pw",
             Will("w/t", b"by", 2, False, {Prop.WILL_DELAY_INTERVAL: 5, Prop.CONTENT_TYPE: "text",
                                           Prop.PAYLOAD_FORMAT_INDICATOR: 1}),
             {Prop.SESSION_EXPIRY_INTERVAL: 120, Prop.RECEIVE_MAXIMUM: 20, Prop.USER_PROPERTY: [("k", "v")]})),
    ("connect-v5-password-without-username", 5,
     h("10 12 0004 4d515454 05 42 0000 00 0001 61 0002 7077"),
     Connect("a", True, 0, 5, None, b"pw")),
    ("connect-v5-auth", 5,
     h("10 1b 0004 4d515454 05 02 0000 0e 15 0005 504c41494e 16 0003 010203 0000"),
     Connect("", True, 0, 5, properties={Prop.AUTHENTICATION_METHOD: "PLAIN",
                                         Prop.AUTHENTICATION_DATA: b"\x01\x02\x03"})),
    # ---- CONNACK
    ("connack-v311-session-present", 4, h("20 02 01 00"), Connack(True, 0)),
    ("connack-v311-not-authorized", 4, h("20 02 00 05"), Connack(False, ConnackCode311.NOT_AUTHORIZED)),
    ("connack-v5-props", 5,
     h("20 17 00 00 14 22 000a 12 0003 616263 24 01 25 00 27 00001000 2a 00"),
     Connack(False, 0, {Prop.TOPIC_ALIAS_MAXIMUM: 10, Prop.ASSIGNED_CLIENT_IDENTIFIER: "abc",
                        Prop.MAXIMUM_QOS: 1, Prop.RETAIN_AVAILABLE: 0, Prop.MAXIMUM_PACKET_SIZE: 4096,
                        Prop.SHARED_SUBSCRIPTION_AVAILABLE: 0})),
    ("connack-v5-refused", 5, h("20 03 00 87 00"), Connack(False, ReasonCode.NOT_AUTHORIZED)),
    # ---- PUBLISH
    ("publish-v311-qos0", 4, h("30 07 0003 612f62 6869"), Publish("a/b", b"hi")),
    ("publish-v311-qos1-retain", 4, h("33 09 0003 612f62 000a 6869"),
     Publish("a/b", b"hi", 1, True, False, 10)),
    ("publish-v311-qos2-dup", 4, h("3c 09 0003 612f62 1234 6869"),
     Publish("a/b", b"hi", 2, False, True, 0x1234)),
    ("publish-v311-empty-payload", 4, h("30 03 0001 61"), Publish("a")),
    ("publish-v5-qos0", 5, h("30 08 0003 612f62 00 6869"), Publish("a/b", b"hi")),
    ("publish-v5-qos1-props", 5,
     h("32 37 0003 612f62 0001 2d"
       " 01 01 02 0000003c 03 0004 74657874 08 0001 72 09 0002 0102 23 0005"
       " 26 0001 6b 0001 76 26 0001 6b 0001 77 0b 01 0b 8001"
       " 6869"),
     Publish("a/b", b"hi", 1, False, False, 1, {
         Prop.PAYLOAD_FORMAT_INDICATOR: 1, Prop.MESSAGE_EXPIRY_INTERVAL: 60, Prop.CONTENT_TYPE: "text",
         Prop.RESPONSE_TOPIC: "r", Prop.CORRELATION_DATA: b"\x01\x02", Prop.TOPIC_ALIAS: 5,
         Prop.USER_PROPERTY: [("k", "v"), ("k", "w")], Prop.SUBSCRIPTION_IDENTIFIER: [1, 128]})),
    ("publish-v5-qos2-long", 5, h("34 d001 0003 612f62 ffff 00") + ZEROS_200,
     Publish("a/b", ZEROS_200, 2, False, False, 0xFFFF)),
    ("publish-v5-alias-empty-topic", 5, h("30 07 0000 03 23 0001 78"),
     Publish("", b"x", properties={Prop.TOPIC_ALIAS: 1})),
    ("publish-v311-utf8-topic", 4, h("30 08 0005 c3a9e282ac 21"), Publish("\u00e9\u20ac", b"!")),
    # ---- PUBACK / PUBREC / PUBREL / PUBCOMP
    ("puback-v311", 4, h("40 02 000a"), PubAck(10)),
    ("puback-v5-short", 5, h("40 02 000a"), PubAck(10)),
    ("puback-v5-reason-only", 5, h("40 03 000a 10"), PubAck(10, ReasonCode.NO_MATCHING_SUBSCRIBERS)),
    ("puback-v5-long", 5, h("40 09 000a 10 05 1f 0002 6e6f"),
     PubAck(10, 0x10, {Prop.REASON_STRING: "no"})),
    ("pubrec-v311", 4, h("50 02 0001"), PubRec(1)),
    ("pubrec-v5-short", 5, h("50 02 0001"), PubRec(1)),
    ("pubrec-v5-long", 5, h("50 0b 0001 80 07 26 0001 6b 0001 76"),
     PubRec(1, ReasonCode.UNSPECIFIED_ERROR, {Prop.USER_PROPERTY: [("k", "v")]})),
    ("pubrel-v311", 4, h("62 02 0001"), PubRel(1)),
    ("pubrel-v5-short", 5, h("62 02 0001"), PubRel(1)),
    ("pubrel-v5-reason-only", 5, h("62 03 0001 92"), PubRel(1, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND)),
    ("pubrel-v5-success-with-props", 5, h("62 08 0001 00 04 1f 0001 78"),
     PubRel(1, 0, {Prop.REASON_STRING: "x"})),
    ("pubcomp-v311", 4, h("70 02 ffff"), PubComp(0xFFFF)),
    ("pubcomp-v5-short", 5, h("70 02 ffff"), PubComp(0xFFFF)),
    ("pubcomp-v5-long", 5, h("70 09 ffff 92 05 1f 0002 3f3f"),
     PubComp(0xFFFF, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND, {Prop.REASON_STRING: "??"})),
    # ---- SUBSCRIBE / SUBACK
    ("subscribe-v311", 4, h("82 0c 0001 0003 612f62 01 0001 23 02"),
     Subscribe(1, [Subscription("a/b", 1), Subscription("#", 2)])),
    ("subscribe-v5-options", 5,
     h("82 1f 0002 09 0b 05 26 0001 6b 0001 76 0003 612f2b 1d 000a 2473686172652f672f78 20"),
     Subscribe(2, [Subscription("a/+", 1, True, True, 1), Subscription("$share/g/x", 0, False, False, 2)],
               {Prop.SUBSCRIPTION_IDENTIFIER: [5], Prop.USER_PROPERTY: [("k", "v")]})),
    ("suback-v311", 4, h("90 04 0001 01 80"), SubAck(1, [1, 0x80])),
    ("suback-v5", 5, h("90 0a 0002 04 1f 0001 78 01 00 a2"),
     SubAck(2, [1, 0, ReasonCode.WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED], {Prop.REASON_STRING: "x"})),
    # ---- UNSUBSCRIBE / UNSUBACK
    ("unsubscribe-v311", 4, h("a2 0a 0003 0003 612f62 0001 23"), Unsubscribe(3, ["a/b", "#"])),
    ("unsubscribe-v5", 5, h("a2 0f 0003 07 26 0001 6b 0001 76 0003 612f62"),
     Unsubscribe(3, ["a/b"], {Prop.USER_PROPERTY: [("k", "v")]})),
    ("unsuback-v311", 4, h("b0 02 0003"), UnsubAck(3)),
    ("unsuback-v5", 5, h("b0 05 0003 00 00 11"), UnsubAck(3, [0, ReasonCode.NO_SUBSCRIPTION_EXISTED])),
    ("unsuback-v5-props", 5, h("b0 09 0004 04 1f 0001 78 87 00"),
     UnsubAck(4, [0x87, 0], {Prop.REASON_STRING: "x"})),
    # ---- PINGREQ / PINGRESP
    ("pingreq-v311", 4, h("c0 00"), PingReq()),
    ("pingreq-v5", 5, h("c0 00"), PingReq()),
    ("pingresp-v311", 4, h("d0 00"), PingResp()),
    ("pingresp-v5", 5, h("d0 00"), PingResp()),
    # ---- DISCONNECT
    ("disconnect-v311", 4, h("e0 00"), Disconnect()),
    ("disconnect-v5-empty-is-normal", 5, h("e0 00"), Disconnect(ReasonCode.NORMAL_DISCONNECTION)),
    ("disconnect-v5-reason-only", 5, h("e0 01 04"), Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE)),
    ("disconnect-v5-props", 5, h("e0 0d 8e 0b 11 00000000 1f 0003 627965"),
     Disconnect(ReasonCode.SESSION_TAKEN_OVER, {Prop.SESSION_EXPIRY_INTERVAL: 0, Prop.REASON_STRING: "bye"})),
    ("disconnect-v5-server-moved", 5, h("e0 09 9d 07 1c 0004 683a3130"),
     Disconnect(ReasonCode.SERVER_MOVED, {Prop.SERVER_REFERENCE: "h:10"})),
    # ---- AUTH
    ("auth-v5-empty", 5, h("f0 00"), Auth()),
    ("auth-v5-continue", 5, h("f0 10 18 0e 15 0005 504c41494e 16 0003 010203"),
     Auth(ReasonCode.CONTINUE_AUTHENTICATION, {Prop.AUTHENTICATION_METHOD: "PLAIN",
                                               Prop.AUTHENTICATION_DATA: b"\x01\x02\x03"})),
]


def frames_split_at(data: bytes, cut: int, framer: Framer | None = None) -> list[tuple[int, bytes]]:
    framer = framer or Framer()
    out = list(framer.feed(data[:cut]))
    out += framer.feed(data[cut:])
    assert framer.pending == 0
    return out


@pytest.mark.parametrize(("version", "wire", "packet"), [v[1:] for v in VECTORS], ids=[v[0] for v in VECTORS])
def test_vector(version: int, wire: bytes, packet) -> None:
    for cut in range(len(wire) + 1):
        frames = frames_split_at(wire, cut)
        assert len(frames) == 1
        first, body = frames[0]
        assert type(body) is bytes
        decoded = decode(first, body, version)
        assert decoded == packet, f"split at {cut}"
        assert decoded.TYPE == packet.TYPE
    assert encode(packet, version) == wire


def test_vectors_cover_every_packet_type_in_both_versions() -> None:
    seen = {(v[3].TYPE, 5 if v[1] == 5 else 4) for v in VECTORS}
    for ptype in PacketType:
        assert (ptype, 5) in seen, ptype
        if ptype != PacketType.AUTH:
            assert (ptype, 4) in seen, ptype


def test_all_vectors_in_one_stream_split_at_every_offset() -> None:
    for version in (4, 5):
        chosen = [v for v in VECTORS if (v[1] == 5) == (version == 5)]
        stream = b"".join(v[2] for v in chosen)
        for cut in range(len(stream) + 1):
            frames = frames_split_at(stream, cut)
            assert [decode(f, b, version) for f, b in frames] == [v[3] for v in chosen]


def test_decoded_property_keys_are_prop_members() -> None:
    wire = next(v[2] for v in VECTORS if v[0] == "publish-v5-qos1-props")
    [(first, body)] = list(Framer().feed(wire))
    props = decode(first, body, 5).properties
    assert all(type(k) is Prop for k in props)
    assert props[0x23] == 5  # plain ints look up the same entries


def test_framer_keeps_the_incomplete_rest() -> None:
    framer = Framer()
    wire = h("30 07 0003 612f62 6869")
    assert list(framer.feed(wire + wire[:4])) == [(0x30, wire[2:])]
    assert framer.pending == 4
    assert list(framer.feed(wire[4:])) == [(0x30, wire[2:])]
    assert framer.pending == 0


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
def test_framer_accepts_any_bytes_like_and_yields_bytes(kind) -> None:
    wire = h("30 07 0003 612f62 6869 c0 00 d0")
    framer = Framer()
    frames = list(framer.feed(kind(wire)))
    assert frames == [(0x30, wire[2:9]), (0xC0, b"")]
    assert all(type(body) is bytes for _, body in frames)
    assert framer.pending == 1
    assert list(framer.feed(kind(b"\x00"))) == [(0xD0, b"")]
    assert framer.pending == 0


def test_framer_drops_consumed_frames_when_the_loop_stops_early() -> None:
    framer = Framer()
    wire = h("c0 00") * 3
    for frame in framer.feed(wire):
        assert frame == (0xC0, b"")
        break
    assert framer.pending == 4
    assert list(framer.feed(b"")) == [(0xC0, b"")] * 2
    assert framer.pending == 0


def test_framer_yields_frames_before_a_bad_one() -> None:
    framer = Framer()
    it = framer.feed(h("c0 00 d0 00 30 ff ff ff ff 01"))
    assert next(it) == (0xC0, b"")
    assert next(it) == (0xD0, b"")
    with pytest.raises(MalformedPacket):
        next(it)
    assert framer.pending == 6  # the two good frames are gone


def test_framer_packet_size_limit_is_inclusive_and_writable() -> None:
    wire = h("30 07 0003 612f62 6869")  # 9 bytes
    assert len(list(Framer(max_packet_size=9).feed(wire))) == 1
    framer = Framer()
    framer.max_packet_size = 8
    with pytest.raises(PacketTooLarge) as err:
        list(framer.feed(wire[:2]))  # the fixed header alone is enough to refuse
    assert err.value.code == ReasonCode.PACKET_TOO_LARGE


def test_framer_waits_for_an_incomplete_remaining_length() -> None:
    framer = Framer()
    assert list(framer.feed(h("30 ff ff"))) == []
    assert framer.pending == 3
    with pytest.raises(MalformedPacket):
        list(framer.feed(h("ff 80")))


def test_varint_boundaries() -> None:
    for n, wire in [(0, "00"), (127, "7f"), (128, "8001"), (16383, "ff7f"), (16384, "808001"),
                    (2097151, "ffff7f"), (2097152, "80808001"), (268435455, "ffffff7f")]:
        assert encode_varint(n) == h(wire)
    for n in (-1, 268435456):
        with pytest.raises(MalformedPacket):
            encode_varint(n)


def test_remaining_length_of_four_bytes_is_framed() -> None:
    payload = bytes(2097152)
    wire = encode(Publish("t", payload), 4)
    assert wire[1:5] == h("83808001")
    [(first, body)] = list(Framer().feed(wire))
    assert decode(first, body, 4) == Publish("t", payload)


@pytest.mark.parametrize("version", [4, 5])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_encode_publish_split(version: int, qos: int) -> None:
    props = {Prop.MESSAGE_EXPIRY_INTERVAL: 9, Prop.SUBSCRIPTION_IDENTIFIER: [3]} if version == 5 else None
    for payload in (b"", b"x" * 64, b"y" * 200, bytes(20000)):
        head, tail = encode_publish_split("s/t", payload, qos, True, props, version)
        packet_id = 0x0102 if qos else None
        wire = head + packet_id.to_bytes(2, "big") + tail if qos else head + tail
        expected = Publish("s/t", payload, qos, True, False, packet_id, props or {})
        assert wire == encode(expected, version)
        [(first, body)] = list(Framer().feed(wire))
        assert decode(first, body, version) == expected
        if qos:  # the caller sets DUP by OR-ing 0x08 into the first byte
            dup = bytes((head[0] | 0x08,)) + wire[1:]
            [(first, body)] = list(Framer().feed(dup))
            assert decode(first, body, version).dup is True


def test_fixed_packets() -> None:
    assert PINGREQ_BYTES == encode(PingReq(), 4) == h("c000")
    assert PINGRESP_BYTES == encode(PingResp(), 5) == h("d000")
    assert DISCONNECT_V4_BYTES == encode(Disconnect(ReasonCode.SERVER_SHUTTING_DOWN), 4) == h("e000")


def test_v4_encoding_leaves_out_v5_fields() -> None:
    assert encode(PubAck(1, 0x80, {Prop.REASON_STRING: "x"}), 4) == h("40 02 0001")
    assert encode(Connack(True, 0, {Prop.MAXIMUM_QOS: 1}), 4) == h("20 02 01 00")
    assert encode(UnsubAck(1, [0x11]), 4) == h("b0 02 0001")
    assert encode(Publish("a", b"", 0, properties={Prop.TOPIC_ALIAS: 1}), 4) == h("30 03 0001 61")
    sub = Subscribe(1, [Subscription("a", 1, True, True, 2)], {Prop.SUBSCRIPTION_IDENTIFIER: [1]})
    assert encode(sub, 4) == h("82 06 0001 0001 61 01")


def test_connect_version_comes_from_the_packet() -> None:
    wire = h("10 11 0006 4d5149736470 03 02 000a 0003 636964")
    assert encode(Connect("cid", True, 10, 3), 5) == wire
    [(first, body)] = list(Framer().feed(wire))
    assert decode(first, body, 5) == Connect("cid", True, 10, 3)


def test_v5_connack_without_property_length_is_accepted() -> None:
    assert decode(0x20, h("0084"), 5) == Connack(False, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION)


def test_connack_code_311() -> None:
    assert connack_code_311(ReasonCode.SUCCESS) == ConnackCode311.ACCEPTED
    assert connack_code_311(ReasonCode.UNSUPPORTED_PROTOCOL_VERSION) == 1
    assert connack_code_311(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID) == 2
    assert connack_code_311(ReasonCode.BAD_USER_NAME_OR_PASSWORD) == 4
    assert connack_code_311(ReasonCode.NOT_AUTHORIZED) == 5
    assert connack_code_311(ReasonCode.BANNED) == 5
    assert connack_code_311(ReasonCode.SERVER_BUSY) == 3
    assert connack_code_311(ReasonCode.UNSPECIFIED_ERROR) == ConnackCode311.SERVER_UNAVAILABLE


def test_reason_code_aliases() -> None:
    assert ReasonCode.NORMAL_DISCONNECTION is ReasonCode.SUCCESS
    assert ReasonCode.GRANTED_QOS_0 is ReasonCode.SUCCESS


def test_error_classes() -> None:
    assert MalformedPacket("x").code == ReasonCode.MALFORMED_PACKET
    assert ProtocolError("x").code == ReasonCode.PROTOCOL_ERROR
    assert PacketTooLarge().code == ReasonCode.PACKET_TOO_LARGE
    assert UnsupportedProtocolVersion(version=6).version == 6
    err = ProtocolError("alias 0", code=ReasonCode.TOPIC_ALIAS_INVALID)
    assert (err.code, err.detail) == (ReasonCode.TOPIC_ALIAS_INVALID, "alias 0")
    err = ProtocolError(ReasonCode.TOPIC_ALIAS_INVALID, "alias 0")
    assert (err.code, err.detail) == (ReasonCode.TOPIC_ALIAS_INVALID, "alias 0")
    err = MQTTError(ReasonCode.QUOTA_EXCEEDED, "full")
    assert (err.code, err.detail, str(err)) == (ReasonCode.QUOTA_EXCEEDED, "full", "QUOTA_EXCEEDED: full")


@pytest.mark.parametrize("packet", [
    Publish("t", b"", 1),  # QoS 1 without a packet id
    Publish("t", b"", 3, packet_id=1),
    Publish("t" * 65536),
    PubAck(65536),
    Publish("t", properties={Prop.SESSION_EXPIRY_INTERVAL: 1}),  # not a PUBLISH property
    Publish("t", properties={0x7F: 1}),
    Publish("\ud800"),
    Publish("t", b"", 0, dup=True),  # DUP only exists for QoS > 0
    Auth(),  # AUTH does not exist before MQTT 5 (encoded as v4 below)
    Connect(version=6),
], ids=repr)
def test_encode_rejects_what_cannot_be_sent(packet) -> None:
    version = 4 if isinstance(packet, Auth) else 5
    with pytest.raises(MQTTError):
        encode(packet, version)


# ---------------------------------------------------------------------------
# Invalid inputs: (id, version, wire, error class, reason code)

M, P = MalformedPacket, ProtocolError
MAL, PRO = ReasonCode.MALFORMED_PACKET, ReasonCode.PROTOCOL_ERROR
CONNECT_V5_HEAD = "0004 4d515454 05 02 0000"  # name, level 5, clean start, keepalive 0

INVALID = [
    # fixed header
    ("type-0", 4, h("00 00"), M, MAL),
    ("type-0-flags", 5, h("0f 00"), M, MAL),
    ("connect-flags", 4, h("11 0c 0004 4d515454 04 02 0000 0000"), M, MAL),
    ("connack-flags", 4, h("28 02 00 00"), M, MAL),
    ("puback-flags", 4, h("42 02 0001"), M, MAL),
    ("pubrec-flags", 5, h("51 02 0001"), M, MAL),
    ("pubrel-flags-0", 4, h("60 02 0001"), M, MAL),
    ("pubrel-flags-3", 5, h("63 02 0001"), M, MAL),
    ("pubcomp-flags", 4, h("72 02 0001"), M, MAL),
    ("subscribe-flags-0", 4, h("80 06 0001 0001 61 00"), M, MAL),
    ("suback-flags", 4, h("92 03 0001 00"), M, MAL),
    ("unsubscribe-flags-0", 4, h("a0 05 0001 0001 61"), M, MAL),
    ("unsuback-flags", 4, h("b2 02 0001"), M, MAL),
    ("pingreq-flags", 4, h("c1 00"), M, MAL),
    ("pingresp-flags", 5, h("d8 00"), M, MAL),
    ("disconnect-flags", 5, h("e2 00"), M, MAL),
    ("auth-flags", 5, h("f1 00"), M, MAL),
    ("publish-qos3", 4, h("36 05 0001 61 0001"), M, MAL),
    ("publish-qos3-v5", 5, h("37 06 0001 61 0001 00"), M, MAL),
    ("publish-dup-qos0", 4, h("38 03 0001 61"), M, MAL),
    ("remaining-length-5-bytes", 4, h("30 ff ff ff ff 01"), M, MAL),
    ("remaining-length-4th-byte-continues", 5, h("30 80 80 80 80"), M, MAL),
    ("auth-in-v311", 4, h("f0 00"), M, MAL),
    ("auth-in-v31", 3, h("f0 02 18 00"), M, MAL),
    # truncated fields and trailing bytes
    ("publish-no-topic-length", 4, h("30 01 00"), M, MAL),
    ("publish-topic-truncated", 4, h("30 03 0005 61"), M, MAL),
    ("publish-qos1-no-packet-id", 4, h("32 04 0001 61 00"), M, MAL),
    ("publish-v5-no-property-length", 5, h("30 03 0001 61"), M, MAL),
    ("publish-v5-property-length-past-end", 5, h("30 05 0001 61 05 01"), M, MAL),
    ("publish-v5-property-value-truncated", 5, h("30 07 0001 61 03 02 0000"), M, MAL),
    ("publish-v5-property-string-truncated", 5, h("30 08 0001 61 04 03 0005 61"), M, MAL),
    ("publish-v5-property-length-varint-truncated", 5, h("30 04 0001 61 80"), M, MAL),
    ("property-four-at-end", 5, h("30 05 0001 61 01 02"), M, MAL),
    ("property-two-at-end", 5, h("30 05 0001 61 01 23"), M, MAL),
    ("property-string-at-end", 5, h("30 05 0001 61 01 03"), M, MAL),
    ("property-binary-at-end", 5, h("30 05 0001 61 01 09"), M, MAL),
    ("property-varint-at-end", 5, h("30 05 0001 61 01 0b"), M, MAL),
    ("property-flag-at-end", 5, h("30 05 0001 61 01 01"), M, MAL),
    ("property-pair-at-end", 5, h("30 05 0001 61 01 26"), M, MAL),
    ("property-pair-half-length", 5, h("30 06 0001 61 02 26 00"), M, MAL),
    ("property-pair-missing-value", 5, h("30 09 0001 61 05 26 0001 6b 00"), M, MAL),
    ("property-pair-value-truncated", 5, h("30 0b 0001 61 07 26 0001 6b 0002 76"), M, MAL),
    ("property-pair-key-past-section", 5, h("30 0a 0001 61 03 26 0001 6b 0001 76"), M, MAL),
    ("puback-truncated", 4, h("40 01 00"), M, MAL),
    ("puback-v311-trailing", 4, h("40 03 0001 00"), M, MAL),
    ("puback-v5-trailing", 5, h("40 06 0001 00 00 ffff"), M, MAL),
    ("pubrel-v5-property-past-end", 5, h("62 04 0001 00 01"), M, MAL),
    ("connack-v311-trailing", 4, h("20 03 00 00 00"), M, MAL),
    ("connack-truncated", 5, h("20 01 00"), M, MAL),
    ("connack-v5-trailing", 5, h("20 04 00 00 00 00"), M, MAL),
    ("connack-reserved-ack-flags", 4, h("20 02 02 00"), M, MAL),
    ("pingreq-trailing", 4, h("c0 01 00"), M, MAL),
    ("pingresp-trailing", 5, h("d0 01 00"), M, MAL),
    ("disconnect-v311-trailing", 4, h("e0 01 00"), M, MAL),
    ("disconnect-v5-trailing", 5, h("e0 03 00 00 00"), M, MAL),
    ("auth-v5-trailing", 5, h("f0 03 18 00 00"), M, MAL),
    ("unsuback-v311-trailing", 4, h("b0 03 0001 00"), M, MAL),
    ("suback-truncated", 4, h("90 01 00"), M, MAL),
    ("subscribe-missing-options", 4, h("82 05 0001 0001 61"), M, MAL),
    ("unsubscribe-filter-truncated", 5, h("a2 05 0001 00 0002"), M, MAL),
    ("connect-truncated-name", 4, h("10 03 0004 4d"), M, MAL),
    ("connect-truncated-flags", 4, h("10 08 0004 4d515454 04 02"), M, MAL),
    ("connect-truncated-client-id", 4, h("10 0b 0004 4d515454 04 02 0000 00"), M, MAL),
    ("connect-trailing", 4, h("10 0d 0004 4d515454 04 02 0000 0000 00"), M, MAL),
    ("connect-missing-will", 4, h("10 0c 0004 4d515454 04 06 0000 0000"), M, MAL),
    ("connect-missing-username", 4, h("10 0c 0004 4d515454 04 82 0000 0000"), M, MAL),
    ("connect-missing-password", 5, h("10 0d 0004 4d515454 05 42 0000 00 0000"), M, MAL),
    # strings
    ("topic-bad-utf8", 4, h("30 05 0002 c328 78"), M, MAL),
    ("topic-u0000", 4, h("30 04 0002 6100"), M, MAL),
    ("topic-surrogate", 4, h("30 05 0003 eda080"), M, MAL),
    ("topic-overlong-utf8", 4, h("30 04 0002 c0af"), M, MAL),
    ("client-id-u0000", 4, h("10 0d 0004 4d515454 04 02 0000 0001 00"), M, MAL),
    ("subscribe-filter-bad-utf8", 4, h("82 06 0001 0001 ff 00"), M, MAL),
    ("unsubscribe-filter-u0000", 5, h("a2 06 0001 00 0001 00"), M, MAL),
    ("user-property-bad-utf8", 5, h("30 0b 0001 61 07 26 0001 ff 0001 61"), M, MAL),
    ("reason-string-surrogate", 5, h("40 0a 0001 80 06 1f 0003 edbfbf"), M, MAL),
    # properties
    ("duplicate-property", 5, h("30 0e 0001 61 0a 02 00000001 02 00000002"), P, PRO),
    ("duplicate-topic-alias", 5, h("30 0a 0001 61 06 23 0001 23 0002"), P, PRO),
    ("duplicate-subscription-identifier-in-subscribe", 5, h("82 0b 0001 04 0b 01 0b 02 0001 61 00"), P, PRO),
    ("duplicate-reason-string", 5, h("40 0c 0001 80 08 1f 0001 61 1f 0001 62"), P, PRO),
    ("property-not-allowed-in-publish", 5, h("30 09 0001 61 05 11 00000001"), M, MAL),
    ("property-not-allowed-in-puback", 5, h("40 07 0001 80 03 23 0001"), M, MAL),
    ("property-not-allowed-in-subscribe", 5, h("82 0a 0001 03 23 0001 0001 61 00"), M, MAL),
    ("will-delay-not-allowed-in-connect", 5, h(f"10 12 {CONNECT_V5_HEAD} 05 18 00000001 0000"), M, MAL),
    ("topic-alias-not-allowed-in-will", 5,
     h("10 16 0004 4d515454 05 06 0000 00 0000 03 23 0001 0001 74 0000"), M, MAL),
    ("unknown-property", 5, h("30 06 0001 61 02 7f 00"), M, MAL),
    ("multi-byte-property-id", 5, h("30 07 0001 61 03 8101 00"), M, MAL),
    ("payload-format-2", 5, h("30 06 0001 61 02 01 02"), P, PRO),
    ("maximum-qos-2", 5, h("20 05 00 00 02 24 02"), P, PRO),
    ("retain-available-2", 5, h("20 05 00 00 02 25 02"), P, PRO),
    ("wildcard-available-2", 5, h("20 05 00 00 02 28 02"), P, PRO),
    ("subscription-id-available-2", 5, h("20 05 00 00 02 29 02"), P, PRO),
    ("shared-available-2", 5, h("20 05 00 00 02 2a 02"), P, PRO),
    ("request-problem-info-2", 5, h(f"10 0f {CONNECT_V5_HEAD} 02 17 02 0000"), P, PRO),
    ("request-response-info-2", 5, h(f"10 0f {CONNECT_V5_HEAD} 02 19 02 0000"), P, PRO),
    ("receive-maximum-0", 5, h(f"10 10 {CONNECT_V5_HEAD} 03 21 0000 0000"), P, PRO),
    ("maximum-packet-size-0", 5, h(f"10 12 {CONNECT_V5_HEAD} 05 27 00000000 0000"), P, PRO),
    ("subscription-identifier-0", 5, h("82 09 0001 02 0b 00 0001 61 00"), M, MAL),  # as mosquitto
    ("subscription-identifier-0-in-publish", 5, h("30 06 0001 61 02 0b 00"), M, MAL),  # as mosquitto
    ("subscription-identifier-5-bytes", 5, h("30 0a 0001 61 06 0b ffffffff7f"), M, MAL),
    # packet identifiers
    ("publish-qos1-packet-id-0", 4, h("32 05 0001 61 0000"), P, PRO),
    ("publish-qos2-packet-id-0", 5, h("34 06 0001 61 0000 00"), P, PRO),
    ("subscribe-packet-id-0", 4, h("82 06 0000 0001 61 00"), M, MAL),  # as mosquitto
    ("unsubscribe-packet-id-0", 5, h("a2 06 0000 00 0001 61"), M, MAL),  # as mosquitto
    # SUBSCRIBE / UNSUBSCRIBE contents
    ("subscribe-empty", 4, h("82 02 0001"), P, PRO),
    ("subscribe-empty-v5", 5, h("82 03 0001 00"), P, PRO),
    ("unsubscribe-empty", 4, h("a2 02 0001"), P, PRO),
    ("unsubscribe-empty-v5", 5, h("a2 03 0001 00"), P, PRO),
    ("subscribe-qos3", 4, h("82 06 0001 0001 61 03"), M, MAL),
    ("subscribe-qos3-v5", 5, h("82 07 0001 00 0001 61 03"), M, MAL),
    ("subscribe-v311-no-local-bit", 4, h("82 06 0001 0001 61 04"), M, MAL),
    ("subscribe-v311-high-bit", 4, h("82 06 0001 0001 61 80"), M, MAL),
    ("subscribe-retain-handling-3", 5, h("82 07 0001 00 0001 61 30"), M, MAL),
    ("subscribe-reserved-bit-6", 5, h("82 07 0001 00 0001 61 40"), M, MAL),
    ("subscribe-reserved-bit-7", 5, h("82 07 0001 00 0001 61 81"), M, MAL),
    # CONNECT flags
    ("connect-reserved-flag", 4, h("10 0c 0004 4d515454 04 03 0000 0000"), M, MAL),
    ("connect-reserved-flag-v5", 5, h("10 0d 0004 4d515454 05 01 0000 00 0000"), M, MAL),
    ("connect-will-qos-without-will", 4, h("10 0c 0004 4d515454 04 0a 0000 0000"), M, MAL),
    ("connect-will-retain-without-will", 5, h("10 0d 0004 4d515454 05 22 0000 00 0000"), M, MAL),
    ("connect-will-qos3", 4, h("10 11 0004 4d515454 04 1e 0000 0000 0001 74 0000"), M, MAL),
    ("connect-v311-password-without-username", 4, h("10 10 0004 4d515454 04 42 0000 0000 0002 7077"), M, MAL),
    ("connect-v31-password-without-username", 3,
     h("10 12 0006 4d5149736470 03 42 0000 0000 0002 7077"), M, MAL),
]

UNSUPPORTED = [
    # (id, wire, level read)
    ("name-MQTX", h("10 0c 0004 4d515458 04 02 0000 0000"), 4),
    ("MQTT-level-3", h("10 0c 0004 4d515454 03 02 0000 0000"), 3),
    ("MQTT-level-6", h("10 0c 0004 4d515454 06 02 0000 0000"), 6),
    ("MQIsdp-level-4", h("10 0e 0006 4d5149736470 04 02 0000 0000"), 4),
    ("lowercase-mqtt", h("10 0c 0004 6d717474 04 02 0000 0000"), 4),
    ("empty-name", h("10 08 0000 05 02 0000 0000"), 5),
]


def _decode_all(wire: bytes, version: int, max_packet_size: int = 268_435_460) -> list:
    return [decode(f, b, version) for f, b in Framer(max_packet_size).feed(wire)]


@pytest.mark.parametrize(("version", "wire", "cls", "code"), [v[1:] for v in INVALID], ids=[v[0] for v in INVALID])
def test_invalid(version: int, wire: bytes, cls: type, code: ReasonCode) -> None:
    with pytest.raises(MQTTError) as err:
        _decode_all(wire, version)
    assert type(err.value) is cls, err.value
    assert err.value.code == code


def test_invalid_ids_are_unique() -> None:
    names = [v[0] for v in INVALID] + [v[0] for v in VECTORS] + [v[0] for v in UNSUPPORTED]
    assert len(names) == len(set(names))


@pytest.mark.parametrize(("wire", "level"), [v[1:] for v in UNSUPPORTED], ids=[v[0] for v in UNSUPPORTED])
@pytest.mark.parametrize("version", [4, 5])
def test_unsupported_protocol(wire: bytes, level: int, version: int) -> None:
    with pytest.raises(UnsupportedProtocolVersion) as err:
        _decode_all(wire, version)
    assert err.value.code == ReasonCode.UNSUPPORTED_PROTOCOL_VERSION
    assert err.value.version == level


@pytest.mark.parametrize(("wire", "limit"), [
    (h("30 41"), 64),  # 2 + 65 bytes > 64, refused from the fixed header alone
    (h("30 80 01"), 130),  # 3 + 128
    (h("30 ff ff ff 7f"), 268_435_459),  # the largest remaining length, one byte over the limit
], ids=["1-byte-length", "2-byte-length", "4-byte-length"])
def test_packet_too_large_before_the_body(wire: bytes, limit: int) -> None:
    with pytest.raises(PacketTooLarge) as err:
        _decode_all(wire, 5, max_packet_size=limit)
    assert err.value.code == ReasonCode.PACKET_TOO_LARGE
