"""MQTT over TLS (SHOAL_TLS_PORT): mosquitto_pub/mosquitto_sub with --cafile, paho
with tls_set, client certificates (optional, required, from a CA Shoal does not
trust), the certificate's CN as username with an ACL, and bad handshakes
(garbage, plain MQTT, a silent client, a client that does not trust us) that
are counted in $SYS, logged, and leave the worker serving."""
import os
import re
import socket
import ssl
import subprocess
import tempfile
import threading

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt import PubAck, Publish, ReasonCode, SubAck, Subscribe, Subscription
from tests.support.certs import Certs
from tests.support.node import Node, free_port, wait_for
from tests.support.raw import Closed, connect, sys_value
from tests.support.transports import client_context, tls_raw

SYS_FAILED = "$SYS/broker/workers/1/tls/handshakes/failed"


@pytest.fixture(scope="module")
def certs():
    return Certs()


@pytest.fixture(scope="module")
def node(certs):
    """Client certificates are verified when offered, not required."""
    n = Node(workers=1, sys_interval=1, connect_timeout=3, tls_port=free_port(), **certs.settings())
    n.start()
    n.tls_port = int(n.env["SHOAL_TLS_PORT"])
    yield n
    n.stop()


def failures(node) -> int:
    return sys_value(node.port, SYS_FAILED, 0)


def tcp_subscriber(port: int, topic: str, version: int = 4):
    from tests.support.raw import connect

    c = connect(port, "", version)
    c.send(Subscribe(1, [Subscription(topic, 1)]))
    c.expect(SubAck)
    return c


def mosquitto(*args, timeout=30):
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


# -- mosquitto command-line clients ------------------------------------------------------
@pytest.mark.parametrize("proto", ["mqttv311", "mqttv5"])
def test_mosquitto_pub_cafile_reaches_tcp_subscriber(node, certs, proto):
    sub = tcp_subscriber(node.port, "tls/pub/#")
    try:
        r = mosquitto("mosquitto_pub", "--cafile", certs.ca, "-h", "localhost", "-p", str(node.tls_port),
                      "-V", proto, "-q", "1", "-t", "tls/pub/a", "-m", "over tls")
        assert r.returncode == 0, r.stderr
        p = sub.expect(Publish, 15)
        assert (p.topic, p.payload) == ("tls/pub/a", b"over tls")
    finally:
        sub.close()


def test_mosquitto_sub_cafile_receives_tcp_publish(node, certs, clients):
    sub = subprocess.Popen(["stdbuf", "-oL", "mosquitto_sub", "--cafile", certs.ca, "-h", "127.0.0.1", "-p", str(node.tls_port),
                            "-t", "tls/sub/#", "-q", "1", "-C", "1", "-v", "-d"],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        wait_for(lambda: lines.append(sub.stdout.readline()) or "SUBACK" in lines[-1], 20, 0, "mosquitto_sub's SUBACK")
        pub = clients.connect(node.port, "tcp-pub", 4)
        pub.send(Publish("tls/sub/x", b"to tls", 1, False, False, 1))
        pub.expect(PubAck)
        out, _ = sub.communicate(timeout=20)
        assert "tls/sub/x to tls" in out
    finally:
        if sub.poll() is None:
            sub.kill()
            sub.wait()


def test_client_certificate_when_offered_is_verified(node, certs):
    alice = certs.client("alice")
    r = mosquitto("mosquitto_pub", "--cafile", certs.ca, "--cert", alice[0], "--key", alice[1],
                  "-h", "localhost", "-p", str(node.tls_port), "-t", "tls/cert", "-m", "x")
    assert r.returncode == 0, r.stderr
    before = failures(node)
    mallory = certs.client("mallory", untrusted=True)
    r = mosquitto("mosquitto_pub", "--cafile", certs.ca, "--cert", mallory[0], "--key", mallory[1],
                  "-h", "localhost", "-p", str(node.tls_port), "-t", "tls/cert", "-m", "x")
    assert r.returncode != 0
    sys_value(node.port, SYS_FAILED, before + 1)
    wait_for(lambda: re.search(r"event='TLS handshake failed, closing' peer=127\.0\.0\.1:\d+ .*unknown ca|"
                               r"event='TLS handshake failed, closing' peer=127\.0\.0\.1:\d+ .*CERTIFICATE_VERIFY_FAILED",
                               node.log()), 10, what="the handshake failure in the log")


def test_client_that_does_not_trust_the_server_is_counted(node, certs):
    before = failures(node)
    r = mosquitto("mosquitto_pub", "--cafile", certs.other_ca, "-h", "localhost", "-p", str(node.tls_port),
                  "-t", "tls/x", "-m", "x")
    assert r.returncode != 0
    assert "TLS" in r.stderr or "certificate" in r.stderr.lower()
    sys_value(node.port, SYS_FAILED, before + 1)


# -- paho --------------------------------------------------------------------------------
class PahoTls:
    def __init__(self, port, ca, version, cert=None, client_id=""):
        proto = paho.MQTTv5 if version == 5 else paho.MQTTv311
        self.c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=proto)
        if cert:
            self.c.tls_set(ca_certs=ca, certfile=cert[0], keyfile=cert[1])
        else:
            self.c.tls_set(ca_certs=ca)
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.messages = []
        self.got = threading.Event()
        self.c.on_connect = lambda c, u, f, rc, p=None: self.connected.set()
        self.c.on_subscribe = lambda c, u, mid, rcs, p=None: self.subscribed.set()

        def on_message(c, u, msg):
            self.messages.append((msg.topic, msg.payload))
            self.got.set()

        self.c.on_message = on_message
        self.c.connect("localhost", port, keepalive=30)
        self.c.loop_start()
        assert self.connected.wait(20), "paho did not connect over TLS"

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()


