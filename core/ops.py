"""The node protocol: messages between the members of a node (workers, cluster agent) and its router.

Every ZeroMQ message is one msgpack array of ops, ``[[op, ...], [op, ...]]``, so
that many ops travel in one send. Each op is a slotted class below with its wire
form: ``op.to_wire()`` is the msgpack list ``[code, field, ...]`` (fields in the
order the class declares them), ``decode(list)`` the op again. Ops are versioned
by their number: a new shape gets a new number, never a changed one; a field may
only be added at the end, with a default, so that a shorter op still decodes.

A member speaking another ``WIRE_VERSION`` (its HELLO, or its BEAT on the ops
channel) is refused by the router: ``WireCheck`` counts it and logs what to fix.
"""
from __future__ import annotations

import logging
from dataclasses import MISSING, dataclass, fields
from enum import IntEnum
from typing import Any, ClassVar

import msgpack

from common.logs import kv

log = logging.getLogger("shoal.wire")

# 2 (issue 10, hotpath): workers send DELIVERED_MANY and read CONFIRMS, which a router of
# version 1 would drop (its PUBACKs would never come): such a mix of installs is refused at HELLO
# and BEAT, with what to fix, instead. (Between nodes the data link's own versions hold:
# core/peerdata.py DATA_WIRE, CONFIRMS_MARK; the agents' CLUSTER_WIRE.)
WIRE_VERSION = 2


class Op(IntEnum):
    # member -> router
    HELLO = 1
    ROUTE_ADD = 2
    ROUTE_DEL = 3
    PUB = 4
    RETAIN = 5
    CLAIM = 6
    HANDOFF = 7
    RELEASE = 8
    STATS = 9
    PING = 10
    SHARED_PUB = 11
    SYNC = 12
    ROUTE_ACK = 13
    DELIVERED = 14
    DIRECT = 15
    PUB_TO = 16
    REMOTE_PUB = 17
    OWNED = 18
    # router -> member
    WELCOME = 20
    ROUTES = 21
    DELIVER = 22
    RETAINED = 23
    GRANT = 24
    TAKEOVER = 25
    NODE_STATS = 26
    PONG = 27
    SYNCED = 28
    CONFIRM = 29
    DELIVER_DIRECT = 30
    MOVED = 31
    # sessions across the cluster (issue 11): router <-> agent
    OWN = 32
    DISOWN = 33
    WILL = 34
    WILL_FIRE = 35
    WILL_GO = 36
    # graceful leave (SIGTERM of a cluster node): the persistent sessions go to other nodes
    DRAINED = 37
    DRAIN_DONE = 38
    ADOPT = 39
    # the ops channel (SHOAL_RUN_DIR/shoal-<port>-ops.sock): health and admin, apart from the data path
    BEAT = 40
    ASK = 41
    ANSWER = 42
    BYE = 50
    LEASE = 51
    # agent -> router: a session the router holds whose owner record names another node now
    # (checked when the agent registers: it may have died in the middle of a takeover)
    NOT_OURS = 52
    # SHOAL_CLUSTER_ROUTER_SENDS (router/sender.py): agent -> router, what the router needs to
    # send the other nodes' publishes itself; router -> agent, a peer's publishes it hands over
    PEER = 53
    PEER_ROUTE = 54
    PEERS = 55
    PEER_PUB = 56
    # issue 10, hotpath: many confirmations in one op, one per loop pass instead of one per
    # message (CONFIRM and DELIVERED are still understood, and still sent where the other side
    # may be older: the agent, a peer router that did not say it takes CONFIRMS)
    CONFIRMS = 57
    DELIVERED_MANY = 58


class Own(IntEnum):
    """The agent's verdict on an OWN (OWNED), and the flag a GRANT carries to the worker."""
    KEEP = 0  # this node was the owner already: the node decides as it does alone
    FRESH = 1  # newly owned: a copy of the session on this node is stale (dropped, no will)
    REMOTE = 2  # taken over from another node: the state is in the op
    REFUSED = 3  # another connection won, or the owner is unreachable: refuse the CONNECT (0x88)


STALE = 2  # TAKEOVER's clean_start field: drop the session without its will (another node owns it)


