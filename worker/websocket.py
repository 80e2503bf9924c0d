"""MQTT over WebSocket (and WSS): wsproto does the HTTP upgrade and the framing.

:class:`WsAccept` is the protocol of the TCP (or TLS) transport. It answers the
upgrade (path ``/mqtt``; subprotocol ``mqtt``, or ``mqttv3.1`` for old clients;
a client that offers none is taken, as mosquitto does), then creates the MQTT
:class:`~worker.protocol.Connection` on a :class:`WsTransport`. The bytes of
binary frames are fed to the connection as they arrive, so an MQTT packet may
span frames and a frame may hold several packets; everything the connection
writes in one loop pass leaves as one binary frame. Reading and writing
pressure pass straight through: the connection pausing reading pauses the
socket, the socket's pause_writing reaches the connection.

A text frame closes the connection (1003, MQTT-6.0.0-1). A bad or slow
upgrade (SHOAL_CONNECT_TIMEOUT) is counted, logged and closed; wsproto bounds
the request (h11: 16 KiB) and offers no compression extension.
"""
from __future__ import annotations

import asyncio
import logging

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Message,
    Ping,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from common.logs import kv

log = logging.getLogger("shoal.ws")

PATH = "/mqtt"
SUBPROTOCOLS = ("mqtt", "mqttv3.1")  # in order of preference
LINGER = 2.0  # seconds a closing WebSocket waits for the client's Close frame


class WsTransport(asyncio.Transport):
    """What the MQTT connection writes to: each write one binary frame on the socket."""

    def __init__(self, accept: "WsAccept"):
        super().__init__()
        self._accept = accept
        self._raw = accept.transport
        self._ws = accept.ws
        self._closing = False
        self._protocol = None

    def write(self, data) -> None:
        if self.is_closing():
            return
        self._raw.write(self._ws.send(Message(data=data)))

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def is_closing(self) -> bool:
        """True also once either side sent a Close frame: no data frame may follow it."""
        return self._closing or self._raw.is_closing() or self._ws.state != ConnectionState.OPEN

    def close(self) -> None:
        """A Close frame (1000), then the socket closes once the client answers
        with its own, or after LINGER seconds."""
        if self._closing:
            return
        self._closing = True
        self._accept.close_ws(CloseReason.NORMAL_CLOSURE)

    def abort(self) -> None:
        self._closing = True
        self._raw.abort()

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a WebSocket ends with a Close frame")

    def pause_reading(self) -> None:
        self._raw.pause_reading()

    def resume_reading(self) -> None:
        self._raw.resume_reading()

    def is_reading(self) -> bool:
        return self._raw.is_reading()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._raw.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return self._raw.get_write_buffer_size()

    def get_extra_info(self, name, default=None):
        if name == "websocket":
            return True
        return self._raw.get_extra_info(name, default)

    def set_protocol(self, protocol) -> None:
        self._protocol = protocol

    def get_protocol(self):
        return self._protocol


