"""worker/lease.py's LeaseGuard on the worker's clock: a fake one that the test moves
(tests/support/fakes.py), a real Broker and real Connections fed bytes written out by hand."""
from __future__ import annotations

from common.settings import Settings
from mqtt.packets import Connack, Disconnect
from tests.support import wire
from tests.support.fakes import FakeClock, FakeTransport
from worker.broker import Broker
from worker.lease import LeaseGuard
from worker.protocol import Connection

USE_ANOTHER_SERVER = 0x9C


class Client:
    def __init__(self, broker: Broker, cid: str, version: int = 5) -> None:
        self.version = version
        self.t = FakeTransport()
        self.conn = Connection(broker)
        self.conn.connection_made(self.t)
        self.conn.data_received(wire.connect(cid, version))
        ack = self.read()
        assert len(ack) == 1 and isinstance(ack[0], Connack) and ack[0].reason_code == 0, ack

    def read(self) -> list:
        return wire.decode_all(self.t.take(), self.version)


def make():
    clock = FakeClock()
    broker = Broker(Settings(persistence=False, workers=1), clock)
    guard = LeaseGuard(broker)
    assert guard.clock is broker.clock is clock  # the broker keeps the clock it is given
    return clock, broker, guard


def reasons(packets: list) -> list[int]:
    return [p.reason_code for p in packets if isinstance(p, Disconnect)]


def test_lease_running_out_fences_and_a_new_lease_unfences():
    clock, broker, guard = make()
    c = Client(broker, "a")
    guard.update(clock() + 5.0)
    assert not guard.fenced
    clock.advance(4.9)
    assert not guard.fenced and c.read() == []
    clock.advance(0.2)  # the lease ran out: its timer on the worker's clock fences
    assert guard.fenced
    assert reasons(c.read()) == [USE_ANOTHER_SERVER]
    guard.update(clock() + 5.0)  # the agent renewed: clients are accepted again
    assert not guard.fenced
    d = Client(broker, "b")
    clock.advance(4.0)
    assert not guard.fenced and d.read() == []


def test_renewed_lease_moves_the_deadline():
    clock, broker, guard = make()
    c = Client(broker, "a")
    guard.update(clock() + 5.0)
    clock.advance(3.0)
    guard.update(clock() + 5.0)  # the old timer is cancelled: nothing happens at the first deadline
    clock.advance(3.0)
    assert not guard.fenced and c.read() == []
    assert len(clock.pending()) == 1
    clock.advance(2.5)
    assert guard.fenced and reasons(c.read()) == [USE_ANOTHER_SERVER]


def test_news_read_after_a_freeze_fences_before_it_unfences():
    """The whole node was frozen past its lease: the renewal is read before the timer runs,
    and the clients that were served under the lost lease are still disconnected."""
    clock, broker, guard = make()
    c = Client(broker, "a")
    guard.update(clock() + 5.0)
    clock.t += 10.0  # time passed with no timer run (SIGSTOP)
    guard.update(clock() + 5.0)
    assert reasons(c.read()) == [USE_ANOTHER_SERVER]
    assert not guard.fenced


def test_no_lease_or_an_expired_one_fences():
    clock, broker, guard = make()
    guard.update(None)
    assert guard.fenced
    guard.update(clock() + 1.0)
    assert not guard.fenced
    guard.update(clock() - 1.0)  # news of a lease already over
    assert guard.fenced
