"""One MQTT connection: framing, dispatch, the window, and the one error path.

`data_received` only feeds the framer and hands complete packets to the
handlers (handlers.py); every MQTTError becomes a reason code here.
"""
from __future__ import annotations

import asyncio
import logging
import socket

from common.logs import kv
from mqtt import (
    PINGRESP_BYTES,
    Disconnect,
    Framer,
    MQTTError,
    PacketType,
    Prop,
    PubRel,
    ReasonCode,
    decode,
    encode,
)

from . import handlers
from .flow import FlowControl, Pause
from .session import Delivery, OutState
from .state import State

log = logging.getLogger("shoal.conn")

WRITE_HIGH_WATER = 4 * 1024 * 1024  # bytes buffered for a client before QoS 0 is dropped
LINGER = 2.0  # seconds a closed connection's socket keeps draining what the client still sends


class Writer:
    """Flushes every connection written to in this loop pass, once, at its end."""

    __slots__ = ("loop", "pending", "scheduled")

    def __init__(self, loop) -> None:
        self.loop = loop
        self.pending: list = []
        self.scheduled = False

    def dirty(self, conn) -> None:
        self.pending.append(conn)
        if not self.scheduled:
            self.scheduled = True
            self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.scheduled = False
        pending, self.pending = self.pending, []
        for conn in pending:
            if conn.out is not None:
                conn.flush()


