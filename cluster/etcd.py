"""The agent's etcd connection: aetcd, one endpoint at a time, the next one after a failure."""
from __future__ import annotations

import asyncio
import logging
from urllib.parse import urlparse

import aetcd

log = logging.getLogger("shoal.agent")

RPC_TIMEOUT = 3.0  # seconds for one etcd call (watches excepted)

# Keys (DESIGN.md "Cluster state in etcd"). One range holds them all, so that one
# read gives a consistent snapshot and one watch sees every change in revision order.
NODES = b"nodes/"
ROUTES = b"routes/"
RETAINED = b"retained/"
RANGE_START = b"nodes/"
RANGE_END = b"routes0"  # just past every "routes/..." key ('0' follows '/')
PAGE = 500  # keys per read of the whole range (one gRPC message each, whatever the cluster's size)
MAX_MESSAGE = 64 * 1024 * 1024  # bytes of one etcd answer the agent accepts (gRPC's default is 4 MiB)


def parse_endpoint(url: str) -> tuple[str, int]:
    u = urlparse(url if "://" in url else f"http://{url}")
    if not u.hostname or not u.port:
        raise ValueError(f"etcd endpoint {url!r} is not http://host:port")
    return u.hostname, u.port


class Etcd:
    def __init__(self, endpoints: list[str]):
        self.endpoints = endpoints
        self.addrs = [parse_endpoint(e) for e in endpoints]
        self.i = 0
        self.client: aetcd.Client | None = None

    @property
    def endpoint(self) -> str:
        return self.endpoints[self.i % len(self.endpoints)]

    async def connect(self) -> aetcd.Client:
        if self.client is None:
            host, port = self.addrs[self.i % len(self.addrs)]
            self.client = aetcd.Client(host, port, timeout=RPC_TIMEOUT,
                                       options={"grpc.max_receive_message_length": MAX_MESSAGE})
        await self.client.status()  # reachable, and a member of a cluster with a leader
        return self.client

    async def reset(self) -> None:
        """Drop the connection (after an error); the next connect tries the next endpoint.

        The old channel is closed only once every call still on it had its deadline: grpc.aio
        ends a call on a closed channel with CancelledError, which the other tasks using the
        client (leader rounds, owner claims, wills) would take for their own cancellation (an
        agent died of it when a partition cut it off from etcd, issue 11)."""
        c, self.client = self.client, None
        self.i += 1
        if c is not None:
            asyncio.get_running_loop().call_later(RPC_TIMEOUT + 1.0, _close_later, c)


def _close_later(c: aetcd.Client) -> None:
    async def close():
        try:
            await c.close()
        except Exception:
            pass

    asyncio.get_running_loop().create_task(close())


async def read_range(client: aetcd.Client, start: bytes, end: bytes) -> tuple[int, list]:
    """Every key in [start, end) at one revision, read PAGE keys at a time: (revision,
    the etcd KeyValues in key order). One answer for a whole table of routes would
    outgrow any message limit; the pages, all read at the first page's revision, are
    one consistent snapshot still (a compaction past it in between fails the read)."""
    from aetcd import rpc

    rev = 0
    key = start
    items: list = []
    while True:
        req = rpc.RangeRequest(key=key, range_end=end, limit=PAGE, revision=rev)
        resp = await client.kvstub.Range(req, timeout=RPC_TIMEOUT, metadata=client.metadata)
        if not rev:
            rev = resp.header.revision
        items.extend(resp.kvs)
        if not resp.more or not resp.kvs:
            return rev, items
        key = resp.kvs[-1].key + b"\0"
