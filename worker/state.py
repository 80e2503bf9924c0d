"""Where a connection is (protocol.Connection.state): below protocol.py and
handlers.py so that both read the same enum."""
from __future__ import annotations

from enum import IntEnum


class State(IntEnum):
    NEW = 0  # waiting for CONNECT
    CONNECTING = 1  # CONNECT received, waiting for the node to grant the client id
    CONNECTED = 2
    CLOSED = 3
