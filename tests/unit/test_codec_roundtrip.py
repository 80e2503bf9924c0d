"""Random valid packets of every type, for MQTT 3.1, 3.1.1 and 5.0:
encode -> Framer -> decode gives the packet back (less what 3.1.1 cannot carry).

The strategies here are also used by test_codec_fuzz.py.
"""
from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt import (
    Auth, Connack, Connect, Disconnect, Framer, PacketType, PingReq, PingResp, Prop, PubAck, PubComp, Publish,
    PubRec, PubRel, SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe, Will, decode, encode,
)

SETTINGS = settings(max_examples=80, deadline=None)

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
blobs = st.binary(max_size=24)
u8 = st.integers(0, 255)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
packet_ids = st.integers(1, 0xFFFF)
flags01 = st.integers(0, 1)
sub_ids = st.integers(1, 268_435_455)
user_props = st.lists(st.tuples(texts, texts), min_size=1, max_size=3)

# Which properties each packet may carry (MQTT 5.0, section 2.2.2.2), with valid values.
PROPERTY_VALUES = {
    Prop.PAYLOAD_FORMAT_INDICATOR: flags01,
    Prop.MESSAGE_EXPIRY_INTERVAL: u32,
    Prop.CONTENT_TYPE: texts,
    Prop.RESPONSE_TOPIC: texts,
    Prop.CORRELATION_DATA: blobs,
    Prop.SUBSCRIPTION_IDENTIFIER: st.lists(sub_ids, min_size=1, max_size=3),
    Prop.SESSION_EXPIRY_INTERVAL: u32,
    Prop.ASSIGNED_CLIENT_IDENTIFIER: texts,
    Prop.SERVER_KEEP_ALIVE: u16,
    Prop.AUTHENTICATION_METHOD: texts,
    Prop.AUTHENTICATION_DATA: blobs,
    Prop.REQUEST_PROBLEM_INFORMATION: flags01,
    Prop.WILL_DELAY_INTERVAL: u32,
    Prop.REQUEST_RESPONSE_INFORMATION: flags01,
    Prop.RESPONSE_INFORMATION: texts,
    Prop.SERVER_REFERENCE: texts,
    Prop.REASON_STRING: texts,
    Prop.RECEIVE_MAXIMUM: packet_ids,
    Prop.TOPIC_ALIAS_MAXIMUM: u16,
    Prop.TOPIC_ALIAS: u16,
    Prop.MAXIMUM_QOS: flags01,
    Prop.RETAIN_AVAILABLE: flags01,
    Prop.USER_PROPERTY: user_props,
    Prop.MAXIMUM_PACKET_SIZE: st.integers(1, 0xFFFF_FFFF),
    Prop.WILDCARD_SUBSCRIPTION_AVAILABLE: flags01,
    Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE: flags01,
    Prop.SHARED_SUBSCRIPTION_AVAILABLE: flags01,
}
MESSAGE = [Prop.PAYLOAD_FORMAT_INDICATOR, Prop.MESSAGE_EXPIRY_INTERVAL, Prop.CONTENT_TYPE, Prop.RESPONSE_TOPIC,
           Prop.CORRELATION_DATA, Prop.USER_PROPERTY]
