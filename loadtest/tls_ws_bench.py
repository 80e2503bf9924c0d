"""``python -m loadtest.tls_ws_bench``: what TLS and WebSocket cost, beside plain TCP.

Starts Shoal (1 worker, plain + TLS + WebSocket listeners) and mosquitto with
the same three listeners and the same certificate, in the same run, and
measures on each listener:

- **connect rate**: clients that open a connection (TCP, or TCP + TLS
  handshake), send CONNECT, wait for CONNACK, DISCONNECT and close; `--conc`
  at a time, `--connects` in all. No TLS session resumption: every connect is
  a full handshake (ECDSA P-256 certificate, TLS 1.3).
- **messages per second**: `--pairs` publishers each send `--messages` QoS 0
  publishes of 64 bytes to their own subscriber on the same kind of
  listener, in batches of 100 followed by a PINGREQ round trip (so the
  pipeline stays bounded and nothing is dropped); the rate is messages
  received over the time from the first publish to the last delivery.

The load generator (one uvloop process, TLS by Python's ssl, WebSocket
framing by wsproto, which also masks every client frame) shares the machine
with the broker, so a rate can be the generator's ceiling rather than the
broker's: the broker CPU per connect / per message (every process of the
broker, from /proc) is the figure to compare. Prints a Markdown table.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
import tempfile
import time
from pathlib import Path

import uvloop
from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, RejectConnection, Request

from loadtest.bench.brokers import HOST, Mosquitto, Shoal, free_port
from mqtt import Connect, Framer, Subscribe, Subscription, encode, encode_publish_split

KINDS = ("tcp", "tls", "ws")


def make_certs(directory: Path):
    """CA + server certificate (the tests' maker; needs the `cryptography` test extra)."""
    from tests.support.certs import Certs

    directory.mkdir(mode=0o755)
    certs = Certs(str(directory))
    for f in directory.iterdir():  # mosquitto started as root reads them as user mosquitto
        f.chmod(0o644)
    return certs


class ShoalListeners(Shoal):
    def __init__(self, workers: int, tmp: Path, certs):
        self.certs = certs
        super().__init__(workers, tmp)
        self.ports = {"tcp": self.port, "tls": free_port(), "ws": free_port()}

    @property
    def label(self) -> str:
        return f"shoal {self.workers}w"

    def command(self):
        argv, env, cwd = super().command()
        env.update({"SHOAL_TLS_PORT": str(self.ports["tls"]), "SHOAL_WS_PORT": str(self.ports["ws"]),
                    "SHOAL_TLS_CERTFILE": self.certs.server_crt, "SHOAL_TLS_KEYFILE": self.certs.server_key})
        return argv, env, cwd


class MosquittoListeners(Mosquitto):
    """The same three listeners in mosquitto.conf (written in the run's temp dir)."""

    def __init__(self, tmp: Path, certs):
        self.certs = certs
        super().__init__(1, tmp)
        self.ports = {"tcp": self.port, "tls": free_port(), "ws": free_port()}

    @property
    def label(self) -> str:
        return "mosquitto"

    def command(self):
        argv, env, cwd = super().command()
        conf = Path(argv[-1])
        conf.write_text(conf.read_text() + "\n".join([
            f"listener {self.ports['tls']} {HOST}",
            f"certfile {self.certs.server_crt}",
            f"keyfile {self.certs.server_key}",
            f"listener {self.ports['ws']} {HOST}",
            "protocol websockets",
            "",
        ]))
        return argv, env, cwd


class Link:
    """One client connection: TCP, TLS or WebSocket; bytes in, MQTT packet types out."""

    __slots__ = ("reader", "writer", "ws", "framer")

    @classmethod
    async def open(cls, kind: str, port: int, ctx: ssl.SSLContext | None) -> "Link":
        self = cls()
        if kind == "tls":
            self.reader, self.writer = await asyncio.open_connection(HOST, port, ssl=ctx, server_hostname="localhost")
        else:
            self.reader, self.writer = await asyncio.open_connection(HOST, port)
        self.framer = Framer()
        self.ws = None
        if kind == "ws":
            ws = self.ws = WSConnection(ConnectionType.CLIENT)
            self.writer.write(ws.send(Request(host=HOST, target="/mqtt", subprotocols=["mqtt"])))
            while True:
                data = await self.reader.read(65536)
                if not data:
                    raise ConnectionError("closed during the WebSocket upgrade")
                ws.receive_data(data)
                for ev in ws.events():
                    if isinstance(ev, AcceptConnection):
                        return self
                    if isinstance(ev, RejectConnection):
                        raise ConnectionError(f"upgrade refused: {ev.status_code}")
        return self

    def send(self, data: bytes) -> None:
        self.writer.write(self.ws.send(Message(data=data)) if self.ws is not None else data)

    async def packets(self) -> list[int]:
        """The types of the packets that arrived with the next read ([] at EOF)."""
        data = await self.reader.read(262144)
        if not data:
            return []
        if self.ws is not None:
            self.ws.receive_data(data)
            chunks = [ev.data for ev in self.ws.events() if isinstance(ev, BytesMessage)]
            data = b"".join(chunks)
            if not data:
                return [0]  # control frames only
        return [first >> 4 for first, _ in self.framer.feed(data)]

    async def expect(self, ptype: int) -> None:
        while True:
            got = await self.packets()
            if not got:
                raise ConnectionError("closed by the broker")
            if ptype in got:
                return

    def close(self) -> None:
        if self.ws is not None:
            try:
                self.writer.write(self.ws.send(CloseConnection(code=1000)))
            except Exception:  # noqa: BLE001 - closing anyway
                pass
        self.writer.close()


CONNACK, PUBLISH, SUBACK, PINGRESP = 2, 3, 9, 13


async def connect_rate(kind: str, port: int, ctx, total: int, conc: int) -> tuple[float, int]:
    done = 0
    failed = 0
    connect = encode(Connect(client_id="", keepalive=30, version=4), 4)

    async def worker():
        nonlocal done, failed
        while done + failed < total:
            done += 1
            try:
                link = await Link.open(kind, port, ctx)
                link.send(connect)
                await link.expect(CONNACK)
                link.send(b"\xe0\x00")
                link.close()
            except (OSError, ConnectionError, ssl.SSLError):
                done -= 1
                failed += 1

    t0 = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(conc)))
    return done / (time.monotonic() - t0), failed


