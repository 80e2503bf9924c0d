"""MQTT over TLS: the server context, the handshake, and the certificate as username.

A TLS connection starts as a plain TCP connection whose protocol is
:class:`TlsAccept`: it runs the handshake with ``loop.start_tls`` (bounded by
SHOAL_CONNECT_TIMEOUT) and only then hands the TLS transport to the next
protocol (the MQTT :class:`~worker.protocol.Connection`, or the WebSocket
layer for WSS). A handshake that fails (garbage, a certificate the CA does not
sign, no certificate when one is required, a client that stays silent) costs
no more than a bad packet: it is counted, logged with the peer, node and
worker, and the socket is closed; the worker goes on serving.
"""
from __future__ import annotations

import asyncio
import logging
import ssl

from common.logs import kv
from mqtt import MQTTError, ReasonCode

log = logging.getLogger("shoal.tls")


class TlsError(Exception):
    """The TLS settings or files cannot make a server context (the worker does not start)."""


def server_context(settings) -> ssl.SSLContext | None:
    """The server context of the TLS and WSS listeners; None when both are off."""
    st = settings
    if not st.tls_port and not st.wss_port:
        return None
    if st.tls_certfile is None or st.tls_keyfile is None:
        raise TlsError("SHOAL_TLS_PORT / SHOAL_WSS_PORT need SHOAL_TLS_CERTFILE and SHOAL_TLS_KEYFILE")
    if (st.tls_require_certificate or st.tls_use_identity_as_username) and st.tls_cafile is None:
        raise TlsError("SHOAL_TLS_REQUIRE_CERTIFICATE / SHOAL_TLS_USE_IDENTITY_AS_USERNAME need SHOAL_TLS_CAFILE")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(st.tls_certfile), str(st.tls_keyfile))
    except (OSError, ssl.SSLError) as e:
        raise TlsError(f"SHOAL_TLS_CERTFILE={st.tls_certfile} SHOAL_TLS_KEYFILE={st.tls_keyfile}: {e}") from None
    if st.tls_cafile is not None:
        try:
            ctx.load_verify_locations(cafile=str(st.tls_cafile))
        except (OSError, ssl.SSLError) as e:
            raise TlsError(f"SHOAL_TLS_CAFILE={st.tls_cafile}: {e}") from None
        # as mosquitto: with a CA, a certificate the client offers is verified;
        # require_certificate refuses clients that offer none
        ctx.verify_mode = ssl.CERT_REQUIRED if st.tls_require_certificate else ssl.CERT_OPTIONAL
    return ctx


class TlsAccept(asyncio.Protocol):
    """The first protocol of an accepted TLS connection: the handshake, then the next protocol."""

    __slots__ = ("listener", "transport", "peer")

    def __init__(self, listener: "TlsListener"):
        self.listener = listener
        self.transport = None
        self.peer = "?"

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.pause_reading()  # start_tls takes the socket over before anything is read
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        lsn = self.listener
        task = asyncio.get_running_loop().create_task(self._handshake())
        lsn.pending.add(task)
        task.add_done_callback(lsn.pending.discard)

    async def _handshake(self) -> None:
        lsn = self.listener
        app = lsn.factory()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                self.transport, app, lsn.context, server_side=True, ssl_handshake_timeout=lsn.timeout)
        except asyncio.CancelledError:
            self.transport.abort()
            raise
        except Exception as e:  # noqa: BLE001 - any handshake failure closes this one connection
            lsn.metrics.tls_handshake_failures += 1
            reason = "timeout" if isinstance(e, (ConnectionAbortedError, TimeoutError)) else type(e).__name__
            log.info("TLS handshake failed, closing",
                     extra=kv(peer=self.peer, port=lsn.port, reason=reason, detail=str(e)[:200]))
            if not self.transport.is_closing():
                self.transport.abort()
            return
        if tls is None:  # the client went away during the handshake
            lsn.metrics.tls_handshake_failures += 1
            log.info("TLS handshake failed, closing", extra=kv(peer=self.peer, port=lsn.port, reason="closed"))
            return
        app.connection_made(tls)

    def data_received(self, data: bytes) -> None:  # pragma: no cover - reading is paused until start_tls
        pass

    def connection_lost(self, exc) -> None:  # before start_tls took the transport: nothing to undo
        pass


class TlsListener:
    """One TLS port of a worker: what TlsAccept needs, and the handshakes under way."""

    __slots__ = ("context", "factory", "timeout", "metrics", "port", "pending")

    def __init__(self, context: ssl.SSLContext, factory, timeout: float, metrics, port: int):
        self.context = context
        self.factory = factory
        self.timeout = timeout
        self.metrics = metrics
        self.port = port
        self.pending: set[asyncio.Task] = set()

    def __call__(self) -> TlsAccept:
        return TlsAccept(self)

    def close(self) -> None:
        for task in list(self.pending):
            task.cancel()


def certificate_cn(transport) -> str | None:
    """The commonName of the verified client certificate, or None."""
    cert = transport.get_extra_info("peercert") if transport is not None else None
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def use_identity(conn, connect) -> None:
    """SHOAL_TLS_USE_IDENTITY_AS_USERNAME, as mosquitto's use_identity_as_username:
    on a TLS connection the certificate's CN is the username (whatever CONNECT
    says, and no password is used); a TLS client without one is refused with
    0x86 (3.1.1: 4). Plain TCP and WebSocket connections are left as they are."""
    t = conn.transport
    if t is None or t.get_extra_info("sslcontext") is None:
        return
    cn = certificate_cn(t)
    if not cn:
        raise MQTTError(ReasonCode.BAD_USER_NAME_OR_PASSWORD, "no client certificate with a CN")
    conn.username = connect.username = cn
    connect.password = None