ACK = [Prop.REASON_STRING, Prop.USER_PROPERTY]
ALLOWED = {
    "will": [*MESSAGE, Prop.WILL_DELAY_INTERVAL],
    PacketType.CONNECT: [Prop.SESSION_EXPIRY_INTERVAL, Prop.AUTHENTICATION_METHOD, Prop.AUTHENTICATION_DATA,
                         Prop.REQUEST_PROBLEM_INFORMATION, Prop.REQUEST_RESPONSE_INFORMATION,
                         Prop.RECEIVE_MAXIMUM, Prop.TOPIC_ALIAS_MAXIMUM, Prop.USER_PROPERTY,
                         Prop.MAXIMUM_PACKET_SIZE],
    PacketType.CONNACK: [Prop.SESSION_EXPIRY_INTERVAL, Prop.ASSIGNED_CLIENT_IDENTIFIER, Prop.SERVER_KEEP_ALIVE,
                         Prop.AUTHENTICATION_METHOD, Prop.AUTHENTICATION_DATA, Prop.RESPONSE_INFORMATION,
                         Prop.SERVER_REFERENCE, Prop.REASON_STRING, Prop.RECEIVE_MAXIMUM,
                         Prop.TOPIC_ALIAS_MAXIMUM, Prop.MAXIMUM_QOS, Prop.RETAIN_AVAILABLE, Prop.USER_PROPERTY,
                         Prop.MAXIMUM_PACKET_SIZE, Prop.WILDCARD_SUBSCRIPTION_AVAILABLE,
                         Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE, Prop.SHARED_SUBSCRIPTION_AVAILABLE],
    PacketType.PUBLISH: [*MESSAGE, Prop.TOPIC_ALIAS, Prop.SUBSCRIPTION_IDENTIFIER],
    PacketType.PUBACK: ACK,
    PacketType.PUBREC: ACK,
    PacketType.PUBREL: ACK,
    PacketType.PUBCOMP: ACK,
    PacketType.SUBSCRIBE: [Prop.SUBSCRIPTION_IDENTIFIER, Prop.USER_PROPERTY],
    PacketType.SUBACK: ACK,
    PacketType.UNSUBSCRIBE: [Prop.USER_PROPERTY],
    PacketType.UNSUBACK: ACK,
    PacketType.DISCONNECT: [Prop.SESSION_EXPIRY_INTERVAL, Prop.SERVER_REFERENCE, Prop.REASON_STRING,
                            Prop.USER_PROPERTY],
    PacketType.AUTH: [Prop.AUTHENTICATION_METHOD, Prop.AUTHENTICATION_DATA, Prop.REASON_STRING,
                      Prop.USER_PROPERTY],
}


def properties(where) -> st.SearchStrategy[dict]:
    optional = {p: PROPERTY_VALUES[p] for p in ALLOWED[where]}
    if where == PacketType.SUBSCRIBE:  # at most one subscription identifier in SUBSCRIBE
        optional[Prop.SUBSCRIPTION_IDENTIFIER] = st.lists(sub_ids, min_size=1, max_size=1)
    return st.fixed_dictionaries({}, optional=optional)


wills = st.builds(Will, texts, blobs, st.integers(0, 2), st.booleans(), properties("will"))


@st.composite
def connects(draw, version: int) -> Connect:
    level = draw(st.sampled_from([3, 4])) if version < 5 else 5
    username = draw(st.none() | texts)
    password = draw(st.none() | blobs)
    if level < 5 and username is None:
        password = None  # 3.1.1 has no password without a user name
    return Connect(
        draw(texts), draw(st.booleans()), draw(u16), level, username, password,
        draw(st.none() | wills), draw(properties(PacketType.CONNECT)),
    )


@st.composite
def publishes(draw) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(
        draw(texts), draw(st.binary(max_size=300)), qos, draw(st.booleans()), draw(st.booleans()) if qos else False,
        draw(packet_ids) if qos else None, draw(properties(PacketType.PUBLISH)),
    )


subscriptions = st.builds(Subscription, texts, st.integers(0, 2), st.booleans(), st.booleans(), st.integers(0, 2))


def ack(cls) -> st.SearchStrategy:
    return st.builds(cls, packet_ids, u8, properties(cls.TYPE))


