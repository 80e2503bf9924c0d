"""A TCP relay for the direct data link's tests (tests/integration/test_30_cluster_direct_fallback.py):
it stands where a node's advertised data address points and passes the bytes on to the
router's real one, so a test can open and close the way (a firewall), hold what goes
towards the router (a stalled path) and cut every connection (a flap), with real sockets.

    relay = Relay("127.0.0.1", port, dial)   # dial() -> a socket connected to the router
    relay.listen()          # connections accepted and relayed
    relay.hold() / relay.release()   # bytes towards the router kept / sent on
    relay.cut()             # every connection closed, what was held dropped (lost in flight)
    relay.close_listener()  # connections refused (nothing listens there)

`dial` may make its socket in another network namespace (tests/support/netns.py
Namespace.call): the relay then joins two namespaces, as a port forward would.
"""
from __future__ import annotations

import socket
import threading


class Relay:
    def __init__(self, host: str, port: int, dial):
        self.addr = (host, port)
        self.dial = dial
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.pairs: list[tuple[socket.socket, socket.socket]] = []
        self.holding = False
        self.held: dict[socket.socket, list[bytes]] = {}
        self.keep_targets = False  # cut_clients(): the connections to the router stay
        self.to_target = 0  # bytes passed on towards the router
        self.accepted = 0
        self.threads: list[threading.Thread] = []

    # -- the way open or closed -----------------------------------------------------------
    def listen(self) -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(self.addr)
        s.listen(16)
        self.keep_targets = False
        self.listener = s
        self._spawn(self._accept, s)

    def close_listener(self) -> None:
        s, self.listener = self.listener, None
        if s is not None:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    def hold(self) -> None:
        with self.lock:
            self.holding = True

    def release(self) -> None:
        with self.lock:
            self.holding = False
            held, self.held = self.held, {}
            for up, chunks in held.items():
                for chunk in chunks:
                    try:
                        up.sendall(chunk)
                        self.to_target += len(chunk)
                    except OSError:
                        pass

    def cut(self) -> None:
        """Every relayed connection closed; what was held is dropped."""
        with self.lock:
            self.keep_targets = False
            pairs, self.pairs = self.pairs, []
            self.held = {}
            self.holding = False
        for a, b in pairs:
            for s in (a, b):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()

    def cut_clients(self) -> None:
        """The dialler's ends closed (it sees its connection lost), the connections to the
        router kept open with what was held for them (release() sends it on later)."""
        with self.lock:
            self.keep_targets = True
            clients = [a for a, _ in self.pairs]
        for s in clients:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def held_bytes(self) -> bytes:
        with self.lock:
            return b"".join(b"".join(chunks) for chunks in self.held.values())

    def close(self) -> None:
        self.close_listener()
        self.keep_targets = False
        self.cut()
        for t in self.threads:
            t.join(5)

    # -- internals -----------------------------------------------------------------------
    def _spawn(self, fn, *args) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True, name="relay")
        t.start()
        self.threads.append(t)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                c, _ = listener.accept()
            except OSError:
                return  # (closed)
            try:
                up = self.dial()
            except OSError:
                c.close()
                continue
            with self.lock:
                self.accepted += 1
                self.pairs.append((c, up))
            self._spawn(self._pump, c, up, True)
            self._spawn(self._pump, up, c, False)

    def _pump(self, src: socket.socket, dst: socket.socket, towards_target: bool) -> None:
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if not data:
                if self.keep_targets:  # (cut_clients: the router's end stays open)
                    return
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass
                return
            with self.lock:
                if towards_target and self.holding:
                    self.held.setdefault(dst, []).append(data)
                    continue
                try:
                    dst.sendall(data)
                except OSError:
                    return
                if towards_target:
                    self.to_target += len(data)
