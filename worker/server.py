"""The worker process: serve MQTT on uvloop until SIGTERM."""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket

from common.logs import kv
from common.settings import Settings
from mqtt import ReasonCode

from .acl import Acl, AclError
from .auth import Authenticator
from .bridge import LocalBridge
from .broker import Broker
from .listeners import Listeners
from .ops_link import OpsLink
from .protocol import Connection, Writer
from .router_link import RouterBridge
from .passwd import PasswordError, PasswordFile
from .store import Store, quiet_gc
from .timers import Clock
from .sys_topics import publish_sys, publish_version

log = logging.getLogger("shoal.worker")


def listen_socket(settings: Settings, fd: int | None, port: int | None = None) -> socket.socket:
    """The listening socket: handed over by circusd (fd), or bound here with
    SO_REUSEPORT so that every worker of the node has its own accept queue."""
    if fd is not None:
        return socket.socket(fileno=fd)
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((settings.host, port or settings.port))
    sock.listen(1024)
    return sock


class WorkerServer:
    def __init__(self, settings: Settings, worker_id: int = 1, fd: int | None = None, bridge=None, clock=None):
        self.settings = settings
        # the one clock of this worker: the broker, its router link, the authenticator, the
        # lease guard and the server's own timing all read it (tests hand in a fake one)
        self.clock = clock if clock is not None else Clock()
        self.worker_id = worker_id
        self.fd = fd
        acl = Acl.load(settings.acl_file) if settings.acl_file else None
        if bridge is None:
            # a cluster node always has a router (its agent is a member of it)
            bridge = RouterBridge(settings, worker_id, clock=self.clock) if settings.workers > 1 or settings.clustered else LocalBridge()
        self.broker = Broker(settings, self.clock, acl, bridge, worker_id)
        self.passwords = PasswordFile.load(settings.password_file) if settings.password_file else None
        self.server: asyncio.AbstractServer | None = None
        self.stopping = asyncio.Event()
        self._ticker: asyncio.Task | None = None
        self.listeners = Listeners()  # TLS, WebSocket, WSS (worker/listeners.py)
        self.ops = OpsLink(self)  # health beats and admin answers to the router

    def open_store(self, loop) -> None:
        """Open this worker's LevelDB and restore what it holds (before serving)."""
        st = self.settings
        if not st.persistence:
            return
        path = os.path.join(str(st.data_path), f"worker-{self.worker_id}")
        t0 = self.clock()
        store = Store(path, st.sync, loop)
        b = self.broker
        b.store = store
        store.on_recovered = b.resync_store
        with quiet_gc():
            now = self.clock()
            sessions = store.load_sessions(now)
            retained = store.load_retained(now, st.max_retained_messages) if b.owns_retained else []
            b.restore(sessions, retained)
            store.ready()
            store.flush()
        log.info("store opened", extra=kv(path=path, sync=st.sync, sessions=len(b.sessions),
                                          retained=len(retained), seconds=round(self.clock() - t0, 3)))

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.open_store(loop)
        self.broker.writer = Writer(loop)
        self.broker.auth = Authenticator(self.settings, self.broker.metrics, self.clock, loop, self.passwords)
        if self.passwords is not None:
            log.info("password file loaded", extra=kv(path=str(self.settings.password_file), users=len(self.passwords)))
        sock = listen_socket(self.settings, self.fd)
        self.server = await loop.create_server(lambda: Connection(self.broker), sock=sock, backlog=1024)
        await self.listeners.open(loop, self.settings, self.broker, listen_socket)
        self.broker.bridge.connect()
        if self.settings.sys_interval > 0:
            publish_version(self.broker)  # there from the start, not only after the first interval
        self._ticker = asyncio.create_task(self._tick_loop())
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))
        addr = sock.getsockname()
        log.info("serving", extra=kv(host=addr[0], port=addr[1], pid=os.getpid()))
        self.ops.connect()

    async def reload(self) -> None:
        """SIGHUP: read the password and ACL files again. Nobody is disconnected;
        the new files decide every later CONNECT, SUBSCRIBE, PUBLISH and delivery.
        A file that does not parse is not taken: the previous one stays, and the
        log says file:line."""
        st = self.settings
        loop = asyncio.get_running_loop()
        if st.password_file:
            try:
                pw = await loop.run_in_executor(None, PasswordFile.load, st.password_file)
            except PasswordError as e:
                log.error("password file not reloaded, the previous one stays", extra=kv(error=str(e)))
            else:
                self.passwords = pw
                self.broker.auth.replace(pw)
                log.info("password file reloaded", extra=kv(path=str(st.password_file), users=len(pw)))
        if st.acl_file:
            try:
                acl = await loop.run_in_executor(None, Acl.load, st.acl_file)
            except AclError as e:
                log.error("ACL file not reloaded, the previous one stays", extra=kv(error=str(e)))
            else:
                self.broker.acl = acl
                log.info("ACL file reloaded", extra=kv(path=str(st.acl_file)))

    async def _tick_loop(self) -> None:
        interval = self.settings.sys_interval
        next_sys = self.clock() + (interval if interval > 0 else float("inf"))
        while True:
            await asyncio.sleep(1.0 if not interval or interval >= 1 else interval)
            b = self.broker
            b.tick()
            if b.now >= next_sys:
                next_sys = b.now + interval
                b.bridge.send_stats(b.sys_snapshot())
                publish_sys(b, b.bridge.node_snapshot())

    async def run(self) -> None:
        await self.start()
        await self.stopping.wait()
        await self.shutdown()

    async def shutdown(self, timeout: float = 5.0) -> None:
        """Stop accepting, tell v5 clients the server is going away, flush, exit."""
        log.info("shutting down", extra=kv(clients=len(self.broker.connections)))
        self.stopping.set()
        self.ops.beat_once()  # not serving any more: /ready says 503 while the clients drain
        if self.server is not None:
            self.server.close()
        self.listeners.close()
        if self._ticker is not None:
            self._ticker.cancel()
        for conn in list(self.broker.connections):
            # The server closes the connection, so the will applies (MQTT 5 3.1.2.5): one
            # with no delay is published now, a delayed one is stored with its persistent
            # session and published after the restart unless the client is back in time
            # (what mosquitto's shutdown FIXME says is right; mosquitto sends them all).
            conn.disconnect(ReasonCode.SERVER_SHUTTING_DOWN, "server shutting down")
        deadline = self.clock() + timeout
        while self.broker.connections and self.clock() < deadline:
            await asyncio.sleep(0.01)
        if self.settings.clustered and hasattr(self.broker.bridge, "drain"):
            moved = await self.broker.bridge.drain(4.0)  # issue 11: graceful leave
            log.info("sessions handed to other nodes", extra=kv(sessions=moved))
        self.ops.close()
        self.broker.bridge.close()
        if self.broker.auth is not None:
            self.broker.auth.close()
        if self.broker.store is not None:
            self.broker.store.close()
        log.info("stopped")