def packets(ptype: PacketType, version: int) -> st.SearchStrategy:
    """Random valid packets of one type; v5 fields filled in even for v3/v4."""
    return {
        PacketType.CONNECT: lambda: connects(version),
        PacketType.CONNACK: lambda: st.builds(Connack, st.booleans(), u8, properties(PacketType.CONNACK)),
        PacketType.PUBLISH: publishes,
        PacketType.PUBACK: lambda: ack(PubAck),
        PacketType.PUBREC: lambda: ack(PubRec),
        PacketType.PUBREL: lambda: ack(PubRel),
        PacketType.PUBCOMP: lambda: ack(PubComp),
        PacketType.SUBSCRIBE: lambda: st.builds(Subscribe, packet_ids, st.lists(subscriptions, min_size=1, max_size=4),
                                                properties(PacketType.SUBSCRIBE)),
        PacketType.SUBACK: lambda: st.builds(SubAck, packet_ids, st.lists(u8, max_size=5), properties(PacketType.SUBACK)),
        PacketType.UNSUBSCRIBE: lambda: st.builds(Unsubscribe, packet_ids, st.lists(texts, min_size=1, max_size=4),
                                                  properties(PacketType.UNSUBSCRIBE)),
        PacketType.UNSUBACK: lambda: st.builds(UnsubAck, packet_ids, st.lists(u8, max_size=5),
                                               properties(PacketType.UNSUBACK)),
        PacketType.PINGREQ: lambda: st.just(PingReq()),
        PacketType.PINGRESP: lambda: st.just(PingResp()),
        PacketType.DISCONNECT: lambda: st.builds(Disconnect, u8, properties(PacketType.DISCONNECT)),
        PacketType.AUTH: lambda: st.builds(Auth, u8, properties(PacketType.AUTH)),
    }[ptype]()


def types_for(version: int) -> list[PacketType]:
    return [t for t in PacketType if version == 5 or t != PacketType.AUTH]


def any_packet(version: int) -> st.SearchStrategy:
    return st.one_of([packets(t, version) for t in types_for(version)])


def normalise(packet, version: int):
    """What a packet encoded at `version` decodes back to."""
    if isinstance(packet, Connect):
        version = packet.version
    if version == 5:
        return packet
    replace = dataclasses.replace
    if isinstance(packet, Connect):
        will = packet.will and replace(packet.will, properties={})
        return replace(packet, will=will, properties={})
    if isinstance(packet, (PubAck, PubRec, PubRel, PubComp, Disconnect)):
        return replace(packet, reason_code=0, properties={})
    if isinstance(packet, UnsubAck):
        return replace(packet, reason_codes=[], properties={})
    if isinstance(packet, Subscribe):
        subs = [Subscription(s.topic_filter, s.qos) for s in packet.subscriptions]
        return replace(packet, subscriptions=subs, properties={})
    if isinstance(packet, (PingReq, PingResp)):
        return packet
    return replace(packet, properties={})


def decode_stream(data: bytes, version: int, cuts: list[int]) -> list:
    framer = Framer()
    out = []
    start = 0
    for cut in [*sorted(cuts), len(data)]:
        out += [decode(first, body, version) for first, body in framer.feed(data[start:cut])]
        start = cut
    assert framer.pending == 0
    return out


@pytest.mark.parametrize("ptype", list(PacketType), ids=lambda t: t.name)
@SETTINGS
@given(data=st.data())
def test_roundtrip(ptype: PacketType, data: st.DataObject) -> None:
    version = data.draw(st.sampled_from([3, 4, 5] if ptype != PacketType.AUTH else [5]), label="version")
    packet = data.draw(packets(ptype, version), label="packet")
    wire = encode(packet, version)
    cut = data.draw(st.integers(0, len(wire)), label="cut")
    [decoded] = decode_stream(wire, version, [cut])
    assert decoded == normalise(packet, version)
    assert encode(decoded, version) == wire


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_stream_of_packets_split_anywhere(data: st.DataObject) -> None:
    version = data.draw(st.sampled_from([4, 5]), label="version")
    sent = data.draw(st.lists(any_packet(version), min_size=1, max_size=8), label="packets")
    wire = b"".join(encode(p, version) for p in sent)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=6), label="cuts")
    assert decode_stream(wire, version, cuts) == [normalise(p, version) for p in sent]
