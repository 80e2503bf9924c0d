"""Will messages: when they are sent (abnormal close, keepalive, protocol
error, v5 DISCONNECT 0x04, takeover with clean start), when not (normal
DISCONNECT, reconnect within the will delay), and what they carry (QoS,
retain, v5 properties), for 3.1.1 and 5.0."""
import time

import pytest

from mqtt import (
    Connack,
    Disconnect,
    Prop,
    Publish,
    ReasonCode,
    SubAck,
    Subscribe,
    Subscription,
    Will,
)
from tests.support.clients import persistent

SEI = Prop.SESSION_EXPIRY_INTERVAL
WDI = Prop.WILL_DELAY_INTERVAL


# -- helpers ------------------------------------------------------------------------
def subscriber(clients, node, cid, version, topic_filter, qos=2):
    c = clients.connect(node.port, cid, version)
    c.send(Subscribe(1, [Subscription(topic_filter, qos)]))
    assert c.expect(SubAck).reason_codes == [qos]
    return c


def will_client(clients, node, cid, version, will, **kw):
    """A connected client carrying `will`; returns (client, CONNACK)."""
    c = clients.open(node.port, version)
    kw.setdefault("keepalive", 60)
    ack = c.connect(cid, will=will, **kw)
    assert isinstance(ack, Connack) and ack.reason_code == 0, ack
    return c, ack


def expect_will(sub, topic, payload, timeout=5.0):
    p = sub.expect(Publish, timeout)
    assert (p.topic, p.payload) == (topic, payload), p
    return p


def nothing_before_sentinel(sub, clients, node, version, topic):
    """Publish a sentinel on `topic` from another client: it must be the first
    thing the subscriber receives."""
    pub = clients.connect(node.port, f"{topic}-sentinel", version)
    pub.send(Publish(topic, b"sentinel", 0))
    pub.barrier()
    p = sub.expect(Publish)
    assert (p.topic, p.payload) == (topic, b"sentinel"), p


# -- sent on abnormal close ----------------------------------------------------------
@pytest.mark.parametrize("will_qos", [0, 1, 2])
def test_will_on_socket_close_with_its_qos(node, version, clients, will_qos):
    topic = f"w07/close/{will_qos}/{version}"
    sub = subscriber(clients, node, f"w07-close-sub-{will_qos}-{version}", version, topic, qos=2)
    c, _ = will_client(clients, node, f"w07-close-{will_qos}-{version}", version,
                       Will(topic, b"gone", will_qos))
    c.close()
    p = expect_will(sub, topic, b"gone")
    assert p.qos == will_qos
    assert p.retain is False
    assert (p.packet_id is not None) == (will_qos > 0)


def test_will_qos_downgraded_to_subscription(node, version, clients):
    topic = f"w07/down/{version}"
    sub = subscriber(clients, node, f"w07-down-sub-{version}", version, topic, qos=0)
    c, _ = will_client(clients, node, f"w07-down-{version}", version, Will(topic, b"x", 2))
    c.close()
    assert expect_will(sub, topic, b"x").qos == 0


def test_retained_will_is_stored(node, version, clients):
    topic = f"w07/retain/{version}"
    sub = subscriber(clients, node, f"w07-ret-sub-{version}", version, topic, qos=1)
    c, _ = will_client(clients, node, f"w07-ret-{version}", version, Will(topic, b"last words", 1, retain=True))
    c.close()
    live = expect_will(sub, topic, b"last words")
    assert live.retain is False  # to an existing subscription: retain 0 (no retain-as-published)
    late = clients.connect(node.port, f"w07-ret-late-{version}", version)
    late.send(Subscribe(1, [Subscription(topic, 1)]))
    assert late.expect(SubAck).reason_codes == [1]
    stored = expect_will(late, topic, b"last words")
    assert stored.retain is True
    assert stored.qos == 1
    # clear it so the node holds no stray retained message
    late.send(Publish(topic, b"", 0, retain=True))
    late.barrier()


