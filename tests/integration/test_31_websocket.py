"""MQTT over WebSocket (SHOAL_WS_PORT) and WSS (SHOAL_WSS_PORT): the upgrade
(path /mqtt, subprotocol mqtt), packets split over frames and frames holding
several packets, bad frames and upgrades, back-pressure on a subscriber that
stops reading, paho's websockets transport, and MQTT.js from node and from a
page in headless Chromium, publishing to and subscribing from TCP clients."""
import socket
import ssl
import threading

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt import Connect, PingReq, PingResp, PubAck, Publish, SubAck, Subscribe, Subscription
from tests.support.certs import Certs
from tests.support.js import JsClient
from tests.support.node import Node, free_port, wait_for
from tests.support.raw import Closed, connect, sys_value
from tests.support.transports import WsRejected, client_context, ws_raw
from tests.support.wire import encode

SYS = "$SYS/broker/workers/1/"


@pytest.fixture(scope="module")
def certs():
    return Certs()


@pytest.fixture(scope="module")
def node(certs):
    # No SHOAL_TLS_CAFILE: with one, the server asks TLS clients for a certificate, and
    # Chromium's WebSocket fails on that request (ERR_SSL_CLIENT_AUTH_CERT_NEEDED) where a
    # page navigation would go on without one; see the README.
    n = Node(workers=1, sys_interval=1, connect_timeout=3, ws_port=free_port(), wss_port=free_port(),
             tls_certfile=certs.server_crt, tls_keyfile=certs.server_key)
    n.start()
    n.ws_port = int(n.env["SHOAL_WS_PORT"])
    n.wss_port = int(n.env["SHOAL_WSS_PORT"])
    yield n
    n.stop()


def tcp_subscriber(port, topic, version=4):
    c = connect(port, "", version)
    c.send(Subscribe(1, [Subscription(topic, 1)]))
    c.expect(SubAck)
    return c


# -- the upgrade -------------------------------------------------------------------------------
def test_upgrade_agrees_on_mqtt_subprotocol(node, version):
    c = ws_raw(node.ws_port, version, subprotocols=("foo", "mqtt"))
    try:
        assert c.sock.subprotocol == "mqtt"
        assert c.connect("ws-hello").reason_code == 0
    finally:
        c.close()


def test_client_offering_no_subprotocol_is_taken(node):
    """As mosquitto (libwebsockets) does; the answer then names none."""
    c = ws_raw(node.ws_port, 4, subprotocols=())
    try:
        assert c.sock.subprotocol is None
        assert c.connect("ws-nosub").reason_code == 0
    finally:
        c.close()


def test_bad_upgrades_get_an_http_answer_and_are_counted(node):
    before = sys_value(node.port, SYS + "websocket/handshakes/failed", 0)
    with pytest.raises(WsRejected) as e:
        ws_raw(node.ws_port, path="/other")
    assert e.value.status == 404 and b"/mqtt" in e.value.body
    with pytest.raises(WsRejected) as e:
        ws_raw(node.ws_port, subprotocols=("chat",))
    assert e.value.status == 400
    with socket.create_connection(("127.0.0.1", node.ws_port), timeout=10) as s:
        s.sendall(b"GET /mqtt HTTP/1.1\r\nHost: x\r\n\r\n")  # not an upgrade
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 400")
    with socket.create_connection(("127.0.0.1", node.ws_port), timeout=10) as s:
        s.sendall(encode(Connect(client_id="tcp-on-ws"), 4))  # MQTT without WebSocket
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 400")
    sys_value(node.port, SYS + "websocket/handshakes/failed", before + 4)


def test_silent_client_is_closed_after_connect_timeout(node):
    before = sys_value(node.port, SYS + "websocket/handshakes/failed", 0)
    with socket.create_connection(("127.0.0.1", node.ws_port), timeout=30) as s:
        s.sendall(b"GET /mqtt HTTP/1.1\r\n")  # and never the rest
        assert s.recv(4096) == b""  # closed by the server (SHOAL_CONNECT_TIMEOUT=3 here)
    sys_value(node.port, SYS + "websocket/handshakes/failed", before + 1)
    wait_for(lambda: "event='WebSocket upgrade timeout, closing'" in node.log(), 10, what="the timeout log line")


