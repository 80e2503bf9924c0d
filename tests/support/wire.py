"""MQTT packets written out byte by byte, independently of the broker's codec.

As mosquitto's test/broker/ does: a fixed header byte, the remaining length
as a varint, then each field as the spec lays it out. Nothing here imports
`mqtt.codec`, so a bug in the codec cannot hide by being on both sides of a
test. tests/unit/test_wire_support.py checks these bytes against the
examples printed in the MQTT 3.1.1 and 5.0 specifications.

`encode(packet, version)` takes the codec's packet classes (plain data
holders here) so that tests written against them keep their shape, and
`decode(data, version)` gives them back; the bytes on both ways are this
module's own.
"""
from __future__ import annotations

import struct

from mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    PingReq,
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

# -- fields -----------------------------------------------------------------


def varint(n: int) -> bytes:
    assert 0 <= n <= 268_435_455, n
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def u16(n: int) -> bytes:
    return struct.pack(">H", n)


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def utf8(s: str) -> bytes:
    b = s.encode("utf-8")
    return u16(len(b)) + b


def binary(b: bytes) -> bytes:
    return u16(len(b)) + bytes(b)


def frame(first: int, body: bytes) -> bytes:
    """Fixed header (type and flags, remaining length) and the rest."""
    return bytes((first,)) + varint(len(body)) + body


# -- properties (MQTT 5.0, 2.2.2.2): identifier -> how its value is written ---
BYTE, TWO, FOUR, VARINT, STRING, BINARY, PAIR = range(7)
PROPERTY_KINDS = {
    0x01: BYTE,  # Payload Format Indicator
    0x02: FOUR,  # Message Expiry Interval
    0x03: STRING,  # Content Type
    0x08: STRING,  # Response Topic
    0x09: BINARY,  # Correlation Data
    0x0B: VARINT,  # Subscription Identifier
    0x11: FOUR,  # Session Expiry Interval
    0x12: STRING,  # Assigned Client Identifier
    0x13: TWO,  # Server Keep Alive
    0x15: STRING,  # Authentication Method
    0x16: BINARY,  # Authentication Data
    0x17: BYTE,  # Request Problem Information
    0x18: FOUR,  # Will Delay Interval
    0x19: BYTE,  # Request Response Information
    0x1A: STRING,  # Response Information
    0x1C: STRING,  # Server Reference
    0x1F: STRING,  # Reason String
    0x21: TWO,  # Receive Maximum
    0x22: TWO,  # Topic Alias Maximum
    0x23: TWO,  # Topic Alias
    0x24: BYTE,  # Maximum QoS
    0x25: BYTE,  # Retain Available
    0x26: PAIR,  # User Property
    0x27: FOUR,  # Maximum Packet Size
    0x28: BYTE,  # Wildcard Subscription Available
    0x29: BYTE,  # Subscription Identifier Available
    0x2A: BYTE,  # Shared Subscription Available
}
LISTS = (0x0B, 0x26)  # may repeat: decoded as a list (as the codec's dicts hold them)


def properties(props: dict | None) -> bytes:
    """A property block: its length (varint), then identifier and value of each."""
    out = bytearray()
    for ident, value in (props or {}).items():
        ident = int(ident)
        kind = PROPERTY_KINDS[ident]
        for v in (value if ident in LISTS and isinstance(value, list) else [value]):
            out.append(ident)
            if kind == BYTE:
                out.append(v)
            elif kind == TWO:
                out += u16(v)
            elif kind == FOUR:
                out += u32(v)
            elif kind == VARINT:
                out += varint(v)
            elif kind == STRING:
                out += utf8(v)
            elif kind == BINARY:
                out += binary(v)
            else:
                out += utf8(v[0]) + utf8(v[1])
    return varint(len(out)) + bytes(out)


# -- packets a client sends ------------------------------------------------------


def connect(client_id: str = "", version: int = 4, clean: bool = True, keepalive: int = 60,
            username: str | None = None, password: bytes | None = None, will: Will | None = None,
            props: dict | None = None) -> bytes:
    flags = (0x02 if clean else 0) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    name = b"\x00\x06MQIsdp" if version == 3 else utf8("MQTT")
    body = name + bytes((version, flags)) + u16(keepalive)
    if version == 5:
        body += properties(props)
    body += utf8(client_id)
    if will is not None:
        if version == 5:
            body += properties(will.properties)
        body += utf8(will.topic) + binary(will.payload)
    if username is not None:
        body += utf8(username)
    if password is not None:
        body += binary(password)
    return frame(0x10, body)