class Connection(asyncio.Protocol):
    __slots__ = (
        "broker", "transport", "framer", "state", "version", "v5", "client_id", "username",
        "session", "keepalive", "last_rx", "expiry_interval", "will", "send_window",
        "client_max_packet", "aliases", "congested", "backlog", "peer", "request_problem_info",
        "normal_disconnect", "connect_timer", "incoming_max", "_connack_extra", "out", "out_alias_max",
        "out_aliases", "held", "claim_at", "admitted", "rate", "flow", "sub_answers", "__weakref__",
    )

    def __init__(self, broker):
        self.broker = broker
        self.transport = None
        self.framer = Framer(broker.settings.max_packet_size)
        self.state = State.NEW
        self.version = 4
        self.v5 = False
        self.client_id = ""
        self.username = None
        self.session = None
        self.keepalive = 0
        self.last_rx = 0.0
        self.expiry_interval = 0
        self.will = None
        self.send_window = 65535
        self.client_max_packet = 0
        self.aliases: dict[int, str] = {}
        self.congested = False
        self.backlog: list | None = None
        self.peer = ""
        self.request_problem_info = True
        self.normal_disconnect = False
        self.connect_timer = None
        self.incoming_max = broker.settings.receive_maximum
        self._connack_extra = (False, None, False)
        self.out: list | None = None  # bytes written this loop pass, flushed together
        self.out_alias_max = 0  # the client's Topic Alias Maximum (v5)
        self.out_aliases: dict[str, int] | None = None  # topic -> alias we set on this connection
        self.held: list | None = None  # deliveries held while a SUBSCRIBE waits (see hold)
        self.claim_at = 0.0  # when the CONNECT asked the node for its client id (takeover latency)
        self.admitted = False  # counted in broker.admitted (SHOAL_MAX_CONNECTIONS)
        self.rate = None  # limits.PublishRate when SHOAL_MAX_PUBLISH_RATE is set
        self.flow = FlowControl(None)  # the one owner of this connection's reading (flow.py)
        self.sub_answers = None  # SUBACKs waiting for routes, in order (subwait.py)

    # -- asyncio callbacks -------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        self.flow.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.broker.connections.add(self)
        self.broker.metrics.connections_total += 1
        clock = self.broker.clock
        self.last_rx = clock()
        self.connect_timer = clock.call_later(self.broker.settings.connect_timeout, self._connect_timeout)

    def _connect_timeout(self) -> None:
        if self.state == State.NEW:
            log.info("no CONNECT in time, closing", extra=kv(peer=self.peer))
            self.close()

    def data_received(self, data: bytes) -> None:
        if self.state == State.CLOSED:  # lingering after close(): drop what the client still sends
            return
        broker = self.broker
        # the clock is read once per read: what this data causes (expiry intervals set
        # and counted down, deliveries) must not see the time of the last tick
        self.last_rx = broker.now = broker.clock()
        broker.metrics.bytes_received += len(data)
        try:
            for first, body in self.framer.feed(data):
                if self.backlog is not None:
                    self.backlog.append((first, body))
                    continue
                if self.state == State.CLOSED:
                    break
                self.handle_frame(first, body)
        except MQTTError as e:
            self.protocol_error(e)

    def handle_frame(self, first: int, body: bytes) -> None:
        if self.state == State.CONNECTED:
            # SUBSCRIBEs waiting for routes are bounded (subwait.py): a SUBSCRIBE waits for
            # room in the worker; any other packet waits for the SUBACKs before it
            if first >> 4 == PacketType.SUBSCRIBE:
                gate = self.broker.subgate
                if gate.full():
                    gate.park(self, (first, body))
                    return
            elif self.sub_answers is not None:
                self.suspend(Pause.SUBSCRIBING)
                self.backlog.insert(0, (first, body))
                return
        try:
            packet = decode(first, body, self.version)
            ptype = packet.TYPE
            self.broker.metrics.messages_received += 1
            if self.state != State.CONNECTED:
                if ptype != PacketType.CONNECT:
                    if self.state == State.NEW:
                        log.info("first packet is not CONNECT, closing", extra=kv(peer=self.peer, packet=ptype.name))
                        self.close()
                        return
                    raise MQTTError(ReasonCode.PROTOCOL_ERROR, "packet before CONNACK")
                handlers.handle_connect(self, packet)
                return
            handlers.DISPATCH[ptype](self, packet)
        except MQTTError as e:
            self.protocol_error(e)
        except Exception:
            log.exception("internal error handling a packet", extra=kv(client=self.client_id, peer=self.peer))
            self.protocol_error(MQTTError(ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR, "internal error"))

    def connection_lost(self, exc) -> None:
        """The connection ended: close() calls this at once, asyncio again
        when the socket is gone (the second call finds nothing left to do)."""
        broker = self.broker
        prev = self.state
        self.state = State.CLOSED
        broker.connections.discard(self)
        if self.admitted:
            self.admitted = False
            broker.admitted -= 1
        if self.connect_timer is not None:
            self.connect_timer.cancel()
        broker.keepalive.discard(self)  # or it keeps this connection and its buffers until its deadline
        session = self.session
        if session is not None:
            self.session = None
            broker.detach(session, self, send_will=not self.normal_disconnect)
            log.debug("disconnected", extra=kv(client=self.client_id, peer=self.peer))
        elif prev == State.CONNECTING:
            pass  # the claim answer will see conn.closed

    def pause_writing(self) -> None:
        self.congested = True

    def resume_writing(self) -> None:
        self.congested = False
        self.pump()

    # -- state -------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self.state == State.CLOSED

    def keepalive_deadline(self) -> float | None:
        if self.state == State.CLOSED or not self.keepalive:
            return None
        return self.last_rx + self.keepalive * 1.5

    def keepalive_expired(self) -> None:
        log.info("keepalive timeout", extra=kv(client=self.client_id, keepalive=self.keepalive))
        self.disconnect(ReasonCode.KEEP_ALIVE_TIMEOUT)

    # -- writing -----------------------------------------------------------
    def write(self, data: bytes) -> None:
        """Queue bytes for this connection; everything written in one loop pass
        goes to the socket in one write (Writer.flush)."""
        if self.state == State.CLOSED:
            return
        m = self.broker.metrics
        m.bytes_sent += len(data)
        m.messages_sent += 1
        out = self.out
        if out is not None:
            out.append(data)
            return
        writer = self.broker.writer
        if writer is None:  # no event loop (unit tests): straight to the transport
            if not self.transport.is_closing():
                self.transport.write(data)
            return
        self.out = [data]
        writer.dirty(self)

    def flush(self) -> None:
        out, self.out = self.out, None
        if out and not self.transport.is_closing():
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def send(self, packet) -> None:
        self.write(encode(packet, self.version))

    def pingresp(self) -> None:
        self.write(PINGRESP_BYTES)

    def disconnect(self, code: int, reason: str = "") -> None:
        """Server-side DISCONNECT (v5 only on the wire) and close. A connection whose CONNECT
        is read but not yet answered (its grant or password check pending) gets a refusing
        CONNACK instead: v5 0x88 Server unavailable, 3.1.1 return code 3 (the codes a
        DISCONNECT carries, such as 0x8B or 0x9C here, mean nothing to a client still waiting
        for its CONNACK). Before, a node that lost its lease closed such a client without a
        word."""
        if self.state == State.CLOSED:
            return
        if self.state == State.CONNECTING:
            handlers.refuse_connect(self, MQTTError(ReasonCode.SERVER_UNAVAILABLE, reason))
            return
        if self.v5 and self.state == State.CONNECTED:
            props = {}
            if reason and self.request_problem_info:
                props[Prop.REASON_STRING] = reason
            self.send(Disconnect(code, props))
        self.close()

    def close(self) -> None:
        """End the connection now; the socket closes gracefully.

        A plain close while the client is still sending (PUBRELs for the
        PUBRECs it is reading, packets after a refused CONNECT) makes the
        kernel answer with RST, and the client may lose our last packet
        (CONNACK or DISCONNECT) before it reads it. So the session ends here,
        but the socket only half-closes (FIN after what is buffered) and what
        the client still sends is read and dropped until it closes, for at
        most LINGER seconds."""
        if self.out is not None:
            self.flush()
        t = self.transport
        if t is not None and not t.is_closing():
            if self.state == State.CLOSED or not t.can_write_eof():
                t.close()
            else:
                t.write_eof()
                self.flow.drain()  # read and drop what the client still sends, whatever paused it
                try:
                    self.broker.clock.call_later(LINGER, t.close)
                except RuntimeError:  # no event loop (unit tests)
                    t.close()
        self.connection_lost(None)

    def protocol_error(self, e: MQTTError) -> None:
        self.broker.metrics.protocol_errors += 1
        log.info("protocol error, closing",
                 extra=kv(client=self.client_id or "-", peer=self.peer, reason=f"0x{int(e.code):02X}", detail=e.detail))
        if self.state == State.NEW or self.state == State.CONNECTING:
            handlers.refuse_connect(self, e)
            return
        self.disconnect(e.code, e.detail)

    def takeover(self) -> None:
        """Another connection took this client id over."""
        log.info("session taken over", extra=kv(client=self.client_id, peer=self.peer))
        self.session = None
        self.disconnect(ReasonCode.SESSION_TAKEN_OVER)
        self.state = State.CLOSED
        self.broker.connections.discard(self)

    # -- connect completion ---------------------------------------------------
    def suspend(self, reason: Pause) -> None:
        """Stop reading, and hold the packets already read, until resume(reason):
        those after a CONNECT until the node grants the client id, those after a
        SUBSCRIBE until its routes are in, those past the publish rate."""
        if self.backlog is None:
            self.backlog = []
        self.flow.pause(reason)

    def resume(self, reason: Pause) -> None:
        """reason is gone: handle what was held, in order, then read again
        unless another reason still pauses the connection (flow.py)."""
        flow = self.flow
        if self.state == State.CLOSED or not flow.forget(reason):
            return
        if flow.holds_packets():  # another reason holds the packets still
            return
        backlog, self.backlog = self.backlog, None  # the socket stays paused while these are handled
        for i, (first, body) in enumerate(backlog or ()):
            if self.state == State.CLOSED:
                return
            self.handle_frame(first, body)
            if self.backlog is not None:  # suspended again (e.g. a SUBSCRIBE waiting for routes)
                self.backlog[:0] = backlog[i + 1:]
                break
        if self.state != State.CLOSED:
            flow.settle()

    def complete_connect(self, session, present: bool) -> None:
        handlers.send_connack(self, session, present)
        self.state = State.CONNECTED
        self.session = session
        if self.connect_timer is not None:
            self.connect_timer.cancel()
            self.connect_timer = None
        if self.keepalive:
            self.broker.keepalive.add(self, self.last_rx + self.keepalive * 1.5)
        self.resend_inflight()
        self.pump()
        self.resume(Pause.CONNECTING)

    # -- delivery --------------------------------------------------------------
    def hold(self) -> None:
        """A SUBSCRIBE waits for the other workers: what arrives for this client
        meanwhile waits too, so that the subscription's retained messages, sent
        with its SUBACK, come before any live message (release)."""
        if self.held is None:
            self.held = []

    def release(self) -> list:
        held, self.held = self.held, None
        return held or []

    def deliver(self, d: Delivery) -> None:
        held = self.held
        if held is not None:
            if len(held) < self.broker.settings.max_queued_messages:
                held.append(d)
            else:
                self.broker.drop_queue_full(self.session, d)
            return
        s = self.session
        if d.qos == 0:
            if self.congested:
                self.broker.metrics.dropped_qos0 += 1
                return
            self.send_publish(d, 0)
        elif not s.queue and len(s.inflight) < self.send_window:
            self.start_inflight(s, d)
        else:
            self.broker.enqueue(s, d)

    def start_inflight(self, s, d: Delivery) -> None:
        pid = s.allocate_pid()
        d.packet_id = pid
        store = self.broker.store_for(s)
        if self.send_publish(d, pid):
            s.inflight[pid] = d
            if store is not None:
                store.inflight(s, d, self.broker.now)  # replaces its queue record in one write
        elif store is not None:
            store.unqueued(s, d)

    def send_publish(self, d: Delivery, pid: int, dup: bool = False) -> bool:
        """Write one PUBLISH; False when it could not be sent (expired, too large)."""
        msg = d.msg
        broker = self.broker
        now = broker.now
        if msg.expires_at is not None and now >= msg.expires_at:
            broker.metrics.dropped_expired += 1
            return False
        aliases = self.out_aliases
        new_alias = 0
        if aliases is None:
            head, tail = msg.encode(self.v5, d.qos, d.retain, d.sub_ids, now)
        else:  # the client takes topic aliases: the first message on a topic sets one, later ones use it
            alias = aliases.get(msg.topic, 0)
            if not alias and len(aliases) < self.out_alias_max:
                alias = new_alias = len(aliases) + 1
            if alias:
                head, tail = msg.encode_aliased(d.qos, d.retain, d.sub_ids, now, alias, new_alias != 0)
            else:
                head, tail = msg.encode(True, d.qos, d.retain, d.sub_ids, now)
        if pid:
            data = b"".join((bytes((head[0] | 0x08,)) + head[1:] if dup else head, pid.to_bytes(2, "big"), tail))
        else:
            data = head + tail
        if self.client_max_packet and len(data) > self.client_max_packet:
            broker.metrics.dropped_too_large += 1
            return False
        if new_alias:  # only once the client is sure to see the topic with it
            aliases[msg.topic] = new_alias
        broker.metrics.publish_sent_qos[d.qos] += 1
        self.write(data)
        return True

    def pump(self) -> None:
        """Move queued messages into the window."""
        s = self.session
        if s is None or self.state != State.CONNECTED:
            return
        q = s.queue
        window = self.send_window
        inflight = s.inflight
        while q and len(inflight) < window:
            d = q.popleft()
            if d.qos == 0:
                self.send_publish(d, 0)
            else:
                self.start_inflight(s, d)

    def resend_inflight(self) -> None:
        s = self.session
        for pid, d in list(s.inflight.items()):
            if d.state == OutState.RELEASED:
                self.send(PubRel(pid))
            elif not self.send_publish(d, pid, dup=True):
                del s.inflight[pid]
                store = self.broker.store_for(s)
                if store is not None:
                    store.acked(s, pid)