# -- frames ------------------------------------------------------------------------------------
def test_packets_span_frames_and_frames_hold_packets(node, version):
    """CONNECT cut over three frames, the rest of CONNECT with SUBSCRIBE in one frame,
    then SUBSCRIBE's echo PUBLISH and a PINGREQ together in one frame."""
    c = ws_raw(node.ws_port, version)
    try:
        connect_bytes = encode(Connect(client_id="ws-frames", version=version, keepalive=30), version)
        sub = encode(Subscribe(1, [Subscription("ws/frames", 1)]), version)
        c.sock.send_frames(connect_bytes[:1], connect_bytes[1:5])
        c.sock.send_frames(connect_bytes[5:] + sub)
        assert c.recv().reason_code == 0  # CONNACK
        assert isinstance(c.expect(SubAck), SubAck)
        pub = encode(Publish("ws/frames", b"x" * 300, 1, False, False, 7), version)
        ping = encode(PingReq(), version)
        c.sock.send_frames(pub[:100], pub[100:] + ping)
        got = [c.recv(), c.recv(), c.recv()]
        kinds = sorted(type(p).__name__ for p in got)
        assert kinds == ["PingResp", "PubAck", "Publish"]
        p = next(p for p in got if isinstance(p, Publish))
        assert (p.topic, p.payload) == ("ws/frames", b"x" * 300)
    finally:
        c.close()


def test_text_frame_closes_with_1003(node):
    c = ws_raw(node.ws_port, 4)
    try:
        assert c.connect("ws-text").reason_code == 0
        before = sys_value(node.port, SYS + "websocket/protocol_errors", 0)
        c.sock.send_text("not binary")
        with pytest.raises(Closed):
            c.recv(20)
        assert c.sock.close_code == 1003
        sys_value(node.port, SYS + "websocket/protocol_errors", before + 1)
    finally:
        c.close()


def test_text_frame_right_after_packets_with_answers_pending(node):
    """The PUBACK and the PUBLISH for this PUBLISH are still waiting for the end of the
    loop pass when the text frame in the same read closes the WebSocket: nothing may be
    written after our Close frame, and the worker goes on without an error."""
    mark = len(node.log())
    c = ws_raw(node.ws_port, 4)
    try:
        assert c.connect("ws-text-pending").reason_code == 0
        c.send(Subscribe(1, [Subscription("ws/pending", 1)]))
        c.expect(SubAck)
        from wsproto.events import Message

        pub = encode(Publish("ws/pending", b"p", 1, False, False, 9), 4)
        c.sock.send_raw(c.sock.ws.send(Message(data=pub)) + c.sock.ws.send(Message(data="text")))
        with pytest.raises(Closed):
            while True:
                c.recv(20)
        assert c.sock.close_code == 1003
    finally:
        c.close()
    other = ws_raw(node.ws_port, 4)
    try:
        assert other.connect("ws-text-after").reason_code == 0
        assert other.barrier() == []
    finally:
        other.close()
    assert "Traceback" not in node.log()[mark:] and "Exception in callback" not in node.log()[mark:]


def test_unmasked_frame_closes_with_1002_and_worker_serves_on(node):
    pid = node.worker_pids()[1]
    c = ws_raw(node.ws_port, 4)
    try:
        assert c.connect("ws-unmasked").reason_code == 0
        c.sock.send_raw(b"\x82\x02\xc0\x00")  # PINGREQ in a frame without the client mask
        with pytest.raises(Closed):
            c.recv(20)
        assert c.sock.close_code == 1002
    finally:
        c.close()
    assert node.worker_pids()[1] == pid
    c = ws_raw(node.ws_port, 4)
    try:
        assert c.connect("ws-after").reason_code == 0
    finally:
        c.close()


def test_ping_frame_gets_pong_and_close_frame_ends_connection(node):
    """A Close frame from the client ends the session like a lost connection (the will applies)."""
    from mqtt import Will

    watcher = tcp_subscriber(node.port, "ws/will")
    c = ws_raw(node.ws_port, 4)
    try:
        assert c.connect("ws-close", will=Will("ws/will", b"gone", 1, False)).reason_code == 0
        from wsproto.events import CloseConnection

        c.sock.send_raw(c.sock.ws.send(CloseConnection(code=1000)))
        with pytest.raises(Closed):
            c.recv(20)
        assert c.sock.close_code == 1000
        w = watcher.expect(Publish, 20)
        assert w.payload == b"gone"
    finally:
        c.close()
        watcher.close()


# -- both ways with TCP ------------------------------------------------------------------------------
@pytest.mark.parametrize("secure", [False, True], ids=["ws", "wss"])
def test_raw_websocket_and_tcp_both_ways(node, certs, version, secure):
    port, ctx = (node.wss_port, client_context(certs.ca)) if secure else (node.ws_port, None)
    ws = ws_raw(port, version, ctx=ctx)
    tcp = connect(node.port, "", version)
    try:
        assert ws.connect("").reason_code == 0
        ws.send(Subscribe(1, [Subscription("both/ws", 1)]))
        ws.expect(SubAck)
        tcp.send(Subscribe(1, [Subscription("both/tcp", 1)]))
        tcp.expect(SubAck)
        tcp.send(Publish("both/ws", b"tcp->ws", 1, False, False, 2))
        tcp.expect(PubAck)
        p = ws.expect(Publish)
        assert p.payload == b"tcp->ws"
        ws.send(PubAck(p.packet_id))
        ws.send(Publish("both/tcp", b"ws->tcp", 1, False, False, 3))
        ws.expect(PubAck)
        q = tcp.expect(Publish)
        assert q.payload == b"ws->tcp"
    finally:
        ws.close()
        tcp.close()


