"""``-L``: the messages of the whole run, one counter shared by every client of every
load process.

emqtt-bench builds one counter for the run (``pub_limit_fun_init``) and every
publisher takes one from it before each publish; a publisher that finds it at 0
stops, and the run ends.  Here the counter lives in shared memory; a client takes
what it is about to write (a publisher) or has just counted (a subscriber) in one
locked step, so the run's total is exactly ``-L`` however many clients and
processes share it (emqtt-bench's read-then-decrement can overrun by a few).
"""
from __future__ import annotations

from multiprocessing.context import BaseContext


class Budget:
    __slots__ = ("total", "_left", "_lock")

    def __init__(self, ctx: BaseContext, total: int):
        if total < 1:
            raise ValueError(f"a budget needs at least one message, got {total}")
        self.total = total
        self._left = ctx.RawValue("q", total)
        self._lock = ctx.Lock()

    def take(self, n: int) -> int:
        """Take up to ``n`` messages; returns how many were granted (0 once spent)."""
        with self._lock:
            left = self._left.value
            granted = n if n < left else left
            self._left.value = left - granted
        return granted

    @property
    def left(self) -> int:
        return self._left.value

    @property
    def spent(self) -> bool:
        return self._left.value <= 0
