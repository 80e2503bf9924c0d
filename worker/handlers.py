"""Packet handlers: plain functions, each checking in mosquitto's order
(state, flags, topic, ids, properties, alias, size, ACL, store, queue, ack)."""
from __future__ import annotations

import logging

from common.logs import kv
from mqtt import (
    Connack,
    MQTTError,
    PacketType,
    Prop,
    ProtocolError,
    PubAck,
    PubComp,
    PubRec,
    PubRel,
    ReasonCode,
    SubAck,
    UnsubAck,
    UnsupportedProtocolVersion,
    connack_code_311,
    parse_shared,
    valid_topic_filter,
    valid_topic_name,
)

from .broker import will_from_connect
from .limits import PublishRate, Sparse, count_publish
from .message import Message
from .flow import Pause
from .session import NEVER, Delivery, OutState, SubOptions
from .state import State
from .tls import use_identity

log = logging.getLogger("shoal.conn")


# -- CONNECT ---------------------------------------------------------------
def refuse_connect(conn, e: MQTTError) -> None:
    """Answer a bad CONNECT with the CONNACK its protocol level allows, then close."""
    code = e.code
    if isinstance(e, UnsupportedProtocolVersion):
        level = getattr(e, "version", None)
        conn.version = 5 if level == 5 else 4
        conn.v5 = level == 5
        conn.send(Connack(False, code if conn.v5 else 1))
    elif conn.v5:
        props = {Prop.REASON_STRING: e.detail} if e.detail and conn.request_problem_info else {}
        conn.send(Connack(False, code, props))
    elif code in (ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, ReasonCode.BAD_USER_NAME_OR_PASSWORD,
                  ReasonCode.NOT_AUTHORIZED, ReasonCode.SERVER_UNAVAILABLE, ReasonCode.BANNED,
                  ReasonCode.SERVER_BUSY, ReasonCode.UNSUPPORTED_PROTOCOL_VERSION, ReasonCode.QUOTA_EXCEEDED):
        conn.send(Connack(False, connack_code_311(code)))
    conn.close()


def handle_connect(conn, p) -> None:
    broker = conn.broker
    st = broker.settings
    if conn.state != State.NEW:
        raise ProtocolError(ReasonCode.PROTOCOL_ERROR, "second CONNECT")
    conn.version = p.version
    conn.v5 = v5 = p.version == 5
    props = p.properties
    if v5:
        if props.get(Prop.REQUEST_PROBLEM_INFORMATION) == 0:
            conn.request_problem_info = False
        if Prop.AUTHENTICATION_METHOD in props:
            raise MQTTError(ReasonCode.BAD_AUTHENTICATION_METHOD, "authentication method not supported")
    cid = p.client_id
    assigned = False
    if not cid:
        if v5 or (p.version == 4 and p.clean_start):
            cid = broker.assign_client_id()
            assigned = True
        else:
            raise MQTTError(ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "empty client id needs clean session")
    p.client_id = cid
    conn.client_id = cid
    conn.username = p.username
    # on TLS with SHOAL_TLS_USE_IDENTITY_AS_USERNAME the certificate's CN is the username
    # and, as in mosquitto, no password is checked (worker/tls.py)
    identified = st.tls_use_identity_as_username and use_identity(conn, p)
    conn._connack_extra = (assigned, None, False)
    if not admit(conn, cid):
        return
    conn.state = State.CONNECTING  # the answer may come later (password check, the node's grant)
    conn.suspend(Pause.CONNECTING)
    auth = broker.auth
    if auth is None or identified:
        if not st.allow_anonymous and p.username is None:
            raise MQTTError(ReasonCode.NOT_AUTHORIZED, "anonymous clients are not allowed")
        connect_authorised(conn, p)
    else:
        auth.start(conn, p, lambda: _authorised(conn, p), _refuse)


# -- limits that protect the node (issue 12, point 5) ------------------------------
def connection_share(settings, worker_id: int) -> int:
    """This worker's part of SHOAL_MAX_CONNECTIONS (the parts add up to it exactly)."""
    n = max(1, settings.workers)
    total = settings.max_connections
    return total // n + (1 if worker_id <= total % n else 0)


