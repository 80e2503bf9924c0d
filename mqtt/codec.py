"""MQTT 3.1/3.1.1/5.0 framing, decoding and encoding. No I/O, no asyncio.

`Framer.feed` cuts a byte stream into `(first_byte, body)` frames, `decode`
turns one frame into a packet object, `encode` does the reverse, and
`encode_publish_split` builds a PUBLISH once so that each receiver only adds
its own packet identifier. Every failure is an `MQTTError`.
"""
from __future__ import annotations

import struct
from collections.abc import Iterator

from .constants import PacketType, Prop, ReasonCode
from .errors import MalformedPacket, MQTTError, PacketTooLarge, ProtocolError, UnsupportedProtocolVersion
from .packets import (
    Auth, Connack, Connect, Disconnect, PingReq, PingResp, PubAck, PubComp, Publish, PubRec, PubRel,
    SubAck, Subscribe, Subscription, UnsubAck, Unsubscribe, Will,
)

__all__ = [
    "Framer", "decode", "encode", "encode_publish_split", "encode_varint",
    "MAX_REMAINING_LENGTH", "MAX_PACKET_SIZE", "PINGREQ_BYTES", "PINGRESP_BYTES", "DISCONNECT_V4_BYTES",
]

MAX_REMAINING_LENGTH = 268_435_455
MAX_PACKET_SIZE = 268_435_460  # 1 type byte + 4 length bytes + MAX_REMAINING_LENGTH

_H = struct.Struct("!H")
_I = struct.Struct("!I")
_BB = struct.Struct("!BB")
_BH = struct.Struct("!BH")
_BI = struct.Struct("!BI")
_BBH = struct.Struct("!BBH")
_BBBH = struct.Struct("!BBBH")
_HB = struct.Struct("!HB")
_H_pack = _H.pack
_I_unpack_from = _I.unpack_from

# ---------------------------------------------------------------------------
# Variable byte integers

_VARINT_1 = [bytes((i,)) for i in range(128)]


