"""MQTT over TLS: the server context, the handshake, and the certificate as username.

:class:`TlsListener` accepts on the TLS port and runs each handshake
(bounded by SHOAL_CONNECT_TIMEOUT); only then does the next protocol (the MQTT
:class:`~worker.protocol.Connection`, or the WebSocket layer for WSS) see the
connection. A handshake that fails (garbage, a certificate the CA does not
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


class TlsListener:
    """One TLS port of a worker: its accept loop and the handshakes under way.

    Each accepted socket gets ``loop.connect_accepted_socket(ssl=...)``, which
    returns once the handshake is done (the next protocol's connection_made
    has then been called) and raises when it fails or times out. (A plain
    server whose first protocol calls ``start_tls`` loses the ClientHello under
    uvloop when it arrives with the connection: uvloop starts reading right
    after connection_made, before start_tls can take the socket.)"""

    __slots__ = ("context", "factory", "timeout", "metrics", "port", "pending", "sock", "task")

    ACCEPT_BATCH = 64  # connections taken from the accept queue per wakeup

    def __init__(self, context: ssl.SSLContext, factory, timeout: float, metrics, port: int):
        self.context = context
        self.factory = factory
        self.timeout = timeout
        self.metrics = metrics
        self.port = port
        self.pending: set[asyncio.Task] = set()
        self.sock = None
        self.task: asyncio.Task | None = None

    def start(self, loop, sock) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.task = loop.create_task(self._accept_loop(loop, sock))

    async def _accept_loop(self, loop, sock) -> None:
        while True:
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as e:  # EMFILE and the like: say so, let the queue wait a moment
                log.warning("accept failed", extra=kv(port=self.port, error=str(e)))
                await asyncio.sleep(0.1)
                continue
            self._handshake(loop, conn, addr)
            for _ in range(self.ACCEPT_BATCH - 1):
                try:
                    conn, addr = sock.accept()
                except (BlockingIOError, InterruptedError):
                    break
                except OSError as e:
                    log.warning("accept failed", extra=kv(port=self.port, error=str(e)))
                    break
                self._handshake(loop, conn, addr)

    def _handshake(self, loop, conn, addr) -> None:
        conn.setblocking(False)
        task = loop.create_task(self._run_handshake(loop, conn, addr))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _run_handshake(self, loop, conn, addr) -> None:
        peer = f"{addr[0]}:{addr[1]}" if addr else "?"
        try:
            await loop.connect_accepted_socket(self.factory, conn, ssl=self.context,
                                               ssl_handshake_timeout=self.timeout)
        except asyncio.CancelledError:
            conn.close()
            raise
        except Exception as e:  # noqa: BLE001 - any handshake failure closes this one connection
            self.metrics.tls_handshake_failures += 1
            reason = "timeout" if isinstance(e, (ConnectionAbortedError, TimeoutError)) else type(e).__name__
            log.info("TLS handshake failed, closing",
                     extra=kv(peer=peer, port=self.port, reason=reason, detail=str(e)[:200]))
            if conn.fileno() != -1:
                conn.close()

    def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
        if self.sock is not None:
            self.sock.close()
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


def use_identity(conn, connect) -> bool:
    """SHOAL_TLS_USE_IDENTITY_AS_USERNAME, as mosquitto's use_identity_as_username:
    on a TLS connection the certificate's CN is the username (whatever CONNECT
    says, and no password is used); a TLS client without one is refused with
    0x86 (3.1.1: 4). Plain TCP and WebSocket connections are left as they are.
    True when the certificate gave the username (then no password check applies,
    as in mosquitto)."""
    t = conn.transport
    if t is None or t.get_extra_info("sslcontext") is None:
        return False
    cn = certificate_cn(t)
    if not cn:
        raise MQTTError(ReasonCode.BAD_USER_NAME_OR_PASSWORD, "no client certificate with a CN")
    conn.username = connect.username = cn
    connect.password = None
    return True
