"""How the live fuzzer's cases reach the node: plain TCP, TLS and WebSocket
(over TCP), each also with garbage of its own layer (broken TLS handshakes,
bad HTTP upgrades, invalid WebSocket frames).

Every connection is bounded: it sends its case, reads until the node closes,
answers the barrier PINGREQ, or `read_timeout` passes, then closes. Only
127.0.0.1 is ever dialled.
"""
from __future__ import annotations

import asyncio
import base64
import random
import ssl
from collections import Counter
from dataclasses import dataclass, field

from mqtt import Framer, MQTTError
from tests.fuzz.cases import Case

HOST = "127.0.0.1"


@dataclass
class Stats:
    """What one transport sent and how the node answered."""

    connections: int = 0  # TCP connections opened
    open_failures: int = 0  # could not connect (or handshake/upgrade refused by the node: see counts)
    packets: int = 0  # MQTT packets (or garbage chunks) written
    bytes: int = 0
    cases: Counter = field(default_factory=Counter)
    outcomes: Counter = field(default_factory=Counter)  # closed by node / barrier answered / timeout / reset
    by_kind: dict = field(default_factory=dict)  # case kind -> Counter of outcomes

    def as_dict(self) -> dict:
        return {"connections": self.connections, "open_failures": self.open_failures, "packets": self.packets,
                "bytes": self.bytes, "cases": dict(sorted(self.cases.items())),
                "outcomes": dict(sorted(self.outcomes.items())),
                "by_kind": {k: dict(sorted(v.items())) for k, v in sorted(self.by_kind.items())}}

    def outcome(self, kind: str, what: str) -> None:
        self.outcomes[what] += 1
        self.by_kind.setdefault(kind, Counter())[what] += 1


