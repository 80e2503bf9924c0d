"""The two frames of a ROUTER socket's message (identity, data), read and written with plain
int flags. pyzmq's `sock.get(zmq.EVENTS) & zmq.POLLIN` builds an enum.Flag on every call
(measured: 10 µs against 4 with ints on the shared VM), its send_multipart ORs the enum flags
(an enum.Flag per send) and its recv_multipart reads RCVMORE as an enum member (measured on
the shared VM: 5.3 against 2.4 µs a send, 3.2 against 1.6 µs a receive). Used by the members'
socket (router/router.py) and the data socket other nodes send to (router/peerdata.py)."""
from __future__ import annotations

import zmq

EVENTS, POLLIN, NOBLOCK = int(zmq.EVENTS), int(zmq.POLLIN), int(zmq.NOBLOCK)
SNDMORE_NOBLOCK, RCVMORE = int(zmq.SNDMORE) | NOBLOCK, int(zmq.RCVMORE)


def recv_pair(recv, getsockopt) -> tuple[bytes, bytes]:
    """One message of two frames, with the socket's bound recv and getsockopt (looked up once
    per read batch by the caller). zmq.Again: none waits; ValueError: not two frames, not one
    of ours (what it had is read and dropped)."""
    ident = recv(NOBLOCK)
    if not getsockopt(RCVMORE):
        raise ValueError
    data = recv(NOBLOCK)
    if getsockopt(RCVMORE):  # (more than two frames: read the rest, drop it all)
        while getsockopt(RCVMORE):
            recv(NOBLOCK)
        raise ValueError
    return ident, data


def send_pair(sock, ident: bytes, data: bytes) -> None:
    """One message of two frames to ident, without blocking (zmq.Again: the socket cannot take
    it; a ROUTER refuses at the first frame, or takes both). A test's fake socket, not a
    zmq.Socket, gets both frames in one send_multipart."""
    if sock.__class__ is zmq.Socket:
        sock.send(ident, SNDMORE_NOBLOCK)
        sock.send(data, NOBLOCK)
    else:
        sock.send_multipart([ident, data], NOBLOCK)
