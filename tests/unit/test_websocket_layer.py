"""worker.websocket fed bytes: a real Broker and Connection behind WsAccept, a
recording socket transport in front, a wsproto client making the bytes. Pressure
passes through both ways: the connection pausing reading (CONNECT waits for
the client id) pauses the socket; the socket's pause_writing makes the
connection congested (QoS 0 dropped)."""
import asyncio
import time

from wsproto import ConnectionType, WSConnection
from wsproto.events import AcceptConnection, BytesMessage, CloseConnection, Message, Request

from common.settings import Settings
from mqtt import Connect, Framer, Subscribe, Subscription, decode, encode
from worker.bridge import LocalBridge
from worker.broker import Broker
from worker.protocol import Connection
from worker.websocket import WsListener


class SocketTransport(asyncio.Transport):
    """The socket side: records what is written and the reading switches."""

    def __init__(self):
        super().__init__()
        self.out = bytearray()
        self.reading = True
        self.calls: list[str] = []
        self.closed = False

    def write(self, data):
        self.out += data

    def is_closing(self):
        return self.closed

    def close(self):
        self.closed = True

    def abort(self):
        self.closed = True

    def pause_reading(self):
        self.calls.append("pause")
        self.reading = False

    def resume_reading(self):
        self.calls.append("resume")
        self.reading = True

    def is_reading(self):
        return self.reading

    def set_write_buffer_limits(self, high=None, low=None):
        pass

    def get_write_buffer_size(self):
        return len(self.out)

    def can_write_eof(self):
        return True

    def get_extra_info(self, name, default=None):
        return ("127.0.0.1", 5555) if name == "peername" else default


class Client:
    def __init__(self, accept, raw):
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.accept, self.raw = accept, raw
        self.framer = Framer()
        self.closed_with = None

    def feed(self, data: bytes) -> None:
        self.accept.data_received(data)

    def read(self) -> list:
        data, self.raw.out = bytes(self.raw.out), bytearray()
        self.ws.receive_data(data)
        payload = b""
        events = []
        for ev in self.ws.events():
            if isinstance(ev, BytesMessage):
                payload += ev.data
            elif isinstance(ev, CloseConnection):
                self.closed_with = ev.code
            events.append(ev)
        packets = [decode(first, body, 4) for first, body in self.framer.feed(payload)]
        return events + packets


def make():
    broker = Broker(Settings(workers=1, persistence=False), time.monotonic, None, LocalBridge(), 1)
    lsn = WsListener(lambda: Connection(broker), 5.0, broker.metrics, 0)
    accept = lsn()
    raw = SocketTransport()
    accept.connection_made(raw)
    c = Client(accept, raw)
    c.feed(c.ws.send(Request(host="127.0.0.1", target="/mqtt", subprotocols=["mqtt"])))
    got = c.read()
    assert isinstance(got[0], AcceptConnection) and got[0].subprotocol == "mqtt"
    return broker, accept, raw, c


async def _connect_pauses_the_socket_until_the_client_id_is_granted():
    broker, accept, raw, c = make()
    frame = encode(Connect(client_id="u1", keepalive=30), 4) + encode(Subscribe(1, [Subscription("a/b", 0)]), 4)
    c.feed(c.ws.send(Message(data=frame[:3])) + c.ws.send(Message(data=frame[3:])))
    assert raw.calls[:1] == ["pause"]  # CONNECT suspended the connection: the socket stops reading
    for _ in range(50):  # the grant comes from the loop; nothing else runs here
        if raw.reading:
            break
        await asyncio.sleep(0)
    assert raw.calls == ["pause", "resume"]
    kinds = [type(p).__name__ for p in c.read() if not isinstance(p, BytesMessage)]
    assert kinds == ["Connack", "SubAck"]
    accept.connection_lost(None)
    assert not broker.connections


def test_connect_pauses_the_socket_until_the_client_id_is_granted():
    asyncio.run(_connect_pauses_the_socket_until_the_client_id_is_granted())


async def _socket_pause_writing_congests_the_connection():
    broker, accept, raw, c = make()
    c.feed(c.ws.send(Message(data=encode(Connect(client_id="u2", keepalive=30), 4))))
    for _ in range(50):
        if accept.conn.session is not None:
            break
        await asyncio.sleep(0)
    conn = accept.conn
    accept.pause_writing()
    assert conn.congested
    accept.resume_writing()
    assert not conn.congested
    accept.connection_lost(None)


def test_socket_pause_writing_congests_the_connection():
    asyncio.run(_socket_pause_writing_congests_the_connection())


async def _connection_close_sends_a_close_frame_and_nothing_after():
    broker, accept, raw, c = make()
    c.feed(c.ws.send(Message(data=encode(Connect(client_id="u3", keepalive=30), 4))))
    for _ in range(50):
        if accept.conn.session is not None:
            break
        await asyncio.sleep(0)
    c.read()
    conn = accept.conn
    conn.close()
    conn.transport.write(b"\xd0\x00")  # after the Close frame: dropped, not framed
    c.read()
    assert c.closed_with == 1000
    assert raw.out == b""
    assert conn.transport.is_closing()
    accept.connection_lost(None)


def test_connection_close_sends_a_close_frame_and_nothing_after():
    asyncio.run(_connection_close_sends_a_close_frame_and_nothing_after())
