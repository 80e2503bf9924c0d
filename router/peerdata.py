"""The router's side of the direct data link (SHOAL_CLUSTER_LINK=direct, core/peerdata.py).

Other nodes' agents send their publishes for this node straight here, on a ZeroMQ ROUTER
socket bound on tcp, instead of through this node's agent. Each REMOTE_PUB goes to this
node's members only (never to the agent: a message crosses one node-to-node hop), exactly as
one the agent hands over (router/forward.py remote_publish); a QoS 1/2 one is taken once per
(node, instance, seq) and CONFIRMed to the dialler once every member that got it owns it.

Bad input costs only itself: a dialler that is not ours (its identity) is refused, an
undecodable message or op is dropped; each is counted and logged (first and every 1,000th)
with the peer, never fatal. A message longer than SHOAL_CLUSTER_MAX_FRAME closes that
connection (ZeroMQ's MAXMSGSIZE). While the router is not settled (its workers registering)
the data socket is not read (router.py): what the peers send waits in order (a publish
dropped then and sent again later arrived after newer ones); one read anyway is dropped
unconfirmed and sent again. ZeroMQ heartbeats (SHOAL_CLUSTER_LINK_DEAD_AFTER) close a
dialler's connection that went silent.
"""
from __future__ import annotations

import logging

import zmq

from common.logs import kv
from core import ops as o
from core.ops import unpack
from core.peerdata import CONFIRMS_MARK, BadIdentity, heartbeat_options, parse_identity, well_formed

from .frames import EVENTS, POLLIN, recv_pair, send_pair

log = logging.getLogger("shoal.router")

REMOTE_PUB = o.REMOTE_PUB
KNOWN_MAX = 1024  # dialler identities remembered (a flood of identities costs no more)


def _groups_ok(groups) -> bool:
    return type(groups) is list and all(type(g) is list and len(g) == 2 and type(g[0]) is str and type(g[1]) is str
                                        for g in groups)


class PeerData:
    def __init__(self, router, sock=None):
        self.r = router
        self.sock = sock
        self.known: dict[bytes, tuple[str, str]] = {}  # dialler identity -> (node, agent instance)
        self.refused = 0  # diallers that were not ours
        self.malformed = 0  # messages and ops that were not ours
        self.received = 0  # publishes taken from other nodes
        self.address: str | None = None

    def bind(self) -> None:
        st = self.r.settings
        addr = st.cluster_data_addr or f"{st.cluster_address.rpartition(':')[0]}:0"
        host, _, port = addr.rpartition(":")
        if self.sock is None:
            s = self.sock = zmq.Context.instance().socket(zmq.ROUTER)
            s.setsockopt(zmq.ROUTER_MANDATORY, 1)
            s.setsockopt(zmq.ROUTER_HANDOVER, 1)
            s.setsockopt(zmq.LINGER, 0)
            s.setsockopt(zmq.SNDHWM, 100_000)
            s.setsockopt(zmq.RCVHWM, 100_000)
            s.setsockopt(zmq.MAXMSGSIZE, max(st.cluster_max_frame, st.max_packet_size + 65536))
            for opt, value in heartbeat_options(st.cluster_link_dead_after):  # (a dialler gone silent: closed)
                s.setsockopt(opt, value)
        try:
            self.sock.bind(f"tcp://{host}:{'*' if port in ('', '0') else port}")
        except zmq.ZMQError as e:
            log.error("cannot start: cannot listen on SHOAL_CLUSTER_DATA_ADDR", extra=kv(addr=addr, error=str(e)))
            raise SystemExit(3) from None
        endpoint = self.sock.getsockopt(zmq.LAST_ENDPOINT)
        endpoint = endpoint.decode() if isinstance(endpoint, bytes) else endpoint
        self.address = endpoint.removeprefix("tcp://")
        log.info("router takes other nodes' publishes", extra=kv(addr=self.address))

    def is_peer(self, ident: bytes) -> bool:
        return ident in self.known

    def reads_confirms(self, ident: bytes) -> bool:
        """The dialler reads CONFIRMS ops (its instance says so): many seqs in one op."""
        who = self.known.get(ident)
        return who is not None and who[1].endswith(CONFIRMS_MARK)

    def read(self, now: float, most: int = 1000) -> None:
        sock = self.sock
        recv, getsockopt = sock.recv, sock.getsockopt
        for _ in range(most):  # (poll found it readable: as Router.read_members, no zmq.Again at the end)
            try:
                ident, data = recv_pair(recv, getsockopt)
            except zmq.Again:
                return
            except ValueError:  # not two frames: not one of ours
                self._bad("a message of another shape", b"?")
            else:
                self.handle(ident, data, now)
            if not sock.get(EVENTS) & POLLIN:
                return

    def _bad(self, what: str, ident: bytes, **fields) -> None:
        self.malformed += 1
        if self.malformed == 1 or self.malformed % 1000 == 0:
            peer = self.known.get(ident, (ident[:64].decode(errors="replace"),))[0]
            log.warning("bad data from another node dropped", extra=kv(peer=peer, what=what, malformed=self.malformed,
                                                                        **fields))

    def handle(self, ident: bytes, data: bytes, now: float) -> None:
        who = self.known.get(ident)
        if who is None:
            try:
                who = parse_identity(ident)
            except BadIdentity as e:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning("data link refused", extra=kv(peer=ident[:64].decode(errors="replace"), error=str(e),
                                                              refused=self.refused))
                return
            if len(self.known) >= KNOWN_MAX:
                self.known.pop(next(iter(self.known)))
            self.known[ident] = who
        r = self.r
        if not r.membership.settled:
            return  # the workers are registering: the sender sends it again
        try:
            wires = unpack(data)
        except Exception:
            wires = None
        if type(wires) is not list:
            self._bad("undecodable message", ident, size=len(data))
            return
        node, instance = who
        fwd = r.forward
        for w in wires:
            if type(w) is not list or len(w) < 6 or w[0] != REMOTE_PUB:
                self._bad("not a publish", ident)
                continue
            msg, normal, groups, token = w[1], w[2], w[3], w[4]
            if not (well_formed(msg) and type(normal) is bool and (groups == [] or _groups_ok(groups))
                    and (token is None or (type(token) is int and token > 0))):
                self._bad("malformed publish", ident, topic=str(msg[0])[:100] if type(msg) is list and msg else "")
                continue
            self.received += 1
            try:
                fwd.remote_publish(ident, msg, normal, groups, token, now,
                                   [node, instance, token] if token is not None else None)
            except Exception:
                self.malformed += 1
                log.exception("error handling a publish of another node", extra=kv(peer=node))

    def send(self, ident: bytes, ops: list, pack) -> None:
        """The CONFIRMs for one dialler. One that cannot take them (gone, or not reading) loses
        them: it sends those publishes again and they are confirmed at once (taken already)."""
        try:
            send_pair(self.sock, ident, pack(ops))
        except zmq.Again:
            pass
        except zmq.ZMQError as e:
            if e.errno != zmq.EHOSTUNREACH:
                raise

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close(0)
