"""What the live fuzzer sends: MQTT byte streams built from the codec's corpus
(the hand-written vectors and invalid inputs of tests/unit/test_codec_vectors.py,
and packets drawn from the hypothesis strategies of test_codec_roundtrip.py),
mutated with a seeded `random.Random` so that a run can be repeated (--seed).

A case is a `Case`: a kind (for the report), the protocol version, and steps
(`bytes` to send, or a float: seconds to wait before the next send). Transports
(tests/fuzz/transports.py) carry the steps; no I/O happens here.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import HealthCheck, Phase, given, seed, settings

from mqtt import Connect, Prop, Publish, Subscribe, Subscription, Will, encode, encode_varint
from tests.unit.test_codec_roundtrip import any_packet
from tests.unit.test_codec_vectors import INVALID, VECTORS

PINGREQ = b"\xc0\x00"
MAX_REMAINING = 268_435_455


@dataclass(slots=True)
class Case:
    kind: str
    version: int
    steps: list = field(default_factory=list)  # bytes to send, or float seconds to wait
    barrier: bool = False  # ends with a PINGREQ: a PINGRESP means all of it was handled

    def packets(self) -> int:
        return sum(1 for s in self.steps if isinstance(s, bytes))

    def size(self) -> int:
        return sum(len(s) for s in self.steps if isinstance(s, bytes))


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def build_pool(per_version: int, run_seed: int) -> dict[int, list[bytes]]:
    """Encoded packets per version: the corpus vectors, then hypothesis draws."""
    pool: dict[int, list[bytes]] = {3: [], 4: [], 5: []}
    for _, version, wire, _packet in VECTORS:
        pool[version].append(wire)
    for version in (3, 4, 5):
        _draw(pool[version], version, per_version, run_seed)
    return pool


def _draw(out: list, version: int, n: int, run_seed: int) -> None:
    @seed(run_seed + version)
    @settings(max_examples=n, database=None, deadline=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(any_packet(version))
    def draw(packet) -> None:
        out.append(encode(packet, version))

    draw()


INVALID_CORPUS = [(version, wire) for _, version, wire, _cls, _code in INVALID]

BAD_UTF8 = [b"\xff\xfe", b"\xc3\x28", b"\xed\xa0\x80", b"a\x00b", b"\xe2\x82", b"\xf8\x88\x80\x80\x80",
            b"\xc0\xaf", b"\xef\xbf\xbe", b"+/#/x", b"#/a", b"a/#/b", b"$share//x", b"\x7f" * 3]


class Generator:
    """Cases, one at a time, from a seeded RNG. `lane` keeps client ids apart
    between the concurrent connections of a run (and from the canary's)."""

    KINDS = (
        ("session", 22), ("random", 8), ("random-after-connect", 8), ("no-connect", 6),
        ("second-connect", 5), ("mutated-connect", 8), ("invalid-corpus", 8), ("length-lie", 8),
        ("huge-length", 4), ("big-partial", 2), ("random-props", 7), ("bad-utf8", 7), ("slow-loris", 3),
        ("flood", 1), ("publish-burst", 3),
    )

    def __init__(self, pool: dict[int, list[bytes]], rng: random.Random, lane: str, max_packet_size: int,
                 only: list[str] | None = None):
        self.pool = pool
        self.rng = rng
        self.lane = lane
        self.n = 0
        self.max_packet_size = max_packet_size
        kinds, weights = zip(*[(k, w) for k, w in self.KINDS if not only or k in only])
        self._kinds = kinds
        self._weights = weights

    # -- building blocks ---------------------------------------------------------
    def client_id(self) -> str:
        self.n += 1
        return f"fz-{self.lane}-{self.n}"

    def version(self) -> int:
        return self.rng.choice((3, 4, 4, 5, 5, 5))

    def connect(self, version: int) -> bytes:
        r = self.rng
        props = {}
        if version == 5:
            if r.random() < 0.3:
                props[Prop.SESSION_EXPIRY_INTERVAL] = r.choice((0, 1, 60, 0xFFFFFFFF))
            if r.random() < 0.2:
                props[Prop.RECEIVE_MAXIMUM] = r.choice((1, 2, 65535))
            if r.random() < 0.2:
                props[Prop.TOPIC_ALIAS_MAXIMUM] = r.choice((0, 1, 10))
            if r.random() < 0.2:
                props[Prop.MAXIMUM_PACKET_SIZE] = r.choice((16, 128, 65536))
        will = None
        if r.random() < 0.2:
            will = Will(r.choice(("fz/will", "fz/w/" + self.lane)), b"gone", r.randint(0, 2), r.random() < 0.2,
                        {Prop.WILL_DELAY_INTERVAL: r.choice((0, 1, 5))} if version == 5 else {})
        return encode(Connect(self.client_id(), r.random() < 0.8, r.choice((0, 5, 30, 60, 65535)), version,
                              will=will, properties=props), version)

    def pooled(self, version: int) -> bytes:
        return self.rng.choice(self.pool[5 if version == 5 else self.rng.choice((3, 4))])

    def mutate(self, wire: bytes) -> bytes:
        """Bit flips, truncation, insertion, deletion, byte set (as test_codec_fuzz.py)."""
        r = self.rng
        w = bytearray(wire)
        for _ in range(r.randint(1, 4)):
            op = r.choice(("flip", "flip", "truncate", "insert", "delete", "set"))
            at = r.randrange(max(len(w), 1))
            if op == "flip" and w:
                w[at] ^= 1 << r.randrange(8)
            elif op == "truncate":
                del w[at:]
            elif op == "insert":
                w[at:at] = r.randbytes(r.randint(1, 4))
            elif op == "delete" and w:
                del w[at:at + r.randint(1, 4)]
            elif op == "set" and w:
                w[at] = r.choice((0x00, 0x01, 0x02, 0x03, 0x7F, 0x80, 0xFF))
        return bytes(w)

    def lie_about_length(self, wire: bytes) -> bytes:
        """The same body under a remaining length larger or smaller than it."""
        first, body = wire[0], _body(wire)
        delta = self.rng.choice((-3, -2, -1, 1, 2, 5, 100, 1000))
        n = min(max(len(body) + delta, 0), MAX_REMAINING)
        return bytes((first,)) + encode_varint(n) + body

    def random_props(self, version: int) -> bytes:
        """A v5 PUBLISH or SUBSCRIBE whose property block holds random ids and bytes."""
        r = self.rng
        block = bytearray()
        for _ in range(r.randint(1, 4)):
            pid = r.choice((r.randint(0, 0x7F), r.choice(list(Prop)).value, 0x80 | r.randint(0, 0x7F)))
            block += encode_varint(pid) if pid < 0x80 else bytes((pid, r.randint(0, 0x7F)))
            block += r.randbytes(r.choice((0, 1, 2, 4, 7)))
        props = encode_varint(len(block)) + block
        if r.random() < 0.5:
            body = b"\x00\x04fz/p" + props + r.randbytes(r.randint(0, 8))
            return frame(0x30, body)
        body = b"\x00\x01" + props + b"\x00\x03fz/" + bytes((r.randint(0, 2),))
        return frame(0x82, body)

    def bad_utf8(self, version: int) -> bytes:
        """A topic, filter or client id that is not valid UTF-8 (or not a valid name)."""
        r = self.rng
        bad = r.choice(BAD_UTF8) + (r.randbytes(r.randint(0, 3)) if r.random() < 0.3 else b"")
        topic = len(bad).to_bytes(2, "big") + bad
        props = b"\x00" if version == 5 else b""
        which = r.randrange(4)
        if which == 0:
            return frame(0x30, topic + props + b"x")
        if which == 1:
            return frame(0x32, topic + b"\x00\x07" + props + b"x")
        if which == 2:
            return frame(0x82, b"\x00\x02" + props + topic + b"\x01")
        return frame(0xA2, b"\x00\x03" + props + topic)

    # -- cases ---------------------------------------------------------------------
    def next(self) -> Case:
        kind = self.rng.choices(self._kinds, self._weights)[0]
        return getattr(self, "case_" + kind.replace("-", "_"))(kind)

    def case_session(self, kind: str) -> Case:
        """CONNECT, then packets of the pool, half of them mutated; PINGREQ as the barrier."""
        v = self.version()
        r = self.rng
        body = [self.pooled(v) for _ in range(r.randint(1, 12))]
        for _ in range(r.choices((0, 1, 2), (3, 5, 2))[0]):  # a valid prefix gets the session somewhere first
            at = r.randrange(len(body))
            body[at] = self.mutate(body[at])
        steps = [self.connect(v), *body, PINGREQ]
        return Case(kind, v, steps, barrier=True)

    def case_random(self, kind: str) -> Case:
        return Case(kind, 4, [self.rng.randbytes(self.rng.randint(1, 600))])

    def case_random_after_connect(self, kind: str) -> Case:
        v = self.version()
        return Case(kind, v, [self.connect(v), self.rng.randbytes(self.rng.randint(1, 300))])

    def case_no_connect(self, kind: str) -> Case:
        """A packet in the wrong state: PUBLISH (or anything else) before CONNECT."""
        v = self.version()
        first = self.rng.choice((encode(Publish("fz/early", b"x"), v), encode(Publish("fz/e", b"x", 1, packet_id=1), v),
                                 self.pooled(v)))
        return Case(kind, v, [first, self.connect(v), PINGREQ])

    def case_second_connect(self, kind: str) -> Case:
        v = self.version()
        c = self.connect(v)
        return Case(kind, v, [c, self.rng.choice((c, self.connect(v), self.mutate(c))), PINGREQ])

    def case_mutated_connect(self, kind: str) -> Case:
        v = self.version()
        steps = [self.mutate(self.connect(v))]
        steps += [self.pooled(v) for _ in range(self.rng.randint(0, 3))]
        return Case(kind, v, steps + [PINGREQ])

    def case_invalid_corpus(self, kind: str) -> Case:
        v, wire = self.rng.choice(INVALID_CORPUS)
        v = 4 if v == 3 and self.rng.random() < 0.5 else v
        steps = [] if wire[:1] == b"\x10" else [self.connect(v)]
        return Case(kind, v, steps + [wire, PINGREQ])

    def case_length_lie(self, kind: str) -> Case:
        v = self.version()
        target = self.pooled(v)
        if self.rng.random() < 0.3:
            return Case(kind, v, [self.lie_about_length(self.connect(v)), PINGREQ])
        return Case(kind, v, [self.connect(v), self.lie_about_length(target), PINGREQ])

    def case_huge_length(self, kind: str) -> Case:
        """A remaining length past the node's packet size limit (or the protocol's), and a little body."""
        r = self.rng
        v = self.version()
        n = r.choice((MAX_REMAINING, self.max_packet_size + 1, self.max_packet_size, r.randint(1 << 21, MAX_REMAINING)))
        n = min(n, MAX_REMAINING)
        head = bytes((r.choice((0x30, 0x32, 0x82, 0x10)),)) + encode_varint(n)
        steps = [] if head[0] == 0x10 else [self.connect(v)]
        return Case(kind, v, steps + [head + r.randbytes(r.randint(0, 64))])

    def case_big_partial(self, kind: str) -> Case:
        """A large PUBLISH the node must buffer, sent in part: it holds at most max_packet_size."""
        r = self.rng
        v = self.version()
        n = min(r.choice((64 << 10, 256 << 10, 1 << 20)), self.max_packet_size - 8)
        body = b"\x00\x04fz/b" + (b"\x00" if v == 5 else b"") + bytes(n - 7 - (v == 5))
        wire = frame(0x30, body)
        cut = r.randint(len(wire) // 2, len(wire) - 1) if r.random() < 0.7 else len(wire)
        return Case(kind, v, [self.connect(v), wire[:cut]], barrier=False)

    def case_random_props(self, kind: str) -> Case:
        return Case(kind, 5, [self.connect(5), self.random_props(5), PINGREQ])

    def case_bad_utf8(self, kind: str) -> Case:
        v = self.version()
        r = self.rng
        if r.random() < 0.25:  # the client id itself
            bad = r.choice(BAD_UTF8)
            head = b"\x00\x04MQTT\x05\x02\x00\x00\x00" if v == 5 else b"\x00\x04MQTT\x04\x02\x00\x00"
            return Case(kind, v, [frame(0x10, head + len(bad).to_bytes(2, "big") + bad), PINGREQ])
        return Case(kind, v, [self.connect(v), self.bad_utf8(v), PINGREQ])

    def case_slow_loris(self, kind: str) -> Case:
        """A CONNECT (and a packet) dribbled a few bytes at a time; sometimes never finished."""
        r = self.rng
        v = self.version()
        data = self.connect(v) + self.pooled(v)
        if r.random() < 0.5:
            data = data[:r.randint(1, len(data) - 1)]
        steps: list = []
        at = 0
        while at < len(data) and len(steps) < 40:
            n = r.randint(1, 3)
            steps += [data[at:at + n], r.uniform(0.02, 0.25)]
            at += n
        return Case(kind, v, steps)

    def case_flood(self, kind: str) -> Case:
        """Many connections at once (the transport opens them); steps are what each sends."""
        v = self.version()
        return Case(kind, v, [self.connect(v)] if self.rng.random() < 0.7 else [])

    def case_publish_burst(self, kind: str) -> Case:
        """Valid traffic: a subscription and a burst of publishes of every QoS (retained now and then)."""
        r = self.rng
        v = self.version()
        steps = [self.connect(v), encode(Subscribe(1, [Subscription(r.choice(("fz/#", "fz/+/x", "#")), r.randint(0, 2))]), v)]
        for i in range(r.randint(5, 40)):
            qos = r.randint(0, 2)
            steps.append(encode(Publish(f"fz/{r.randint(0, 50)}/x", r.randbytes(r.randint(0, 200)), qos,
                                        r.random() < 0.05, False, (i % 65535) + 1 if qos else None), v))
        steps.append(PINGREQ)
        return Case(kind, v, steps, barrier=True)


def _body(wire: bytes) -> bytes:
    i = 1
    while i < len(wire) and wire[i] & 0x80 and i < 4:
        i += 1
    return wire[i + 1:]