class WsAccept(asyncio.Protocol):
    """The protocol of a WebSocket socket: upgrade, then frames to and from the MQTT connection."""

    __slots__ = ("listener", "transport", "ws", "conn", "peer", "timer", "linger")

    def __init__(self, listener: "WsListener"):
        self.listener = listener
        self.transport = None
        self.ws = WSConnection(ConnectionType.SERVER)
        self.conn = None
        self.peer = "?"
        self.timer = None
        self.linger = None

    # -- socket callbacks -------------------------------------------------------
    def connection_made(self, transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.timer = asyncio.get_running_loop().call_later(self.listener.timeout, self._upgrade_timeout)

    def data_received(self, data: bytes) -> None:
        ws = self.ws
        try:
            ws.receive_data(data)
        except RemoteProtocolError as e:  # a bad HTTP upgrade request
            self._refuse(e.event_hint if isinstance(e.event_hint, RejectConnection) else RejectConnection(),
                         str(e))
            return
        except LocalProtocolError:  # data after the WebSocket closed: drop it
            return
        conn = self.conn
        for event in ws.events():
            if isinstance(event, BytesMessage):
                if conn is not None and not conn.closed:
                    conn.data_received(event.data)
            elif isinstance(event, Request):
                self._upgrade(event)
                conn = self.conn
            elif isinstance(event, Ping):
                if ws.state == ConnectionState.OPEN:
                    self.transport.write(ws.send(event.response()))
            elif isinstance(event, CloseConnection):
                self._closed_by_client(event)
                return
            elif isinstance(event, TextMessage):
                log.info("text frame on MQTT WebSocket, closing",
                         extra=kv(client=conn.client_id if conn is not None else "-", peer=self.peer))
                self.listener.metrics.ws_protocol_errors += 1
                self.close_ws(CloseReason.UNSUPPORTED_DATA)
                if conn is not None:
                    conn.connection_lost(None)
                return

    def pause_writing(self) -> None:
        if self.conn is not None:
            self.conn.pause_writing()

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.resume_writing()

    def eof_received(self):
        return None  # close the socket

    def connection_lost(self, exc) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.linger is not None:
            self.linger.cancel()
            self.linger = None
        conn = self.conn
        if conn is not None:
            conn.connection_lost(exc)

    # -- the upgrade --------------------------------------------------------------
    def _upgrade(self, req: Request) -> None:
        path = req.target.split("?", 1)[0]
        if path != PATH:
            self._refuse(RejectConnection(status_code=404), f"path {path!r} is not {PATH}")
            return
        offered = req.subprotocols
        chosen = next((p for p in SUBPROTOCOLS if p in offered), None)
        if offered and chosen is None:
            self._refuse(RejectConnection(status_code=400), f"subprotocols {offered} do not include mqtt")
            return
        self.transport.write(self.ws.send(AcceptConnection(subprotocol=chosen)))
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        lsn = self.listener
        conn = self.conn = lsn.factory()
        conn.connection_made(WsTransport(self))

    def _refuse(self, reject: RejectConnection, why: str) -> None:
        lsn = self.listener
        lsn.metrics.ws_handshake_failures += 1
        log.info("WebSocket upgrade refused, closing",
                 extra=kv(peer=self.peer, port=lsn.port, status=reject.status_code, reason=why[:200]))
        body = (why + "\n").encode()
        t = self.transport
        try:
            if self.ws.state == ConnectionState.CONNECTING:
                t.write(self.ws.send(RejectConnection(
                    status_code=reject.status_code, has_body=True,
                    headers=[*reject.headers, (b"content-type", b"text/plain"),
                             (b"content-length", str(len(body)).encode())])))
                t.write(self.ws.send(RejectData(data=body, body_finished=True)))
        except LocalProtocolError:
            pass
        t.close()

    def _upgrade_timeout(self) -> None:
        self.timer = None
        if self.conn is None and not self.transport.is_closing():
            lsn = self.listener
            lsn.metrics.ws_handshake_failures += 1
            log.info("WebSocket upgrade timeout, closing", extra=kv(peer=self.peer, port=lsn.port))
            self.transport.abort()

    # -- closing ------------------------------------------------------------------
    def close_ws(self, code: int) -> None:
        """Our Close frame; the socket closes when the client's arrives or after LINGER."""
        t = self.transport
        if t.is_closing():
            return
        try:
            t.write(self.ws.send(CloseConnection(code=code)))
        except LocalProtocolError:
            t.close()
            return
        if self.conn is not None:
            self.conn.flow.drain()  # the client's Close frame must get through, whatever paused reading
        elif not t.is_reading():
            t.resume_reading()
        self.linger = asyncio.get_running_loop().call_later(LINGER, t.close)

    def _closed_by_client(self, event: CloseConnection) -> None:
        ws = self.ws
        t = self.transport
        try:
            if ws.state == ConnectionState.REMOTE_CLOSING:
                t.write(ws.send(event.response()))
            elif ws.state == ConnectionState.OPEN:  # wsproto could not parse a frame
                conn = self.conn
                log.info("bad WebSocket frame, closing",
                         extra=kv(client=conn.client_id if conn is not None else "-", peer=self.peer,
                                  code=event.code, reason=event.reason[:200]))
                self.listener.metrics.ws_protocol_errors += 1
                t.write(ws.send(CloseConnection(code=event.code)))
        except LocalProtocolError:
            pass
        t.close()  # the server closes the TCP connection first (RFC 6455 7.1.1)
        conn = self.conn
        if conn is not None:
            conn.connection_lost(None)


class WsListener:
    """One WebSocket port of a worker (plain, or behind TlsAccept for WSS)."""

    __slots__ = ("factory", "timeout", "metrics", "port")

    def __init__(self, factory, timeout: float, metrics, port: int):
        self.factory = factory
        self.timeout = timeout
        self.metrics = metrics
        self.port = port

    def __call__(self) -> WsAccept:
        return WsAccept(self)
