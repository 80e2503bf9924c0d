"""The parent of a run: spreads the clients over processes, gives them a common
start, adds up their once-a-second reports, prints the live line and the summary,
tells them when the run's -L is spent, and to stop (duration, Ctrl-C or SIGTERM)."""
from __future__ import annotations

import multiprocessing
import signal
import sys
import time
from dataclasses import dataclass, field
from enum import IntEnum
from multiprocessing.connection import Connection, wait
from typing import TextIO

from loadtest.budget import Budget
from loadtest.messages import Crashed, Go, LimitReached, Publish, Ready, Settled, Stop
from loadtest.options import Options, Verb
from loadtest.proc import CLOSE_GRACE, child_main
from loadtest.stats import Report, Totals
from loadtest.summary import limit_line, live_line, second_record, settled_line, summarize

READY_TIMEOUT = 60.0  # seconds for the processes to start
START_DELAY_NS = 20_000_000  # the common start lies this far after Go is sent
LATE_REPORT = 0.5  # a second's line is printed once every process reported it, or this late
POLL = 0.2  # longest wait, so that a signal (or a spent -L) is noticed soon
DRAIN_GRACE = 10.0  # seconds the publishers get for their last acks once -L is spent, then Stop


class ChildState(IntEnum):
    STARTING = 0
    READY = 1
    DONE = 2  # sent its last report
    DEAD = 3  # crashed or exited without a last report


@dataclass(slots=True)
class Child:
    proc: int
    process: multiprocessing.Process
    conn: Connection
    state: ChildState = ChildState.STARTING
    last_tick: int = 0
    ready: int | None = None  # clients ready once the process settled