class Link:
    """One open connection: `send` MQTT bytes, `recv` MQTT bytes (b"" at EOF)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def recv(self) -> bytes:
        return await self.reader.read(65536)

    def abort(self) -> None:
        t = self.writer.transport
        if t is not None:
            t.abort()


# -- WebSocket framing, written by hand so that it can be wrong on purpose --------------
def ws_frame(opcode: int, payload: bytes, rng: random.Random, fin: bool = True, mask: bool = True,
             rsv: int = 0, length: int | None = None) -> bytes:
    n = len(payload) if length is None else length
    head = bytearray((0x80 * fin | (rsv & 7) << 4 | opcode & 0x0F,))
    m = 0x80 if mask else 0
    if n < 126:
        head.append(m | n)
    elif n < 65536:
        head += bytes((m | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((m | 127,)) + n.to_bytes(8, "big")
    if not mask:
        return bytes(head) + payload
    key = rng.randbytes(4)
    return bytes(head) + key + bytes(b ^ key[i & 3] for i, b in enumerate(payload))


def ws_request(rng: random.Random, path: str = "/mqtt", protocols: str | None = "mqtt",
               version: str = "13", key: str | None = None, extra: str = "") -> bytes:
    key = key if key is not None else base64.b64encode(rng.randbytes(16)).decode()
    lines = [f"GET {path} HTTP/1.1", f"Host: {HOST}", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Key: {key}", f"Sec-WebSocket-Version: {version}"]
    if protocols is not None:
        lines.append(f"Sec-WebSocket-Protocol: {protocols}")
    return ("\r\n".join(lines) + "\r\n" + extra + "\r\n").encode()


class WsLink(Link):
    """MQTT bytes carried in binary frames (split, fragmented, with pings) after an upgrade."""

    def __init__(self, reader, writer, rng: random.Random):
        super().__init__(reader, writer)
        self.rng = rng
        self.inbuf = bytearray()
        self.closed = False

    async def upgrade(self) -> bool:
        await Link.send(self, ws_request(self.rng))
        head = bytearray()
        while b"\r\n\r\n" not in head:
            data = await self.reader.read(4096)
            if not data or len(head) > 16384:
                return False
            head += data
        status, _, rest = bytes(head).partition(b"\r\n\r\n")
        self.inbuf += rest
        return status.startswith(b"HTTP/1.1 101")

    async def send(self, data: bytes) -> None:
        r = self.rng
        out = bytearray()
        pieces = _split(data, r) if data else [b""]
        if r.random() < 0.25 and len(pieces) > 1:  # one message, fragmented over continuation frames
            for i, p in enumerate(pieces):
                out += ws_frame(0x2 if i == 0 else 0x0, p, r, fin=i == len(pieces) - 1)
                if r.random() < 0.1:
                    out += ws_frame(0x9, b"fz", r)  # a ping between fragments is allowed
        else:
            for p in pieces:
                out += ws_frame(0x2, p, r)
        await Link.send(self, bytes(out))

    async def recv(self) -> bytes:
        """The payload of the next binary frames; b"" once the node closed (TCP or Close frame)."""
        while True:
            payload = self._frames()
            if payload is None:
                return b""
            if payload:
                return payload
            data = await self.reader.read(65536)
            if not data:
                return b""
            self.inbuf += data

    def _frames(self) -> bytes | None:
        out = bytearray()
        buf = self.inbuf
        while len(buf) >= 2:
            op, n, at = buf[0] & 0x0F, buf[1] & 0x7F, 2
            if n == 126:
                if len(buf) < 4:
                    break
                n, at = int.from_bytes(buf[2:4], "big"), 4
            elif n == 127:
                if len(buf) < 10:
                    break
                n, at = int.from_bytes(buf[2:10], "big"), 10
            if len(buf) < at + n:
                break
            payload = bytes(buf[at:at + n])
            del buf[:at + n]
            if op == 0x8:
                self.closed = True
            elif op in (0x0, 0x2):
                out += payload
        if self.closed and not out:
            return None
        return bytes(out)


def _split(data: bytes, r: random.Random) -> list[bytes]:
    if len(data) < 2 or r.random() < 0.5:
        return [data]
    cuts = sorted(r.sample(range(1, len(data)), min(len(data) - 1, r.randint(1, 4))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


# -- transports -------------------------------------------------------------------------
class Transport:
    """Plain TCP. Subclasses change how a link opens and add garbage of their own layer."""

    name = "tcp"

    def __init__(self, port: int, read_timeout: float, flood_max: int):
        self.port = port
        self.read_timeout = read_timeout
        self.flood_max = flood_max
        self.stats = Stats()

    async def _tcp(self):
        self.stats.connections += 1
        return await asyncio.open_connection(HOST, self.port)

    async def open(self, rng: random.Random) -> Link | None:
        return Link(*await self._tcp())

    def own_case(self, rng: random.Random) -> Case | None:
        """A case of this transport's own layer (None: plain TCP has none)."""
        return None

    # -- running a case ---------------------------------------------------------------
    async def run(self, case: Case, rng: random.Random, case_timeout: float) -> None:
        self.stats.cases[case.kind] += 1
        try:
            async with asyncio.timeout(case_timeout):
                if case.kind == "flood":
                    await self._flood(case, rng)
                else:
                    await self._one(case, rng)
        except TimeoutError:
            self.stats.outcome(case.kind, "case timeout")

    async def _one(self, case: Case, rng: random.Random) -> None:
        link = None
        try:
            link = await self.open_for(case, rng)
            outcome = "open refused" if link is None else await self._exchange(link, case)
        except (ConnectionError, ssl.SSLError, OSError) as e:
            outcome = _error_name(e)
        finally:
            if link is not None:
                link.abort()
        self.stats.outcome(case.kind, outcome)

    async def open_for(self, case: Case, rng: random.Random) -> Link | None:
        if case.kind.startswith("raw-"):  # this layer's garbage: straight onto TCP
            return Link(*await self._tcp())
        link = await self.open(rng)
        if link is None:
            self.stats.open_failures += 1
        return link

    async def _exchange(self, link: Link, case: Case) -> str:
        st = self.stats
        try:
            for step in case.steps:
                if isinstance(step, float):
                    await asyncio.sleep(step)  # slow-loris pacing of the client itself
                    continue
                await link.send(step)
                st.packets += 1
                st.bytes += len(step)
        except (ConnectionError, ssl.SSLError, OSError) as e:
            return "closed while sending (" + _error_name(e) + ")"
        return await self._read(link, case.barrier)

    async def _read(self, link: Link, barrier: bool) -> str:
        framer = Framer()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.read_timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                return "timeout"
            try:
                async with asyncio.timeout(left):
                    data = await link.recv()
            except TimeoutError:
                return "timeout"
            except (ConnectionError, ssl.SSLError, OSError) as e:
                return _error_name(e)
            if not data:
                return "closed by node"
            if barrier:
                try:
                    if any(first == 0xD0 for first, _ in framer.feed(data)):
                        return "barrier answered"
                except MQTTError:
                    return "node sent malformed bytes"

    async def _flood(self, case: Case, rng: random.Random) -> None:
        n = rng.randint(min(10, self.flood_max), self.flood_max)

        async def one():
            link = None
            try:
                link = await self.open(rng)
                if link is None:
                    return "open refused"
                for step in case.steps:
                    await link.send(step)
                    self.stats.packets += 1
                    self.stats.bytes += len(step)
                return await self._read(link, False)
            except (ConnectionError, ssl.SSLError, OSError) as e:
                return _error_name(e)
            finally:
                if link is not None:
                    link.abort()

        for outcome in await asyncio.gather(*(one() for _ in range(n))):
            self.stats.outcome(case.kind, outcome)


