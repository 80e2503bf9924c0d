"""One benchmark client: an ``asyncio.Protocol`` that connects, subscribes or
publishes, and counts.

Hot paths read no clock of their own and build no packet objects:
- a publisher holds its PUBLISH encoded once (:class:`PublishTemplate`); a batch
  is the template repeated, with the send timestamp and packet ids patched in
  with ``struct.pack_into``, written with one ``transport.write``;
- QoS 1/2 acks are pre-encoded templates with the packet id spliced in, and all
  answers to one ``data_received`` call leave in one write.
"""
from __future__ import annotations

import asyncio
import struct
import time
from enum import IntEnum
from typing import TYPE_CHECKING

from mqtt import (Connect, Disconnect, Framer, MQTTError, Prop, PubAck, PubComp, PubRec, PubRel, Subscribe,
                  Subscription, decode, encode, encode_publish_split)
from loadtest.options import Options, Verb
from loadtest.stats import Counters, ErrorKind

if TYPE_CHECKING:
    from loadtest.proc import LoadProcess

_U64 = struct.Struct(">Q")
_U16 = struct.Struct(">H")
PINGREQ = b"\xc0\x00"
TIMER_SLACK = 0.001  # seconds
MAX_WINDOW = 0xFFFF  # -F 0: no window of our own, only the broker's Receive Maximum and the packet ids

# packet types (first byte >> 4) seen by a client
_CONNACK, _PUBLISH, _PUBACK, _PUBREC, _PUBREL, _PUBCOMP, _SUBACK, _PINGRESP, _DISCONNECT = 2, 3, 4, 5, 6, 7, 9, 13, 14


class Phase(IntEnum):
    IDLE = 0
    CONNECTING = 1  # TCP up, CONNECT sent
    SUBSCRIBING = 2  # CONNACK accepted, SUBSCRIBE sent
    ACTIVE = 3  # connected (and subscribed): holding, publishing or receiving
    DRAINING = 4  # publisher past its limit, waiting for the last acks
    CLOSING = 5  # DISCONNECT sent by us
    CLOSED = 6


class PublishTemplate:
    """A client's PUBLISH, encoded once: ``packet`` with the packet id at ``pid_at``
    (QoS > 0) and the 8-byte send timestamp at ``ts_at``."""

    __slots__ = ("packet", "pid_at", "ts_at", "size")

    def __init__(self, topic: str, payload_size: int, qos: int, retain: bool, version: int):
        payload = bytes(payload_size)
        head, tail = encode_publish_split(topic, payload, qos, retain, None, version)
        self.packet = bytearray(head + b"\x00\x01" + tail if qos else head + tail)
        self.pid_at = len(head) if qos else -1
        self.size = len(self.packet)
        self.ts_at = self.size - payload_size

    def batch(self, n: int, now_ns: int) -> bytearray:
        """``n`` copies with ``now_ns`` as their timestamp (packet ids still to patch)."""
        _U64.pack_into(self.packet, self.ts_at, now_ns)
        return self.packet * n


class AckTemplate:
    """An ack packet pre-encoded once; ``with_id`` splices in the 2 id bytes."""

    __slots__ = ("prefix", "suffix")

    def __init__(self, cls, version: int):
        wire = encode(cls(packet_id=0xFFFF), version)
        at = wire.index(b"\xff\xff")
        self.prefix, self.suffix = wire[:at], wire[at + 2:]


class Wire:
    """Everything a process's clients send that does not depend on the client."""

    __slots__ = ("puback", "pubrec", "pubrel", "pubcomp", "disconnect")

    def __init__(self, version: int):
        self.puback = AckTemplate(PubAck, version)
        self.pubrec = AckTemplate(PubRec, version)
        self.pubrel = AckTemplate(PubRel, version)
        self.pubcomp = AckTemplate(PubComp, version)
        self.disconnect = encode(Disconnect(), version)