class BadOp(ValueError):
    """An op that is not one of ours: unknown number, too few fields, not a list."""


BY_CODE: dict[int, type] = {}


def _wire_op(code: Op):
    """Give a slotted dataclass its op number, ``to_wire`` and ``from_wire`` (generated
    once per class, so that the hot path is one list display and one call)."""

    def wrap(cls):
        names = [f.name for f in fields(cls)]
        required = sum(1 for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING)
        n = len(names)
        src = f"def to_wire(self):\n    return [{int(code)}{''.join(', self.' + a for a in names)}]\n"
        ns: dict = {}
        exec(src, ns)  # noqa: S102 - generated from the field names above
        if "to_wire" not in cls.__dict__:
            cls.to_wire = ns["to_wire"]
        cls.CODE = code
        cls.FIELDS = tuple(names)

        args = ", ".join(f"w[{i}]" for i in range(1, n + 1))
        src = (f"def from_wire(w):\n"
               f"    if len(w) > {n}:\n"
               f"        return cls({args})\n"  # the full form (extra fields of a newer sender ignored)
               f"    if len(w) <= {required}:\n"
               f"        raise BadOp('{code.name} needs {required} fields, got %d' % (len(w) - 1))\n"
               f"    return cls(*w[1:])\n")  # an older, shorter form: the defaults fill in
        ns = {"cls": cls, "BadOp": BadOp}
        exec(src, ns)  # noqa: S102
        cls.from_wire = staticmethod(ns["from_wire"])
        BY_CODE[int(code)] = cls
        return cls

    return wrap


class NodeOp:
    """What every op has (for type checkers; the classes below are dataclasses)."""
    CODE: ClassVar[Op]
    FIELDS: ClassVar[tuple]

    def to_wire(self) -> list: ...  # pragma: no cover


# -- member -> router -------------------------------------------------------------------------
@_wire_op(Op.HELLO)
@dataclass(slots=True)
class Hello:
    """A member registers (again): its filters, the client ids it holds, its retained messages."""
    wire: int
    filters: list
    client_ids: list
    retained: list


@_wire_op(Op.ROUTE_ADD)
@dataclass(slots=True)
class RouteAdd:
    """weight: from the cluster agent, for a shared group: the number of other nodes holding it
    (the router weighs the agent by it, so that a group's messages spread evenly over nodes)."""
    filter: str
    since: float | None = None  # monotonic time the subscription was made (replay window)
    weight: int | None = None

    def to_wire(self) -> list:  # the weight travels only when there is one (as before it was added)
        if self.weight is not None:
            return [Op.ROUTE_ADD.value, self.filter, self.since, self.weight]
        return [Op.ROUTE_ADD.value, self.filter, self.since]


@_wire_op(Op.ROUTE_DEL)
@dataclass(slots=True)
class RouteDel:
    filter: str


@_wire_op(Op.PUB)
@dataclass(slots=True)
class Pub:
    """A publish for the other members; a token asks for CONFIRM once every receiver owns it;
    at = monotonic time of publication (CLOCK_MONOTONIC is one clock for the host)."""
    msg: list
    token: int | None = None
    at: float | None = None


@_wire_op(Op.RETAIN)
@dataclass(slots=True)
class Retain:
    """A retained message (empty payload clears); a token asks for CONFIRM once it is stored."""
    msg: list
    token: int | None = None


@_wire_op(Op.CLAIM)
@dataclass(slots=True)
class Claim:
    client_id: str
    req: int
    clean_start: bool


@_wire_op(Op.HANDOFF)
@dataclass(slots=True)
class Handoff:
    """The holder's answer to TAKEOVER: the session's state (None: none left)."""
    client_id: str
    req: int
    state: list | None


@_wire_op(Op.RELEASE)
@dataclass(slots=True)
class Release:
    client_id: str


@_wire_op(Op.STATS)
@dataclass(slots=True)
class Stats:
    snapshot: dict


@_wire_op(Op.PING)
@dataclass(slots=True)
class Ping:
    pass


@_wire_op(Op.SHARED_PUB)
@dataclass(slots=True)
class SharedPub:
    """Re-dispatch to another member of a shared group."""
    msg: list
    group: str
    filter: str