def publish(topic: str, payload: bytes = b"", qos: int = 0, packet_id: int | None = None, retain: bool = False,
            dup: bool = False, version: int = 4, props: dict | None = None) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = utf8(topic)
    if qos:
        body += u16(packet_id)
    if version == 5:
        body += properties(props)
    return frame(first, body + bytes(payload))


def ack(first: int, packet_id: int, reason: int = 0, version: int = 4, props: dict | None = None) -> bytes:
    """PUBACK (0x40), PUBREC (0x50), PUBREL (0x62), PUBCOMP (0x70); v5 leaves out a 0 reason without properties."""
    body = u16(packet_id)
    if version == 5 and (reason or props):
        body += bytes((reason,))
        if props:
            body += properties(props)
    return frame(first, body)


def puback(packet_id: int, reason: int = 0, version: int = 4) -> bytes:
    return ack(0x40, packet_id, reason, version)


def pubrec(packet_id: int, reason: int = 0, version: int = 4) -> bytes:
    return ack(0x50, packet_id, reason, version)


def pubrel(packet_id: int, reason: int = 0, version: int = 4) -> bytes:
    return ack(0x62, packet_id, reason, version)


def pubcomp(packet_id: int, reason: int = 0, version: int = 4) -> bytes:
    return ack(0x70, packet_id, reason, version)


def subscribe(packet_id: int, filters: list[tuple[str, int]], version: int = 4, props: dict | None = None) -> bytes:
    """filters: (topic filter, options byte: QoS | no local 4 | retain as published 8 | retain handling << 4)."""
    body = u16(packet_id)
    if version == 5:
        body += properties(props)
    for flt, options in filters:
        body += utf8(flt) + bytes((options,))
    return frame(0x82, body)


def unsubscribe(packet_id: int, filters: list[str], version: int = 4, props: dict | None = None) -> bytes:
    body = u16(packet_id)
    if version == 5:
        body += properties(props)
    for flt in filters:
        body += utf8(flt)
    return frame(0xA2, body)


PINGREQ = b"\xc0\x00"
PINGRESP = b"\xd0\x00"
DISCONNECT = b"\xe0\x00"


def disconnect(reason: int = 0, version: int = 4, props: dict | None = None) -> bytes:
    if version != 5 or (not reason and not props):
        return DISCONNECT
    body = bytes((reason,))
    if props:
        body += properties(props)
    return frame(0xE0, body)


def auth(reason: int = 0, props: dict | None = None) -> bytes:
    if not reason and not props:
        return b"\xf0\x00"
    return frame(0xF0, bytes((reason,)) + properties(props))


# -- the codec's packet objects, written out here --------------------------------


def encode(p, version: int = 4) -> bytes:
    """Bytes of one of the codec's packet objects, written by this module."""
    if isinstance(p, Connect):
        return connect(p.client_id, p.version, p.clean_start, p.keepalive, p.username, p.password, p.will,
                       p.properties)
    if isinstance(p, Publish):
        return publish(p.topic, p.payload, p.qos, p.packet_id, p.retain, p.dup, version, p.properties)
    if isinstance(p, (PubAck, PubRec, PubRel, PubComp)):
        first = {PubAck: 0x40, PubRec: 0x50, PubRel: 0x62, PubComp: 0x70}[type(p)]
        return ack(first, p.packet_id, p.reason_code, version, p.properties)
    if isinstance(p, Subscribe):
        subs = []
        for s in p.subscriptions:
            opts = s.qos
            if version == 5:
                opts |= (4 if s.no_local else 0) | (8 if s.retain_as_published else 0) | (s.retain_handling << 4)
            subs.append((s.topic_filter, opts))
        return subscribe(p.packet_id, subs, version, p.properties)
    if isinstance(p, Unsubscribe):
        return unsubscribe(p.packet_id, p.topic_filters, version, p.properties)
    if isinstance(p, PingReq):
        return PINGREQ
    if isinstance(p, Disconnect):
        return disconnect(p.reason_code, version, p.properties)
    if isinstance(p, Auth):
        return auth(p.reason_code, p.properties)
    if isinstance(p, Connack):  # a test may play a broker
        body = bytes((1 if p.session_present else 0, p.reason_code))
        return frame(0x20, body + (properties(p.properties) if version == 5 else b""))
    raise TypeError(f"cannot write {type(p).__name__}")


# -- reading what the broker sends -------------------------------------------------


class Malformed(Exception):
    """Bytes from the broker that are no MQTT packet."""