class BenchClient(asyncio.Protocol):
    __slots__ = ("proc", "opts", "counters", "wire", "index", "client_id", "username", "topic", "phase", "transport", "framer",
                 "version", "connack", "connect_started", "paused", "template", "inflight", "window", "next_pid",
                 "sent", "received", "pub_start", "interval_s", "pump_handle", "paced", "awaiting_rel", "settled")

    def __init__(self, proc: LoadProcess, index: int, client_id: str, topic: str, username: str | None = None):
        self.proc = proc
        self.opts: Options = proc.opts
        self.counters: Counters = proc.counters
        self.wire: Wire = proc.wire
        self.index = index
        self.client_id = client_id
        self.username = username  # -u, with %i / %rand_N filled in
        self.topic = topic
        self.phase = Phase.IDLE
        self.transport: asyncio.Transport | None = None
        self.framer = Framer()
        self.version = self.opts.version
        self.connack: asyncio.Future | None = None
        self.connect_started = 0
        self.paused = False
        self.template: PublishTemplate | None = None
        self.inflight: set[int] = set()
        self.window = self.opts.inflight or MAX_WINDOW
        self.next_pid = 1
        self.sent = 0
        self.received = 0
        self.pub_start = 0.0
        self.interval_s = self.opts.publish_interval_ms / 1000
        self.pump_handle: asyncio.Handle | None = None  # -I 0 at QoS 0: the next loop pass
        self.paced = False  # -I: waiting in the process's pacer
        self.awaiting_rel: set[bytes] = set()
        self.settled = False  # ready or finished: counted once by the process

    # -- connection ---------------------------------------------------------

    def connect_packet(self) -> bytes:
        o = self.opts
        props = {Prop.SESSION_EXPIRY_INTERVAL: o.session_expiry} if o.session_expiry else {}
        return encode(Connect(client_id=self.client_id, clean_start=o.clean, keepalive=o.keepalive, version=o.version,
                              username=self.username, password=None if o.password is None else o.password.encode(),
                              properties=props), o.version)

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.proc.transport_opened()
        if self.phase >= Phase.CLOSING:  # stopped while the TCP connect was under way
            transport.abort()
            return
        self.transport = transport
        self.phase = Phase.CONNECTING
        self.connect_started = time.monotonic_ns()
        transport.write(self.connect_packet())

    def connection_lost(self, exc: Exception | None) -> None:
        self.proc.transport_closed()
        was = self.phase
        self.phase = Phase.CLOSED
        if was < Phase.CLOSING:
            self._cancel_pump()
            self._drop_gauges(was)
            self.counters.error(ErrorKind.CONNECTION_LOST)
            self._connack_failed()
            self.proc.client_finished(self)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.phase is Phase.ACTIVE and self.template is not None and self.pump_handle is None and not self.paced:
            self.pump()

    def fail(self, kind: ErrorKind) -> None:
        """Give up on this client: count ``kind`` and drop the connection."""
        if self.phase >= Phase.CLOSING:
            return
        self.counters.error(kind)
        self._close(graceful=False)

    def finish(self) -> None:
        """The client is done (limit reached, or told to stop): DISCONNECT and close."""
        if self.phase < Phase.CLOSING:
            self._close(graceful=Phase.SUBSCRIBING <= self.phase)

    def limit_reached(self) -> None:
        """The run's -L is spent: a publisher waits for the acks of what it sent, then
        every client sends DISCONNECT; a client not yet connected gives up."""
        if self.phase is Phase.ACTIVE and self.inflight:
            self._cancel_pump()
            self.phase = Phase.DRAINING
        elif self.phase < Phase.CLOSING and self.phase is not Phase.DRAINING:
            self.finish()

    def _close(self, graceful: bool) -> None:
        was = self.phase
        self.phase = Phase.CLOSING
        self._cancel_pump()
        self._drop_gauges(was)
        if self.transport is not None:
            if graceful:
                self.transport.write(self.wire.disconnect)
                self.transport.close()
            else:
                self.transport.abort()
        self._connack_failed()
        self.proc.client_finished(self)

    def _drop_gauges(self, was: Phase) -> None:
        if Phase.SUBSCRIBING <= was <= Phase.DRAINING:
            self.counters.connected -= 1
            if was >= Phase.ACTIVE and self.opts.verb is Verb.SUB:
                self.counters.subscribed -= 1

    def _connack_failed(self) -> None:
        if self.connack is not None and not self.connack.done():
            self.connack.set_result(False)

    def ping(self) -> None:
        if Phase.SUBSCRIBING <= self.phase <= Phase.DRAINING:
            self.transport.write(PINGREQ)

    # -- incoming -----------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        try:
            if self.opts.verb is Verb.SUB:
                self._receive_as_subscriber(data)
            else:
                self._receive_as_publisher(data)
        except (MQTTError, IndexError, struct.error):  # a frame too short for what it claims
            self.fail(ErrorKind.PROTOCOL)

    def _receive_as_subscriber(self, data: bytes) -> None:
        """Count each PUBLISH and read its send timestamp where the payload starts
        (topic, packet id, and v5 properties skipped; only a PUBLISH with v5
        properties goes through ``decode``); answer QoS 1/2 in one write.  With -L
        what arrived is taken from the run's budget: what is beyond it is acked but
        not counted, and the run ends."""
        out = bytearray()
        stamps: list[int] = []  # one per PUBLISH; -1 for a payload too short for a timestamp
        v5 = self.version == 5
        wire = self.wire
        for first, body in self.framer.feed(data):
            kind = first >> 4
            if kind == _PUBLISH:
                if self.phase >= Phase.CLOSING:
                    break
                at = 2 + (body[0] << 8 | body[1])
                qos = (first >> 1) & 3
                if qos:
                    pid = body[at:at + 2]
                    at += 2
                    if qos == 1:
                        out += wire.puback.prefix + pid + wire.puback.suffix
                    else:
                        out += wire.pubrec.prefix + pid + wire.pubrec.suffix
                        if pid in self.awaiting_rel:  # a DUP of one we already counted
                            continue
                        self.awaiting_rel.add(pid)
                if v5:
                    if body[at]:
                        at = len(body) - len(decode(first, body, 5).payload)
                    else:
                        at += 1
                stamps.append(_U64.unpack_from(body, at)[0] if len(body) - at >= 8 else -1)
            elif kind == _PUBREL:
                pid = body[:2]
                self.awaiting_rel.discard(pid)
                out += wire.pubcomp.prefix + pid + wire.pubcomp.suffix
            else:
                self._control(first, body)
        if out and self.phase < Phase.CLOSING:
            self.transport.write(out)
        if not stamps:
            return
        budget = self.proc.budget
        received = len(stamps) if budget is None else budget.take(len(stamps))
        if received:
            now = time.time_ns()
            c = self.counters
            c.latency.record_many([now - t for t in stamps[:received] if t >= 0])
            c.received += received
            self.received += received
            if not c.first_recv_ns:
                c.first_recv_ns = now
            c.last_recv_ns = now
        if budget is not None and budget.spent:
            self.proc.limit_reached()

    def _receive_as_publisher(self, data: bytes) -> None:
        out = bytearray()
        completed = 0
        inflight = self.inflight
        for first, body in self.framer.feed(data):
            kind = first >> 4
            if kind == _PUBACK or kind == _PUBCOMP:
                pid = body[0] << 8 | body[1]
                if pid not in inflight:
                    self.fail(ErrorKind.PROTOCOL)
                    return
                inflight.discard(pid)
                completed += 1
                if len(body) > 2 and body[2] >= 0x80:
                    self.counters.error(ErrorKind.PUBLISH_REFUSED)
            elif kind == _PUBREC:
                pid = body[0] << 8 | body[1]
                if pid not in inflight:
                    self.fail(ErrorKind.PROTOCOL)
                    return
                if len(body) > 2 and body[2] >= 0x80:  # the QoS 2 flow ends here
                    inflight.discard(pid)
                    completed += 1
                    self.counters.error(ErrorKind.PUBLISH_REFUSED)
                else:
                    rel = self.wire.pubrel
                    out += rel.prefix + body[:2] + rel.suffix
            else:
                self._control(first, body)
        if self.phase >= Phase.CLOSING:
            return
        if out:
            self.transport.write(out)
        if completed:
            self.counters.acked += completed
            if self.phase is Phase.DRAINING:
                if not inflight:
                    self.finish()
            elif self.phase is Phase.ACTIVE and not self.paused:
                self.pump()

    def _control(self, first: int, body: bytes) -> None:
        """The packets that arrive once per connection, or never."""
        kind = first >> 4
        if kind == _CONNACK:
            self._on_connack(decode(first, body, self.version))
        elif kind == _SUBACK:
            self._on_suback(decode(first, body, self.version))
        elif kind == _PINGRESP:
            pass
        elif kind == _DISCONNECT:
            self.fail(ErrorKind.CONNECTION_LOST)
        else:
            decode(first, body, self.version)  # raises MQTTError on a malformed packet
            self.fail(ErrorKind.PROTOCOL)

    def _on_connack(self, connack) -> None:
        if self.phase is not Phase.CONNECTING:
            self.fail(ErrorKind.PROTOCOL)
            return
        if connack.reason_code != 0:
            self.fail(ErrorKind.CONNACK_REFUSED)
            return
        c = self.counters
        c.connect_latency.record(time.monotonic_ns() - self.connect_started)
        c.connected += 1
        if c.connected > c.peak_connected:
            c.peak_connected = c.connected
        if self.connack is not None and not self.connack.done():
            self.connack.set_result(True)
        o = self.opts
        receive_maximum = connack.properties.get(Prop.RECEIVE_MAXIMUM)
        if receive_maximum:
            self.window = min(self.window, receive_maximum)
        if o.verb is Verb.SUB:
            self.phase = Phase.SUBSCRIBING
            flt = f"$share/{o.shared}/{self.topic}" if o.shared else self.topic
            self.transport.write(encode(Subscribe(packet_id=1, subscriptions=[Subscription(flt, o.qos)]), self.version))
        elif o.verb is Verb.PUB:
            self.phase = Phase.ACTIVE
            self.template = PublishTemplate(self.topic, o.payload_size, o.qos, o.retain, o.version)
            self.proc.client_ready(self)
            if not self.proc.held:
                self.start_publishing()
        else:
            self.phase = Phase.ACTIVE
            self.proc.client_ready(self)

    def start_publishing(self) -> None:
        """A connected publisher's first pump (held back under -w until every publisher is in)."""
        if self.phase is Phase.ACTIVE and self.template is not None and not self.pub_start:
            self.pub_start = self.proc.loop.time()
            self.pump()

    def _on_suback(self, suback) -> None:
        if self.phase is not Phase.SUBSCRIBING:
            self.fail(ErrorKind.PROTOCOL)
            return
        if any(code >= 0x80 for code in suback.reason_codes):
            self.fail(ErrorKind.SUBACK_REFUSED)
            return
        self.phase = Phase.ACTIVE
        c = self.counters
        c.subscribed += 1
        if c.subscribed > c.peak_subscribed:
            c.peak_subscribed = c.subscribed
        self.proc.client_ready(self)

    # -- publishing -----------------------------------------------------------

    def _cancel_pump(self) -> None:
        if self.pump_handle is not None:
            self.pump_handle.cancel()
            self.pump_handle = None

    def _on_timer(self) -> None:
        self.pump_handle = None
        self.pump()

    def on_pace(self) -> None:
        """The process's pacer: this client's next message is due."""
        self.paced = False
        self.pump()

    def pump(self) -> None:
        """Write every PUBLISH that is due and fits the window, in one write, and
        arrange the next call unless one is pending: a timer with -I, the next loop
        pass at QoS 0 with -I 0; at QoS 1/2 the acks call it too.  With -L what is
        written is first taken from the run's budget; once that is spent, the run ends."""
        if self.phase is not Phase.ACTIVE or self.paused:
            return
        o = self.opts
        loop = self.proc.loop
        budget = self.proc.budget
        n = 1 << 30
        next_at = 0.0
        if self.interval_s:
            # libuv timers tick in whole ms and may fire up to 1 ms early: count what is
            # due within TIMER_SLACK as due, or an early timer would find nothing and spin
            due_total = int((loop.time() + TIMER_SLACK - self.pub_start) / self.interval_s) + 1
            n = min(n, due_total - self.sent)
            next_at = self.pub_start + due_total * self.interval_s
        elif not o.qos:
            n = min(n, o.batch)
        if o.qos:
            n = min(n, self.window - len(self.inflight))
        if budget is not None:
            if n > 0:
                n = budget.take(n)
            if budget.spent:
                if n > 0:
                    self._write_publishes(n)
                self.proc.limit_reached()  # this client too: it drains its acks, then disconnects
                return
        if n > 0:
            self._write_publishes(n)
        if next_at:
            if not self.paced:
                self.paced = True
                self.proc.pacer.at(next_at, self)
        elif not o.qos and self.pump_handle is None:
            self.pump_handle = loop.call_soon(self._on_timer)

    def _write_publishes(self, n: int) -> None:
        now = time.time_ns()
        template = self.template
        buf = template.batch(n, now)
        if self.opts.qos:
            at, size = template.pid_at, template.size
            pid = self.next_pid
            inflight = self.inflight
            for _ in range(n):
                while pid in inflight:
                    pid = pid % 0xFFFF + 1
                inflight.add(pid)
                _U16.pack_into(buf, at, pid)
                at += size
                pid = pid % 0xFFFF + 1
            self.next_pid = pid
        self.transport.write(buf)
        self.sent += n
        c = self.counters
        c.sent += n
        if not c.first_sent_ns:
            c.first_sent_ns = now
        c.last_sent_ns = now