def test_paho_tls_both_ways(node, certs, version, clients):
    p = PahoTls(node.tls_port, certs.ca, version)
    try:
        p.c.subscribe("tls/paho/in", qos=1)
        assert p.subscribed.wait(20)
        pub = clients.connect(node.port, "", version)
        pub.send(Publish("tls/paho/in", b"from tcp", 1, False, False, 1))
        pub.expect(PubAck)
        assert p.got.wait(20)
        assert p.messages == [("tls/paho/in", b"from tcp")]

        sub = tcp_subscriber(node.port, "tls/paho/out", version)
        try:
            info = p.c.publish("tls/paho/out", b"from tls", qos=1)
            info.wait_for_publish(20)
            got = sub.expect(Publish, 20)
            assert (got.topic, got.payload) == ("tls/paho/out", b"from tls")
        finally:
            sub.close()
    finally:
        p.close()


# -- bad handshakes ------------------------------------------------------------------------
def closed_by_server(sock, timeout=30.0) -> bool:
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return True


def test_garbage_and_plain_mqtt_cost_one_connection(node, certs):
    pid = node.worker_pids()[1]
    before = failures(node)
    with socket.create_connection(("127.0.0.1", node.tls_port), timeout=10) as s:
        s.sendall(os.urandom(2048))
        assert closed_by_server(s)
    with socket.create_connection(("127.0.0.1", node.tls_port), timeout=10) as s:
        s.sendall(bytes.fromhex("101000044d5154540402003c0004746573740000"))  # a plain MQTT CONNECT
        assert closed_by_server(s)
    sys_value(node.port, SYS_FAILED, before + 2)
    assert node.worker_pids()[1] == pid
    c = tls_raw(node.tls_port, client_context(certs.ca))
    try:
        assert c.connect("after-garbage").reason_code == 0
    finally:
        c.close()


def test_silent_client_is_closed_after_connect_timeout(node):
    before = failures(node)
    mark = len(node.log())
    with socket.create_connection(("127.0.0.1", node.tls_port), timeout=30) as s:
        assert closed_by_server(s, 30)  # SHOAL_CONNECT_TIMEOUT=3 on this node
    sys_value(node.port, SYS_FAILED, before + 1)
    wait_for(lambda: "event='TLS handshake failed, closing'" in node.log()[mark:] and
             "reason=timeout" in node.log()[mark:], 10, what="the timeout in the log")


def test_bad_tls_settings_stop_the_worker_with_the_reason(certs):
    missing = os.path.join(tempfile.mkdtemp(prefix="shoal-tls", dir="/tmp"), "nope.crt")
    n = Node(workers=1, tls_port=free_port(), tls_certfile=missing, tls_keyfile=certs.server_key)
    n.launch()
    try:  # the worker says why and never serves (no fixed wait for a start that does not come)
        wait_for(lambda: f"cannot start: SHOAL_TLS_CERTFILE={missing}" in n.log(), 60, 0.05, what="the reason")
    finally:
        log = n.log()
        n.stop()
    assert "event=serving" not in log


