"""Raw MQTT clients over TLS and WebSocket: tests.support.raw.RawClient with its
socket swapped for a TLS socket, or for a WebSocket (wsproto client side)."""
from __future__ import annotations

import socket
import ssl

from wsproto import ConnectionType, WSConnection
from wsproto.events import (AcceptConnection, BytesMessage, CloseConnection, Message, Ping, RejectConnection,
                            RejectData, Request, TextMessage)

from tests.support import wire
from tests.support.raw import RawClient


def client_context(ca: str | None, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=ca)
    if cert is not None:
        ctx.load_cert_chain(*cert)
    return ctx


class WsRejected(Exception):
    def __init__(self, status: int, body: bytes):
        super().__init__(f"upgrade refused: {status} {body!r}")
        self.status = status
        self.body = body


class WsSocket:
    """Enough of a socket for RawClient: sendall() sends one binary frame, recv()
    returns the payload of binary frames. `frames` counts the frames received;
    `close_code` is the server's Close code once it sent one."""

    def __init__(self, sock, path: str = "/mqtt", subprotocols=("mqtt",), host: str = "127.0.0.1"):
        self.sock = sock
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.close_code = None
        self.text_frames = 0
        self.pending = bytearray()
        self.eof = False
        self.subprotocol = None
        sock.sendall(self.ws.send(Request(host=host, target=path, subprotocols=list(subprotocols))))
        status, body = None, b""
        while True:
            data = sock.recv(65536)
            if not data:
                raise WsRejected(status or 0, body)
            self.ws.receive_data(data)
            for ev in self.ws.events():
                if isinstance(ev, AcceptConnection):
                    self.subprotocol = ev.subprotocol
                    status = 101
                elif isinstance(ev, RejectConnection):
                    status = ev.status_code
                    if not ev.has_body:
                        raise WsRejected(status, b"")
                elif isinstance(ev, RejectData):
                    body += ev.data
                    if ev.body_finished:
                        raise WsRejected(status, body)
                else:
                    self._event(ev)
            if status == 101:
                return

    def _event(self, ev) -> None:
        if isinstance(ev, BytesMessage):
            self.pending += ev.data
        elif isinstance(ev, TextMessage):
            self.text_frames += 1
        elif isinstance(ev, Ping):
            self.sock.sendall(self.ws.send(ev.response()))
        elif isinstance(ev, CloseConnection):
            self.close_code = ev.code
            try:
                self.sock.sendall(self.ws.send(ev.response()))
            except Exception:  # noqa: BLE001 - the server may be gone already
                pass
            self.eof = True

    # -- the socket interface RawClient uses ---------------------------------------
    def settimeout(self, t) -> None:
        self.sock.settimeout(t)

    def setsockopt(self, *a) -> None:
        self.sock.setsockopt(*a)

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(self.ws.send(Message(data=bytes(data))))

    def send_frames(self, *chunks: bytes) -> None:
        """Each chunk as a binary frame of its own, all in one TCP write."""
        self.sock.sendall(b"".join(self.ws.send(Message(data=bytes(c))) for c in chunks))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_text(self, text: str) -> None:
        self.sock.sendall(self.ws.send(Message(data=text)))

    def recv(self, n: int) -> bytes:
        while not self.pending:
            if self.eof:
                return b""
            data = self.sock.recv(65536)
            if not data:
                self.eof = True
                return b""
            self.ws.receive_data(data)
            for ev in self.ws.events():
                self._event(ev)
        out = bytes(self.pending[:n])
        del self.pending[:n]
        return out

    def close(self) -> None:
        self.sock.close()


def tls_raw(port: int, ctx: ssl.SSLContext, version: int = 4, timeout: float = 10.0,
            server_hostname: str = "localhost") -> RawClient:
    c = RawClient.__new__(RawClient)
    c.version = version
    c.timeout = timeout
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    c.sock = ctx.wrap_socket(sock, server_hostname=server_hostname)
    c.framer = wire.Reader()
    c.pending = []
    c.eof = False
    return c


def ws_raw(port: int, version: int = 4, ctx: ssl.SSLContext | None = None, timeout: float = 10.0,
           path: str = "/mqtt", subprotocols=("mqtt",)) -> RawClient:
    c = RawClient.__new__(RawClient)
    c.version = version
    c.timeout = timeout
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if ctx is not None:
        sock = ctx.wrap_socket(sock, server_hostname="localhost")
    try:
        c.sock = WsSocket(sock, path, subprotocols)
    except BaseException:
        sock.close()
        raise
    c.framer = wire.Reader()
    c.pending = []
    c.eof = False
    return c