@_wire_op(Op.SYNC)
@dataclass(slots=True)
class Sync:
    """Answer SYNCED once every member applied the routes sent so far."""
    token: int


@_wire_op(Op.ROUTE_ACK)
@dataclass(slots=True)
class RouteAck:
    """This member applied the route table up to version."""
    version: int


@_wire_op(Op.DELIVERED)
@dataclass(slots=True)
class Delivered:
    """The message of DELIVER ref is routed (and stored) here."""
    ref: list


@_wire_op(Op.DIRECT)
@dataclass(slots=True)
class Direct:
    """A message for a session that just moved away (to its new holder). ref (a worker's
    copy of a DELIVER whose session moved to another node meanwhile: that DELIVER's ref): the
    router counts the forwarded copy in the publish's confirmation, so the publisher's
    PUBACK waits until the node that has the session owns it. token (the agent's copy from
    another node): the router CONFIRMs it once the copy is owned here, or by the node the
    session went on to (a second hop), or at once when nothing here takes it."""
    msg: list
    client_id: str
    qos: int
    retain: bool
    sub_ids: list
    ref: list | None = None
    token: int | None = None

    def to_wire(self) -> list:  # ref and token travel only when set
        if self.token is not None:
            return [Op.DIRECT.value, self.msg, self.client_id, self.qos, self.retain, self.sub_ids, self.ref,
                    self.token]
        if self.ref is not None:
            return [Op.DIRECT.value, self.msg, self.client_id, self.qos, self.retain, self.sub_ids, self.ref]
        return [Op.DIRECT.value, self.msg, self.client_id, self.qos, self.retain, self.sub_ids]


@_wire_op(Op.PUB_TO)
@dataclass(slots=True)
class PubTo:
    """A publish that raced a member's new subscription: to that member. filter and at (the
    filter replayed for and the publish's read time) go on to the cluster agent, which
    replays to the nodes whose route for that filter is new (cluster/replay.py)."""
    msg: list
    member: str
    filter: str | None = None
    at: float | None = None

    def to_wire(self) -> list:  # the replay fields travel only when there are some
        if self.filter is not None:
            return [Op.PUB_TO.value, self.msg, self.member, self.filter, self.at]
        return [Op.PUB_TO.value, self.msg, self.member]


@_wire_op(Op.REMOTE_PUB)
@dataclass(slots=True)
class RemotePub:
    """From the cluster agent, a message from another node: to this node's members only (never
    back to the agent), plain routes if normal, one member of each listed group; CONFIRM token.
    (cluster/routerlink.py writes this op's bytes itself, with msg as the bytes it came in.)"""
    msg: list
    normal: bool
    groups: list
    token: int | None
    at: float | None
    # QoS 1/2: [sending node, its agent instance, seq] of the peer link. A peer resends what
    # the agent had not acknowledged when it died; the router, which outlives the agent,
    # takes each origin once (router/forward.py RemoteSeen)
    origin: list | None = None

    def to_wire(self) -> list:  # the origin travels only when there is one (as before it was added)
        w = [Op.REMOTE_PUB.value, self.msg, self.normal, self.groups, self.token, self.at]
        if self.origin is not None:
            w.append(self.origin)
        return w


@_wire_op(Op.OWNED)
@dataclass(slots=True)
class Owned:
    """The agent's answer to OWN (Own)."""
    client_id: str
    req: int
    verdict: int
    state: list | None


# -- router -> member -------------------------------------------------------------------------
@_wire_op(Op.WELCOME)
@dataclass(slots=True)
class Welcome:
    epoch: int
    version: int
    routes: list  # [[member, filter], ...]
    retained: list
    # to the cluster agent, SHOAL_CLUSTER_LINK=direct: host:port where this router takes the
    # other nodes' publishes (core/peerdata.py); the agent puts it in the node's etcd record
    data_addr: str | None = None
    # to the cluster agent: the client ids this node's workers hold (the agent checks each
    # against its owner record in etcd: NOT_OURS)
    sessions: list | None = None

    def to_wire(self) -> list:  # the address travels only when there is one (as before it was added)
        w = [Op.WELCOME.value, self.epoch, self.version, self.routes, self.retained]
        if self.data_addr is not None or self.sessions is not None:
            w.append(self.data_addr)
        if self.sessions is not None:
            w.append(self.sessions)
        return w


