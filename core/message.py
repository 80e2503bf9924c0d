"""An application message, stored once and referenced by every queue entry."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from mqtt import Prop, encode_publish_split

# Properties the broker forwards unchanged from PUBLISH (or a will) to subscribers.
FORWARDED = (
    Prop.PAYLOAD_FORMAT_INDICATOR,
    Prop.CONTENT_TYPE,
    Prop.RESPONSE_TOPIC,
    Prop.CORRELATION_DATA,
    Prop.USER_PROPERTY,
)


@dataclass(slots=True, eq=False)
class Message:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    properties: dict  # only FORWARDED properties
    expires_at: float | None = None  # clock time, None = never
    origin: str = ""  # client id of the publisher ("" for the broker itself)
    # cluster: its id, given where it was published (unique cluster-wide), so that a session
    # that moved between nodes gets a message once when it came both ways (router/away.py)
    mid: int | None = None
    _cache: tuple | dict | None = field(default=None, repr=False)

    @classmethod
    def build(cls, topic, payload, qos, retain, props: dict, now: float, origin: str = "") -> "Message":
        fwd = {k: props[k] for k in FORWARDED if k in props} if props else {}
        expiry = props.get(Prop.MESSAGE_EXPIRY_INTERVAL) if props else None
        return cls(topic, payload, qos, retain, fwd, None if expiry is None else now + expiry, origin)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def remaining_expiry(self, now: float) -> int | None:
        if self.expires_at is None:
            return None
        return _seconds_left(self.expires_at, now)

    def encode(self, v5: bool, qos: int, retain: bool, sub_ids: tuple, now: float) -> tuple[bytes, bytes]:
        """(head, tail) of the PUBLISH for one variant; cached on the message
        (one variant inline, more in a small dict)."""
        remaining = None
        if v5 and self.expires_at is not None:
            remaining = _seconds_left(self.expires_at, now)
        key = (v5, qos, retain, sub_ids, remaining)
        cache = self._cache
        if cache is not None:
            if cache.__class__ is tuple:
                if cache[0] == key:
                    return cache[1]
            else:
                hit = cache.get(key)
                if hit is not None:
                    return hit
        props = None
        if v5:
            props = dict(self.properties)
            if remaining is not None:
                props[Prop.MESSAGE_EXPIRY_INTERVAL] = remaining
            if sub_ids:
                props[Prop.SUBSCRIPTION_IDENTIFIER] = list(sub_ids)
        parts = encode_publish_split(self.topic, self.payload, qos, retain, props, 5 if v5 else 4)
        if cache is None:
            self._cache = (key, parts)
        elif cache.__class__ is tuple:
            self._cache = {cache[0]: cache[1], key: parts}
        elif len(cache) < 16:
            cache[key] = parts
        return parts

    def encode_aliased(self, qos: int, retain: bool, sub_ids: tuple, now: float,
                       alias: int, with_topic: bool) -> tuple[bytes, bytes]:
        """(head, tail) of a v5 PUBLISH carrying Topic Alias ``alias``: with the
        topic name to set the alias, or with an empty one to use it. Not cached:
        aliases belong to one connection."""
        props = dict(self.properties)
        if self.expires_at is not None:
            props[Prop.MESSAGE_EXPIRY_INTERVAL] = _seconds_left(self.expires_at, now)
        if sub_ids:
            props[Prop.SUBSCRIPTION_IDENTIFIER] = list(sub_ids)
        props[Prop.TOPIC_ALIAS] = alias
        return encode_publish_split(self.topic if with_topic else "", self.payload, qos, retain, props, 5)


def _seconds_left(expires_at: float, now: float) -> int:
    """Whole seconds left, rounded up; (now + 300) - now may come out a hair over
    300 in floating point, which must not round up to 301."""
    return max(0, math.ceil(expires_at - now - 1e-6))
