"""CONNECT / CONNACK, sessions, keepalive, DISCONNECT and the protocol errors
that close a connection, byte-level through the raw client, for 3.1.1 and 5.0.

Choices where mosquitto 2.0.11 and the spec leave room (see the report):
- wildcards in a PUBLISH topic name: v5 DISCONNECT 0x82 (protocol error, as
  mosquitto sends; [MQTT-3.3.2-2] is a MUST of the spec, not a "valid but
  refused" name, which is what 0x90 means);
- an unknown protocol level is answered with the 3.1.1 CONNACK `20 02 00 01`
  (the MUST of 3.1.1 [MQTT-3.1.2-2], what mosquitto sends); a level-5 CONNECT
  with another protocol name gets the v5 CONNACK 0x84;
- a second CONNECT on a v5 connection: DISCONNECT 0x82 before the close
  (mosquitto only closes; the spec names it a protocol error).
"""
import socket
import struct
import time

import pytest

from mqtt import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    PingReq,
    PingResp,
    Prop,
    PubAck,
    Publish,
    ReasonCode,
    Subscribe,
    Subscription,
)
from tests.support.clients import persistent, subscribe
from tests.support.node import Node, wait_for
from tests.support.raw import Closed, RawClient
from tests.support.wire import encode

SEI = Prop.SESSION_EXPIRY_INTERVAL


# -- helpers -----------------------------------------------------------------------
def open_connect(clients, port, cid, version, **kw):
    """(client, CONNACK) for a CONNECT that may be refused."""
    c = clients.open(port, version)
    ack = c.connect(cid, **kw)
    assert isinstance(ack, Connack), ack
    return c, ack


def read_until_closed(c, timeout=5.0) -> bytes:
    """Every raw byte the broker sends until it closes the connection."""
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"connection still open; received {data!r}")
        c.sock.settimeout(left)
        try:
            chunk = c.sock.recv(65536)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            return data
        data += chunk