@_wire_op(Op.ROUTES)
@dataclass(slots=True)
class Routes:
    version: int
    delta: list  # [[+1, member, filter, since], [-1, member, filter], ...]


@_wire_op(Op.DELIVER)
@dataclass(slots=True)
class Deliver:
    """filter and at, to the cluster agent only: a publish handed back for a new remote route
    (the filter it is replayed for, its read time; cluster/replay.py)."""
    msg: list
    normal: bool
    groups: list  # [[group, filter], ...]
    ref: list | None = None  # [sender, token]: answer DELIVERED once it is owned here
    filter: str | None = None
    at: float | None = None

    def to_wire(self) -> list:  # the replay fields travel only when there are some
        if self.filter is not None:
            return [Op.DELIVER.value, self.msg, self.normal, self.groups, self.ref, self.filter, self.at]
        return [Op.DELIVER.value, self.msg, self.normal, self.groups, self.ref]


@_wire_op(Op.RETAINED)
@dataclass(slots=True)
class Retained:
    """ref, to the cluster agent only: [sender, token] of a retained publish whose PUBACK waits
    until the agent has it in etcd and applied on every live node (answer DELIVERED ref)."""
    msg: list
    ref: list | None = None

    def to_wire(self) -> list:  # the ref travels only when there is one (as before it was added)
        if self.ref is not None:
            return [Op.RETAINED.value, self.msg, self.ref]
        return [Op.RETAINED.value, self.msg]


@_wire_op(Op.GRANT)
@dataclass(slots=True)
class Grant:
    """The claim is granted (with the session's state, or None); flag (Own) only when not KEEP."""
    client_id: str
    req: int
    state: list | None
    flag: int = Own.KEEP

    def to_wire(self) -> list:  # the flag travels only when it says something (as it always has)
        if self.flag:
            return [Op.GRANT.value, self.client_id, self.req, self.state, int(self.flag)]
        return [Op.GRANT.value, self.client_id, self.req, self.state]


@_wire_op(Op.TAKEOVER)
@dataclass(slots=True)
class Takeover:
    """To the holder: close the connection, hand the session over; clean_start STALE: drop it."""
    client_id: str
    req: int
    clean_start: int | bool


@_wire_op(Op.NODE_STATS)
@dataclass(slots=True)
class NodeStats:
    sums: dict
    members: dict = None  # {member: snapshot}


@_wire_op(Op.PONG)
@dataclass(slots=True)
class Pong:
    epoch: int
    version: int


@_wire_op(Op.SYNCED)
@dataclass(slots=True)
class Synced:
    token: int


@_wire_op(Op.CONFIRM)
@dataclass(slots=True)
class Confirm:
    """Every receiver of PUB token owns the message (ok False: one died first)."""
    token: int
    ok: bool


@_wire_op(Op.DELIVER_DIRECT)
@dataclass(slots=True)
class DeliverDirect:
    """ref, to the cluster agent only: [sender, token, client id] of a QoS 1/2 publish
    forwarded to a session that went to another node (router/away.py): answer DELIVERED
    ref once that node owns it."""
    msg: list
    client_id: str
    qos: int
    retain: bool
    sub_ids: list
    ref: list | None = None

    def to_wire(self) -> list:  # ref travels only when set
        if self.ref is not None:
            return [Op.DELIVER_DIRECT.value, self.msg, self.client_id, self.qos, self.retain, self.sub_ids, self.ref]
        return [Op.DELIVER_DIRECT.value, self.msg, self.client_id, self.qos, self.retain, self.sub_ids]


@_wire_op(Op.MOVED)
@dataclass(slots=True)
class Moved:
    """To the old holder: the routes moved; DELIVERs queued before this mark it forwards."""
    client_id: str
    filters: list