def test_will_v5_properties_forwarded_unchanged(node, clients):
    topic = "w07/props"
    sub = subscriber(clients, node, "w07-props-sub", 5, topic, qos=1)
    props = {
        Prop.PAYLOAD_FORMAT_INDICATOR: 1,
        Prop.CONTENT_TYPE: "text/plain; charset=utf-8",
        Prop.RESPONSE_TOPIC: "w07/props/reply",
        Prop.CORRELATION_DATA: b"\x00\x01corr\xff",
        Prop.USER_PROPERTY: [("k", "v1"), ("k", "v2"), ("other", "")],
        Prop.MESSAGE_EXPIRY_INTERVAL: 300,
    }
    c, _ = will_client(clients, node, "w07-props", 5, Will(topic, "adiós".encode(), 1, properties=props))
    c.close()
    p = expect_will(sub, topic, "adiós".encode())
    got = dict(p.properties)
    expiry = got.pop(Prop.MESSAGE_EXPIRY_INTERVAL)
    assert 295 <= expiry <= 300
    want = dict(props)
    del want[Prop.MESSAGE_EXPIRY_INTERVAL]
    assert got == want
    assert list(got[Prop.USER_PROPERTY]) == [("k", "v1"), ("k", "v2"), ("other", "")]  # order kept


def test_will_to_v311_subscriber_from_v5_client(node, clients):
    topic = "w07/mixed"
    sub = subscriber(clients, node, "w07-mixed-sub", 4, topic, qos=1)
    c, _ = will_client(clients, node, "w07-mixed", 5,
                       Will(topic, b"m", 1, properties={Prop.USER_PROPERTY: [("a", "b")]}))
    c.close()
    p = expect_will(sub, topic, b"m")
    assert p.qos == 1 and p.properties == {}


def test_will_on_protocol_error(node, version, clients):
    topic = f"w07/proto/{version}"
    sub = subscriber(clients, node, f"w07-proto-sub-{version}", version, topic)
    c, _ = will_client(clients, node, f"w07-proto-{version}", version, Will(topic, b"bad", 1))
    c.send_bytes(b"\x36\x00")  # PUBLISH with QoS 3: malformed, the broker closes
    got = c.expect_closed()
    if version == 5:
        assert [d.reason_code for d in got] == [ReasonCode.MALFORMED_PACKET]
    expect_will(sub, topic, b"bad")


def test_will_on_keepalive_timeout(node, version, clients):
    topic = f"w07/ka/{version}"
    sub = subscriber(clients, node, f"w07-ka-sub-{version}", version, topic)
    c, _ = will_client(clients, node, f"w07-ka-{version}", version, Will(topic, b"timeout", 1), keepalive=1)
    t0 = time.monotonic()
    # the will comes after the broker gave up on the silent client (1.5 x 1 s)
    expect_will(sub, topic, b"timeout", timeout=6)
    assert time.monotonic() - t0 >= 1.3
    got = c.expect_closed()
    if version == 5:
        assert [d.reason_code for d in got] == [ReasonCode.KEEP_ALIVE_TIMEOUT]
    else:
        assert got == []


# -- not sent --------------------------------------------------------------------------
def test_no_will_on_normal_disconnect(node, version, clients):
    topic = f"w07/normal/{version}"
    sub = subscriber(clients, node, f"w07-normal-sub-{version}", version, topic)
    c, _ = will_client(clients, node, f"w07-normal-{version}", version, Will(topic, b"no", 1, retain=True))
    c.send(Disconnect())
    assert c.expect_closed() == []
    nothing_before_sentinel(sub, clients, node, version, topic)
    # nor was it retained
    late = clients.connect(node.port, f"w07-normal-late-{version}", version)
    late.send(Subscribe(1, [Subscription(topic, 1)]))
    late.expect(SubAck)
    assert late.barrier() == []


def test_no_will_on_v5_disconnect_with_other_codes(node, clients):
    topic = "w07/normal-0x80"
    sub = subscriber(clients, node, "w07-0x80-sub", 5, topic)
    c, _ = will_client(clients, node, "w07-0x80", 5, Will(topic, b"no", 1))
    c.send(Disconnect(ReasonCode.UNSPECIFIED_ERROR))  # mosquitto: only 0x04 keeps the will
    assert c.expect_closed() == []
    nothing_before_sentinel(sub, clients, node, 5, topic)


# -- v5 DISCONNECT 0x04 -----------------------------------------------------------------
def test_will_on_disconnect_with_will_message(node, clients):
    topic = "w07/0x04"
    sub = subscriber(clients, node, "w07-0x04-sub", 5, topic)
    c, _ = will_client(clients, node, "w07-0x04", 5, Will(topic, b"asked for", 1))
    c.send(Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE))
    assert c.expect_closed() == []
    assert expect_will(sub, topic, b"asked for").qos == 1


# -- will delay interval (v5) -------------------------------------------------------------
def test_will_delay_sends_after_delay(node, clients):
    topic = "w07/delay"
    sub = subscriber(clients, node, "w07-delay-sub", 5, topic)
    c, _ = will_client(clients, node, "w07-delay", 5, Will(topic, b"later", 1, properties={WDI: 2}),
                       clean_start=True, properties={SEI: 60})
    c.close()
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):  # not before the delay
        sub.recv(timeout=1.5)
    expect_will(sub, topic, b"later", timeout=3)
    assert 1.8 <= time.monotonic() - t0 <= 4.0


