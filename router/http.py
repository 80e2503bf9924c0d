"""A small non-blocking HTTP/1.1 server inside the router's poll loop.

One request per connection (``Connection: close``), bounded: a request (line,
headers and body) of at most SHOAL_ADMIN_MAX_REQUEST bytes, at most
SHOAL_ADMIN_MAX_CONNECTIONS open at once, IDLE_TIMEOUT seconds to send it (and as
long again to take the answer). Listens on the
node's Unix socket (always) and on SHOAL_METRICS_PORT (when set). The handler
gets a Request and a respond(status, body, content_type) it may call later
(an answer that waits for the workers).
"""
from __future__ import annotations

import errno
import logging
import os
import socket
import time
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

import zmq

from common.logs import kv

log = logging.getLogger("shoal.http")

IDLE_TIMEOUT = 5.0
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
           413: "Content Too Large", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           503: "Service Unavailable"}


@dataclass(slots=True)
class Request:
    method: str
    path: str
    query: dict  # name -> last value
    headers: dict  # lower-case name -> value
    body: bytes
    local: bool  # came over the Unix socket


class HttpError(Exception):
    def __init__(self, status: int, text: str):
        super().__init__(text)
        self.status = status


def parse(data: bytes, max_size: int) -> Request | None:
    """A complete request from data, None while incomplete; HttpError when bad."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if len(data) >= max_size:
            raise HttpError(431, "request too large")
        return None
    head = data[:end].decode("latin-1")
    lines = head.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HttpError(400, "bad request line")
    method, target, _ = parts
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise HttpError(400, "bad header line")
        headers[name.lower()] = value.strip()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise HttpError(400, "bad Content-Length") from None
    if length < 0 or end + 4 + length > max_size:
        raise HttpError(413, "request too large")
    if "transfer-encoding" in headers:
        raise HttpError(400, "chunked bodies are not accepted")
    if len(data) < end + 4 + length:
        return None
    url = urlsplit(target)
    query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
    return Request(method, unquote(url.path), query, headers, data[end + 4:end + 4 + length], False)


class HttpConn:
    __slots__ = ("sock", "buf", "out", "deadline", "local", "answered")

    def __init__(self, sock, deadline: float, local: bool):
        self.sock = sock
        self.buf = bytearray()
        self.out = bytearray()
        self.deadline = deadline
        self.local = local
        self.answered = False


class HttpServer:
    def __init__(self, handler, max_request: int, max_connections: int = 64):
        self.handler = handler  # handler(request, respond)
        self.max_request = max_request
        self.max_connections = max_connections
        self.listeners: dict[int, tuple[socket.socket, bool]] = {}  # fd -> (socket, local)
        self.conns: dict[int, HttpConn] = {}
        self.poller = None

    def listen_tcp(self, host: str, port: int) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = socket.socket(family, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        self._listen(s, False)
        log.info("metrics serving", extra=kv(host=host, port=s.getsockname()[1]))

    def listen_unix(self, path: str) -> None:
        try:
            os.unlink(path)  # a previous router's socket
        except FileNotFoundError:
            pass
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o077)  # owner only: the admin API can kick clients
        try:
            s.bind(path)
        finally:
            os.umask(old)
        self._listen(s, True)
        log.info("admin socket serving", extra=kv(path=path))

    def _listen(self, s: socket.socket, local: bool) -> None:
        s.listen(64)
        s.setblocking(False)
        self.listeners[s.fileno()] = (s, local)

    def register(self, poller: zmq.Poller) -> None:
        self.poller = poller
        for fd in self.listeners:
            poller.register(fd, zmq.POLLIN)

    def close(self) -> None:
        for fd in list(self.conns):
            self._drop(fd)
        for fd, (s, local) in self.listeners.items():
            if local:
                try:
                    os.unlink(s.getsockname())
                except OSError:
                    pass
            s.close()
        self.listeners.clear()

    # -- the loop -------------------------------------------------------------------
    def events(self, events: dict, now: float) -> None:
        for fd, ev in events.items():
            if not isinstance(fd, int):
                continue
            if fd in self.listeners:
                self._accept(fd, now)
            elif fd in self.conns:
                if ev & zmq.POLLIN:
                    self._read(fd)
                if fd in self.conns and ev & zmq.POLLOUT:
                    self._write(fd)
        for fd, c in list(self.conns.items()):
            if now >= c.deadline:
                self._drop(fd)  # slow sender, or a reader that stopped reading

    def _accept(self, fd: int, now: float) -> None:
        s, local = self.listeners[fd]
        for _ in range(64):
            try:
                cs, _ = s.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                log.warning("accept failed", extra=kv(error=errno.errorcode.get(e.errno, str(e))))
                return
            if len(self.conns) >= self.max_connections:
                cs.close()  # bounded: refuse rather than queue
                continue
            cs.setblocking(False)
            self.conns[cs.fileno()] = HttpConn(cs, now + IDLE_TIMEOUT, local)
            self.poller.register(cs.fileno(), zmq.POLLIN)

    def _read(self, fd: int) -> None:
        c = self.conns[fd]
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(fd)
            return
        if not data:
            if not c.answered:
                self._drop(fd)
            return
        if c.answered:
            return  # one request per connection: the rest is ignored
        c.buf += data
        try:
            req = parse(bytes(c.buf), self.max_request)
        except HttpError as e:
            self._respond(fd, e.status, (str(e) + "\n").encode(), "text/plain; charset=utf-8")
            return
        if req is None:
            return
        req.local = c.local
        c.answered = True
        c.buf.clear()
        self.poller.modify(fd, 0)  # nothing more to read; wait for the answer

        def respond(status: int, body: bytes, ctype: str = "application/json", fd=fd, c=c) -> None:
            if self.conns.get(fd) is c:
                self._respond(fd, status, body, ctype, head_only=req.method == "HEAD")

        try:
            self.handler(req, respond)
        except Exception:
            log.exception("error handling an HTTP request", extra=kv(path=req.path))
            respond(500, b'{"error": "internal error"}\n')

    def _respond(self, fd: int, status: int, body: bytes, ctype: str, head_only: bool = False) -> None:
        c = self.conns[fd]
        c.answered = True
        head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        c.out += head if head_only else head + body
        c.deadline = max(c.deadline, time.monotonic() + IDLE_TIMEOUT)  # time to take the answer
        self._write(fd)

    def _write(self, fd: int) -> None:
        c = self.conns[fd]
        try:
            n = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError:
            self._drop(fd)
            return
        del c.out[:n]
        if c.out:
            self.poller.modify(fd, zmq.POLLOUT)
        else:
            self._drop(fd)

    def _drop(self, fd: int) -> None:
        c = self.conns.pop(fd, None)
        if c is None:
            return
        try:
            self.poller.unregister(fd)
        except KeyError:
            pass
        try:
            c.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        c.sock.close()