def encode_varint(n: int) -> bytes:
    """MQTT variable byte integer (1-4 bytes) for 0 <= n <= 268,435,455."""
    if 0 <= n < 128:
        return _VARINT_1[n]
    if n < 0 or n > MAX_REMAINING_LENGTH:
        raise MalformedPacket(f"variable byte integer out of range: {n}")
    out = bytearray()
    while n > 127:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _read_varint(b: bytes, pos: int, end: int) -> tuple[int, int]:
    """Decode a variable byte integer at b[pos]; returns (value, position after it)."""
    value = 0
    shift = 0
    while True:
        if pos >= end:
            raise MalformedPacket("truncated variable byte integer")
        byte = b[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
        if shift == 28:
            raise MalformedPacket("variable byte integer longer than 4 bytes")


# ---------------------------------------------------------------------------
# Framing


class Framer:
    """Cuts a byte stream into `(first_byte, body)` frames.

    One `bytearray` holds the bytes of an incomplete frame. When it holds
    something, `feed` appends to it and the iterator walks an offset over the
    complete frames, dropping them all with a single `del` when it stops
    (exhausted, closed early, or raising). When it is empty and `data` is
    `bytes` (the usual case: whole packets per read), the iterator slices
    `data` itself and only the incomplete rest is copied into the buffer.
    The caller exhausts (or drops) each iterator before feeding again.
    """

    __slots__ = ("max_packet_size", "_buf")

    def __init__(self, max_packet_size: int = MAX_PACKET_SIZE) -> None:
        self.max_packet_size = max_packet_size
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Number of bytes buffered (an incomplete frame)."""
        return len(self._buf)

    def feed(self, data: bytes) -> Iterator[tuple[int, bytes]]:
        buf = self._buf
        if buf or data.__class__ is not bytes:
            buf += data
            return self._frames(buf, True)
        return self._frames(data, False)

    def _frames(self, buf: bytearray | bytes, buffered: bool) -> Iterator[tuple[int, bytes]]:
        offset = 0
        try:
            size = len(buf)
            while size - offset >= 2:
                byte = buf[offset + 1]
                if byte < 0x80:
                    length = byte
                    start = offset + 2
                else:
                    length = byte & 0x7F
                    start = offset + 2
                    shift = 7
                    while True:
                        if start >= size:
                            return  # the length itself is incomplete
                        byte = buf[start]
                        start += 1
                        length |= (byte & 0x7F) << shift
                        if byte < 0x80:
                            break
                        if shift == 21:
                            raise MalformedPacket("remaining length longer than 4 bytes")
                        shift += 7
                stop = start + length
                if stop - offset > self.max_packet_size:
                    raise PacketTooLarge(f"packet of {stop - offset} bytes exceeds {self.max_packet_size}")
                if stop > size:
                    return
                first = buf[offset]
                body = bytes(buf[start:stop]) if buffered else buf[start:stop]
                offset = stop
                yield first, body
        finally:
            if buffered:
                if offset:
                    del buf[:offset]
            elif offset < len(buf):
                self._buf += buf[offset:] if offset else buf


# ---------------------------------------------------------------------------
# Properties: one table drives decoding, encoding and the per-packet checks.

# Value kinds. *_NZ: zero is a protocol error. _K_FLAG: a byte that must be 0 or 1.
# _K_PAIR (user property) and _K_VARINT (subscription identifier) decode to lists.
_K_PAIR, _K_FOUR, _K_TWO, _K_UTF8, _K_VARINT, _K_FLAG, _K_BIN, _K_FOUR_NZ, _K_TWO_NZ = range(9)

_WILL = 1  # bit 0: packet type 0 is reserved, so it stands for "will properties"
_CONNECT = 1 << PacketType.CONNECT
_CONNACK = 1 << PacketType.CONNACK
_PUBLISH = 1 << PacketType.PUBLISH
_PUBACK = 1 << PacketType.PUBACK
_PUBREC = 1 << PacketType.PUBREC
_PUBREL = 1 << PacketType.PUBREL
_PUBCOMP = 1 << PacketType.PUBCOMP
_SUBSCRIBE = 1 << PacketType.SUBSCRIBE
_SUBACK = 1 << PacketType.SUBACK
_UNSUBSCRIBE = 1 << PacketType.UNSUBSCRIBE
_UNSUBACK = 1 << PacketType.UNSUBACK
_DISCONNECT = 1 << PacketType.DISCONNECT
_AUTH = 1 << PacketType.AUTH
_ACKS = _PUBACK | _PUBREC | _PUBREL | _PUBCOMP
_ALL = (
    _WILL | _CONNECT | _CONNACK | _PUBLISH | _ACKS | _SUBSCRIBE | _SUBACK | _UNSUBSCRIBE
    | _UNSUBACK | _DISCONNECT | _AUTH
)
_MESSAGE = _PUBLISH | _WILL

# id -> (Prop, kind, packets it is allowed in, packets where it may appear more than once)
_PROPS: dict[int, tuple[Prop, int, int, int]] = {p: (p, kind, allowed, repeatable) for p, kind, allowed, repeatable in [
    (Prop.PAYLOAD_FORMAT_INDICATOR, _K_FLAG, _MESSAGE, 0),
    (Prop.MESSAGE_EXPIRY_INTERVAL, _K_FOUR, _MESSAGE, 0),
    (Prop.CONTENT_TYPE, _K_UTF8, _MESSAGE, 0),
    (Prop.RESPONSE_TOPIC, _K_UTF8, _MESSAGE, 0),
    (Prop.CORRELATION_DATA, _K_BIN, _MESSAGE, 0),
    (Prop.SUBSCRIPTION_IDENTIFIER, _K_VARINT, _PUBLISH | _SUBSCRIBE, _PUBLISH),
    (Prop.SESSION_EXPIRY_INTERVAL, _K_FOUR, _CONNECT | _CONNACK | _DISCONNECT, 0),
    (Prop.ASSIGNED_CLIENT_IDENTIFIER, _K_UTF8, _CONNACK, 0),
    (Prop.SERVER_KEEP_ALIVE, _K_TWO, _CONNACK, 0),
    (Prop.AUTHENTICATION_METHOD, _K_UTF8, _CONNECT | _CONNACK | _AUTH, 0),
    (Prop.AUTHENTICATION_DATA, _K_BIN, _CONNECT | _CONNACK | _AUTH, 0),
    (Prop.REQUEST_PROBLEM_INFORMATION, _K_FLAG, _CONNECT, 0),
    (Prop.WILL_DELAY_INTERVAL, _K_FOUR, _WILL, 0),
    (Prop.REQUEST_RESPONSE_INFORMATION, _K_FLAG, _CONNECT, 0),
    (Prop.RESPONSE_INFORMATION, _K_UTF8, _CONNACK, 0),
    (Prop.SERVER_REFERENCE, _K_UTF8, _CONNACK | _DISCONNECT, 0),
    (Prop.REASON_STRING, _K_UTF8, _CONNACK | _ACKS | _SUBACK | _UNSUBACK | _DISCONNECT | _AUTH, 0),
    (Prop.RECEIVE_MAXIMUM, _K_TWO_NZ, _CONNECT | _CONNACK, 0),
    (Prop.TOPIC_ALIAS_MAXIMUM, _K_TWO, _CONNECT | _CONNACK, 0),
    (Prop.TOPIC_ALIAS, _K_TWO, _PUBLISH, 0),
    (Prop.MAXIMUM_QOS, _K_FLAG, _CONNACK, 0),
    (Prop.RETAIN_AVAILABLE, _K_FLAG, _CONNACK, 0),
    (Prop.USER_PROPERTY, _K_PAIR, _ALL, _ALL),
    (Prop.MAXIMUM_PACKET_SIZE, _K_FOUR_NZ, _CONNECT | _CONNACK, 0),
    (Prop.WILDCARD_SUBSCRIPTION_AVAILABLE, _K_FLAG, _CONNACK, 0),
    (Prop.SUBSCRIPTION_IDENTIFIER_AVAILABLE, _K_FLAG, _CONNACK, 0),
    (Prop.SHARED_SUBSCRIPTION_AVAILABLE, _K_FLAG, _CONNACK, 0),
]}
_PROPS_get = _PROPS.get


def _where(bit: int) -> str:
    return "will properties" if bit == _WILL else PacketType(bit.bit_length() - 1).name


def _str(b: bytes, pos: int, end: int) -> tuple[str, int]:
    """A UTF-8 string field at b[pos] that must end by `end`."""
    start = pos + 2
    if start > end:
        raise MalformedPacket("truncated string length")
    stop = start + ((b[pos] << 8) | b[pos + 1])
    if stop > end:
        raise MalformedPacket("truncated string")
    try:
        s = b[start:stop].decode()
    except UnicodeDecodeError:
        raise MalformedPacket("string is not valid UTF-8") from None
    if "\x00" in s:
        raise MalformedPacket("string contains U+0000")
    return s, stop


def _bin(b: bytes, pos: int, end: int) -> tuple[bytes, int]:
    """A binary data field at b[pos] that must end by `end`."""
    start = pos + 2
    if start > end:
        raise MalformedPacket("truncated binary length")
    stop = start + ((b[pos] << 8) | b[pos + 1])
    if stop > end:
        raise MalformedPacket("truncated binary data")
    return b[start:stop], stop


def _decode_props(b: bytes, pos: int, end: int, bit: int) -> tuple[dict, int]:
    """The property section at b[pos] (length first) of a packet that ends at `end`.

    `bit` is 1 << packet type (or _WILL). Kinds are tested most common first.
    """
    if pos >= end:
        raise MalformedPacket("missing property length")
    length = b[pos]
    if length < 0x80:
        pos += 1
    else:
        length, pos = _read_varint(b, pos, end)
    stop = pos + length
    if stop > end:
        raise MalformedPacket("property length runs past the packet")
    props: dict = {}
    while pos < stop:
        spec = _PROPS_get(b[pos])
        if spec is None or not spec[2] & bit:
            raise _bad_property(b[pos], bit)
        pos += 1
        prop, kind, _, repeatable = spec
        if kind == _K_PAIR:  # two strings, inlined
            k = pos + 2
            if k > stop:
                raise MalformedPacket("truncated USER_PROPERTY")
            v = k + ((b[pos] << 8) | b[pos + 1])
            pos = v + 2 + ((b[v] << 8) | b[v + 1]) if v + 2 <= stop else stop + 1
            if pos > stop:
                raise MalformedPacket("truncated USER_PROPERTY")
            try:
                value = (b[k:v].decode(), b[v + 2:pos].decode())
            except UnicodeDecodeError:
                raise MalformedPacket("USER_PROPERTY is not valid UTF-8") from None
            if "\x00" in value[0] or "\x00" in value[1]:
                raise MalformedPacket("USER_PROPERTY contains U+0000")
            values = props.get(prop)
            if values is None:
                props[prop] = [value]
            else:
                values.append(value)  # repeatable in every packet
            continue
        if kind == _K_FOUR or kind == _K_FOUR_NZ:
            if pos + 4 > stop:
                raise MalformedPacket(f"truncated {prop.name}")
            value = _I_unpack_from(b, pos)[0]
            pos += 4
            if not value and kind == _K_FOUR_NZ:
                raise ProtocolError(f"{prop.name} must not be 0")
        elif kind == _K_TWO or kind == _K_TWO_NZ:
            if pos + 2 > stop:
                raise MalformedPacket(f"truncated {prop.name}")
            value = (b[pos] << 8) | b[pos + 1]
            pos += 2
            if not value and kind == _K_TWO_NZ:
                raise ProtocolError(f"{prop.name} must not be 0")
        elif kind == _K_UTF8:
            value, pos = _str(b, pos, stop)
        elif kind == _K_VARINT:
            value, pos = _read_varint(b, pos, stop)
            if not value:  # mosquitto answers 0x81 here too
                raise MalformedPacket(f"{prop.name} must not be 0")
            values = props.get(prop)
            if values is None:
                props[prop] = [value]
            elif repeatable & bit:
                values.append(value)
            else:
                raise ProtocolError(f"{prop.name} included twice")
            continue
        elif kind == _K_FLAG:
            if pos >= stop:
                raise MalformedPacket(f"truncated {prop.name}")
            value = b[pos]
            pos += 1
            if value > 1:
                raise ProtocolError(f"{prop.name} must be 0 or 1, got {value}")
        else:  # _K_BIN
            value, pos = _bin(b, pos, stop)
        if prop in props:
            raise ProtocolError(f"{prop.name} included twice")
        props[prop] = value
    return props, stop


def _bad_property(pid: int, bit: int) -> MalformedPacket:
    spec = _PROPS_get(pid)
    if spec is None:
        return MalformedPacket(f"unknown property id {pid:#04x}")
    return MalformedPacket(f"{spec[0].name} not allowed in {_where(bit)}")


def _encode_props(props: dict | None, bit: int) -> bytes:
    """The property section (length first) in dict order; lists become one property each."""
    if not props:
        return b"\x00"
    out = bytearray()
    for key, value in props.items():
        spec = _PROPS_get(key)
        if spec is None or not spec[2] & bit:
            raise MalformedPacket(f"property {key!r} cannot be sent in {_where(bit)}")
        kind = spec[1]
        if kind == _K_UTF8:
            data = value.encode()
            out += _BH.pack(key, len(data))
            out += data
        elif kind == _K_PAIR:
            for k, v in value:
                data = k.encode()
                out += _BH.pack(key, len(data))
                out += data
                data = v.encode()
                out += _H_pack(len(data))
                out += data
        elif kind == _K_FOUR or kind == _K_FOUR_NZ:
            out += _BI.pack(key, value)
        elif kind == _K_TWO or kind == _K_TWO_NZ:
            out += _BH.pack(key, value)
        elif kind == _K_FLAG:
            out += _BB.pack(key, value)
        elif kind == _K_BIN:
            out += _BH.pack(key, len(value))
            out += value
        else:  # _K_VARINT, a list (a bare int is accepted too)
            for v in (value,) if isinstance(value, int) else value:
                out.append(key)
                out += encode_varint(v)
    return encode_varint(len(out)) + out


# ---------------------------------------------------------------------------
# Decoding

_FLAGS = (0, 0, 0, 0, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)


def decode(first_byte: int, body: bytes, version: int):
    """Decode one frame from `Framer.feed` into a packet object.

    `version` is the connection's protocol level (3 and 4 alike, or 5); a
    CONNECT carries its own.
    """
    if body.__class__ is not bytes:
        body = bytes(body)
    ptype = first_byte >> 4
    if ptype == 3:  # PUBLISH: the hot path, inline
        qos = (first_byte >> 1) & 3
        if qos == 3:
            raise MalformedPacket("PUBLISH with QoS 3")
        n = len(body)
        if n < 2:
            raise MalformedPacket("truncated PUBLISH topic")
        pos = 2 + ((body[0] << 8) | body[1])
        if pos > n:
            raise MalformedPacket("truncated PUBLISH topic")
        try:
            topic = body[2:pos].decode()
        except UnicodeDecodeError:
            raise MalformedPacket("topic is not valid UTF-8") from None
        if "\x00" in topic:
            raise MalformedPacket("topic contains U+0000")
        if qos:
            if pos + 2 > n:
                raise MalformedPacket("truncated PUBLISH packet identifier")
            packet_id = (body[pos] << 8) | body[pos + 1]
            if not packet_id:
                raise ProtocolError("PUBLISH packet identifier 0")
            pos += 2
        elif first_byte & 8:
            raise MalformedPacket("PUBLISH with DUP and QoS 0")
        else:
            packet_id = None
        if version == 5:
            if pos < n and not body[pos]:
                props = {}
                pos += 1
            else:
                props, pos = _decode_props(body, pos, n, _PUBLISH)
        else:
            props = {}
        return Publish(topic, body[pos:], qos, (first_byte & 1) != 0, (first_byte & 8) != 0, packet_id, props)
    if first_byte & 0x0F != _FLAGS[ptype]:
        raise MalformedPacket(f"reserved flags {first_byte & 0x0F:#06b} in packet type {ptype}")
    return _DECODERS[ptype](body, version)


def _decode_reserved(body: bytes, version: int):
    raise MalformedPacket("packet type 0 is reserved")


def _decode_connect(b: bytes, version: int) -> Connect:
    n = len(b)
    if n < 2:
        raise MalformedPacket("truncated CONNECT")
    pos = 2 + ((b[0] << 8) | b[1])
    if pos >= n:
        raise MalformedPacket("truncated CONNECT protocol name or level")
    name = b[2:pos]
    level = b[pos]
    pos += 1
    if not ((name == b"MQTT" and (level == 4 or level == 5)) or (name == b"MQIsdp" and level == 3)):
        raise UnsupportedProtocolVersion(f"protocol {name!r} level {level}", version=level)
    if pos + 3 > n:
        raise MalformedPacket("truncated CONNECT header")
    flags = b[pos]
    keepalive = (b[pos + 1] << 8) | b[pos + 2]
    pos += 3
    if flags & 0x01:
        raise MalformedPacket("reserved CONNECT flag set")
    will_qos = (flags >> 3) & 3
    if flags & 0x04:
        if will_qos == 3:
            raise MalformedPacket("will QoS 3")
    elif will_qos or flags & 0x20:
        raise MalformedPacket("will QoS or retain without will flag")
    if level < 5 and flags & 0x40 and not flags & 0x80:
        raise MalformedPacket("password flag without user name flag")
    props: dict = {}
    if level == 5:
        props, pos = _decode_props(b, pos, n, _CONNECT)
    client_id, pos = _str(b, pos, n)
    will = None
    if flags & 0x04:
        will_props: dict = {}
        if level == 5:
            will_props, pos = _decode_props(b, pos, n, _WILL)
        will_topic, pos = _str(b, pos, n)
        will_payload, pos = _bin(b, pos, n)
        will = Will(will_topic, will_payload, will_qos, bool(flags & 0x20), will_props)
    username = password = None
    if flags & 0x80:
        username, pos = _str(b, pos, n)
    if flags & 0x40:
        password, pos = _bin(b, pos, n)
    if pos != n:
        raise MalformedPacket("trailing bytes after CONNECT payload")
    return Connect(client_id, bool(flags & 0x02), keepalive, level, username, password, will, props)


def _decode_connack(b: bytes, version: int) -> Connack:
    n = len(b)
    if n < 2:
        raise MalformedPacket("truncated CONNACK")
    if b[0] & 0xFE:
        raise MalformedPacket("reserved CONNACK flags set")
    props: dict = {}
    if version == 5 and n > 2:  # a v5 CONNACK of length 2 is read as having no properties
        props, pos = _decode_props(b, 2, n, _CONNACK)
        if pos != n:
            raise MalformedPacket("trailing bytes in CONNACK")
    elif n != 2:
        raise MalformedPacket("trailing bytes in CONNACK")
    return Connack(bool(b[0]), b[1], props)


def _ack_decoder(cls, bit):
    name = cls.TYPE.name

    def decode_ack(b: bytes, version: int):
        n = len(b)
        if n == 2:
            return cls((b[0] << 8) | b[1])
        if n < 2:
            raise MalformedPacket(f"truncated {name}")
        if version != 5:
            raise MalformedPacket(f"trailing bytes in {name}")
        if n == 3:
            return cls((b[0] << 8) | b[1], b[2])
        props, pos = _decode_props(b, 3, n, bit)
        if pos != n:
            raise MalformedPacket(f"trailing bytes in {name}")
        return cls((b[0] << 8) | b[1], b[2], props)

    decode_ack.__name__ = f"_decode_{name.lower()}"
    return decode_ack


def _packet_id(b: bytes, n: int, name: str, check: bool) -> int:
    if n < 2:
        raise MalformedPacket(f"truncated {name}")
    packet_id = (b[0] << 8) | b[1]
    if check and not packet_id:  # mosquitto: 0x81 for SUBSCRIBE/UNSUBSCRIBE id 0
        raise MalformedPacket(f"{name} packet identifier 0")
    return packet_id


def _decode_subscribe(b: bytes, version: int) -> Subscribe:
    n = len(b)
    packet_id = _packet_id(b, n, "SUBSCRIBE", True)
    props: dict = {}
    pos = 2
    if version == 5:
        props, pos = _decode_props(b, pos, n, _SUBSCRIBE)
        reserved = 0xC0
    else:
        reserved = 0xFC
    subs = []
    while pos < n:
        topic_filter, pos = _str(b, pos, n)
        if pos >= n:
            raise MalformedPacket("missing subscription options")
        opts = b[pos]
        pos += 1
        if opts & reserved:
            raise MalformedPacket(f"reserved subscription option bits set: {opts:#04x}")
        if opts & 3 == 3:
            raise MalformedPacket("subscription QoS 3")
        if opts & 0x30 == 0x30:
            raise MalformedPacket("retain handling 3")
        subs.append(Subscription(topic_filter, opts & 3, bool(opts & 4), bool(opts & 8), (opts >> 4) & 3))
    if not subs:
        raise ProtocolError("SUBSCRIBE without topic filters")
    return Subscribe(packet_id, subs, props)


def _decode_suback(b: bytes, version: int) -> SubAck:
    n = len(b)
    packet_id = _packet_id(b, n, "SUBACK", False)
    props: dict = {}
    pos = 2
    if version == 5:
        props, pos = _decode_props(b, pos, n, _SUBACK)
    return SubAck(packet_id, list(b[pos:]), props)


def _decode_unsubscribe(b: bytes, version: int) -> Unsubscribe:
    n = len(b)
    packet_id = _packet_id(b, n, "UNSUBSCRIBE", True)
    props: dict = {}
    pos = 2
    if version == 5:
        props, pos = _decode_props(b, pos, n, _UNSUBSCRIBE)
    filters = []
    while pos < n:
        topic_filter, pos = _str(b, pos, n)
        filters.append(topic_filter)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE without topic filters")
    return Unsubscribe(packet_id, filters, props)


def _decode_unsuback(b: bytes, version: int) -> UnsubAck:
    n = len(b)
    packet_id = _packet_id(b, n, "UNSUBACK", False)
    if version != 5:
        if n != 2:
            raise MalformedPacket("trailing bytes in UNSUBACK")
        return UnsubAck(packet_id)
    props, pos = _decode_props(b, 2, n, _UNSUBACK)
    return UnsubAck(packet_id, list(b[pos:]), props)


def _decode_pingreq(b: bytes, version: int) -> PingReq:
    if b:
        raise MalformedPacket("trailing bytes in PINGREQ")
    return PingReq()


def _decode_pingresp(b: bytes, version: int) -> PingResp:
    if b:
        raise MalformedPacket("trailing bytes in PINGRESP")
    return PingResp()


def _reason_decoder(cls, bit):
    name = cls.TYPE.name

    def decode_reason(b: bytes, version: int):
        n = len(b)
        if not n:
            return cls()
        if version != 5:
            raise MalformedPacket(f"trailing bytes in {name}")
        if n == 1:
            return cls(b[0])
        props, pos = _decode_props(b, 1, n, bit)
        if pos != n:
            raise MalformedPacket(f"trailing bytes in {name}")
        return cls(b[0], props)

    decode_reason.__name__ = f"_decode_{name.lower()}"
    return decode_reason


_decode_disconnect = _reason_decoder(Disconnect, _DISCONNECT)
_decode_auth_v5 = _reason_decoder(Auth, _AUTH)


def _decode_auth(b: bytes, version: int) -> Auth:
    if version != 5:
        raise MalformedPacket("AUTH before MQTT 5")
    return _decode_auth_v5(b, version)


_DECODERS = (
    _decode_reserved,
    _decode_connect,
    _decode_connack,
    None,  # PUBLISH: decoded inline by decode()
    _ack_decoder(PubAck, _PUBACK),
    _ack_decoder(PubRec, _PUBREC),
    _ack_decoder(PubRel, _PUBREL),
    _ack_decoder(PubComp, _PUBCOMP),
    _decode_subscribe,
    _decode_suback,
    _decode_unsubscribe,
    _decode_unsuback,
    _decode_pingreq,
    _decode_pingresp,
    _decode_disconnect,
    _decode_auth,
)

# ---------------------------------------------------------------------------
# Encoding

PINGREQ_BYTES = b"\xc0\x00"
PINGRESP_BYTES = b"\xd0\x00"
DISCONNECT_V4_BYTES = b"\xe0\x00"


# What a wrong field type or an out-of-range value raises while encoding (MQTTError is none of them).
_ENCODE_ERRORS = (struct.error, OverflowError, ValueError, TypeError, AttributeError, IndexError)


def _frame(first: int, body: bytes) -> bytes:
    n = len(body)
    if n < 128:
        return _BB.pack(first, n) + body
    return b"".join((bytes((first,)), encode_varint(n), body))


def _enc_str(s: str) -> bytes:
    data = s.encode()
    return _H_pack(len(data)) + data


def _enc_bin(data: bytes) -> bytes:
    return _H_pack(len(data)) + data


def encode_publish_split(
    topic: str, payload: bytes, qos: int, retain: bool, properties: dict | None, version: int,
) -> tuple[bytes, bytes]:
    """A PUBLISH as (head, tail): `head + tail` at QoS 0, else `head + packet_id + tail`.

    The remaining length in `head` counts the 2-byte packet identifier when
    qos > 0. For DUP, OR 0x08 into head[0]. `tail` is `payload` itself for
    v3/v4 (no copy).
    """
    try:
        if payload.__class__ is not bytes:
            payload = bytes(payload)
        if version == 5:
            tail = _encode_props(properties, _PUBLISH) + payload if properties else b"\x00" + payload
        else:
            tail = payload
        data = topic.encode()
        tlen = len(data)
        if qos:
            if qos != 1 and qos != 2:
                raise MalformedPacket(f"PUBLISH QoS {qos}")
            length = 4 + tlen + len(tail)
            first = 0x31 + qos + qos if retain else 0x30 + qos + qos
        else:
            length = 2 + tlen + len(tail)
            first = 0x31 if retain else 0x30
        if length < 128:
            return _BBH.pack(first, length, tlen) + data, tail
        if length < 16384:
            return _BBBH.pack(first, (length & 0x7F) | 0x80, length >> 7, tlen) + data, tail
        return b"".join((bytes((first,)), encode_varint(length), _H_pack(tlen), data)), tail
    except _ENCODE_ERRORS as e:
        raise MalformedPacket(f"cannot encode PUBLISH: {e}") from e


def _encode_publish(p: Publish, version: int) -> bytes:
    qos = p.qos
    head, tail = encode_publish_split(p.topic, p.payload, qos, p.retain, p.properties, version)
    if qos:
        packet_id = p.packet_id
        if packet_id is None or not 0 < packet_id < 65536:
            raise MalformedPacket(f"PUBLISH QoS {qos} needs a packet identifier 1-65535, got {packet_id}")
        if p.dup:
            head = bytes((head[0] | 0x08,)) + head[1:]
        return b"".join((head, _H_pack(packet_id), tail))
    if p.dup:
        raise MalformedPacket("PUBLISH with DUP and QoS 0")
    return head + tail


def _encode_connect(p: Connect, version: int) -> bytes:
    level = p.version
    if level == 3:
        parts = [b"\x00\x06MQIsdp\x03"]
    elif level == 4 or level == 5:
        parts = [b"\x00\x04MQTT", bytes((level,))]
    else:
        raise UnsupportedProtocolVersion(f"cannot encode CONNECT level {level}", version=level)
    will = p.will
    flags = 0x02 if p.clean_start else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        flags |= 0x40
    parts.append(_BH.pack(flags, p.keepalive))
    if level == 5:
        parts.append(_encode_props(p.properties, _CONNECT))
    parts.append(_enc_str(p.client_id))
    if will is not None:
        if level == 5:
            parts.append(_encode_props(will.properties, _WILL))
        parts.append(_enc_str(will.topic))
        parts.append(_enc_bin(will.payload))
    if p.username is not None:
        parts.append(_enc_str(p.username))
    if p.password is not None:
        parts.append(_enc_bin(p.password))
    return _frame(0x10, b"".join(parts))


def _encode_connack(p: Connack, version: int) -> bytes:
    head = _BB.pack(1 if p.session_present else 0, p.reason_code)
    if version == 5:
        return _frame(0x20, head + _encode_props(p.properties, _CONNACK))
    return b"\x20\x02" + head


def _ack_encoder(first: int, bit: int):
    def encode_ack(p, version: int) -> bytes:
        if version == 5:
            if p.properties:
                return _frame(first, _HB.pack(p.packet_id, p.reason_code) + _encode_props(p.properties, bit))
            if p.reason_code:
                return bytes((first, 3)) + _HB.pack(p.packet_id, p.reason_code)
        return bytes((first, 2)) + _H_pack(p.packet_id)

    return encode_ack


def _subscription_options(s: Subscription, version: int) -> int:
    if version == 5:
        return s.qos | (4 if s.no_local else 0) | (8 if s.retain_as_published else 0) | (s.retain_handling << 4)
    return s.qos


def _encode_subscribe(p: Subscribe, version: int) -> bytes:
    parts = [_H_pack(p.packet_id)]
    if version == 5:
        parts.append(_encode_props(p.properties, _SUBSCRIBE))
    for s in p.subscriptions:
        parts.append(_enc_str(s.topic_filter))
        parts.append(bytes((_subscription_options(s, version),)))
    return _frame(0x82, b"".join(parts))


def _encode_suback(p: SubAck, version: int) -> bytes:
    props = _encode_props(p.properties, _SUBACK) if version == 5 else b""
    return _frame(0x90, b"".join((_H_pack(p.packet_id), props, bytes(p.reason_codes))))


def _encode_unsubscribe(p: Unsubscribe, version: int) -> bytes:
    parts = [_H_pack(p.packet_id)]
    if version == 5:
        parts.append(_encode_props(p.properties, _UNSUBSCRIBE))
    parts.extend(_enc_str(f) for f in p.topic_filters)
    return _frame(0xA2, b"".join(parts))


def _encode_unsuback(p: UnsubAck, version: int) -> bytes:
    if version == 5:
        return _frame(0xB0, b"".join((_H_pack(p.packet_id), _encode_props(p.properties, _UNSUBACK), bytes(p.reason_codes))))
    return b"\xb0\x02" + _H_pack(p.packet_id)


def _encode_disconnect(p: Disconnect, version: int) -> bytes:
    if version == 5:
        if p.properties:
            return _frame(0xE0, bytes((p.reason_code,)) + _encode_props(p.properties, _DISCONNECT))
        if p.reason_code:
            return bytes((0xE0, 1, p.reason_code))
    return DISCONNECT_V4_BYTES


def _encode_auth(p: Auth, version: int) -> bytes:
    if version != 5:
        raise ProtocolError("AUTH exists only in MQTT 5")
    if not p.properties and not p.reason_code:
        return b"\xf0\x00"
    return _frame(0xF0, bytes((p.reason_code,)) + _encode_props(p.properties, _AUTH))


_ENCODERS = {
    Publish: _encode_publish,
    Connect: _encode_connect,
    Connack: _encode_connack,
    PubAck: _ack_encoder(0x40, _PUBACK),
    PubRec: _ack_encoder(0x50, _PUBREC),
    PubRel: _ack_encoder(0x62, _PUBREL),
    PubComp: _ack_encoder(0x70, _PUBCOMP),
    Subscribe: _encode_subscribe,
    SubAck: _encode_suback,
    Unsubscribe: _encode_unsubscribe,
    UnsubAck: _encode_unsuback,
    PingReq: lambda p, version: PINGREQ_BYTES,
    PingResp: lambda p, version: PINGRESP_BYTES,
    Disconnect: _encode_disconnect,
    Auth: _encode_auth,
}


def encode(packet, version: int) -> bytes:
    """The wire bytes of `packet` for protocol level `version` (3/4 drop v5-only fields).

    A CONNECT is encoded for its own `version` field.
    """
    encoder = _ENCODERS.get(packet.__class__)
    if encoder is None:
        raise MQTTError(ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR, f"cannot encode {packet!r}")
    try:
        return encoder(packet, version)
    except _ENCODE_ERRORS as e:
        raise MalformedPacket(f"cannot encode {packet.TYPE.name}: {e}") from e
