"""Messages between the members of a node (workers, cluster agent) and its router.

Every ZeroMQ message is one msgpack array of ops: ``[[op, ...], [op, ...]]``,
so that many ops travel in one send. Ops are versioned by their number: a new
shape gets a new number, never a changed one.
"""
from __future__ import annotations

from enum import IntEnum

import msgpack

WIRE_VERSION = 1


class Op(IntEnum):
    # member -> router
    HELLO = 1  # [HELLO, WIRE_VERSION, filters, client_ids, retained msgs]
    ROUTE_ADD = 2  # [ROUTE_ADD, filter, since]: since = monotonic time the subscription was made
    ROUTE_DEL = 3  # [ROUTE_DEL, filter]
    PUB = 4  # [PUB, msg, token | None, at]: a token asks for CONFIRM once every receiver owns it;
    #          at = monotonic time of publication (CLOCK_MONOTONIC is one clock for the host)
    RETAIN = 5  # [RETAIN, msg]   (empty payload clears)
    CLAIM = 6  # [CLAIM, client_id, req, clean_start]
    HANDOFF = 7  # [HANDOFF, client_id, req, state | None]
    RELEASE = 8  # [RELEASE, client_id]
    STATS = 9  # [STATS, snapshot]
    PING = 10  # [PING]
    SHARED_PUB = 11  # [SHARED_PUB, msg, group, filter]  (re-dispatch to another member)
    SYNC = 12  # [SYNC, token]: answer SYNCED once every member applied the routes sent so far
    ROUTE_ACK = 13  # [ROUTE_ACK, version]: this member applied the route table up to version
    DELIVERED = 14  # [DELIVERED, ref]: the message of DELIVER ref is routed (and stored) here
    DIRECT = 15  # [DIRECT, msg, client_id, qos, retain, sub_ids]: for a session that just moved away
    PUB_TO = 16  # [PUB_TO, msg, member]: a publish that raced a member's new subscription
    REMOTE_PUB = 17  # [REMOTE_PUB, msg, normal, [[group, filter], ...], token | None, at]: from the cluster
    #                  agent, a message from another node: to this node's members only (never back to
    #                  the agent), plain routes if normal, one member of each listed group; CONFIRM token
    OWNED = 18  # [OWNED, client_id, req, verdict, state | None]: the agent's answer to OWN (Own below)
    # router -> member
    WELCOME = 20  # [WELCOME, epoch, route_version, [[member, filter], ...], retained msgs]
    ROUTES = 21  # [ROUTES, version, [[+1|-1, member, filter, since], ...]]
    DELIVER = 22  # [DELIVER, msg, normal, [[group, filter], ...], ref | None]
    RETAINED = 23  # [RETAINED, msg]
    GRANT = 24  # [GRANT, client_id, req, state | None]
    TAKEOVER = 25  # [TAKEOVER, client_id, req, clean_start]
    NODE_STATS = 26  # [NODE_STATS, sums, {member: snapshot}]
    PONG = 27  # [PONG, epoch, route_version]
    SYNCED = 28  # [SYNCED, token]
    CONFIRM = 29  # [CONFIRM, token, ok]: every receiver of PUB token owns the message
    DELIVER_DIRECT = 30  # [DELIVER_DIRECT, msg, client_id, qos, retain, sub_ids]
    MOVED = 31  # [MOVED, client_id, filters]: to the old holder: routes moved; later DELIVERs know it
    # sessions across the cluster (issue 11): router <-> agent
    OWN = 32  # [OWN, client_id, req, clean_start]: to the agent: make this node the owner in etcd
    DISOWN = 33  # [DISOWN, client_id]: to the agent: no session of client_id is left on this node
    WILL = 34  # [WILL, client_id, msg | None, delay]: worker -> agent: the will of a session (wills/<id>)
    WILL_FIRE = 35  # [WILL_FIRE, client_id, msg]: worker -> agent: publish it unless fired or cleared already
    WILL_GO = 36  # [WILL_GO, msg]: router -> worker: no agent: publish the will yourself
    # graceful leave (SIGTERM of a cluster node): the persistent sessions go to other nodes
    DRAINED = 37  # [DRAINED, member, [state, ...]]: worker -> router -> agent: my offline sessions
    DRAIN_DONE = 38  # [DRAIN_DONE, member, [client_id, ...]]: agent -> router -> worker: adopted elsewhere
    ADOPT = 39  # [ADOPT, client_id, state]: agent -> router -> a worker: a session from a leaving node
    BYE = 50  # [BYE]: member -> router: this member is done (a stopping router waits for them all)
    LEASE = 51  # [LEASE, until | None]: agent -> router -> workers: the node holds its etcd lease until
    #             this monotonic time at least (None: lost); past it the workers fence themselves
    # the ops channel (SHOAL_RUN_DIR/shoal-<port>-ops.sock): health and admin, apart from the data path
    BEAT = 40  # member -> router, every second: [BEAT, name, pid, serving, started (wall clock), peers?]
    #           (serving: a worker listens and is registered; the agent has joined the cluster.
    #            peers: the agent's list of the other nodes [{"node", "api"}], router/ops.py)
    ASK = 41  # router -> member: [ASK, req, what, args]   (what: stats, clients, sessions, ...)
    ANSWER = 42  # member -> router: [ANSWER, req, payload]


class Own(IntEnum):
    """The agent's verdict on an OWN (OWNED), and the flag a GRANT carries to the worker."""
    KEEP = 0  # this node was the owner already: the node decides as it does alone
    FRESH = 1  # newly owned: a copy of the session on this node is stale (dropped, no will)
    REMOTE = 2  # taken over from another node: the state is in the op
    REFUSED = 3  # another connection won, or the owner is unreachable: refuse the CONNECT (0x88)


STALE = 2  # TAKEOVER's clean_start field: drop the session without its will (another node owns it)


def pack(ops: list) -> bytes:
    return msgpack.packb(ops, use_bin_type=True)


def unpack(data: bytes) -> list:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
