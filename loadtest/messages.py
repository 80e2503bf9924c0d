"""What the parent and its load processes say to each other over their pipe
(besides :class:`loadtest.stats.Report`, child to parent once a second)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Ready:
    """Child to parent: imported, event loop up, waiting for Go."""

    proc: int


@dataclass(slots=True, frozen=True)
class Go:
    """Parent to children: the common start, wall clock ns (``time.time_ns()``)."""

    start_ns: int


@dataclass(slots=True, frozen=True)
class Stop:
    """Parent to children: disconnect every client and send the last report."""


@dataclass(slots=True, frozen=True)
class LimitReached:
    """Parent to children: the run's -L is spent; finish every client (publishers
    once their last acks are in)."""


@dataclass(slots=True, frozen=True)
class Settled:
    """Child to parent: every client of the process is connected (and subscribed)
    or has failed; sent once, as soon as it happens."""

    proc: int
    ready: int  # clients connected (and subscribed)


@dataclass(slots=True, frozen=True)
class Publish:
    """Parent to children, with ``-w``: every process settled (each publisher connected or
    failed); the publishers start."""


@dataclass(slots=True, frozen=True)
class Crashed:
    """Child to parent: the process failed before its last report."""

    proc: int
    detail: str
