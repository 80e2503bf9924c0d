"""A raw MQTT client over a blocking socket, for byte-level tests.

Packets are the codec's dataclasses (mqtt.packets) but their bytes, both ways,
are written and read by tests/support/wire.py, not by the broker's codec: a
bug in the codec cannot pass by being on both sides of a test.
"""
from __future__ import annotations

import socket
import time

from mqtt import MQTTError
from mqtt.packets import Connect, PingReq, PingResp, Publish

from . import wire
from .clients import receive  # noqa: F401  (tests import it from here too)


class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    def __init__(self, port: int, version: int = 4, host: str = "127.0.0.1", timeout: float = 5.0,
                 source: str | None = None):
        self.version = version
        self.timeout = timeout
        # source: a local address to connect from (127.0.0.0/8 is all loopback), e.g. "127.0.0.2"
        self.sock = socket.create_connection((host, port), timeout=timeout,
                                             source_address=(source, 0) if source else None)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.framer = wire.Reader()
        self.pending: list = []
        self.eof = False

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- sending ----------------------------------------------------------
    def send(self, packet) -> None:
        self.sock.sendall(wire.encode(packet, self.version))

    def send_bytes(self, data: bytes) -> None:
        self.sock.sendall(data)

    # -- receiving --------------------------------------------------------
    def recv(self, timeout: float | None = None):
        """The next packet; raises Closed on EOF and TimeoutError on timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while not self.pending:
            if self.eof:
                raise Closed()
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no packet from the broker")
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                raise TimeoutError("no packet from the broker") from None
            except ConnectionResetError:
                data = b""
            if not data:
                self.eof = True
                continue
            for first, body in self.framer.feed(data):
                self.pending.append(wire.decode(first, body, self.version))
        return self.pending.pop(0)

    def expect(self, cls, timeout: float | None = None):
        p = self.recv(timeout)
        if not isinstance(p, cls):
            raise AssertionError(f"expected {cls.__name__}, got {p!r}")
        return p

    def expect_closed(self, timeout: float | None = None) -> list:
        """Read until the broker closes; returns the packets that came before."""
        got = []
        while True:
            try:
                got.append(self.recv(timeout))
            except Closed:
                return got

    def barrier(self) -> list:
        """PINGREQ/PINGRESP round trip: returns every packet that arrived before PINGRESP."""
        self.send(PingReq())
        got = []
        while True:
            p = self.recv()
            if isinstance(p, PingResp):
                return got
            got.append(p)

    def connect(self, client_id: str = "", **kw):
        """Send CONNECT (version from the client) and return the CONNACK."""
        kw.setdefault("keepalive", 60)
        self.send(Connect(client_id=client_id, version=self.version, **kw))
        return self.recv()


def connect(port: int, client_id: str, version: int = 4, **kw) -> RawClient:
    c = RawClient(port, version)
    try:
        ack = c.connect(client_id, **kw)
    except BaseException:
        c.close()
        raise
    if getattr(ack, "reason_code", 0) != 0:
        c.close()
        raise AssertionError(f"CONNECT refused: {ack!r}")
    return c


def sys_value(port: int, topic: str, at_least: int, timeout: float = 30.0) -> int:
    """Read a retained $SYS figure until it reaches `at_least` (it is republished every second)."""
    from mqtt import SubAck, Subscribe, Subscription

    from tests.support.node import wait_for

    c = connect(port, "", 4)
    try:
        c.send(Subscribe(1, [Subscription(topic, 0)]))
        c.expect(SubAck)
        seen = []

        def reached():
            try:
                p = c.recv(1.0)
            except TimeoutError:
                return False
            if isinstance(p, Publish):
                seen.append(int(p.payload))
                return seen[-1] >= at_least
            return False

        wait_for(reached, timeout, 0, f"{topic} >= {at_least} (seen {seen[-3:]})")
        return seen[-1]
    finally:
        c.close()


__all__ = ["RawClient", "Closed", "connect", "receive", "sys_value", "MQTTError"]
