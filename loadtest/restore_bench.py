"""Time to restore a node from its store, as users see it: ``python -m loadtest.restore_bench``.

Through MQTT, on a real node (``circusd circus.ini`` with SHOAL_* settings, as
loadtest/bench/brokers.py starts it), it creates N persistent sessions
(MQTT 3.1.1, clean session 0; default 2,000), each with one subscription, and
queues Q QoS 1 messages for each of them (default 10) while they are offline.
Then it stops the node (SIGTERM to circusd: the worker flushes its store) and
times each restart on the same SHOAL_DATA_DIR:

- serving: from starting circusd until a CONNECT of a persistent session is
  answered with session present = 1 (the node's CPU, every process under
  circusd, over the same span),
- restore: what the worker's log line ``store opened`` says (sessions,
  retained, seconds: LevelDB opened and every session restored, before it
  serves),
- reconnect (last run): every session comes back and receives its queue.

Layouts: ``--messages shared`` (default) is a fan-out: the sessions form
groups of 100 subscribed to one topic each, and each group's Q messages are
queued for its 100 members; ``--messages distinct`` gives every session
messages of its own. mosquitto (``persistence true``: it restarts from its
``mosquitto.db``) gets the same sessions and messages in the same run.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from loadtest.bench.brokers import HOST, READY_TIMEOUT, Mosquitto, Shoal
from mqtt import Connack, Connect, Framer, PubAck, Publish, Subscribe, SubAck, Subscription, decode, encode

GROUP = 100  # sessions per topic in the shared layout
CONCURRENCY = 50  # clients at once while preparing and reconnecting
PROBE = "restore-probe"  # a persistent session of its own: its CONNACK says "restored"
STORE_LINE = re.compile(r"event='store opened' .*?sessions=(\d+) retained=(\d+) seconds=([\d.]+)")


class RestoreShoal(Shoal):
    """A node that logs at INFO (the worker's ``store opened`` line) and keeps its data."""

    def command(self):
        argv, env, cwd = super().command()
        env["SHOAL_LOG_LEVEL"] = "INFO"
        env["SHOAL_PERSISTENCE"] = "true"
        return argv, env, cwd

    def store_lines(self) -> list[tuple[int, int, float]]:
        return [(int(a), int(b), float(c)) for a, b, c in STORE_LINE.findall(self.log_tail(10_000_000))]


class RestoreMosquitto(Mosquitto):
    def command(self):
        argv, env, cwd = super().command()
        conf = self.tmp / "mosquitto.conf"
        text = conf.read_text().replace("persistence false", "persistence true\n"
                                        f"persistence_location {self.tmp}/\nautosave_interval 0"
                                        # as root it would drop to user mosquitto, who cannot write here
                                        + ("\nuser root" if os.geteuid() == 0 else ""))
        conf.write_text(text)
        return argv, env, cwd


# -- a minimal MQTT 3.1.1 client over asyncio streams ------------------------
class Client:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.framer = Framer()
        self.pending: list = []

    @classmethod
    async def connect(cls, port: int, client_id: str, clean: bool, timeout: float = 30.0):
        reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), timeout)
        c = cls(reader, writer)
        writer.write(encode(Connect(client_id=client_id, clean_start=clean, keepalive=60, version=4), 4))
        ack = await c.expect(Connack, timeout)
        if ack.reason_code != 0:
            writer.close()
            raise ConnectionError(f"{client_id}: CONNACK {ack.reason_code}")
        c.session_present = ack.session_present
        return c

    async def packet(self, timeout: float):
        while not self.pending:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise ConnectionError("closed by the broker")
            self.pending += [decode(first, body, 4) for first, body in self.framer.feed(data)]
        return self.pending.pop(0)

    async def expect(self, kind, timeout: float):
        p = await self.packet(timeout)
        if not isinstance(p, kind):
            raise ConnectionError(f"expected {kind.__name__}, got {type(p).__name__}")
        return p

    async def close(self) -> None:
        self.writer.write(b"\xe0\x00")  # DISCONNECT
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except OSError:
            pass


def topic_of(i: int, shared: bool) -> int:
    return i // GROUP if shared else i


async def _bounded(jobs, n: int = CONCURRENCY) -> list:
    sem = asyncio.Semaphore(n)

    async def run(job):
        async with sem:
            return await job

    return await asyncio.gather(*(run(j) for j in jobs))


async def prepare(port: int, sessions: int, queued: int, payload: int, shared: bool) -> float:
    """N persistent sessions (and the probe's) subscribed, offline, then Q QoS 1 messages each."""
    t0 = time.perf_counter()

    async def subscribe(cid: str, flt: str) -> None:
        c = await Client.connect(port, cid, clean=False)
        c.writer.write(encode(Subscribe(1, [Subscription(flt, 1)]), 4))
        await c.expect(SubAck, 30)
        await c.close()

    await _bounded([subscribe(f"bench-{i:07d}", f"bench/{topic_of(i, shared)}/+") for i in range(sessions)]
                   + [subscribe(PROBE, "restore-probe/never")])
    pub = await Client.connect(port, "restore-bench-pub", clean=True)
    body = b"x" * payload
    pid = 0
    topics = sorted({topic_of(i, shared) for i in range(sessions)})
    for g in topics:
        for k in range(queued):
            pid = pid % 0xFFFF + 1
            pub.writer.write(encode(Publish(f"bench/{g}/{k}", body, 1, packet_id=pid), 4))
        for _ in range(queued):
            await pub.expect(PubAck, 60)
    await pub.close()
    return time.perf_counter() - t0


async def probe_restored(port: int) -> bool:
    try:
        c = await Client.connect(port, PROBE, clean=False, timeout=5)
    except (OSError, ConnectionError, asyncio.TimeoutError):
        return False
    present = c.session_present
    await c.close()
    if not present:
        raise RuntimeError("the node serves but the probe's session was not restored")
    return True