def admit(conn, cid: str) -> bool:
    """Past this worker's share of SHOAL_MAX_CONNECTIONS: v5 0x97 Quota exceeded /
    3.1.1 3 Server unavailable. A client taking over its own session here is let in."""
    broker = conn.broker
    st = broker.settings
    if st.max_connections:
        share = connection_share(st, broker.worker_id)
        old = broker.sessions.get(cid)
        if broker.admitted >= share and (old is None or old.conn is None):
            broker.metrics.refused_max_connections += 1
            held = _LIMIT_LOG.due(broker.clock())
            if held is not None:
                log.warning("connect refused: connection limit", extra=kv(
                    client=cid, peer=conn.peer, limit=st.max_connections, worker_share=share,
                    not_logged_since_last=held))
            refuse_connect(conn, MQTTError(ReasonCode.QUOTA_EXCEEDED, "connection limit reached"))
            return False
    conn.admitted = True
    broker.admitted += 1
    return True


_LIMIT_LOG = Sparse()  # a storm past the limit logs a line a second, not one per client


def _refuse(conn, code: int, detail: str) -> None:
    if not conn.closed:
        refuse_connect(conn, MQTTError(code, detail))


def _authorised(conn, p) -> None:
    if conn.closed:
        return
    conn.broker.now = conn.broker.clock()  # later than the read that brought the CONNECT
    try:
        connect_authorised(conn, p)
    except MQTTError as e:
        conn.protocol_error(e)
    except Exception:
        log.exception("internal error in CONNECT", extra=kv(client=conn.client_id, peer=conn.peer))
        conn.protocol_error(MQTTError(ReasonCode.IMPLEMENTATION_SPECIFIC_ERROR, "internal error"))


def connect_authorised(conn, p) -> None:
    """The rest of CONNECT, once the client may connect."""
    broker = conn.broker
    st = broker.settings
    v5 = conn.v5
    props = p.properties
    cid = p.client_id
    assigned = conn._connack_extra[0]
    # session expiry
    if v5:
        expiry = props.get(Prop.SESSION_EXPIRY_INTERVAL, 0)
    else:
        expiry = 0 if p.clean_start else (st.persistent_session_expiry or NEVER)
    capped = False
    if st.max_session_expiry and expiry > st.max_session_expiry:
        expiry, capped = st.max_session_expiry, True
    conn.expiry_interval = expiry
    # will
    w = p.will
    if w is not None:
        if not valid_topic_name(w.topic):
            raise MQTTError(ReasonCode.TOPIC_NAME_INVALID, "invalid will topic")
        if w.retain and not st.retain_available:
            raise MQTTError(ReasonCode.RETAIN_NOT_SUPPORTED, "retain not available")
        if broker.acl_active and not broker.acl.can_publish(cid, p.username, w.topic):
            raise MQTTError(ReasonCode.NOT_AUTHORIZED, "will topic not authorised")
        if v5 and w.properties.get(Prop.PAYLOAD_FORMAT_INDICATOR) == 1 and not _utf8(w.payload):
            raise MQTTError(ReasonCode.PAYLOAD_FORMAT_INVALID, "will payload is not UTF-8")
    conn.will = will_from_connect(p, broker.now)
    # limits the client asked for
    conn.send_window = min(props.get(Prop.RECEIVE_MAXIMUM, 65535), st.max_inflight) if v5 else st.max_inflight
    conn.client_max_packet = props.get(Prop.MAXIMUM_PACKET_SIZE, 0) if v5 else 0
    if v5 and props.get(Prop.TOPIC_ALIAS_MAXIMUM):
        conn.out_alias_max = props[Prop.TOPIC_ALIAS_MAXIMUM]
        conn.out_aliases = {}
    ka = p.keepalive
    server_ka = None
    if st.max_keepalive and (ka == 0 or ka > st.max_keepalive):
        if v5:
            ka = server_ka = st.max_keepalive
    conn.keepalive = ka
    conn.framer.max_packet_size = st.max_packet_size
    conn._connack_extra = (assigned, server_ka, capped)
    if st.max_publish_rate:
        conn.rate = PublishRate(st.max_publish_rate, broker.clock())
    broker.connect(conn, p)


def send_connack(conn, session, present: bool) -> None:
    st = conn.broker.settings
    if not conn.v5:
        conn.send(Connack(present, 0))
        log.debug("connected", extra=kv(client=conn.client_id, peer=conn.peer, version=conn.version))
        return
    assigned, server_ka, capped = conn._connack_extra
    props = {}
    if st.receive_maximum != 65535:
        props[Prop.RECEIVE_MAXIMUM] = st.receive_maximum
    props[Prop.MAXIMUM_PACKET_SIZE] = st.max_packet_size
    props[Prop.TOPIC_ALIAS_MAXIMUM] = st.topic_alias_maximum
    if not st.retain_available:
        props[Prop.RETAIN_AVAILABLE] = 0
    if assigned:
        props[Prop.ASSIGNED_CLIENT_IDENTIFIER] = conn.client_id
    if server_ka is not None:
        props[Prop.SERVER_KEEP_ALIVE] = server_ka
    if capped:
        props[Prop.SESSION_EXPIRY_INTERVAL] = conn.expiry_interval
    conn.send(Connack(present, 0, props))
    log.debug("connected", extra=kv(client=conn.client_id, peer=conn.peer, version=conn.version))