@dataclass(slots=True)
class Run:
    opts: Options
    out: TextIO
    err: TextIO
    children: list[Child] = field(default_factory=list)
    totals: Totals = field(init=False)
    series: list[dict] = field(default_factory=list)
    crashed: list[str] = field(default_factory=list)
    signals: int = 0
    stop_sent_at: float = 0.0
    start: float = 0.0  # time.monotonic() of the common start
    start_ns: int = 0  # the same, wall clock (time.time_ns())
    printed: int = 0  # last second printed
    settled_s: float | None = None  # seconds from the start until every client was ready or failed
    budget: Budget | None = None  # -L: the messages of the whole run, shared by every process
    limit_at: float = 0.0  # time.monotonic() when the parent saw -L spent

    def __post_init__(self) -> None:
        self.totals = Totals(self.opts.processes)

    # -- lifecycle ----------------------------------------------------------------

    def execute(self) -> dict:
        ctx = multiprocessing.get_context("spawn")
        if self.opts.limit and self.opts.verb is not Verb.CONN:
            self.budget = Budget(ctx, self.opts.limit)
        old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            for p in range(self.opts.processes):
                parent_end, child_end = ctx.Pipe()
                process = ctx.Process(target=child_main, args=(child_end, self.opts, p, self.budget),
                                      name=f"loadtest-{p}", daemon=True)
                process.start()
                child_end.close()
                self.children.append(Child(p, process, parent_end))
            started = time.monotonic()
            if self._wait_ready(started + READY_TIMEOUT):
                self._go()
                self._follow()
            elapsed = time.monotonic() - self.start if self.start else 0.0
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            self._reap()
        return summarize(self.opts, self.totals, self.start_ns, elapsed, self.settled_s, self.series, self.crashed)

    def _on_signal(self, signum, frame) -> None:
        self.signals += 1

    def _wait_ready(self, deadline: float) -> bool:
        while any(c.state is ChildState.STARTING for c in self.children):
            if self.signals or time.monotonic() > deadline:
                if not self.signals:
                    self.crashed.append(f"load processes not ready within {READY_TIMEOUT:.0f} s")
                return False
            self._pump(time.monotonic() + POLL)
            if any(c.state is ChildState.DEAD for c in self.children):
                return False
        return True

    def _go(self) -> None:
        go = Go(time.time_ns() + START_DELAY_NS)
        self.start_ns = go.start_ns
        self.start = time.monotonic() + START_DELAY_NS / 1e9
        for c in self.children:
            c.conn.send(go)

    def _follow(self) -> None:
        o = self.opts
        while any(c.state < ChildState.DONE for c in self.children):
            now = time.monotonic()
            self._pump(min(now + POLL, self.start + self.printed + 1 + LATE_REPORT))
            self._print_seconds(final=False)
            now = time.monotonic()
            if self.signals > 1 or (self.stop_sent_at and now > self.stop_sent_at + CLOSE_GRACE + 5):
                break  # _reap terminates what is left
            if self.budget is not None and not self.limit_at and self.budget.spent:
                self._limit_reached(now)
            if not self.stop_sent_at and (
                    self.signals
                    or (o.duration is not None and now >= self.start + o.duration)
                    or (self.limit_at and now > self.limit_at + DRAIN_GRACE)
                    or any(c.state is ChildState.DEAD for c in self.children)):
                self._stop()
        self._print_seconds(final=True)

    def _limit_reached(self, now: float) -> None:
        """Every process hears that -L is spent (the one whose client spent it knows already)."""
        self.limit_at = now
        print(limit_line(self.opts, now - self.start), file=self.err, flush=True)
        self._tell(LimitReached())

    def _tell(self, msg) -> None:
        """Send ``msg`` to every child that has not ended."""
        for c in self.children:
            if c.state < ChildState.DONE:
                try:
                    c.conn.send(msg)
                except OSError:
                    pass

    def _stop(self) -> None:
        self.stop_sent_at = time.monotonic()
        self._tell(Stop())

    def _reap(self) -> None:
        deadline = time.monotonic() + 2.0
        for c in self.children:
            c.process.join(max(0.0, deadline - time.monotonic()))
            if c.process.is_alive():
                c.process.terminate()
                c.process.join(2.0)
                if c.process.is_alive():
                    c.process.kill()
                    c.process.join()
            c.conn.close()

    # -- reports ------------------------------------------------------------------

    def _pump(self, until: float) -> None:
        """Handle what the children sent, waiting for it until ``until`` at most."""
        live = {c.conn: c for c in self.children if c.state < ChildState.DONE}
        sentinels = {c.process.sentinel: c for c in live.values()}
        timeout = max(0.0, until - time.monotonic())
        for obj in wait(list(live) + list(sentinels), timeout):
            child = live.get(obj) or sentinels[obj]
            self._drain(child)
            if obj in sentinels and child.state < ChildState.DONE:
                child.state = ChildState.DEAD
                self.crashed.append(f"load process {child.proc} exited with code {child.process.exitcode} "
                                    "before its last report")

    def _drain(self, c: Child) -> None:
        try:
            while c.state < ChildState.DONE and c.conn.poll():
                self._handle(c, c.conn.recv())
        except (EOFError, OSError):
            if c.state < ChildState.DONE:
                c.state = ChildState.DEAD
                self.crashed.append(f"load process {c.proc} closed its pipe before its last report")

    def _handle(self, c: Child, msg) -> None:
        if isinstance(msg, Report):
            self.totals.add(msg)
            c.last_tick = msg.tick
            if msg.done:
                c.state = ChildState.DONE
        elif isinstance(msg, Settled):
            c.ready = msg.ready
            if self.settled_s is None and all(ch.ready is not None for ch in self.children):
                self.settled_s = time.monotonic() - self.start
                ready = sum(ch.ready for ch in self.children)
                print(settled_line(ready, self.settled_s, self.opts), file=self.err, flush=True)
                if self.opts.wait_before_publishing:
                    self._tell(Publish())
        elif isinstance(msg, Ready):
            c.state = ChildState.READY
        elif isinstance(msg, Crashed):
            c.state = ChildState.DEAD
            self.crashed.append(f"load process {msg.proc}:\n{msg.detail}")

    def _print_seconds(self, final: bool) -> None:
        seconds = self.totals.seconds
        last = max(seconds, default=0)
        while self.printed < last:
            tick = self.printed + 1
            waiting = [c for c in self.children if c.state < ChildState.DONE and c.last_tick < tick]
            if waiting and not final and time.monotonic() < self.start + tick + LATE_REPORT:
                return
            self.printed = tick
            second = seconds.get(tick)
            if second is None:
                continue
            rec = second_record(second, self.totals)
            self.series.append(rec)
            print(live_line(rec, self.opts), file=self.err, flush=True)


def run(opts: Options, out: TextIO = sys.stdout, err: TextIO = sys.stderr) -> dict:
    """Run ``opts`` to its end and return the summary (a JSON-ready dict)."""
    return Run(opts, out, err).execute()