# -- sessions across the cluster (issue 11): router <-> agent ----------------------------------
@_wire_op(Op.OWN)
@dataclass(slots=True)
class TakeOwnership:
    """To the agent: make this node the owner of client_id in etcd."""
    client_id: str
    req: int
    clean_start: bool


@_wire_op(Op.DISOWN)
@dataclass(slots=True)
class Disown:
    """To the agent: no session of client_id is left on this node."""
    client_id: str


@_wire_op(Op.WILL)
@dataclass(slots=True)
class Will:
    """Worker -> agent: the will of a session (wills/<id>); msg None clears it."""
    client_id: str
    msg: list | None
    delay: float


@_wire_op(Op.WILL_FIRE)
@dataclass(slots=True)
class WillFire:
    """Worker -> agent: publish it unless fired or cleared already."""
    client_id: str
    msg: list


@_wire_op(Op.WILL_GO)
@dataclass(slots=True)
class WillGo:
    """Router -> worker: no agent: publish the will yourself."""
    msg: list


@_wire_op(Op.DRAINED)
@dataclass(slots=True)
class Drained:
    """Worker -> router -> agent: my offline sessions (a cluster node is leaving)."""
    member: str
    states: list


@_wire_op(Op.DRAIN_DONE)
@dataclass(slots=True)
class DrainDone:
    """Agent -> router -> worker: these were adopted elsewhere."""
    member: str
    client_ids: list


@_wire_op(Op.NOT_OURS)
@dataclass(slots=True)
class NotOurs:
    """Agent -> router: the owner record of client_id names another node (or is gone and
    taken): the copy here is stale; its holder drops it without its will (TAKEOVER STALE)."""
    client_id: str


@_wire_op(Op.ADOPT)
@dataclass(slots=True)
class Adopt:
    """Agent -> router -> a worker: a session from a leaving node."""
    client_id: str
    state: list


@_wire_op(Op.BYE)
@dataclass(slots=True)
class Bye:
    """Member -> router: this member is done (a stopping router waits for them all)."""


@_wire_op(Op.LEASE)
@dataclass(slots=True)
class Lease:
    """Agent -> router -> workers: the node holds its etcd lease until this monotonic time at
    least (None: lost); past it the workers fence themselves. lease: the etcd lease's id (0:
    not said, an older agent). Another id than before means the old lease expired, and the
    owner records under it went with it: the node fences as for a lost lease (a restarted
    agent that had to take a new lease must not find the clients of the old one served on)."""
    until: float | None
    lease: int = 0


# -- the router sends the other nodes' publishes (SHOAL_CLUSTER_ROUTER_SENDS, router/sender.py) --
HANDED = b"\x01router-sender"  # ref[0] of a PEER_PUB's DELIVERED: [HANDED, token]


@_wire_op(Op.PEER)
@dataclass(slots=True)
class PeerInfo:
    """Agent -> router: another node the agent links to. data_addr: its router's data address
    (None: none, or its link is not `direct`: its publishes go through the agent); instance:
    its agent's instance; live False: it left (lease gone): what waits for it counts as done.
    filters, when set: that node's whole filter set (replaces what the router had)."""
    node: str
    data_addr: str | None
    instance: str
    live: bool
    filters: list | None = None


@_wire_op(Op.PEER_ROUTE)
@dataclass(slots=True)
class PeerRoute:
    """Agent -> router: node holds filter now (add) or no longer; since: the monotonic moment
    of the SUBSCRIBE (what the router sent elsewhere since goes to that node too)."""
    node: str
    filter: str
    add: bool
    since: float | None = None


@_wire_op(Op.PEERS)
@dataclass(slots=True)
class Peers:
    """Agent -> router, after a (new) agent's PEERs: every other node it knows; any other the
    router knows has left."""
    nodes: list


@_wire_op(Op.PEER_PUB)
@dataclass(slots=True)
class PeerPub:
    """Router -> agent: a publish for node, to send on the agents' Link (its data link has no
    connection, or it has none). origin [router instance, seq] (QoS 1/2) is what the receiving
    router takes it once by; token: answer DELIVERED [HANDED, token] once that node owns it."""
    node: str
    msg: list
    normal: bool
    groups: list
    token: int | None
    origin: list | None