async def message_rate(kind: str, port: int, ctx, pairs: int, messages: int) -> tuple[float, int]:
    batch = 100
    subs, pubs = [], []
    connect = encode(Connect(client_id="", keepalive=60, version=4), 4)
    for i in range(pairs):
        s = await Link.open(kind, port, ctx)
        s.send(connect)
        await s.expect(CONNACK)
        s.send(encode(Subscribe(1, [Subscription(f"tw/{i}", 0)]), 4))
        await s.expect(SUBACK)
        subs.append(s)
        p = await Link.open(kind, port, ctx)
        p.send(connect)
        await p.expect(CONNACK)
        pubs.append(p)
    received = 0
    last = [0.0]
    expected = pairs * messages

    async def count(s):
        nonlocal received
        while received < expected:
            got = await s.packets()
            if not got:
                return
            n = got.count(PUBLISH)
            if n:
                received += n
                last[0] = time.monotonic()

    async def publish(i, p):
        head, tail = encode_publish_split(f"tw/{i}", bytes(64), 0, False, None, 4)
        chunk = (head + tail) * batch + b"\xc0\x00"
        for _ in range(messages // batch):
            p.send(chunk)
            await p.expect(PINGRESP)

    counters = [asyncio.create_task(count(s)) for s in subs]
    t0 = time.monotonic()
    await asyncio.gather(*(publish(i, p) for i, p in enumerate(pubs)))
    try:
        await asyncio.wait_for(asyncio.gather(*counters), 30)
    except asyncio.TimeoutError:
        for t in counters:
            t.cancel()
    for link in subs + pubs:
        link.close()
    return received / max(last[0] - t0, 1e-9), expected - received


def run_broker(b, args, ctx) -> list[tuple]:
    rows = []
    b.start()
    try:
        for kind in KINDS:
            b.meter.mark()
            rate, failed = uvloop.run(connect_rate(kind, b.ports[kind], ctx, args.connects, args.conc))
            cpu = b.meter.sample()
            rows.append((b.label, kind, "connect", rate, cpu * 1e6 / args.connects, failed))
        for kind in KINDS:
            b.meter.mark()
            rate, lost = uvloop.run(message_rate(kind, b.ports[kind], ctx, args.pairs, args.messages))
            cpu = b.meter.sample()
            rows.append((b.label, kind, "messages", rate, cpu * 1e6 / (args.pairs * args.messages), lost))
    finally:
        b.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.tls_ws_bench")
    ap.add_argument("--connects", type=int, default=2000, help="connections per listener")
    ap.add_argument("--conc", type=int, default=20, help="connections under way at once")
    ap.add_argument("--pairs", type=int, default=10, help="publisher/subscriber pairs")
    ap.add_argument("--messages", type=int, default=20000, help="QoS 0 messages per publisher")
    ap.add_argument("--workers", type=int, default=1, help="Shoal workers")
    args = ap.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="twbench") as tmpdir:
        tmp = Path(tmpdir)
        tmp.chmod(0o755)
        certs = make_certs(tmp / "certs")
        ctx = ssl.create_default_context(cafile=certs.ca)
        for name, make in (("shoal", lambda d: ShoalListeners(args.workers, d, certs)),
                           ("mosquitto", lambda d: MosquittoListeners(d, certs))):
            d = tmp / name
            d.mkdir()
            b = make(d)
            print(f"running {b.label} ...", file=sys.stderr, flush=True)
            rows += run_broker(b, args, ctx)
    print(f"connects: {args.connects} per listener, {args.conc} at once; messages: {args.pairs} pairs x "
          f"{args.messages} QoS 0, 64 B; host {os.uname().nodename}, {os.cpu_count()} cores, shared")
    print()
    print("| broker | listener | test | rate (/s) | broker CPU-µs each | failed / lost |")
    print("|---|---|---|---:|---:|---:|")
    for label, kind, test, rate, cpu, bad in rows:
        print(f"| {label} | {kind} | {test} | {rate:,.0f} | {cpu:.1f} | {bad} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
