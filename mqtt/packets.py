"""One slotted dataclass per MQTT packet; `TYPE` names its packet type.

`properties` is a plain dict keyed by `Prop` (see docs/codec-api.md); v3.1.1
encodings leave it out.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Union

from .constants import PacketType

__all__ = [
    "Will", "Connect", "Connack", "Publish", "PubAck", "PubRec", "PubRel", "PubComp",
    "Subscription", "Subscribe", "SubAck", "Unsubscribe", "UnsubAck", "PingReq", "PingResp",
    "Disconnect", "Auth", "Packet",
]


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Connect:
    TYPE: ClassVar[PacketType] = PacketType.CONNECT
    client_id: str = ""
    clean_start: bool = True
    keepalive: int = 0
    version: int = 4
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Connack:
    TYPE: ClassVar[PacketType] = PacketType.CONNACK
    session_present: bool = False
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Publish:
    TYPE: ClassVar[PacketType] = PacketType.PUBLISH
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class PubAck:
    TYPE: ClassVar[PacketType] = PacketType.PUBACK
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class PubRec:
    TYPE: ClassVar[PacketType] = PacketType.PUBREC
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class PubRel:
    TYPE: ClassVar[PacketType] = PacketType.PUBREL
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class PubComp:
    TYPE: ClassVar[PacketType] = PacketType.PUBCOMP
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Subscription:
    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class Subscribe:
    TYPE: ClassVar[PacketType] = PacketType.SUBSCRIBE
    packet_id: int
    subscriptions: list[Subscription]
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class SubAck:
    TYPE: ClassVar[PacketType] = PacketType.SUBACK
    packet_id: int
    reason_codes: list[int]
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Unsubscribe:
    TYPE: ClassVar[PacketType] = PacketType.UNSUBSCRIBE
    packet_id: int
    topic_filters: list[str]
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class UnsubAck:
    TYPE: ClassVar[PacketType] = PacketType.UNSUBACK
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class PingReq:
    TYPE: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(slots=True)
class PingResp:
    TYPE: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(slots=True)
class Disconnect:
    TYPE: ClassVar[PacketType] = PacketType.DISCONNECT
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Auth:
    TYPE: ClassVar[PacketType] = PacketType.AUTH
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


Packet = Union[
    Connect, Connack, Publish, PubAck, PubRec, PubRel, PubComp, Subscribe, SubAck,
    Unsubscribe, UnsubAck, PingReq, PingResp, Disconnect, Auth,
]
