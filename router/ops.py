"""The router's side of the ops channel: who is up, and questions to the members.

A ZeroMQ ROUTER socket at ``Settings.ops_endpoint``, apart from the data path.
Every worker (also a lone one) beats once a second (worker/ops_link.py); the
router asks them for figures and lists (ASK) and gathers their ANSWERs with a
deadline, so that an HTTP request never waits on a stuck worker for long.

Hooks for the cluster agent (not landed yet): the agent is one more ops member
(identity ``agent``) and speaks the same three ops:
- its BEAT's ``serving`` flag says whether the node has joined the cluster; once
  an agent has beaten, /ready needs it up and joined (``cluster(now)``);
- its BEAT may carry a sixth element, the other nodes,
  ``[{"node": name, "api": "http://host:SHOAL_METRICS_PORT"}, ...]``
  (at most MAX_PEERS): ``/api/v1/nodes`` lists them and shoalctl asks each;
- its answer to ASK ``stats`` (a dict of numbers) is rendered as the cluster
  link figures ``shoal_cluster_<key>``.
"""
from __future__ import annotations

import itertools
import logging
import os
import time
from dataclasses import dataclass, field

import zmq

from common.logs import kv
from common.settings import Settings
from core import ops as o
from core.ops import BadOp, WireCheck, decode, pack, unpack

log = logging.getLogger("shoal.ops")

BEAT_TIMEOUT = 3.0  # seconds without a beat before a member counts as down (the router's MEMBER_TIMEOUT)
ASK_TIMEOUT = 2.0  # seconds an admin question waits for the members' answers
MAX_PEERS = 1000  # nodes of a cluster the agent may list


@dataclass(slots=True)
class OpsMember:
    name: str
    ident: bytes
    pid: int = 0
    serving: bool = False
    started: float = 0.0  # wall clock
    last_beat: float = 0.0  # monotonic
    last_stats: dict | None = None  # its last answer to "stats" (served when it does not answer)


@dataclass(slots=True)
class Pending:
    waiting: set
    answers: dict
    done: object  # callable(answers: {name: payload | None})
    deadline: float
    names: list = field(default_factory=list)


