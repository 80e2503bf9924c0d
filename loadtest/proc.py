"""One load process: its share of the clients on one uvloop event loop, a report
to the parent through the pipe once a second, and a last one when it ends."""
from __future__ import annotations

import asyncio
import random
import resource
import signal
import time
import traceback
from multiprocessing.connection import Connection

import uvloop

from loadtest.budget import Budget
from loadtest.client import BenchClient, Phase, Wire
from loadtest.messages import Crashed, Go, LimitReached, Publish, Ready, Settled, Stop
from loadtest.naming import client_id, client_indices, expand_topic, username
from loadtest.options import Options, Verb
from loadtest.pacer import Pacer
from loadtest.stats import Counters, ErrorKind

CLOSE_GRACE = 5.0  # seconds for the last DISCONNECTs to leave before the last report


def raise_fd_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def child_main(conn: Connection, opts: Options, proc: int, budget: Budget | None = None) -> None:
    """The target of each ``multiprocessing.Process``; ``budget`` is the run's -L, shared by all."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and sends Stop
    raise_fd_limit()
    try:
        uvloop.run(LoadProcess(opts, proc, conn, budget).run())
    except BaseException:
        try:
            conn.send(Crashed(proc, traceback.format_exc()))
        except OSError:  # the parent is gone too
            pass
        raise SystemExit(1) from None
    finally:
        conn.close()


class LoadProcess:
    def __init__(self, opts: Options, proc: int, conn: Connection, budget: Budget | None = None):
        self.opts = opts
        self.proc = proc
        self.conn = conn
        self.budget = budget  # -L: the messages of the whole run, over every process
        self.limit_hit = False
        self.held = opts.wait_before_publishing  # -w: publishers wait for Publish
        self.counters = Counters()
        self.wire = Wire(opts.version)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pacer: Pacer | None = None
        self.clients: list[BenchClient] = []
        self.unfinished = 0  # clients not yet at their end
        self.unsettled = 0  # clients neither ready (connected, subscribed) nor finished
        self.ready = 0
        self.open_transports = 0
        self.all_closed: asyncio.Event | None = None
        self.done: asyncio.Future | None = None
        self.go: asyncio.Future | None = None
        self.stopping = False
        self.start = 0.0  # loop.time() of the common start
        self.tick = 0
        self.cpu_start = 0.0
        self.ping_period = max(1, opts.keepalive // 2) if opts.keepalive else 0
        self.tasks: set[asyncio.Task] = set()

    async def run(self) -> None:
        loop = self.loop = asyncio.get_running_loop()
        self.pacer = Pacer(loop)
        loop.set_exception_handler(self._on_loop_error)
        self.done = loop.create_future()
        self.go = loop.create_future()
        self.all_closed = asyncio.Event()
        loop.add_reader(self.conn.fileno(), self._on_pipe)
        loop.add_signal_handler(signal.SIGTERM, self.stop)  # e.g. `timeout` signals the whole group
        o = self.opts
        rng = random.Random()
        for n in client_indices(o.clients, o.start_number, o.processes, self.proc):
            cid = client_id(o.prefix, o.verb, n, rng)
            self.clients.append(BenchClient(self, n, cid, expand_topic(o.topic, n, cid, o.username),
                                            username(o.username, n, rng)))
        self.unfinished = self.unsettled = len(self.clients)
        self.conn.send(Ready(self.proc))
        go: Go = await self.go
        self.start = loop.time() + (go.start_ns - time.time_ns()) / 1e9
        self.cpu_start = time.process_time()
        loop.call_at(self.start + 1, self._tick)
        launcher = loop.create_task(self._launch())
        if not self.clients:
            self.done.set_result(None)
        try:
            await self.done
        finally:
            launcher.cancel()
            self.pacer.close()
        if self.open_transports:
            try:
                async with asyncio.timeout(CLOSE_GRACE):
                    await self.all_closed.wait()
            except TimeoutError:
                pass
        loop.remove_reader(self.conn.fileno())
        self.tick += 1
        self.counters.cpu_s = time.process_time() - self.cpu_start
        self.conn.send(self.counters.take_report(self.proc, self.tick, done=True))

    # -- the parent -------------------------------------------------------------

    def _on_pipe(self) -> None:
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                if isinstance(msg, Go) and not self.go.done():
                    self.go.set_result(msg)
                elif isinstance(msg, Stop):
                    self.stop()
                elif isinstance(msg, LimitReached):
                    self.limit_reached()
                elif isinstance(msg, Publish):
                    self.release()
        except (EOFError, OSError):  # the parent is gone: wind down
            self.loop.remove_reader(self.conn.fileno())
            if not self.go.done():
                self.go.set_exception(EOFError("parent closed the pipe before Go"))
            self.stop()

    def _on_loop_error(self, loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception") or RuntimeError(context.get("message", "event loop error"))
        if not self.done.done():
            self.done.set_exception(exc)

    def _tick(self) -> None:
        if self.done.done():
            return
        self.tick += 1
        self.counters.cpu_s = time.process_time() - self.cpu_start
        self.conn.send(self.counters.take_report(self.proc, self.tick, done=False))
        period = self.ping_period
        if period:
            tick = self.tick
            for c in self.clients:
                if (c.index + tick) % period == 0:
                    c.ping()
        self.loop.call_at(self.start + self.tick + 1, self._tick)

    # -- clients ----------------------------------------------------------------

    async def _launch(self) -> None:
        o = self.opts
        loop = self.loop
        interval = o.connect_interval_ms / 1000
        slots = asyncio.Semaphore(o.max_connecting)
        for c in self.clients:
            delay = self.start + (c.index - o.start_number - 1) * interval - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()
            if self.stopping or self.limit_hit:
                slots.release()
                return
            task = loop.create_task(self._connect(c, slots))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def _connect(self, c: BenchClient, slots: asyncio.Semaphore) -> None:
        o = self.opts
        loop = self.loop
        c.connack = loop.create_future()
        try:
            async with asyncio.timeout(o.connect_timeout or None):
                await loop.create_connection(lambda: c, o.host, o.port)
                await c.connack
        except TimeoutError:
            c.fail(ErrorKind.CONNECT_TIMEOUT)
        except OSError:
            c.fail(ErrorKind.CONNECT_FAILED)
        finally:
            c.connack = None
            slots.release()

    def transport_opened(self) -> None:
        self.open_transports += 1
        self.all_closed.clear()

    def transport_closed(self) -> None:
        self.open_transports -= 1
        if not self.open_transports:
            self.all_closed.set()

    def client_ready(self, c: BenchClient) -> None:
        """``c`` is connected (and subscribed)."""
        c.settled = True
        self.ready += 1
        self._settle()

    def client_finished(self, c: BenchClient) -> None:
        if not c.settled:
            c.settled = True
            self._settle()
        self.unfinished -= 1
        if not self.unfinished and not self.done.done():
            self.done.set_result(None)

    def _settle(self) -> None:
        self.unsettled -= 1
        if self.unsettled:
            return
        self.conn.send(Settled(self.proc, self.ready))
        if self.opts.verb is Verb.CONN and self.opts.hold is not None:
            self.loop.call_later(self.opts.hold, self.stop)

    def release(self) -> None:
        """-w: every publisher of the run has connected or failed; the connected ones start."""
        if not self.held:
            return
        self.held = False
        for c in self.clients:
            c.start_publishing()

    def limit_reached(self) -> None:
        """The run's -L is spent (seen here, or told by the parent): launch no more
        clients, let the publishers drain their acks, disconnect everyone."""
        if self.limit_hit:
            return
        self.limit_hit = True
        for c in self.clients:
            c.limit_reached()

    def stop(self) -> None:
        """Finish every client: DISCONNECT the connected ones, give up the others."""
        if self.stopping:
            return
        self.stopping = True
        for c in self.clients:
            if c.phase < Phase.CLOSING:
                c.finish()