# -- required certificates, identity as username -------------------------------------------------
ACL = """\
topic read $SYS/#
pattern readwrite users/%u/#
user alice
topic readwrite team/alice/#
"""


@pytest.fixture(scope="module")
def strict(certs):
    d = tempfile.mkdtemp(prefix="shoal-acl", dir="/tmp")
    acl = os.path.join(d, "acl")
    with open(acl, "w") as f:
        f.write(ACL)
    n = Node(workers=1, sys_interval=1, tls_port=free_port(), wss_port=free_port(), acl_file=acl,
             **certs.settings(tls_require_certificate="true", tls_use_identity_as_username="true"))
    n.start()
    n.tls_port = int(n.env["SHOAL_TLS_PORT"])
    n.wss_port = int(n.env["SHOAL_WSS_PORT"])
    yield n
    n.stop()


def refused_at_handshake(port, ctx) -> bool:
    """True when the broker ends the TLS connection before any CONNACK (TLS 1.3 clients
    only see the refusal on their first read)."""
    try:
        c = tls_raw(port, ctx)
    except (ssl.SSLError, ConnectionError):
        return True
    try:
        c.connect("nocert")
    except (ssl.SSLError, ConnectionError, Closed):
        return True
    finally:
        c.close()
    return False


def test_client_without_certificate_is_refused(strict, certs):
    before = sys_value(strict.port, SYS_FAILED, 0)
    assert refused_at_handshake(strict.tls_port, client_context(certs.ca))
    r = mosquitto("mosquitto_pub", "--cafile", certs.ca, "-h", "localhost", "-p", str(strict.tls_port),
                  "-t", "users/x", "-m", "x")
    assert r.returncode != 0
    mallory = certs.client("mallory", untrusted=True)
    assert refused_at_handshake(strict.tls_port, client_context(certs.ca, mallory))
    sys_value(strict.port, SYS_FAILED, before + 3)


def test_certificate_cn_is_the_username(strict, certs, version):
    """alice's certificate makes her alice whatever CONNECT says: her %u topics and her
    user section apply, bob's do not (v5: PUBACK 0x87; 3.1.1: acknowledged, not delivered)."""
    ctx = client_context(certs.ca, certs.client("alice"))
    sub = tls_raw(strict.tls_port, ctx, version)
    pub = tls_raw(strict.tls_port, ctx, version)
    try:
        assert sub.connect("alice-sub", username="bob", password=b"ignored").reason_code == 0
        assert pub.connect("alice-pub", username="bob").reason_code == 0
        sub.send(Subscribe(1, [Subscription("users/alice/#", 1), Subscription("team/alice/#", 1),
                               Subscription("users/bob/#", 1)]))
        codes = sub.expect(SubAck).reason_codes
        assert list(codes[:2]) == [1, 1] and codes[2] >= 0x80
        for i, topic in enumerate(["users/alice/t", "team/alice/t", "users/bob/t"], start=1):
            pub.send(Publish(topic, b"m%d" % i, 1, False, False, i))
            ack = pub.expect(PubAck)
            if version == 5:
                assert ack.reason_code == (ReasonCode.NOT_AUTHORIZED if topic == "users/bob/t" else 0)
        got = [sub.expect(Publish) for _ in range(2)]
        assert sorted(p.topic for p in got) == ["team/alice/t", "users/alice/t"]
        assert sub.barrier() == []  # nothing for users/bob/t
    finally:
        sub.close()
        pub.close()


def test_plain_tcp_listener_keeps_the_connect_username(strict, clients):
    """Identity as username applies to the TLS listener only, as in mosquitto."""
    c = clients.connect(strict.port, "tcp-alice", 5, username="carol")
    c.send(Subscribe(1, [Subscription("users/carol/#", 1), Subscription("users/alice/#", 1)]))
    assert list(c.expect(SubAck).reason_codes) == [1, ReasonCode.NOT_AUTHORIZED]


