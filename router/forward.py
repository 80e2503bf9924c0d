"""Forwarding publishes between the members of a node.

A publish from one member goes once to each other member whose filters match
(one member of each shared group); with a token, the sender gets CONFIRM once
every receiver answered DELIVERED (it owns the message). The publishes of the
last REPLAY_WINDOW seconds are kept so that a subscription whose route arrives
late still gets what was published after it was made.
"""
from __future__ import annotations

from collections import OrderedDict, deque

from core import ops as o
from mqtt import topic_matches

from .away import marker
from .members import AGENT

_DELIVER = o.DELIVER
REPLAY_WINDOW = 0.5  # seconds of routed publishes kept for subscriptions whose route is late
REPLAY_MARGIN = 0.05  # QoS 0 read this long before a SUBSCRIBE counts as concurrent (worker/router_link.py)


class RemoteSeen:
    """QoS 1/2 messages from other nodes by origin: (sending node, its sender's instance, that
    sender's seq). The sender is that node's agent, or, with SHOAL_CLUSTER_ROUTER_SENDS, that
    node's router (router/sender.py): one node may send under two instances at once, and a
    message its router handed to its agent keeps the router's origin. The sending side resends
    what was not acknowledged; when this node's agent died after passing a message on, the new
    agent cannot know it came already, and the router, which outlived it, takes each origin once
    (QoS 2 exactly once across an agent SIGKILL: the chaos run's duplicates). Per sending node,
    its INSTANCES latest instances, each its last `keep` seqs (a sender holds at most
    SHOAL_CLUSTER_MAX_QUEUED unacked)."""

    INSTANCES = 4  # instances remembered per sending node (its agent and router, and their last lives)

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.nodes: dict[str, OrderedDict] = {}  # node -> instance -> (seq -> state), latest last

    def _seen(self, node: str, instance: str, make: bool):
        insts = self.nodes.get(node)
        if insts is None:
            if not make:
                return None
            insts = self.nodes[node] = OrderedDict()
        seen = insts.get(instance)
        if seen is None:
            if not make:
                return None
            seen = insts[instance] = OrderedDict()
            while len(insts) > self.INSTANCES:
                insts.popitem(last=False)  # (the oldest instance's seqs go)
        elif make:
            insts.move_to_end(instance)
        return seen

    def mark(self, origin: list):
        """None: new (now in progress); True: taken already; a list: in progress, of the
        (sender, token) pairs waiting for its outcome."""
        node, instance, seq = origin
        seen = self._seen(node, instance, True)
        st = seen.get(seq)
        if st is None:
            seen[seq] = []
            while len(seen) > self.keep:
                seen.popitem(last=False)
        return st

    def done(self, origin: list, ok: bool) -> list:
        """The outcome of an origin in progress: its waiters. Taken (ok): repeats are confirmed
        at once from now on; not taken: forgotten, so that the next resend is routed anew."""
        node, instance, seq = origin
        seen = self._seen(node, instance, False)
        if seen is None:
            return []
        st = seen.get(seq)
        if ok:
            seen[seq] = True
        else:
            seen.pop(seq, None)
        return st if isinstance(st, list) else []