def restart(broker) -> tuple[float, float]:
    """Start `broker` on its data; seconds until a persistent session is back, and the CPU it used."""
    argv, env, cwd = broker.command()
    t0 = time.perf_counter()
    with open(broker.log_path, "ab") as log:
        broker.proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)
    broker.meter = broker.make_meter()
    broker.meter.mark()
    deadline = time.monotonic() + READY_TIMEOUT
    while not asyncio.run(probe_restored(broker.port)):
        broker.meter.sample()
        if broker.proc.poll() is not None:
            raise RuntimeError(f"{broker.label} exited with {broker.proc.returncode}:\n{broker.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{broker.label} not serving in {READY_TIMEOUT:.0f} s:\n{broker.log_tail()}")
        time.sleep(0.01)  # a poll interval: the broker is still starting (nothing to wait on from outside)
    wall = time.perf_counter() - t0
    return wall, broker.meter.sample()


async def reconnect_all(port: int, sessions: int, queued: int) -> tuple[int, float]:
    """Every session back (clean session 0), receiving and acknowledging its queue."""
    t0 = time.perf_counter()

    async def one(i: int) -> int:
        c = await Client.connect(port, f"bench-{i:07d}", clean=False)
        got = 0
        while got < queued:
            p = await c.expect(Publish, 60)
            if p.qos:
                c.writer.write(encode(PubAck(p.packet_id), 4))
            got += 1
        await c.close()
        return got

    n = sum(await _bounded([one(i) for i in range(sessions)]))
    return n, time.perf_counter() - t0


def run_one(broker, args, shared: bool) -> dict:
    broker.start()
    built = asyncio.run(prepare(broker.port, args.sessions, args.queued, args.payload, shared))
    broker.stop()
    runs = []
    for i in range(max(1, args.repeat)):
        wall, cpu = restart(broker)
        runs.append((wall, cpu))
        last = i == max(1, args.repeat) - 1
        if last and not args.no_queues:
            got, secs = asyncio.run(reconnect_all(broker.port, args.sessions, args.queued))
        broker.stop()
    out = {"built": built, "runs": runs, "best": min(runs)}
    if not args.no_queues:
        out["queues"] = (got, secs)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.restore_bench", description=__doc__.splitlines()[0])
    ap.add_argument("--sessions", type=int, default=2_000)
    ap.add_argument("--queued", type=int, default=10, help="queued messages per session")
    ap.add_argument("--payload", type=int, default=64, help="payload bytes per message")
    ap.add_argument("--messages", choices=("shared", "distinct"), default="shared")
    ap.add_argument("--repeat", type=int, default=3, help="restarts timed (the best is reported)")
    ap.add_argument("--workers", type=int, default=1, help="the node's SHOAL_WORKERS")
    ap.add_argument("--no-queues", action="store_true", help="skip reconnecting every session after the last restart")
    ap.add_argument("--no-mosquitto", action="store_true", help="time Shoal only")
    args = ap.parse_args(argv)
    shared = args.messages == "shared"
    tmp = Path(tempfile.mkdtemp(prefix="shoal-restore-bench-"))
    try:
        print(f"{args.sessions} persistent sessions x {args.queued} queued QoS 1 ({args.messages} messages), "
              f"restarted {max(1, args.repeat)} times; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
        shoal_dir = tmp / "shoal"
        shoal_dir.mkdir()
        node = RestoreShoal(args.workers, shoal_dir)
        try:
            res = run_one(node, args, shared)
        finally:
            node.stop()
        lines = node.store_lines()
        size = sum(f.stat().st_size for f in (shoal_dir / "data").rglob("*") if f.is_file())
        # the first line is the empty store of the first start; then one per worker per restart
        restores = lines[args.workers:]
        print(f"shoal: prepared through MQTT in {res['built']:.2f} s; {size / 1e6:.1f} MB on disk")
        if restores:
            n = sum(s for s, _, _ in restores[-args.workers:])
            best_store = min(sec for _, _, sec in restores)
            print(f"restored {n} sessions" + (f"; {res['queues'][0]} queued messages received afterwards"
                                              if "queues" in res else ""))
        else:
            best_store = float("nan")
            print("restored ? sessions (no 'store opened' line in the node's log)")
        print(f"best of {len(res['runs'])} (wall seconds / node cpu seconds):")
        print(f"  restore: the worker's 'store opened' seconds (store open + sessions restored): {best_store:.3f}")
        print(f"  serving: circusd started until CONNECT answers session present=1: "
              f"{res['best'][0]:.3f} / {res['best'][1]:.3f}")
        if "queues" in res:
            got, secs = res["queues"]
            print(f"  every session reconnected and received its queue (last run): {secs:.3f}")
        if args.no_mosquitto:
            print("mosquitto: not run (--no-mosquitto)")
        elif shutil.which("mosquitto") is None and not os.path.exists("/usr/sbin/mosquitto"):
            print("mosquitto: not installed (apt-get install mosquitto), no figure")
        else:
            mq_dir = tmp / "mosquitto"
            mq_dir.mkdir()
            mq = RestoreMosquitto(1, mq_dir)
            try:
                mres = run_one(mq, args, shared)
            finally:
                mq.stop()
            print(f"mosquitto (persistence true, mosquitto.db): prepared in {mres['built']:.2f} s; best of "
                  f"{len(mres['runs'])}: serving {mres['best'][0]:.3f} / cpu {mres['best'][1]:.3f}"
                  + (f"; reconnect {mres['queues'][1]:.3f} ({mres['queues'][0]} messages)" if "queues" in mres else ""))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
