"""What a load process counts, what it reports to the parent once a second, and
how the parent adds the reports up."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum

from loadtest.histogram import LogHistogram


class ErrorKind(IntEnum):
    CONNECT_FAILED = 0  # TCP connect refused or unreachable
    CONNECT_TIMEOUT = 1  # no CONNACK within --connect-timeout
    CONNACK_REFUSED = 2  # CONNACK with a non-zero return / reason code
    SUBACK_REFUSED = 3  # SUBACK with a failure code
    PUBLISH_REFUSED = 4  # PUBACK / PUBREC with a reason code >= 0x80
    CONNECTION_LOST = 5  # closed by the broker or the network before the client was done
    PROTOCOL = 6  # a packet the codec rejects, or one that makes no sense here


def _zeros() -> list[int]:
    return [0] * len(ErrorKind)


@dataclass(slots=True)
class Counters:
    """One process's figures: gauges (current values) and deltas since the last report."""

    connected: int = 0  # gauge: clients with a CONNACK and an open connection
    peak_connected: int = 0  # the most ``connected`` has been
    peak_subscribed: int = 0
    subscribed: int = 0  # gauge: connected clients whose SUBACK granted every filter
    sent: int = 0  # PUBLISH packets written
    acked: int = 0  # QoS 1/2 handshakes completed (PUBACK / PUBCOMP)
    received: int = 0  # PUBLISH packets received (QoS 2: counted once)
    errors: list[int] = field(default_factory=_zeros)
    latency: LogHistogram = field(default_factory=LogHistogram)  # ns, send timestamp to receipt
    connect_latency: LogHistogram = field(default_factory=LogHistogram)  # ns, TCP connect to CONNACK
    first_sent_ns: int = 0
    last_sent_ns: int = 0
    first_recv_ns: int = 0
    last_recv_ns: int = 0
    cpu_s: float = 0.0  # gauge: CPU time of the process since the common start

    def error(self, kind: ErrorKind) -> None:
        self.errors[kind] += 1

    def take_report(self, proc: int, tick: int, done: bool) -> Report:
        """A report of the deltas since the last one, which this resets."""
        report = Report(proc, tick, done, self.connected, self.peak_connected, self.subscribed, self.peak_subscribed,
                        self.sent, self.acked, self.received, self.errors, self.latency, self.connect_latency,
                        self.first_sent_ns, self.last_sent_ns, self.first_recv_ns, self.last_recv_ns, self.cpu_s)
        self.sent = self.acked = self.received = 0
        self.errors = _zeros()
        self.latency = LogHistogram()
        self.connect_latency = LogHistogram()
        return report


@dataclass(slots=True)
class Report:
    """Sent from a load process to the parent through its pipe once a second."""

    proc: int
    tick: int  # seconds since the common start this report closes
    done: bool  # the process's last report
    connected: int
    peak_connected: int
    subscribed: int
    peak_subscribed: int
    sent: int
    acked: int
    received: int
    errors: list[int]
    latency: LogHistogram
    connect_latency: LogHistogram
    first_sent_ns: int
    last_sent_ns: int
    first_recv_ns: int
    last_recv_ns: int
    cpu_s: float


@dataclass(slots=True)
class Second:
    """The figures of one second of the run, over every process."""

    tick: int
    sent: int = 0
    acked: int = 0
    received: int = 0
    errors: int = 0
    latency: LogHistogram = field(default_factory=LogHistogram)


def _first(a: int, b: int) -> int:
    return b if not a or (b and b < a) else a


@dataclass(slots=True)
class Totals:
    """The parent's sums over every process and second."""

    processes: int
    sent: int = 0
    acked: int = 0
    received: int = 0
    errors: list[int] = field(default_factory=_zeros)
    latency: LogHistogram = field(default_factory=LogHistogram)
    connect_latency: LogHistogram = field(default_factory=LogHistogram)
    first_sent_ns: int = 0
    last_sent_ns: int = 0
    first_recv_ns: int = 0
    last_recv_ns: int = 0
    gauges: dict[int, tuple[int, int]] = field(default_factory=dict)  # proc -> connected, subscribed
    cpu: dict[int, float] = field(default_factory=dict)  # proc -> CPU-seconds since the start
    peaks: dict[int, tuple[int, int]] = field(default_factory=dict)  # proc -> most connected, subscribed at once
    seconds: dict[int, Second] = field(default_factory=dict)

    def add(self, r: Report) -> Second:
        self.sent += r.sent
        self.acked += r.acked
        self.received += r.received
        for kind, n in enumerate(r.errors):
            self.errors[kind] += n
        self.latency.merge(r.latency)
        self.connect_latency.merge(r.connect_latency)
        self.first_sent_ns = _first(self.first_sent_ns, r.first_sent_ns)
        self.first_recv_ns = _first(self.first_recv_ns, r.first_recv_ns)
        self.last_sent_ns = max(self.last_sent_ns, r.last_sent_ns)
        self.last_recv_ns = max(self.last_recv_ns, r.last_recv_ns)
        self.gauges[r.proc] = (r.connected, r.subscribed)
        self.peaks[r.proc] = (r.peak_connected, r.peak_subscribed)
        self.cpu[r.proc] = r.cpu_s
        second = self.seconds.get(r.tick)
        if second is None:
            second = self.seconds[r.tick] = Second(r.tick)
        second.sent += r.sent
        second.acked += r.acked
        second.received += r.received
        second.errors += sum(r.errors)
        second.latency.merge(r.latency)
        return second

    @property
    def connected(self) -> int:
        return sum(g[0] for g in self.gauges.values())

    @property
    def max_connected(self) -> int:
        """The sum of each process's peak (their peaks need not coincide)."""
        return sum(p[0] for p in self.peaks.values())

    @property
    def max_subscribed(self) -> int:
        return sum(p[1] for p in self.peaks.values())

    @property
    def subscribed(self) -> int:
        return sum(g[1] for g in self.gauges.values())

    @property
    def error_count(self) -> int:
        return sum(self.errors)