def _utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# -- PUBLISH (client -> broker) -------------------------------------------------
def handle_publish(conn, p) -> None:
    broker = conn.broker
    st = broker.settings
    qos = p.qos
    topic = p.topic
    props = p.properties
    if conn.v5 and props:
        alias = props.get(Prop.TOPIC_ALIAS)
        if alias is not None:
            if alias == 0 or alias > st.topic_alias_maximum:
                raise MQTTError(ReasonCode.TOPIC_ALIAS_INVALID, f"topic alias {alias} out of range")
            if topic:
                conn.aliases[alias] = topic
            else:
                topic = conn.aliases.get(alias)
                if topic is None:
                    raise ProtocolError(ReasonCode.PROTOCOL_ERROR, f"unknown topic alias {alias}")
        if Prop.SUBSCRIPTION_IDENTIFIER in props:
            raise ProtocolError(ReasonCode.PROTOCOL_ERROR, "subscription identifier in PUBLISH from a client")
    if not valid_topic_name(topic):
        if not topic:
            raise ProtocolError(ReasonCode.PROTOCOL_ERROR, "empty topic")
        # wildcards in a topic name break a MUST of the spec: a protocol error, as mosquitto answers
        raise ProtocolError(ReasonCode.PROTOCOL_ERROR, "wildcard in topic name")
    if p.retain and not st.retain_available:
        raise MQTTError(ReasonCode.RETAIN_NOT_SUPPORTED, "retain not available")
    if conn.rate is not None:
        count_publish(conn)  # this one goes on; reading pauses if the client is over its rate
    s = conn.session
    pid = p.packet_id
    if qos == 2:
        if pid in s.incoming_qos2:  # a resend of a message we already own
            conn.send(PubRec(pid))
            return
        if len(s.incoming_qos2) >= conn.incoming_max:
            raise MQTTError(ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
    broker.metrics.publish_received_qos[qos] += 1
    if qos and broker.store is not None and broker.store.failed and not broker.store.probe():
        broker.metrics.dropped_store_full += 1
        reply = _quota_refusal(conn, s, qos, pid)
        if reply is not None:
            conn.send(reply)
        return
    rc = 0
    if conn.v5 and props.get(Prop.PAYLOAD_FORMAT_INDICATOR) == 1 and not _utf8(p.payload):
        rc = ReasonCode.PAYLOAD_FORMAT_INVALID
    elif broker.acl_active and not broker.acl.can_publish(conn.client_id, conn.username, topic):
        rc = ReasonCode.NOT_AUTHORIZED
        broker.metrics.dropped_not_authorized += 1
        log.info("publish denied by ACL", extra=kv(client=conn.client_id, topic=topic))
    gate = None
    if rc == 0:
        msg = Message.build(topic, p.payload, qos, p.retain, props, broker.now, conn.client_id)
        if qos and broker.bridge.remote:
            gate = AckGate()
        if not broker.publish(msg, on_owned=gate) and conn.v5:
            rc = ReasonCode.NO_MATCHING_SUBSCRIBERS
    elif not conn.v5:
        rc = 0  # 3.1.1 has no way to say no: acknowledge and drop
    if qos == 0:
        return
    store = broker.store
    if qos == 2 and rc < 0x80:
        s.incoming_qos2.add(pid)
        if broker.store_for(s) is not None:
            store.qos2_in(s, pid)
    if store is not None and store.batch is not None:
        gate = gate or AckGate()
        store.after_commit(gate.wait())  # the broker owns the message once it is on disk
    if gate is None:
        if rc:
            conn.send((PubAck if qos == 1 else PubRec)(pid, rc))
        else:  # (the bytes of PUBACK/PUBREC pid, reason 0, no properties: both versions)
            conn.write(_ACK_HEAD[qos] + pid.to_bytes(2, "big"))
        return
    gate.open(conn, s, qos, pid, rc)


# PUBACK / PUBREC with reason 0 and no properties (3.1.1 and v5 alike: [first, 2, pid])
_ACK_HEAD = (b"", b"\x40\x02", b"\x50\x02")


class AckGate:
    """Holds a PUBACK/PUBREC until every part of the node owns the message
    (this worker's store, and the workers it was forwarded to). The ack's
    fields live on the gate (no closure, no packet object per publish, issue 10 workerpath)."""

    __slots__ = ("n", "ok", "conn", "s", "qos", "pid", "rc")

    def __init__(self) -> None:
        self.n = 1
        self.ok = True
        self.conn = None

    def wait(self):
        self.n += 1
        return self._release

    def open(self, conn, s, qos: int, pid: int, rc: int) -> None:
        self.conn = conn
        self.s = s
        self.qos = qos
        self.pid = pid
        self.rc = rc
        self._release(True)

    def _release(self, ok: bool) -> None:
        if not ok:
            self.ok = False
        self.n -= 1
        if self.n == 0 and self.conn is not None:
            conn, qos, pid = self.conn, self.qos, self.pid
            if not self.ok:
                reply = _quota_refusal(conn, self.s, qos, pid)
                if reply is not None:
                    conn.send(reply)
            elif self.rc:
                conn.send((PubAck if qos == 1 else PubRec)(pid, self.rc))
            else:
                conn.write(_ACK_HEAD[qos] + pid.to_bytes(2, "big"))


def _quota_refusal(conn, s, qos, pid):
    """The store could not take the message: v5 says 0x97, 3.1.1 stays silent (the client resends)."""
    if qos == 2:
        s.incoming_qos2.discard(pid)
    if not conn.v5:
        return None
    return (PubAck if qos == 1 else PubRec)(pid, ReasonCode.QUOTA_EXCEEDED)


# -- acknowledgements (client -> broker) ----------------------------------------
def _outgoing_done(conn, s, pid: int) -> None:
    """An outgoing QoS 1/2 flow ended (PUBACK, PUBCOMP, or a failed PUBREC): free
    its slot, forget it in the store, and let the queue move up."""
    del s.inflight[pid]
    store = conn.broker.store_for(s)
    if store is not None:
        store.acked(s, pid)
    conn.pump()


def handle_puback(conn, p) -> None:
    s = conn.session
    d = s.inflight.get(p.packet_id)
    if d is not None and d.qos == 1:
        _outgoing_done(conn, s, p.packet_id)


def handle_pubrec(conn, p) -> None:
    s = conn.session
    pid = p.packet_id
    d = s.inflight.get(pid)
    if d is None or d.qos != 2:
        conn.send(PubRel(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if conn.v5 else 0))
        return
    if p.reason_code >= 0x80:
        _outgoing_done(conn, s, pid)
        return
    d.state = OutState.RELEASED
    store = conn.broker.store_for(s)
    if store is not None:
        store.inflight(s, d, conn.broker.now)
    conn.send(PubRel(pid))


def handle_pubrel(conn, p) -> None:
    s = conn.session
    pid = p.packet_id
    if pid in s.incoming_qos2:
        s.incoming_qos2.discard(pid)
        store = conn.broker.store_for(s)
        if store is not None:
            store.qos2_done(s, pid)
        conn.send(PubComp(pid))
    else:
        conn.send(PubComp(pid, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND if conn.v5 else 0))


def handle_pubcomp(conn, p) -> None:
    s = conn.session
    d = s.inflight.get(p.packet_id)
    if d is not None and d.qos == 2 and d.state == OutState.RELEASED:
        _outgoing_done(conn, s, p.packet_id)


# -- SUBSCRIBE / UNSUBSCRIBE ----------------------------------------------------
def handle_subscribe(conn, p) -> None:
    broker = conn.broker
    s = conn.session
    v5 = conn.v5
    ids = p.properties.get(Prop.SUBSCRIPTION_IDENTIFIER) if v5 else None
    sub_id = ids[0] if ids else None
    codes = []
    wants_retained: list = []  # (filter, granted QoS) whose retained messages follow the SUBACK
    routes_before = len(broker._filter_refs)
    for sub in p.subscriptions:
        flt = sub.topic_filter
        shared = parse_shared(flt) if flt.startswith("$share/") else None
        if shared is not None and sub.no_local:
            raise ProtocolError(ReasonCode.PROTOCOL_ERROR, "no local on a shared subscription")
        if not valid_topic_filter(flt):
            codes.append(ReasonCode.TOPIC_FILTER_INVALID if v5 else 0x80)
            continue
        if broker.acl_active and not broker.acl.can_subscribe(conn.client_id, conn.username, flt):
            log.info("subscribe denied by ACL", extra=kv(client=conn.client_id, filter=flt))
            # v5: 0x87 for a filter no rule grants; 0x80 for one a `deny` rule refuses, which is
            # the answer the Eclipse Paho v5 interoperability suite expects for its denied topic
            denied = broker.acl.subscribe_denied_explicitly(conn.client_id, conn.username, flt)
            codes.append(ReasonCode.NOT_AUTHORIZED if v5 and not denied else 0x80)
            continue
        qos = min(sub.qos, 2)
        opts = SubOptions(qos, sub.no_local, sub.retain_as_published, sub.retain_handling, sub_id)
        new = broker.subscribe(s, flt, opts)
        codes.append(qos)
        if shared is None and (sub.retain_handling == 0 or (sub.retain_handling == 1 and new)):
            wants_retained.append((flt, qos))
    ack = SubAck(p.packet_id, codes)

    def answer() -> None:
        """SUBACK, then the retained messages as they are now (not as they were
        before a wait for the other workers: a newer one may have arrived)."""
        conn.send(ack)
        for flt, qos in wants_retained:
            for msg in broker.retained_for(flt):
                if broker.acl_active and not broker.acl.can_read(conn.client_id, conn.username, msg.topic):
                    continue
                conn.deliver(Delivery(msg, min(msg.qos, qos), True, (sub_id,) if sub_id else ()))

    new_routes = len(broker._filter_refs) - routes_before
    if broker.bridge.remote and (new_routes or conn.sub_answers is not None):
        # SUBACK once every worker of the node (and, clustered, every node) forwards
        # matching publishes to us, after the SUBACKs of earlier SUBSCRIBEs (subwait.py)
        broker.subgate.wait(conn, new_routes, answer)
        return
    answer()


def handle_unsubscribe(conn, p) -> None:
    broker = conn.broker
    s = conn.session
    codes = []
    for flt in p.topic_filters:
        if not valid_topic_filter(flt):
            codes.append(ReasonCode.TOPIC_FILTER_INVALID)
        elif broker.unsubscribe(s, flt):
            codes.append(ReasonCode.SUCCESS)
        else:
            codes.append(ReasonCode.NO_SUBSCRIPTION_EXISTED)
    conn.send(UnsubAck(p.packet_id, codes if conn.v5 else []))


# -- PING / DISCONNECT / AUTH -----------------------------------------------------
def handle_pingreq(conn, p) -> None:
    conn.pingresp()


def handle_disconnect(conn, p) -> None:
    s = conn.session
    if conn.v5:
        expiry = p.properties.get(Prop.SESSION_EXPIRY_INTERVAL)
        if expiry is not None:
            if conn.expiry_interval == 0 and expiry != 0:
                raise ProtocolError(ReasonCode.PROTOCOL_ERROR, "session expiry changed from 0 on DISCONNECT")
            st = conn.broker.settings
            if st.max_session_expiry and expiry > st.max_session_expiry:
                expiry = st.max_session_expiry
            s.expiry_interval = conn.expiry_interval = expiry
    if p.reason_code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE:
        conn.normal_disconnect = True
        if s.will is not None:
            s.will = None
            conn.broker.will_cleared(s)
    conn.close()


def handle_auth(conn, p) -> None:
    if Prop.AUTHENTICATION_METHOD in p.properties:
        raise MQTTError(ReasonCode.BAD_AUTHENTICATION_METHOD, "authentication method not supported")
    raise ProtocolError(ReasonCode.PROTOCOL_ERROR, "AUTH without an authentication method")


def handle_unexpected(conn, p) -> None:
    raise ProtocolError(ReasonCode.PROTOCOL_ERROR, f"unexpected {p.TYPE.name} from a client")


DISPATCH = {
    PacketType.CONNECT: handle_connect,
    PacketType.PUBLISH: handle_publish,
    PacketType.PUBACK: handle_puback,
    PacketType.PUBREC: handle_pubrec,
    PacketType.PUBREL: handle_pubrel,
    PacketType.PUBCOMP: handle_pubcomp,
    PacketType.SUBSCRIBE: handle_subscribe,
    PacketType.UNSUBSCRIBE: handle_unsubscribe,
    PacketType.PINGREQ: handle_pingreq,
    PacketType.DISCONNECT: handle_disconnect,
    PacketType.AUTH: handle_auth,
    PacketType.CONNACK: handle_unexpected,
    PacketType.SUBACK: handle_unexpected,
    PacketType.UNSUBACK: handle_unexpected,
    PacketType.PINGRESP: handle_unexpected,
}