def test_will_delay_cancelled_by_reconnect(node, clients):
    topic = "w07/cancel"
    sub = subscriber(clients, node, "w07-cancel-sub", 5, topic)
    will = Will(topic, b"cancelled", 1, properties={WDI: 1})
    a, _ = will_client(clients, node, "w07-cancel", 5, will, clean_start=True, properties={SEI: 60})
    # a control client whose will is due a second later than the cancelled one
    ctl, _ = will_client(clients, node, "w07-cancel-ctl", 5, Will(topic, b"control", 1, properties={WDI: 2}),
                         clean_start=True, properties={SEI: 60})
    a.close()
    ctl.close()
    b, ack = will_client(clients, node, "w07-cancel", 5, None, clean_start=False, properties={SEI: 60})
    assert ack.session_present is True
    # the control's will comes first: the cancelled one was due earlier
    expect_will(sub, topic, b"control", timeout=5)
    assert sub.barrier() == []
    # the resumed connection has no will: a later abnormal close sends nothing
    b.close()
    nothing_before_sentinel(sub, clients, node, 5, topic)


@pytest.mark.parametrize("expiry", [0, 1])
def test_will_sent_at_session_end_before_delay(node, clients, expiry):
    topic = f"w07/ends/{expiry}"
    sub = subscriber(clients, node, f"w07-ends-sub-{expiry}", 5, topic)
    c, _ = will_client(clients, node, f"w07-ends-{expiry}", 5, Will(topic, b"session over", 1, properties={WDI: 30}),
                       clean_start=True, properties={SEI: expiry})
    c.close()
    t0 = time.monotonic()
    expect_will(sub, topic, b"session over", timeout=5)
    elapsed = time.monotonic() - t0
    if expiry == 0:
        assert elapsed < 0.9, elapsed  # the session ends with the connection
    else:
        assert 0.8 <= elapsed <= 3.0, elapsed


# -- takeover ------------------------------------------------------------------------------
def test_will_on_takeover_with_clean_start(node, version, clients):
    topic = f"w07/take/{version}"
    cid = f"w07-take-{version}"
    sub = subscriber(clients, node, f"w07-take-sub-{version}", version, topic)
    old, _ = will_client(clients, node, cid, version, Will(topic, b"replaced", 1), **persistent(version))
    new, ack = will_client(clients, node, cid, version, None, clean_start=True)
    assert ack.session_present is False
    got = old.expect_closed()
    if version == 5:
        assert [d.reason_code for d in got] == [ReasonCode.SESSION_TAKEN_OVER]
    expect_will(sub, topic, b"replaced")


def test_delayed_will_on_takeover_with_clean_start(node, clients):
    """Clean start ends the old session: a delayed will goes out at once."""
    topic = "w07/take-delayed"
    sub = subscriber(clients, node, "w07-take-delayed-sub", 5, topic)
    old, _ = will_client(clients, node, "w07-take-delayed", 5, Will(topic, b"now", 1, properties={WDI: 30}),
                         clean_start=False, properties={SEI: 60})
    new, _ = will_client(clients, node, "w07-take-delayed", 5, None, clean_start=True)
    assert [d.reason_code for d in old.expect_closed()] == [ReasonCode.SESSION_TAKEN_OVER]
    expect_will(sub, topic, b"now", timeout=1.5)


def test_delayed_will_not_sent_on_takeover_that_resumes(node, clients):
    topic = "w07/take-resume"
    sub = subscriber(clients, node, "w07-take-resume-sub", 5, topic)
    old, _ = will_client(clients, node, "w07-take-resume", 5, Will(topic, b"kept quiet", 1, properties={WDI: 1}),
                         clean_start=False, properties={SEI: 60})
    new, ack = will_client(clients, node, "w07-take-resume", 5, None, clean_start=False, properties={SEI: 60})
    assert ack.session_present is True
    assert [d.reason_code for d in old.expect_closed()] == [ReasonCode.SESSION_TAKEN_OVER]
    # a control will due later than the old one would have been
    ctl, _ = will_client(clients, node, "w07-take-resume-ctl", 5, Will(topic, b"control", 1, properties={WDI: 2}),
                         clean_start=True, properties={SEI: 60})
    ctl.close()
    expect_will(sub, topic, b"control", timeout=5)
    assert sub.barrier() == []