def test_paho_websockets_transport(node, version):
    proto = paho.MQTTv5 if version == 5 else paho.MQTTv311
    c = paho.Client(CallbackAPIVersion.VERSION2, protocol=proto, transport="websockets")
    c.ws_set_options(path="/mqtt")
    got, subscribed, connected = [], threading.Event(), threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = lambda cl, u, m: got.append(m.payload)
    c.connect("127.0.0.1", node.ws_port, 30)
    c.loop_start()
    try:
        assert connected.wait(20)
        c.subscribe("paho/ws", 1)
        assert subscribed.wait(20)
        pub = connect(node.port, "", version)
        pub.send(Publish("paho/ws", b"to paho", 1, False, False, 1))
        pub.expect(PubAck)
        pub.close()
        wait_for(lambda: got, 20, what="paho's message")
        assert got == [b"to paho"]
    finally:
        c.disconnect()
        c.loop_stop()


# -- back-pressure -------------------------------------------------------------------------------------
def test_subscriber_that_stops_reading_pushes_back(node):
    """A WebSocket subscriber that reads nothing: the socket buffers fill, the connection
    is told to pause writing, and QoS 0 messages for it are dropped and counted while the
    worker serves everyone else."""
    slow = ws_raw(node.ws_port, 4)
    assert slow.connect("ws-slow").reason_code == 0
    slow.send(Subscribe(1, [Subscription("flood/ws", 0)]))
    slow.expect(SubAck)
    slow.sock.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    before = sys_value(node.port, SYS + "publish/messages/dropped", 0)
    pub = connect(node.port, "flooder", 4)
    try:
        chunk = b"z" * 65536
        sent = 0

        def flooded():
            nonlocal sent
            for _ in range(32):
                pub.send(Publish("flood/ws", chunk, 0))
                sent += 1
            pub.barrier()
            return sent >= 768

        # 48 MiB: more than the kernel's socket buffers on both sides can hold beside
        # the 4 MiB the connection buffers before it pauses
        wait_for(flooded, 120, 0, "768 publishes of 64 KiB")
        sys_value(node.port, SYS + "publish/messages/dropped", before + 1)
        other = ws_raw(node.ws_port, 4)
        try:
            assert other.connect("ws-other").reason_code == 0
            assert other.barrier() == []
        finally:
            other.close()
    finally:
        pub.close()
        slow.close()


# -- MQTT.js in node and in Chromium ----------------------------------------------------------------------
def mqttjs_round_trip(node, script, url, version, **extra):
    """The JS client subscribes to js/in/<n>; a TCP client publishes there; the JS
    client answers on js/out/<n>, which a TCP subscriber receives."""
    tag = f"{script.split('.')[0]}-{version}-{url.split(':')[0]}"
    out = tcp_subscriber(node.port, f"js/out/{tag}", version)
    js = JsClient(script, url=url, sub=f"js/in/{tag}", pub=f"js/out/{tag}", protocolVersion=version, **extra)
    try:
        ev = js.expect("subscribed", 90)
        assert ev["granted"] == [1]
        pub = connect(node.port, "", version)
        pub.send(Publish(f"js/in/{tag}", b"hello js", 1, False, False, 1))
        pub.expect(PubAck)
        pub.close()
        msg = js.expect("message", 60)
        assert (msg["topic"], msg["payload"]) == (f"js/in/{tag}", "hello js")
        js.expect("published", 60)
        p = out.expect(Publish, 30)
        assert (p.topic, p.payload) == (f"js/out/{tag}", b"echo:hello js")
        return ev
    finally:
        out.close()
        js.close()


def test_mqttjs_node_ws(node, version):
    mqttjs_round_trip(node, "node_client.mjs", f"ws://127.0.0.1:{node.ws_port}/mqtt", version)


def test_mqttjs_node_wss(node, certs):
    mqttjs_round_trip(node, "node_client.mjs", f"wss://localhost:{node.wss_port}/mqtt", 5, ca=certs.ca)


def test_mqttjs_chromium_page_ws(node, version):
    ev = mqttjs_round_trip(node, "browser.mjs", f"ws://127.0.0.1:{node.ws_port}/mqtt", version)
    assert "Chrome" in ev["agent"]


def test_mqttjs_chromium_page_wss(node, certs):
    ev = mqttjs_round_trip(node, "browser.mjs", f"wss://localhost:{node.wss_port}/mqtt", 4, spki=certs.server_spki)
    assert "Chrome" in ev["agent"]