class Reader:
    """Splits a byte stream into (first byte, body) frames."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out = []
        buf = self.buf
        while True:
            if len(buf) < 2:
                return out
            length, mult, i = 0, 1, 1
            while True:
                if i >= len(buf):
                    return out
                b = buf[i]
                length += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
                if i > 4:
                    raise Malformed("remaining length longer than 4 bytes")
            if len(buf) < i + length:
                return out
            out.append((buf[0], bytes(buf[i:i + length])))
            del buf[:i + length]


def frames(data: bytes) -> list[tuple[int, bytes]]:
    """(first byte, body) of each whole packet in data (nothing may be left over)."""
    r = Reader()
    out = r.feed(data)
    if r.buf:
        raise Malformed(f"{len(r.buf)} bytes left over")
    return out


class _Cursor:
    __slots__ = ("b", "i")

    def __init__(self, b: bytes) -> None:
        self.b = b
        self.i = 0

    def left(self) -> int:
        return len(self.b) - self.i

    def take(self, n: int) -> bytes:
        if self.i + n > len(self.b):
            raise Malformed("packet ends inside a field")
        out = self.b[self.i:self.i + n]
        self.i += n
        return out

    def byte(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack(">H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def varint(self) -> int:
        n, mult = 0, 1
        for _ in range(4):
            b = self.byte()
            n += (b & 0x7F) * mult
            mult *= 128
            if not b & 0x80:
                return n
        raise Malformed("varint longer than 4 bytes")

    def utf8(self) -> str:
        return self.take(self.u16()).decode("utf-8")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def properties(self) -> dict:
        end = self.varint() + self.i
        props: dict = {}
        while self.i < end:
            ident = self.byte()
            kind = PROPERTY_KINDS.get(ident)
            if kind is None:
                raise Malformed(f"unknown property 0x{ident:02X}")
            if kind == BYTE:
                v = self.byte()
            elif kind == TWO:
                v = self.u16()
            elif kind == FOUR:
                v = self.u32()
            elif kind == VARINT:
                v = self.varint()
            elif kind == STRING:
                v = self.utf8()
            elif kind == BINARY:
                v = self.binary()
            else:
                v = (self.utf8(), self.utf8())
            if ident in LISTS:
                props.setdefault(ident, []).append(v)
            elif ident in props:
                raise Malformed(f"property 0x{ident:02X} twice")
            else:
                props[ident] = v
        if self.i != end:
            raise Malformed("property length does not end on a property")
        return props


def decode(first: int, body: bytes, version: int = 4):
    """One packet the broker sent, as the codec's packet object (read by this module)."""
    kind, flags = first >> 4, first & 0x0F
    c = _Cursor(body)
    v5 = version == 5
    if kind == 2:
        present, code = c.byte(), c.byte()
        if present & 0xFE:
            raise Malformed("CONNACK flags")
        p = Connack(bool(present), code, c.properties() if v5 and c.left() else {})
    elif kind == 3:
        qos = (flags >> 1) & 3
        if qos == 3:
            raise Malformed("PUBLISH QoS 3")
        topic = c.utf8()
        pid = c.u16() if qos else None
        props = c.properties() if v5 else {}
        p = Publish(topic, c.take(c.left()), qos, bool(flags & 1), bool(flags & 8), pid, props)
    elif kind in (4, 5, 6, 7):
        if flags != (2 if kind == 6 else 0):
            raise Malformed(f"fixed header flags {flags:#x} of packet type {kind}")
        pid = c.u16()
        code = c.byte() if v5 and c.left() else 0
        props = c.properties() if v5 and c.left() else {}
        p = {4: PubAck, 5: PubRec, 6: PubRel, 7: PubComp}[kind](pid, code, props)
    elif kind == 9:
        pid = c.u16()
        props = c.properties() if v5 else {}
        p = SubAck(pid, list(c.take(c.left())), props)
    elif kind == 11:
        pid = c.u16()
        props = c.properties() if v5 else {}
        p = UnsubAck(pid, list(c.take(c.left())), props)
    elif kind == 13:
        p = PingResp()
    elif kind == 14:
        code = c.byte() if c.left() else 0
        p = Disconnect(code, c.properties() if v5 and c.left() else {})
    elif kind == 15:
        code = c.byte() if c.left() else 0
        p = Auth(code, c.properties() if c.left() else {})
    elif kind == 12:
        p = PingReq()
    elif kind == 8:  # a test may play a broker: SUBSCRIBE, as a client sends it
        pid = c.u16()
        props = c.properties() if v5 else {}
        subs = []
        while c.left():
            flt = c.utf8()
            o = c.byte()
            subs.append(Subscription(flt, o & 3, bool(o & 4), bool(o & 8), (o >> 4) & 3))
        p = Subscribe(pid, subs, props)
    else:
        raise Malformed(f"packet type {kind} from the broker")
    if c.left():
        raise Malformed(f"{c.left()} bytes after the end of packet type {kind}")
    return p


def decode_all(data: bytes, version: int = 4) -> list:
    return [decode(f, b, version) for f, b in frames(data)]