def recv_exact(c, n, timeout=5.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < n:
        c.sock.settimeout(max(0.01, deadline - time.monotonic()))
        chunk = c.sock.recv(n - len(data))
        assert chunk, f"closed after {data!r}"
        data += chunk
    return data


def connect_bytes(name: bytes, level: int, cid: bytes = b"c01", flags: int = 0x02) -> bytes:
    body = struct.pack("!H", len(name)) + name + bytes((level, flags, 0, 60))
    if level == 5:
        body += b"\x00"  # no properties
    body += struct.pack("!H", len(cid)) + cid
    return bytes((0x10, len(body))) + body


def publish_bytes(topic: bytes, version: int, first: int = 0x30, extra: bytes = b"") -> bytes:
    body = struct.pack("!H", len(topic)) + topic + extra + (b"\x00" if version == 5 else b"") + b"payload"
    return bytes((first, len(body))) + body


def closed_with(c, version, code):
    """The broker closes `c`; a v5 client gets DISCONNECT `code` first."""
    got = c.expect_closed()
    if version == 5:
        assert len(got) == 1 and isinstance(got[0], Disconnect), got
        assert got[0].reason_code == code, got
    else:
        assert got == []


def still_serving(node, clients, version, cid):
    """The worker still accepts a fresh client."""
    c = clients.connect(node.port, cid, version)
    assert c.barrier() == []


# -- CONNACK codes -------------------------------------------------------------------
def test_connack_accepted_bytes(node, version, clients):
    c = clients.open(node.port, version)
    c.send(Connect(client_id=f"c01-ok-{version}", version=version, keepalive=60))
    if version == 4:
        assert recv_exact(c, 4) == b"\x20\x02\x00\x00"
    else:
        first, length = recv_exact(c, 2)
        assert first == 0x20 and length < 0x80
        body = recv_exact(c, length)
        assert body[:2] == b"\x00\x00"  # session present 0, reason code 0x00
        assert body[2] == length - 3  # the rest is the property section


def test_connack_v5_advertises_limits(node, clients):
    _, ack = open_connect(clients, node.port, "c01-limits", 5)
    assert ack.reason_code == 0
    assert ack.properties[Prop.MAXIMUM_PACKET_SIZE] > 0
    assert Prop.TOPIC_ALIAS_MAXIMUM in ack.properties
    assert Prop.ASSIGNED_CLIENT_IDENTIFIER not in ack.properties
    assert Prop.SERVER_KEEP_ALIVE not in ack.properties


@pytest.mark.parametrize("name,level", [(b"MQTT", 0), (b"MQTT", 2), (b"MQTT", 3), (b"MQTT", 6),
                                        (b"MQTT", 255), (b"MQIsdp", 4)])
def test_unsupported_protocol_level_v311_return_code_1(node, clients, name, level):
    c = clients.open(node.port, 4)
    c.send_bytes(connect_bytes(name, level))
    assert read_until_closed(c) == b"\x20\x02\x00\x01"


def test_unsupported_protocol_v5_reason_0x84(node, clients):
    c = clients.open(node.port, 5)
    c.send_bytes(connect_bytes(b"MQIsdp", 5))
    assert read_until_closed(c) == b"\x20\x03\x00\x84\x00"


def test_authentication_method_refused_0x8c(node, clients):
    c = clients.open(node.port, 5)
    ack = c.connect("c01-auth", properties={Prop.AUTHENTICATION_METHOD: "SCRAM-SHA-1",
                                            Prop.AUTHENTICATION_DATA: b"client-first"})
    assert isinstance(ack, Connack)
    assert ack.reason_code == ReasonCode.BAD_AUTHENTICATION_METHOD
    assert ack.session_present is False
    assert c.expect_closed() == []
    still_serving(node, clients, 5, "c01-auth-after")


def test_auth_packet_with_unknown_method_refused_0x8c(node, clients):
    c = clients.connect(node.port, "c01-authpkt", 5)
    c.send(Auth(ReasonCode.RE_AUTHENTICATE, {Prop.AUTHENTICATION_METHOD: "SCRAM-SHA-1"}))
    closed_with(c, 5, ReasonCode.BAD_AUTHENTICATION_METHOD)


# -- client identifiers ---------------------------------------------------------------
def test_v5_empty_client_id_is_assigned(node, clients):
    a, ack_a = open_connect(clients, node.port, "", 5)
    b, ack_b = open_connect(clients, node.port, "", 5, clean_start=False)
    assert ack_a.reason_code == 0 and ack_b.reason_code == 0
    id_a = ack_a.properties[Prop.ASSIGNED_CLIENT_IDENTIFIER]
    id_b = ack_b.properties[Prop.ASSIGNED_CLIENT_IDENTIFIER]
    assert id_a and id_b and id_a != id_b
    # the assigned id is the client's id: a second connection with it takes over
    c, ack_c = open_connect(clients, node.port, id_a, 5)
    assert Prop.ASSIGNED_CLIENT_IDENTIFIER not in ack_c.properties
    closed_with(a, 5, ReasonCode.SESSION_TAKEN_OVER)
    assert b.barrier() == []


def test_v311_empty_client_id_with_clean_session(node, clients):
    c = clients.open(node.port, 4)
    c.send(Connect(client_id="", clean_start=True, version=4, keepalive=60))
    assert recv_exact(c, 4) == b"\x20\x02\x00\x00"
    assert c.barrier() == []


def test_v311_empty_client_id_without_clean_session_refused_2(node, clients):
    c = clients.open(node.port, 4)
    c.send(Connect(client_id="", clean_start=False, version=4, keepalive=60))
    assert read_until_closed(c) == b"\x20\x02\x00\x02"


# -- clean session / clean start and session present ------------------------------------
def test_session_present(node, version, clients):
    cid = f"c01-present-{version}"
    topic = f"c01/present/{version}"
    c, ack = open_connect(clients, node.port, cid, version, **persistent(version))
    assert ack.session_present is False
    subscribe(c, topic, 1)
    c.send(Disconnect())
    assert c.expect_closed() == []
    # the session is there: present 1, and the subscription still works
    c, ack = open_connect(clients, node.port, cid, version, **persistent(version))
    assert ack.session_present is True
    pub = clients.connect(node.port, f"{cid}-pub", version)
    pub.send(Publish(topic, b"one", 0))
    pub.barrier()
    assert [p.payload for p in c.barrier()] == [b"one"]
    c.send(Disconnect())
    assert c.expect_closed() == []
    # clean start: present 0 and the old subscription is gone
    c, ack = open_connect(clients, node.port, cid, version, clean_start=True)
    assert ack.session_present is False
    pub.send(Publish(topic, b"two", 0))
    pub.barrier()
    assert c.barrier() == []


@pytest.mark.parametrize("close", ["disconnect", "socket-close", "takeover"])
def test_clean_session_ends_with_its_connection(node, version, clients, close):
    """3.1.1 clean session 1 / v5 session expiry 0: nothing survives the
    connection, however it ends (a takeover too: the old session ended with
    its connection, so the new one starts afresh)."""
    cid = f"c01-clean-{close}-{version}"
    topic = f"c01/clean/{close}/{version}"
    c, ack = open_connect(clients, node.port, cid, version, clean_start=True)
    assert ack.session_present is False
    subscribe(c, topic, 1)
    if close == "disconnect":
        c.send(Disconnect())
        assert c.expect_closed() == []
    elif close == "socket-close":
        c.close()
    c2, ack = open_connect(clients, node.port, cid, version, **persistent(version))
    assert ack.session_present is False
    if close == "takeover":
        closed_with(c, version, ReasonCode.SESSION_TAKEN_OVER)
    pub = clients.connect(node.port, f"{cid}-pub", version)
    pub.send(Publish(topic, b"x", 0))
    pub.barrier()
    assert c2.barrier() == []


# -- v5 session expiry -----------------------------------------------------------------
def test_session_expiry_interval(node, clients):
    cid = "c01-expiry"
    topic = "c01/expiry"
    c, ack = open_connect(clients, node.port, cid, 5, **persistent(5, expiry=2))
    subscribe(c, topic, 1)
    c.close()
    # within the interval the session is kept
    c, ack = open_connect(clients, node.port, cid, 5, **persistent(5, expiry=2))
    assert ack.session_present is True
    c.send(Disconnect())
    assert c.expect_closed() == []
    t0 = time.monotonic()
    # while the session lives, a QoS 1 publish has a subscriber (it is queued);
    # once it expired, none (v5 PUBACK 0x10)
    pub = clients.connect(node.port, "c01-expiry-pub", 5)
    pid = iter(range(1, 65536))

    def puback_code():
        n = next(pid)
        pub.send(Publish(topic, b"q", 1, packet_id=n))
        ack = pub.expect(PubAck)
        assert ack.packet_id == n
        return ack.reason_code

    assert puback_code() == 0
    wait_for(lambda: puback_code() == ReasonCode.NO_MATCHING_SUBSCRIBERS, 6, 0.05, "session expired")
    elapsed = time.monotonic() - t0
    assert 1.8 <= elapsed <= 4.0, elapsed
    c, ack = open_connect(clients, node.port, cid, 5, **persistent(5, expiry=2))
    assert ack.session_present is False
    assert c.barrier() == []  # the queued messages went with the session


def test_disconnect_sets_expiry_to_zero_ends_session(node, clients):
    cid = "c01-exp-to-0"
    c, _ = open_connect(clients, node.port, cid, 5, **persistent(5))
    c.send(Disconnect(0, {SEI: 0}))
    assert c.expect_closed() == []
    c, ack = open_connect(clients, node.port, cid, 5, **persistent(5))
    assert ack.session_present is False


def test_disconnect_extends_expiry(node, clients):
    cid = "c01-exp-up"
    c, _ = open_connect(clients, node.port, cid, 5, clean_start=False, properties={SEI: 1})
    c.send(Disconnect(0, {SEI: 600}))
    assert c.expect_closed() == []
    c, ack = open_connect(clients, node.port, cid, 5, **persistent(5))
    assert ack.session_present is True


def test_disconnect_expiry_from_zero_is_protocol_error(node, clients):
    cid = "c01-exp-from-0"
    c, _ = open_connect(clients, node.port, cid, 5, clean_start=False)  # expiry 0
    c.send(Disconnect(0, {SEI: 60}))
    closed_with(c, 5, ReasonCode.PROTOCOL_ERROR)
    c, ack = open_connect(clients, node.port, cid, 5, **persistent(5))
    assert ack.session_present is False


# -- takeover ---------------------------------------------------------------------------
def test_takeover_resumes_session(node, version, clients):
    cid = f"c01-take-{version}"
    topic = f"c01/take/{version}"
    first, _ = open_connect(clients, node.port, cid, version, **persistent(version))
    subscribe(first, topic, 1)
    second, ack = open_connect(clients, node.port, cid, version, **persistent(version))
    assert ack.reason_code == 0
    assert ack.session_present is True
    closed_with(first, version, ReasonCode.SESSION_TAKEN_OVER)
    pub = clients.connect(node.port, f"{cid}-pub", version)
    pub.send(Publish(topic, b"to-second", 0))
    pub.barrier()
    assert [p.payload for p in second.barrier()] == [b"to-second"]


def test_takeover_with_clean_start(node, version, clients):
    cid = f"c01-take-clean-{version}"
    topic = f"c01/take-clean/{version}"
    first, _ = open_connect(clients, node.port, cid, version, **persistent(version))
    subscribe(first, topic, 1)
    second, ack = open_connect(clients, node.port, cid, version, clean_start=True)
    assert ack.reason_code == 0
    assert ack.session_present is False
    closed_with(first, version, ReasonCode.SESSION_TAKEN_OVER)
    pub = clients.connect(node.port, f"{cid}-pub", version)
    pub.send(Publish(topic, b"x", 0))
    pub.barrier()
    assert second.barrier() == []


# -- keepalive --------------------------------------------------------------------------
def test_keepalive_timeout_closes_after_one_and_a_half(node, version, clients):
    silent, ack = open_connect(clients, node.port, f"c01-ka-silent-{version}", version, keepalive=1)
    t0 = time.monotonic()
    active, _ = open_connect(clients, node.port, f"c01-ka-active-{version}", version, keepalive=1)
    silent_closed = None
    # the active client talks every 0.3 s (the pace is a receive timeout that
    # also proves nothing arrived) until 1 s after the silent one was closed
    while silent_closed is None or time.monotonic() < silent_closed + 1.0:
        assert time.monotonic() - t0 < 8, "silent client never closed"
        with pytest.raises(TimeoutError):
            active.recv(timeout=0.3)
        active.send(PingReq())
        active.expect(PingResp)
        if silent_closed is None:
            try:
                got = silent.recv(timeout=0.001)
            except TimeoutError:
                continue
            except Closed:
                got = None
            silent_closed = time.monotonic()
            if version == 5:
                assert isinstance(got, Disconnect) and got.reason_code == ReasonCode.KEEP_ALIVE_TIMEOUT, got
                assert silent.expect_closed() == []
            else:
                assert got is None
            elapsed = silent_closed - t0
            assert 1.3 <= elapsed <= 3.5, elapsed
    assert active.barrier() == []


def test_keepalive_enforced_after_the_first_tick(clients):
    """A short keepalive is enforced even when a client with a long one was
    already connected at the worker's first tick (the long deadline must not
    hold back the keepalive wheel)."""
    n = Node(workers=1, sys_interval=1)
    n.start()
    try:
        long = clients.connect(n.port, "c01-ka-long", 5, keepalive=60)  # before the first tick
        subscribe(long, "$SYS/broker/uptime", 0)
        long.expect(Publish, timeout=5)  # $SYS is published from the tick: it has run
        silent, _ = open_connect(clients, n.port, "c01-ka-short", 5, keepalive=1)
        t0 = time.monotonic()
        closed_with(silent, 5, ReasonCode.KEEP_ALIVE_TIMEOUT)
        assert 1.3 <= time.monotonic() - t0 <= 3.5
        long.barrier()
    finally:
        n.stop()


@pytest.fixture(scope="module")
def ka_node():
    n = Node(workers=1, max_keepalive=5)
    n.start()
    yield n
    n.stop()


@pytest.mark.parametrize("asked,granted", [(0, 5), (100, 5), (6, 5), (5, None), (3, None)])
def test_server_keep_alive(ka_node, clients, asked, granted):
    _, ack = open_connect(clients, ka_node.port, f"c01-ska-{asked}", 5, keepalive=asked)
    assert ack.reason_code == 0
    assert ack.properties.get(Prop.SERVER_KEEP_ALIVE) == granted


def test_v311_keepalive_above_max_accepted(ka_node, clients):
    """3.1.1 cannot be told another keepalive; mosquitto accepts it too."""
    c, ack = open_connect(clients, ka_node.port, "c01-ska-v311", 4, keepalive=100)
    assert ack.reason_code == 0
    assert c.barrier() == []


# -- DISCONNECT -------------------------------------------------------------------------
@pytest.mark.parametrize("code", [0x00, 0x04, 0x80, 0x83])
def test_v5_disconnect_reason_codes_close_quietly(node, clients, code):
    c = clients.connect(node.port, f"c01-disc-{code}", 5)
    c.send(Disconnect(code, {Prop.REASON_STRING: "bye", Prop.USER_PROPERTY: [("k", "v")]}))
    assert c.expect_closed() == []


def test_v311_disconnect(node, clients):
    c = clients.connect(node.port, "c01-disc-v311", 4)
    c.send_bytes(b"\xe0\x00")
    assert read_until_closed(c) == b""


# -- protocol errors that close the connection ------------------------------------------
@pytest.mark.parametrize("packet", [PingReq(), Publish("c01/first", b"x", 0),
                                    Subscribe(1, [Subscription("c01/#", 0)]), Disconnect()],
                         ids=["pingreq", "publish", "subscribe", "disconnect"])
def test_first_packet_not_connect_closes(node, version, clients, packet):
    c = clients.open(node.port, version)
    c.send(packet)
    assert read_until_closed(c) == b""


def test_second_connect_is_protocol_error(node, version, clients):
    cid = f"c01-second-{version}"
    c = clients.connect(node.port, cid, version)
    c.send(Connect(client_id=cid, version=version, keepalive=60))
    closed_with(c, version, ReasonCode.PROTOCOL_ERROR)


RESERVED = {
    "publish-qos3": lambda v: publish_bytes(b"c01/q3", v, first=0x36, extra=b"\x00\x01"),
    "subscribe-flags-0": lambda v: bytes((0x80, 9 if v == 5 else 8, 0, 1)) + (b"\x00" if v == 5 else b"")
    + b"\x00\x03c01\x01",
    "unsubscribe-flags-0": lambda v: bytes((0xA0, 8 if v == 5 else 7, 0, 1)) + (b"\x00" if v == 5 else b"")
    + b"\x00\x03c01",
    "pubrel-flags-0": lambda v: b"\x60\x02\x00\x01",
    "pingreq-flags": lambda v: b"\xc1\x00",
    "disconnect-flags": lambda v: b"\xe2\x00",
}


@pytest.mark.parametrize("name", list(RESERVED))
def test_reserved_flag_bits_are_malformed(node, version, clients, name):
    c = clients.connect(node.port, f"c01-rsv-{name}-{version}", version)
    c.send_bytes(RESERVED[name](version))
    closed_with(c, version, ReasonCode.MALFORMED_PACKET)


def test_packet_type_0_is_malformed(node, version, clients):
    """Type 0 is forbidden (mosquitto answers 0x82; 0x81 is what the codec names it)."""
    c = clients.connect(node.port, f"c01-type0-{version}", version)
    c.send_bytes(b"\x00\x00")
    closed_with(c, version, ReasonCode.MALFORMED_PACKET)


def test_connect_reserved_flag_closes_without_connack(node, version, clients):
    c = clients.open(node.port, version)
    c.send_bytes(connect_bytes(b"MQTT", version, flags=0x03))
    assert read_until_closed(c) == b""


@pytest.mark.parametrize("topic", [b"c01/\xff", b"c01/\xc3", b"c01/\x00nul", b"c01/\xed\xa0\x80"],
                         ids=["ff", "truncated", "nul", "surrogate"])
def test_invalid_utf8_topic_is_malformed(node, version, clients, topic):
    c = clients.connect(node.port, f"c01-utf8-{topic.hex()}-{version}", version)
    c.send_bytes(publish_bytes(topic, version))
    closed_with(c, version, ReasonCode.MALFORMED_PACKET)


def test_invalid_utf8_topic_filter_is_malformed(node, version, clients):
    c = clients.connect(node.port, f"c01-utf8-filter-{version}", version)
    body = b"\x00\x01" + (b"\x00" if version == 5 else b"") + b"\x00\x04c01\xff\x00"
    c.send_bytes(bytes((0x82, len(body))) + body)
    closed_with(c, version, ReasonCode.MALFORMED_PACKET)


@pytest.mark.parametrize("topic", [b"c01/+", b"c01/#", b"+", b"#", b"c01/+/x"])
def test_wildcard_in_publish_topic_closes(node, version, clients, topic):
    sub = clients.connect(node.port, f"c01-wild-sub-{topic.hex()}-{version}", version)
    subscribe(sub, "c01/#", 0)
    c = clients.connect(node.port, f"c01-wild-{topic.hex()}-{version}", version)
    c.send_bytes(publish_bytes(topic, version))
    closed_with(c, version, ReasonCode.PROTOCOL_ERROR)
    assert sub.barrier() == []  # nothing was routed


def test_empty_topic_without_alias_is_protocol_error(node, clients):
    c = clients.connect(node.port, "c01-empty-topic", 5)
    c.send_bytes(publish_bytes(b"", 5))
    closed_with(c, 5, ReasonCode.PROTOCOL_ERROR)


# -- broken clients never take the worker down -------------------------------------------
BROKEN = {
    "garbage": b"\xde\xad\xbe\xef" * 64,
    "length-5-bytes": b"\x10\xff\xff\xff\xff\x7f",
    "half-connect": connect_bytes(b"MQTT", 4)[:9],
    "connect-header-only": b"\x10\x40",
    "huge-length": b"\x10\xff\xff\xff\x7f" + b"\x00" * 32,
    "zeros": b"\x00" * 100,
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_client_before_connect(node, version, clients, name):
    pids = node.worker_pids()
    c = clients.open(node.port, version)
    c.send_bytes(BROKEN[name])
    c.close()
    still_serving(node, clients, version, f"c01-after-{name}-{version}")
    assert node.worker_pids() == pids


@pytest.mark.parametrize("how", ["half-publish", "rst", "garbage-after-connect"])
def test_broken_client_after_connect(node, version, clients, how):
    pids = node.worker_pids()
    c = clients.connect(node.port, f"c01-broken-{how}-{version}", version)
    if how == "half-publish":
        c.send_bytes(publish_bytes(b"c01/half", version)[:6])
    elif how == "rst":
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.send_bytes(publish_bytes(b"c01/rst", version)[:3])
    else:
        c.send_bytes(b"\xff" * 1000)
    c.close()
    still_serving(node, clients, version, f"c01-after-{how}-{version}")
    assert node.worker_pids() == pids


def test_many_clients_closing_mid_packet(node, version, clients):
    pids = node.worker_pids()
    raw = encode(Connect(client_id="c01-mid", version=version, keepalive=60), version)
    for cut in range(1, len(raw)):
        c = RawClient(node.port, version)
        c.send_bytes(raw[:cut])
        c.close()
    still_serving(node, clients, version, f"c01-after-mid-{version}")
    assert node.worker_pids() == pids


# -- SIGTERM ----------------------------------------------------------------------------
def test_sigterm_sends_server_shutting_down():
    n = Node(workers=1)
    n.start()
    opened = []
    try:
        v5 = RawClient(n.port, 5)
        opened.append(v5)
        assert v5.connect("c01-term-v5").reason_code == 0
        v4 = RawClient(n.port, 4)
        opened.append(v4)
        assert v4.connect("c01-term-v4").reason_code == 0
        assert v5.barrier() == [] and v4.barrier() == []
        n.stop()
        assert n.proc.returncode is not None
        got = v5.expect_closed()
        assert len(got) == 1 and isinstance(got[0], Disconnect), got
        assert got[0].reason_code == ReasonCode.SERVER_SHUTTING_DOWN
        assert v4.expect_closed() == []
        assert "stopped" in n.log()
    finally:
        for c in opened:
            c.close()
        n.stop()