class TlsTransport(Transport):
    name = "tls"

    def __init__(self, port: int, read_timeout: float, flood_max: int, cafile: str):
        super().__init__(port, read_timeout, flood_max)
        self.ctx = ssl.create_default_context(cafile=cafile)
        self._hellos: list[bytes] = []

    async def open(self, rng: random.Random) -> Link | None:
        self.stats.connections += 1
        r, w = await asyncio.open_connection(HOST, self.port, ssl=self.ctx, server_hostname="localhost",
                                             ssl_handshake_timeout=self.read_timeout * 4)
        return Link(r, w)

    def client_hello(self, rng: random.Random) -> bytes:
        """A real ClientHello (from a memory BIO), to be mutated."""
        if len(self._hellos) < 8:
            obj = self.ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname="localhost")
            try:
                obj.do_handshake()
            except ssl.SSLWantReadError:
                pass
            self._hellos.append(out.read())
        return rng.choice(self._hellos)

    def own_case(self, rng: random.Random) -> Case | None:
        """Garbage handshakes: random bytes, a mutated or cut ClientHello, a record header that lies."""
        hello = self.client_hello(rng)
        which = rng.randrange(5)
        if which == 0:
            steps = [rng.randbytes(rng.randint(1, 600))]
        elif which == 1:  # a ClientHello with bytes flipped
            w = bytearray(hello)
            for _ in range(rng.randint(1, 6)):
                w[rng.randrange(len(w))] ^= 1 << rng.randrange(8)
            steps = [bytes(w)]
        elif which == 2:  # cut short: the node waits, then times the handshake out (or we close)
            steps = [hello[:rng.randint(1, len(hello) - 1)]]
        elif which == 3:  # a record header announcing far more than follows
            steps = [bytes((0x16, 0x03, 0x01, 0xFF, 0xFF)) + rng.randbytes(rng.randint(0, 100))]
        else:  # plain MQTT on the TLS port
            steps = [b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x00\x00\x00"]
        return Case("raw-tls-garbage", 4, steps)


class WsTransport(Transport):
    name = "ws"

    async def open(self, rng: random.Random) -> Link | None:
        r, w = await self._tcp()
        link = WsLink(r, w, rng)
        if not await link.upgrade():
            link.abort()
            return None
        return link

    def own_case(self, rng: random.Random) -> Case | None:
        """Bad upgrades, and garbage frames after a good one."""
        which = rng.randrange(10)
        if which == 0:
            return Case("raw-ws-bad-upgrade", 4, [ws_request(rng, path=rng.choice(("/", "/mqtt/x", "/%00", "*")))])
        if which == 1:
            return Case("raw-ws-bad-upgrade", 4, [ws_request(rng, version=rng.choice(("8", "", "99")))])
        if which == 2:
            return Case("raw-ws-bad-upgrade", 4, [ws_request(rng, key=rng.choice(("", "short", "!!!!")))])
        if which == 3:  # headers far too long, or never finished
            big = "X-Fz: " + "a" * rng.choice((100, 20000, 70000)) + "\r\n"
            req = ws_request(rng, extra=big)
            return Case("raw-ws-bad-upgrade", 4, [req if rng.random() < 0.5 else req[:-4]])
        if which == 4:
            return Case("raw-ws-bad-upgrade", 4, [rng.randbytes(rng.randint(1, 400))])
        if which == 5:
            return Case("raw-ws-bad-upgrade", 4, [b"GET /mqtt HTTP/1.0\r\n\r\n", ws_request(rng, protocols="xmpp, chat")])
        # garbage frames after a good upgrade
        steps = [ws_request(rng)]
        connect = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x00\x00\x00"
        steps.append(ws_frame(0x2, connect, rng))
        for _ in range(rng.randint(1, 4)):
            kind = rng.randrange(9)
            payload = rng.randbytes(rng.randint(0, 40))
            if kind == 0:
                steps.append(ws_frame(0x2, payload, rng, mask=False))  # clients must mask
            elif kind == 1:
                steps.append(ws_frame(0x2, payload, rng, rsv=rng.randint(1, 7)))
            elif kind == 2:
                steps.append(ws_frame(rng.choice((3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF)), payload, rng))
            elif kind == 3:
                steps.append(ws_frame(0x9, bytes(200), rng))  # control frame over 125 bytes
            elif kind == 4:
                steps.append(ws_frame(0x9, payload, rng, fin=False))  # fragmented control frame
            elif kind == 5:
                steps.append(ws_frame(0x0, payload, rng))  # continuation with nothing to continue
            elif kind == 6:
                steps.append(ws_frame(0x1, b"\xc0\x00", rng))  # MQTT in a text frame
            elif kind == 7:
                steps.append(ws_frame(0x2, payload, rng, length=rng.choice((1 << 20, 1 << 40, (1 << 63) - 1))))
            else:
                steps.append(ws_frame(0x8, rng.randbytes(rng.choice((1, 2, 5))), rng))  # bad Close payload
        return Case("raw-ws-garbage-frames", 4, steps)


def _error_name(e: BaseException) -> str:
    if isinstance(e, ssl.SSLError):
        return "tls error"
    if isinstance(e, ConnectionResetError):
        return "reset by node"
    if isinstance(e, BrokenPipeError):
        return "broken pipe"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    return type(e).__name__