class Forwarder:
    def __init__(self, router):
        self.r = router
        self.pending: dict[tuple, set] = {}  # (sender, token) -> members that have not confirmed
        self.remote_seen = RemoteSeen(2 * router.settings.cluster_max_queued + 1000)
        self.origin_of: dict[tuple, list] = {}  # (sender, token) -> origin of a remote publish in progress
        self.remote_repeats = 0  # remote publishes taken once already (resent across an agent restart)
        self.recent: deque = deque()  # (at, sender, msg, targets) of the last REPLAY_WINDOW seconds
        self.shared_cursor: dict[tuple, int] = {}
        self.share_weight: dict[tuple, int] = {}  # (agent, "$share/g/f") -> other nodes holding the group
        self.forwarded = 0

    # -- from members ---------------------------------------------------------------
    def publish(self, sender: bytes, msg: list, token=None, at: float | None = None) -> None:
        away = self.r.away
        if away.stamp and len(msg) == 7:
            msg.append(away.mid())  # the message's id cluster-wide (router/away.py)
        topic = msg[0]
        trie = self.r.routes.trie
        matched = trie.match(topic)
        normal = {ident for ident, _ in matched if ident != sender}
        peers = None
        if self.r.sender is not None and AGENT in normal:
            # SHOAL_CLUSTER_ROUTER_SENDS: the router sends to other nodes itself, to the nodes
            # the agent's entries name (router/sender.py; not known yet: through the agent)
            peers = self.r.sender.nodes_of([v for ident, v in matched if ident == AGENT])
            if peers is not None:
                normal.discard(AGENT)  # (the agent's routes stay for shared groups and replays)
        groups_for: dict[bytes, list] = {}
        for group in trie.match_shared(topic):
            members = list(group.members)
            if len(members) == 1 and members[0] == sender:
                continue  # only the sender has this group: it decided locally
            chosen = self._pick(group, members)
            groups_for.setdefault(chosen, []).append([group.group, group.topic_filter])
        self._dispatch(sender, msg, normal, groups_for, token, at, True, peers)

    def remote_publish(self, sender: bytes, msg: list, normal: bool, groups: list, token, at,
                       origin: list | None = None) -> None:
        """A message another node sent (through the cluster agent, or straight from that
        node's agent on the direct data link, router/peerdata.py): to this node's members
        only, never to this node's agent, so it is never forwarded to a third node."""
        if origin is not None and token is not None:
            st = self.remote_seen.mark(origin)
            if st is not None:
                self.remote_repeats += 1
                if st is True:
                    self.r.confirm(sender, token, True)
                else:
                    st.append((sender, token))  # confirmed with the first copy's outcome
                return
            self.origin_of[(sender, token)] = origin
        topic = msg[0]
        trie = self.r.routes.trie
        targets = {ident for ident, _ in trie.match(topic) if ident != sender and ident != AGENT} if normal else set()
        groups_for: dict[bytes, list] = {}
        if groups:
            wanted = {(g, f) for g, f in groups}
            for group in trie.match_shared(topic):
                if (group.group, group.topic_filter) in wanted:
                    members = [m for m in group.members if m != sender and m != AGENT]
                    if members:
                        chosen = self._pick(group, members)
                        groups_for.setdefault(chosen, []).append([group.group, group.topic_filter])
        self._dispatch(sender, msg, targets, groups_for, token, at, normal)

    def shared_publish(self, sender: bytes, msg: list, group_name: str, flt: str) -> None:
        for group in self.r.routes.trie.match_shared(msg[0]):
            if group.group == group_name and group.topic_filter == flt:
                members = [m for m in group.members if m != sender]
                if members:
                    chosen = self._pick(group, members)
                    self.r.send(chosen, o.Deliver(msg, False, [[group_name, flt]]))
                return

    def direct(self, sender: bytes, op: o.Direct) -> None:
        """For a session that just moved: to the member holding it now (from the agent: a
        message that followed a session from another node, router/away.py); a session
        that has left the node since goes on to the node that has it, once."""
        holder = self.r.sessions.registry.get(op.client_id)
        token = op.token if sender == AGENT else None
        if holder is not None and holder != sender:
            ref = None
            if token is not None:  # the agent acknowledges the node it came from once the holder owns it
                ref = [sender, token]
                self.pending[(sender, token)] = {holder}
            self.r.send(holder, o.DeliverDirect(op.msg, op.client_id, op.qos, op.retain, op.sub_ids, ref))
        elif holder is None and token is not None:
            # from another node, for a session that went on from here to a third node within the
            # window (its client reconnected twice): on to that node (a second hop), and the
            # node it came from is acknowledged once that one owns it. Before, it was dropped here
            # and acknowledged: lost. (No cycle: a node that takes a session back ends its
            # forwarding for it, so the kept entries always point at a later holder.)
            cref = [sender, token, op.client_id]
            if self.r.away.direct(op.msg, op.client_id, op.qos, op.retain, op.sub_ids, cref):
                self.pending[(sender, token)] = {marker(op.client_id)}
            else:
                self._confirm(sender, token, True)  # (nothing here will take it)
        elif holder is None and sender != AGENT:
            # a worker's copy of a DELIVER whose publisher still waits for that worker (ref):
            # the publish is confirmed only once the node the session went to owns this copy
            # too (before, the worker's own confirmation covered it, and the copy was lost if
            # this node's agent died before the other node had it)
            ref, waiting, cref = op.ref, None, None
            if ref is not None and op.qos and len(ref) == 2:
                waiting = self.pending.get((ref[0], ref[1]))
                if waiting is not None and sender in waiting:
                    cref = [ref[0], ref[1], op.client_id]
            if self.r.away.direct(op.msg, op.client_id, op.qos, op.retain, op.sub_ids, cref) and cref is not None:
                waiting.add(marker(op.client_id))

    def publish_to(self, sender: bytes, msg: list, member: str, flt: str | None = None,
                   at: float | None = None) -> None:
        """A publish that raced the member's new subscription (the sender replays it); to
        the agent with the filter and read time of the replay (cluster/replay.py)."""
        target = self.r.membership.by_name.get(member)
        if target is not None and target != sender:
            if target == AGENT:
                self.r.send(target, o.Deliver(msg, True, [], None, flt, at))
            else:
                self.r.send(target, o.Deliver(msg, True, [], None))

    def delivered(self, ident: bytes, ref: list) -> None:
        if ref[0] == o.HANDED and self.r.sender is not None:  # a publish the router handed its agent
            self.r.sender.handed_done(ref[1])
            return
        if len(ref) > 2:  # the agent: the copy for a moved session is owned there
            ident = marker(ref[2])
        self.peer_done((ref[0], ref[1]), ident)

    def peer_done(self, key: tuple, ident: bytes) -> None:
        """ident owns the publish of key: a member (DELIVERED), the node a moved session's copy
        went to, or another node (router/sender.py, ident PEER + node; or it left)."""
        waiting = self.pending.get(key)
        if waiting is None:
            return
        waiting.discard(ident)
        if not waiting:
            del self.pending[key]
            self._confirm(key[0], key[1], True)

    def _confirm(self, sender: bytes, token, ok: bool) -> None:
        confirm = self.r.confirm
        confirm(sender, token, ok)
        if self.origin_of:
            origin = self.origin_of.pop((sender, token), None)
            if origin is not None:
                for waiter, t in self.remote_seen.done(origin, ok):
                    confirm(waiter, t, ok)

    # -- internals ---------------------------------------------------------------------
    def _dispatch(self, sender: bytes, msg: list, normal: set, groups_for: dict, token, at,
                  follow: bool = True, peers: list | None = None) -> None:
        # (normal is this call's own set, made by the caller: used as it is when no group adds to it)
        targets = normal | groups_for.keys() if groups_for else normal
        send = self.r.send
        away = self.r.away
        # for a session that went to another node moments ago (router/away.py)
        follows = away.match(msg) if away.sessions and follow else None
        ref = None
        if token is not None:
            if targets or follows or peers:
                ref = [sender, token]
                self.pending[(sender, token)] = set(targets)
            else:
                self._confirm(sender, token, True)
        for ident in targets:  # (DELIVER's wire list: o.Deliver(msg, normal, groups, ref).to_wire())
            send(ident, [_DELIVER, msg, ident in normal, groups_for.get(ident, []), ref])
            self.forwarded += 1
        if peers:  # other nodes, by this router (router/sender.py): their confirms join the pending set
            key = (sender, token) if ref is not None else None
            idents = self.r.sender.enqueue(peers, msg, key, self.r.clock())
            if idents is None:  # refused (sender.py stuck): the publisher hears it (v5 0x97), sends again
                idents = []
                if key is not None and key in self.pending:
                    del self.pending[key]
                    self._confirm(sender, token, False)
            elif key is not None:  # (a QoS 1/2 message is queued for every node: none is dropped)
                if idents:
                    self.pending[key].update(idents)
                elif not self.pending[key] and not follows:
                    del self.pending[key]
                    self._confirm(sender, token, True)
            targets.update(idents)
            targets.add(AGENT)  # (the router's replay for the agent's new routes skips it: sender.py replays)
        if follows:
            waiting = away.forward(follows, msg, ref)
            if ref is not None:
                key = (sender, token)
                if waiting:
                    self.pending[key].update(waiting)
                elif not self.pending[key]:
                    del self.pending[key]
                    self._confirm(sender, token, True)
        if at is not None and not msg[3]:  # retained messages reach new subscribers as retained
            recent = self.recent
            recent.append((at, sender, msg, targets))  # (targets: this call's own set, kept as it is)
            if len(recent) > 256 and recent[0][0] < at - REPLAY_WINDOW:
                while recent and recent[0][0] < at - REPLAY_WINDOW:
                    recent.popleft()

    def _pick(self, group, members: list, exclude: bytes | None = None) -> bytes:
        key = (group.group, group.topic_filter)
        alive = self.r.membership.alive
        cands = [m for m in members if m != exclude and alive(m) is not None] or members
        if self.share_weight:
            # the agent counts once per other node with the group: members spread evenly over nodes
            sw = self.share_weight
            flt = f"$share/{group.group}/{group.topic_filter}"
            cands = [m for m in cands for _ in range(sw.get((m, flt), 1))]
        i = self.shared_cursor.get(key, 0)
        self.shared_cursor[key] = i + 1
        return cands[i % len(cands)]

    def replay(self, ident: bytes, flt: str, since: float) -> None:
        """Publishes routed after the subscription was made but before its route
        arrived here go to the new subscriber's member now."""
        if not self.recent:
            return
        early = since - REPLAY_MARGIN
        for at, sender, msg, targets in reversed(self.recent):
            if at < early:
                break
            if at < since and msg[2]:
                continue  # QoS 1/2 read before the SUBSCRIBE: maybe acknowledged before it arrived
            if sender != ident and ident not in targets and topic_matches(flt, msg[0]):
                targets.add(ident)
                if ident == AGENT:  # with the filter and read time (cluster/replay.py)
                    self.r.send(ident, o.Deliver(msg, True, [], None, flt, at))
                else:
                    self.r.send(ident, o.Deliver(msg, True, [], None))

    def forget_pending(self, ident: bytes) -> None:
        """A member restarted or is gone: what it sent is forgotten, what it was to confirm fails."""
        if ident == AGENT and self.r.sender is not None:
            self.r.sender.agent_gone()  # (what the router handed it comes back to the router)
        for key, waiting in list(self.pending.items()):
            if key[0] == ident:
                del self.pending[key]
                origin = self.origin_of.pop(key, None)
                if origin is not None:
                    # the agent died after this router sent the message on to its members: it is
                    # here, and the copy the sending node resends to the next agent is not routed again
                    self.remote_seen.done(origin, True)
            elif ident in waiting or (ident == AGENT and any(w[:1] == b"\x00" for w in waiting)):
                waiting.discard(ident)
                if ident == AGENT:  # (the copies for moved sessions went with it)
                    waiting.difference_update([w for w in waiting if w[:1] == b"\x00"])
                if not waiting:  # a receiver died before it owned the message
                    del self.pending[key]
                    self._confirm(key[0], key[1], False)