class Ops:
    def __init__(self, settings: Settings, wire: WireCheck | None = None):
        self.settings = settings
        self.wire = wire or WireCheck(settings.node)  # (the router's, shared with its data link)
        self.handlers = {o.Beat: self.beat, o.Answer: self.answer}
        self.members: dict[str, OpsMember] = {}
        self.pending: dict[int, Pending] = {}
        self._req = itertools.count(1)
        self.peers: list[dict] = []  # other nodes: [{"node": ..., "api": "http://host:port"}] (the agent's beat)
        # the node's cluster LEASE for the workers (issue 11), sent on this channel and only on
        # this one: on the data path it waited behind the ROUTES of a subscription flood past
        # its deadline and the workers fenced a node whose lease was renewed on time
        self.lease = None
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self.sock.setsockopt(zmq.ROUTER_HANDOVER, 1)

    def bind(self) -> None:
        ep = self.settings.ops_endpoint
        path = ep.removeprefix("ipc://")
        if ep.startswith("ipc://") and os.path.exists(path):
            os.unlink(path)  # a previous router's socket file (it died)
        self.sock.bind(ep)

    def close(self) -> None:
        self.sock.close(0)

    # -- the loop ---------------------------------------------------------------
    def readable(self, now: float) -> None:
        for _ in range(1000):
            try:
                ident, data = self.sock.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                break
            except ValueError:  # not two frames: not one of ours
                continue
            try:
                ops = unpack(data)
            except Exception:
                log.warning("undecodable ops message", extra=kv(member=ident.decode(errors="replace")))
                continue
            for w in ops if isinstance(ops, list) else ():
                try:
                    op = decode(w)
                except BadOp:
                    continue  # (not one of ours)
                handler = self.handlers.get(op.__class__)
                if handler is not None:
                    handler(ident, op, now)

    def beat(self, ident: bytes, op: o.Beat, now: float) -> None:
        name = ident.decode(errors="replace")
        if not self.wire.accept(name, op.wire, "ops"):
            self.members.pop(name, None)  # refused: /health and /ready count it down
            return
        m = self.members.get(name)
        if m is None or m.ident != ident:
            m = self.members[name] = OpsMember(name, ident)
            log.info("ops member up", extra=kv(member=name, pid=op.pid))
        elif m.pid != op.pid:
            log.info("ops member restarted", extra=kv(member=name, pid=op.pid))
        m.pid, m.serving, m.started, m.last_beat = op.pid, bool(op.serving), op.started, now
        if self.lease is not None and name.startswith("w"):
            self._to(ident, self.lease)  # (every beat: a worker that just came up learns it within a second)
        if name == "agent" and isinstance(op.peers, list):
            self.peers = [{"node": str(p.get("node")), "api": p.get("api") if isinstance(p.get("api"), str) else None}
                          for p in op.peers[:MAX_PEERS] if isinstance(p, dict)]

    def push_lease(self, op) -> None:
        """The node's lease changed (the agent's LEASE): to every worker at once."""
        self.lease = op
        for m in self.members.values():
            if m.name.startswith("w"):
                self._to(m.ident, op)

    def _to(self, ident: bytes, op) -> None:
        try:
            self.sock.send_multipart([ident, pack([op])], flags=zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # (gone, or not reading: the next beat brings the lease as it is then)

    def answer(self, ident: bytes, op: o.Answer, now: float) -> None:
        name = ident.decode(errors="replace")
        try:
            p = self.pending.get(op.req)
        except TypeError:  # (an unhashable req: not an answer of ours)
            return
        if p is None or name not in p.waiting:
            return
        p.waiting.discard(name)
        p.answers[name] = op.payload
        if not p.waiting:
            self._finish(op.req)

    def check(self, now: float) -> None:
        """Answer the questions whose deadline passed with what came."""
        for req, p in list(self.pending.items()):
            if now >= p.deadline:
                self._finish(req)

    def _finish(self, req: int) -> None:
        p = self.pending.pop(req)
        for name in p.waiting:
            p.answers[name] = None
        try:
            p.done(p.answers)
        except Exception:
            log.exception("error completing an admin request")

    # -- status -------------------------------------------------------------------
    def up(self, now: float) -> dict[str, OpsMember]:
        return {n: m for n, m in self.members.items() if now - m.last_beat <= BEAT_TIMEOUT}

    def cluster(self, now: float) -> bool | None:
        """None: not clustered (no agent ever beat); else whether the agent is up and joined."""
        m = self.members.get("agent")
        if m is None:
            return None
        return m.serving and now - m.last_beat <= BEAT_TIMEOUT

    def worker_names(self) -> list[str]:
        return [f"w{i}" for i in range(1, self.settings.workers + 1)]

    def health(self, now: float) -> tuple[bool, dict]:
        """The router answers (it is the one asking) and every worker beat recently."""
        up = self.up(now)
        workers = {n[1:]: (n in up) for n in self.worker_names()}
        return all(workers.values()), {"router": True, "workers": workers}

    def ready(self, now: float, router_settled: bool) -> tuple[bool, dict]:
        """Every worker serving (registered with the router when there are several),
        the route table complete, and joined when clustered."""
        up = self.up(now)
        workers = {n[1:]: (n in up and up[n].serving) for n in self.worker_names()}
        cluster = self.cluster(now)
        ok = all(workers.values()) and router_settled and cluster is not False
        return ok, {"workers": workers, "routes": router_settled, "cluster": cluster}

    # -- questions ------------------------------------------------------------------
    def ask(self, what: str, args: dict, done, now: float, names: list[str] | None = None,
            timeout: float = ASK_TIMEOUT) -> None:
        """Ask the live members (default: the workers) `what`; done({name: answer | None})
        once all answered or at the deadline. A member that is down answers None."""
        up = self.up(now)
        names = names if names is not None else self.worker_names()
        req = next(self._req)
        p = Pending(set(), {}, done, now + timeout, names)
        for name in names:
            m = up.get(name)
            if m is None:
                p.answers[name] = None
                continue
            try:
                self.sock.send_multipart([m.ident, pack([o.Ask(req, what, args)])], flags=zmq.NOBLOCK)
                p.waiting.add(name)
            except zmq.ZMQError:
                p.answers[name] = None
        self.pending[req] = p
        if not p.waiting:
            self._finish(req)

    def stats(self, done, now: float) -> None:
        """Every worker's (and the agent's) figures; a worker that does not answer
        in time gives its last figures (marked stale)."""
        names = self.worker_names() + (["agent"] if "agent" in self.members else [])

        def gathered(answers: dict) -> None:
            out = {}
            for name, snap in answers.items():
                m = self.members.get(name)
                if isinstance(snap, dict) and "error" not in snap:
                    if m is not None:
                        m.last_stats = snap
                    out[name] = (snap, True)
                elif m is not None and m.last_stats is not None:
                    out[name] = (m.last_stats, False)
            done(out)

        self.ask("stats", {}, gathered, now, names, timeout=1.0)
