"""One timer per process for every publisher paced by -I.

A timer per client per message (``loop.call_at``) costs more than the message
itself; the pacer keeps due clients in 1 ms slots (libuv timers tick in whole
milliseconds anyway), a heap of the slots in use, and one loop timer for the
earliest slot.  Every client due in a slot is pumped in the same loop pass.
"""
from __future__ import annotations

import asyncio
import heapq
import math
from typing import Protocol


class Paced(Protocol):
    def on_pace(self) -> None: ...


class Pacer:
    __slots__ = ("loop", "slots", "heap", "handle", "armed_for")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.slots: dict[int, list[Paced]] = {}  # ms since the loop's epoch -> clients due then
        self.heap: list[int] = []  # the keys of ``slots``
        self.handle: asyncio.TimerHandle | None = None
        self.armed_for = 0  # the slot the loop timer fires for

    def horizon(self) -> int:
        """The last ms slot that is due now: a loop timer may fire up to 1 ms early, and
        a publisher counts what is due within that ms as due (client.TIMER_SLACK)."""
        return math.floor(self.loop.time() * 1000) + 1

    def at(self, when: float, client: Paced) -> None:
        """Call ``client.on_pace()`` at loop time ``when`` (rounded up to the ms, and
        never into a slot that is already due: that would call it again at once)."""
        slot = max(math.ceil(when * 1000), self.horizon() + 1)
        clients = self.slots.get(slot)
        if clients is None:
            self.slots[slot] = [client]
            heapq.heappush(self.heap, slot)
            if self.handle is None or slot < self.armed_for:
                self._arm(slot)
        else:
            clients.append(client)

    def _arm(self, slot: int) -> None:
        if self.handle is not None:
            self.handle.cancel()
        self.armed_for = slot
        self.handle = self.loop.call_at(slot / 1000, self._fire)

    def _fire(self) -> None:
        self.handle = None
        now = self.horizon()
        heap, slots = self.heap, self.slots
        while heap and heap[0] <= now:
            for client in slots.pop(heapq.heappop(heap)):
                client.on_pace()
        if heap:
            self._arm(heap[0])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.cancel()
            self.handle = None
        self.slots.clear()
        self.heap.clear()