# -- every worker serves the TLS and WebSocket ports ---------------------------------------------
def test_every_worker_binds_the_tls_and_websocket_ports(certs):
    """Like SHOAL_PORT, each worker binds SHOAL_TLS_PORT and SHOAL_WS_PORT with
    SO_REUSEPORT: 24 connections on each port land on both workers, at least 2 on
    each (fewer would happen by chance with probability about 2^-19)."""
    from tests.support.transports import ws_raw

    n = Node(workers=2, sys_interval=1, tls_port=free_port(), ws_port=free_port(),
             tls_certfile=certs.server_crt, tls_keyfile=certs.server_key)
    n.start()
    opened = []
    try:
        ctx = client_context(certs.ca)
        for kind, make in (("tls", lambda i: tls_raw(int(n.env["SHOAL_TLS_PORT"]), ctx)),
                           ("ws", lambda i: ws_raw(int(n.env["SHOAL_WS_PORT"])))):
            batch = []
            for i in range(24):
                c = make(i)
                assert c.connect(f"{kind}-{i}").reason_code == 0
                batch.append(c)
            opened += batch
            for wid in (1, 2):
                topic = f"$SYS/broker/workers/{wid}/clients/connected"
                sys_value(n.port, topic, 2)  # 2: the reader itself may be one of them
            for c in batch:
                c.close()
            opened.clear()
            for wid in (1, 2):  # back to none before the next port's batch
                c = connect(n.port, "", 4)
                try:
                    c.send(Subscribe(1, [Subscription(f"$SYS/broker/workers/{wid}/clients/connected", 0)]))
                    c.expect(SubAck)
                    wait_for(lambda: (lambda p: isinstance(p, Publish) and int(p.payload) <= 1)(c.recv(5)),
                             30, 0, f"worker {wid} without the batch")
                finally:
                    c.close()
    finally:
        for c in opened:
            c.close()
        n.stop()


def test_certificate_cn_is_the_username_over_wss(strict, certs):
    """The same through WebSocket over TLS: alice's certificate, bob in CONNECT."""
    from tests.support.transports import ws_raw

    ctx = client_context(certs.ca, certs.client("alice"))
    c = ws_raw(strict.wss_port, 5, ctx=ctx)
    try:
        assert c.connect("alice-wss", username="bob").reason_code == 0
        c.send(Subscribe(1, [Subscription("users/alice/wss", 1), Subscription("users/bob/wss", 1)]))
        assert list(c.expect(SubAck).reason_codes) == [1, ReasonCode.NOT_AUTHORIZED]
    finally:
        c.close()
    from tests.support.transports import WsRejected

    with pytest.raises((ssl.SSLError, ConnectionError, Closed, WsRejected)) as e:
        c = ws_raw(strict.wss_port, 5, ctx=client_context(certs.ca))  # no certificate
        try:
            c.connect("nocert-wss")
        finally:
            c.close()
    if isinstance(e.value, WsRejected):  # TLS 1.3: the refusal is seen as a close before any answer
        assert e.value.status == 0


def test_identity_as_username_with_a_password_file(certs):
    """With SHOAL_PASSWORD_FILE and SHOAL_ALLOW_ANONYMOUS=false: a TLS client whose
    certificate names it needs no password (as mosquitto's use_identity_as_username);
    a TCP client still needs its password; a TLS client without a certificate gets
    0x86 (the certificate is optional on this node)."""
    from tests.integration.test_13_auth import mosquitto_passwd

    d = tempfile.mkdtemp(prefix="shoal-pw", dir="/tmp")
    pw = mosquitto_passwd(os.path.join(d, "passwd"), {"dave": "s3cret"})
    n = Node(workers=1, tls_port=free_port(), password_file=pw, allow_anonymous="false",
             **certs.settings(tls_use_identity_as_username="true"))
    n.start()
    try:
        port = int(n.env["SHOAL_TLS_PORT"])
        c = tls_raw(port, client_context(certs.ca, certs.client("alice")), 5)
        try:
            assert c.connect("cert-alice").reason_code == 0
        finally:
            c.close()
        c = tls_raw(port, client_context(certs.ca), 5)
        try:
            assert c.connect("no-cert", username="dave", password=b"s3cret").reason_code == \
                ReasonCode.BAD_USER_NAME_OR_PASSWORD
        finally:
            c.close()
        from tests.support.raw import RawClient

        t = RawClient(n.port, 5)
        try:
            assert t.connect("tcp-dave", username="dave", password=b"wrong").reason_code == \
                ReasonCode.BAD_USER_NAME_OR_PASSWORD
        finally:
            t.close()
        t = RawClient(n.port, 5)
        try:
            assert t.connect("tcp-dave", username="dave", password=b"s3cret").reason_code == 0
        finally:
            t.close()
    finally:
        n.stop()
