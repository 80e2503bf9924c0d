"""The TLS, WebSocket and WSS listeners of a worker (beside the plain MQTT port
that server.py opens). Each port is bound by every worker with SO_REUSEPORT,
like SHOAL_PORT, so the kernel spreads its connections over the workers."""
from __future__ import annotations

import logging

from common.logs import kv

from .protocol import Connection
from .tls import TlsListener, server_context
from .websocket import WsListener

log = logging.getLogger("shoal.worker")


class Listeners:
    """The extra servers of one worker; `close` stops them and the handshakes under way."""

    def __init__(self) -> None:
        self.servers: list = []
        self.tls: list[TlsListener] = []

    async def open(self, loop, settings, broker, listen_socket) -> None:
        """Bind what the settings ask for; TlsError when the certificate settings are wrong."""
        st = settings
        ctx = server_context(st)  # raises TlsError before anything is bound
        timeout = st.connect_timeout

        def mqtt():
            return Connection(broker)

        plans = []
        if st.tls_port:
            tls = TlsListener(ctx, mqtt, timeout, broker.metrics, st.tls_port)
            self.tls.append(tls)
            plans.append(("tls", st.tls_port, tls))
        if st.ws_port:
            plans.append(("ws", st.ws_port, WsListener(mqtt, timeout, broker.metrics, st.ws_port)))
        if st.wss_port:
            ws = WsListener(mqtt, timeout, broker.metrics, st.wss_port)
            wss = TlsListener(ctx, ws, timeout, broker.metrics, st.wss_port)
            self.tls.append(wss)
            plans.append(("wss", st.wss_port, wss))
        for kind, port, factory in plans:
            sock = listen_socket(st, None, port)
            if isinstance(factory, TlsListener):
                factory.start(loop, sock)
            else:
                self.servers.append(await loop.create_server(factory, sock=sock, backlog=1024))
            log.info("listening", extra=kv(listener=kind, host=st.host, port=port))

    def close(self) -> None:
        for server in self.servers:
            server.close()
        for tls in self.tls:
            tls.close()