# -- the ops channel ---------------------------------------------------------------------------
@_wire_op(Op.BEAT)
@dataclass(slots=True)
class Beat:
    """Member -> router, every second. serving: a worker listens and is registered; the agent
    has joined the cluster. peers: the agent's list of the other nodes [{"node", "api"}]
    (router/ops.py). wire: the member's WIRE_VERSION (absent before it was added: 1)."""
    name: str
    pid: int
    serving: bool
    started: float  # wall clock
    peers: list | None = None
    wire: int = 1


@_wire_op(Op.ASK)
@dataclass(slots=True)
class Ask:
    """Router -> member (what: stats, clients, sessions, ...)."""
    req: int
    what: str
    args: dict | None


@_wire_op(Op.ANSWER)
@dataclass(slots=True)
class Answer:
    req: int
    payload: Any


# -- packing -----------------------------------------------------------------------------------
def decode(w) -> Any:
    """The typed op of one wire op; BadOp when it is not one of ours."""
    try:
        cls = BY_CODE[w[0]]
    except (KeyError, TypeError, IndexError):  # (unknown or unhashable number, empty, not a list)
        if w.__class__ is not list or not w:
            raise BadOp(f"an op is a non-empty list, not {type(w).__name__}") from None
        raise BadOp(f"unknown op {w[0]!r}") from None
    if w.__class__ is not list:
        raise BadOp(f"an op is a list, not {type(w).__name__}")
    try:
        return cls.from_wire(w)
    except TypeError as e:  # (unhashable code etc.)
        raise BadOp(str(e)) from None


_packer = msgpack.Packer(use_bin_type=True)  # (msgpack.packb makes a new Packer per call; one send packs once)


def pack(ops: list) -> bytes:
    """One message of ops: typed ops, or (tests, old callers) wire lists."""
    return _packer.pack([o if o.__class__ is list else o.to_wire() for o in ops])


def unpack(data: bytes) -> list:
    """The wire lists of one message (decode() each for its typed op)."""
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)


def unpack_ops(data: bytes, on_bad=None) -> list:
    """The typed ops of one message; an op that is not one of ours is skipped (on_bad(err, w))."""
    out = []
    for w in unpack(data):
        try:
            out.append(decode(w))
        except BadOp as e:
            if on_bad is not None:
                on_bad(e, w)
    return out


class WireCheck:
    """The one place a member's WIRE_VERSION is checked (HELLO on the data link, BEAT on the
    ops channel): another version is refused, counted, and logged once per member and version
    with what to fix."""

    def __init__(self, node: str = ""):
        self.node = node
        self.refused = 0
        self._logged: set = set()

    def accept(self, member: str, version, channel: str) -> bool:
        if version == WIRE_VERSION:
            return True
        self.refused += 1
        if (member, version, channel) not in self._logged:
            self._logged.add((member, version, channel))
            log.error(
                "member refused: it speaks another wire version; every process of a node must come "
                "from one install (run `make install`, then restart circusd)",
                extra=kv(member=member, version=version, expected=WIRE_VERSION, channel=channel, node=self.node))
        return False


# -- many confirmations in one op (issue 10, hotpath) -------------------------------------------
@_wire_op(Op.CONFIRMS)
@dataclass(slots=True)
class Confirms:
    """Router -> worker, and router -> a peer router whose data link identity says it takes
    them (core/peerdata.py CONFIRMS_MARK): CONFIRM(token, ok) for each token, in order."""
    ok: bool
    tokens: list


@_wire_op(Op.DELIVERED_MANY)
@dataclass(slots=True)
class DeliveredMany:
    """Worker -> router: DELIVERED(ref) for each ref, in order."""
    refs: list


# the hot ops' numbers as plain ints, for the speakers that read those ops as wire lists
# (no dataclass per message: router/router.py, worker/router_link.py, router/sender.py)
PUB, DELIVERED, DELIVER, CONFIRM = int(Op.PUB), int(Op.DELIVERED), int(Op.DELIVER), int(Op.CONFIRM)
REMOTE_PUB, CONFIRMS, DELIVERED_MANY = int(Op.REMOTE_PUB), int(Op.CONFIRMS), int(Op.DELIVERED_MANY)
