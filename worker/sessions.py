"""Sessions and claims: a CONNECT claims its client id from the node (the
router, or at once with a single worker); the grant brings a session handed
over by another worker or resumes the one here; a connection's end detaches
its session, which then ends, expires later or waits for its client. Also the
cluster's cases: a stale copy dropped, a session adopted from a leaving node or
gone to another one, and the sessions restored from the store at start.
"""
from __future__ import annotations

import logging
import uuid

from common.logs import kv
from core.session import NEVER, Session

log = logging.getLogger("shoal.broker")


class Sessions:
    def __init__(self, broker):
        self.b = broker

    # -- connect ----------------------------------------------------------
    def assign_client_id(self) -> str:
        return f"auto-{uuid.uuid4().hex}"

    def connect(self, conn, connect) -> None:
        """Start the claim of connect.client_id; ends in `claimed` (maybe later)."""
        b = self.b
        conn.claim_at = b.clock()
        if b.bridge.refuses_connect():
            self.claim_refused(conn, connect)
            return
        b.bridge.claim(conn, connect)

    def claimed(self, conn, connect, remote_state, from_node: bool = False) -> None:
        """The node has granted this worker the client id (remote_state: a session
        handed over by another worker, or None). from_node: remote_state came from
        another node (the CONNACK waits until its routes are in cluster-wide)."""
        b = self.b
        if conn.closed:
            b.bridge.session_released(connect.client_id)
            return
        cid = conn.client_id
        old = b.sessions.get(cid)
        present = False
        if old is not None and old.conn is not None:
            old_conn = old.conn
            # a session with expiry 0 ends with its connection, also on takeover
            ending = connect.clean_start or old.expiry_interval == 0
            self.detach(old, old_conn, takeover=True, ending=ending)
            old_conn.takeover()
            b.metrics.takeovers_local += 1
            b.takeover_seconds.observe(b.clock() - conn.claim_at)
            if ending:
                old = None
        adopted = False
        if remote_state is not None and old is None:
            old = remote_state
            adopted = True
            b.metrics.sessions_moved_in += 1
            b.takeover_seconds.observe(b.clock() - conn.claim_at)
            b.sessions[cid] = old
            b.subscriptions.restore(old)
        if old is not None and connect.clean_start:
            self.end_session(old)
            old = None
        if old is not None:
            session = old
            present = True
            b.load_queue(session)
            b.expiry.cancel(cid)
            if b.wills.pending(cid):
                b.wills.cancel(cid)  # reconnected within the will delay
                session.will = None
            session.will_at = None
        else:
            session = Session(cid)
            b.sessions[cid] = session
        b.bridge.session_registered(cid)
        session.conn = conn
        session.expires_at = None
        session.username = conn.username
        was_stored = present and not adopted and session.expiry_interval > 0
        session.expiry_interval = conn.expiry_interval
        session.will = conn.will
        b.bridge.will_set(cid, session.will)
        if b.store is not None:
            if adopted and session.expiry_interval:
                b.persist.store_state(session)  # handed over: its queue and windows were only in the old worker's store
            elif was_stored and not session.expiry_interval:
                b.store.delete_session(cid, session)  # no longer outlives its connection
        b.save(session)
        if adopted and from_node:
            b.moves.arrived(session)
            self._connack_when_routed(conn, session, present)
            return
        conn.complete_connect(session, present)

    def _connack_when_routed(self, conn, session: Session, present: bool) -> None:
        """A session taken over from another node: the router added its routes for this
        worker; the CONNACK waits until every member of the node applied them, the agent
        included, which answers once they are in etcd and every live node applied them
        (the SUBACK's wait: handlers.handle_subscribe). So a publish made anywhere after
        the client holds its CONNACK reaches it. What arrives meanwhile is held and
        follows the CONNACK, after the session's inflight and queue."""
        b = self.b
        conn.hold()

        def synced() -> None:
            if conn.closed or session.conn is not conn:
                if session.conn is conn:  # its connection went before the CONNACK
                    self.detach(session, conn)  # (what was held goes to the session's queue)
                else:
                    conn.release()
                return
            held = conn.release()
            conn.complete_connect(session, present)
            for d in held:
                conn.deliver(d)

        b.bridge.sync(synced)

    def claim_refused(self, conn, connect) -> None:
        """Cluster: the client id could not be owned here (CONNACK 0x88 / 3)."""
        from mqtt import MQTTError, ReasonCode

        from .handlers import refuse_connect

        log.info("connect refused: client id not owned here", extra=kv(client=connect.client_id))
        if not conn.closed:
            refuse_connect(conn, MQTTError(ReasonCode.SERVER_UNAVAILABLE, "client id taken by another connection"))

    # -- the cluster's cases ------------------------------------------------
    def drop_stale(self, client_id: str) -> None:
        """Cluster: another node owned client_id since this copy of its session was made
        (this node lost its lease meanwhile): the copy goes, its will is not published."""
        s = self.b.sessions.get(client_id)
        if s is None:
            return
        log.info("stale session dropped", extra=kv(client=client_id))
        s.will = None
        conn = s.conn
        if conn is not None:
            self.detach(s, conn, takeover=True, ending=True, send_will=False)
            conn.takeover()
        else:
            self.end_session(s)

    def adopt(self, s: Session) -> None:
        """Cluster: an offline session from a node that left (SIGTERM), now owned here."""
        b = self.b
        cid = s.client_id
        if cid in b.sessions:
            self.drop_stale(cid)
        b.sessions[cid] = s
        b.subscriptions.restore(s)
        now = b.now
        if s.expires_at is None and s.expiry_interval != NEVER:
            s.expires_at = now + s.expiry_interval
        if s.expires_at is not None:
            b.expiry.schedule(s)
        if s.will is not None:
            if s.will_at is None:
                s.will_at = now + s.will.delay
            b.wills.schedule(s)
        if b.store is not None and s.expiry_interval:
            b.persist.store_state(s)
        b.save(s)
        log.info("session adopted from a leaving node", extra=kv(client=cid))

    def gone_elsewhere(self, s: Session) -> None:
        """Cluster: this session now lives on another node (graceful leave): it goes from
        here without its will (the other node has it)."""
        b = self.b
        cid = s.client_id
        b.expiry.cancel(cid)
        b.wills.cancel(cid)
        del b.sessions[cid]
        b.subscriptions.withdraw(s)
        if b.store is not None:
            b.store.delete_session(cid, s)

    # -- disconnect / session end ----------------------------------------
    def detach(self, session: Session, conn, *, takeover=False, ending=False, send_will=True) -> None:
        """The connection of `session` is gone (or being replaced)."""
        if session.conn is not conn:
            return
        b = self.b
        session.conn = None
        now = b.now = b.clock()
        for d in conn.release():  # held behind a SUBSCRIBE: they stay with the session
            if d.qos:
                b.enqueue(session, d)
        b.routing.redistribute_shared(session)
        will = session.will if send_will else None
        if not send_will:
            session.will = None
        if takeover and not ending:
            # A new connection resumes this session: a delayed will is cancelled,
            # an undelayed one is published now.
            if will is not None and will.delay == 0:
                session.will = None
                b.publish_will(will, session.client_id)
            else:
                session.will = None
            return
        if session.expiry_interval == 0 or ending:
            self.end_session(session)
            return
        if session.expiry_interval != NEVER:
            session.expires_at = now + session.expiry_interval
            b.expiry.schedule(session)
        if will is not None:
            if will.delay == 0:
                session.will = None
                b.publish_will(will, session.client_id)
            else:
                session.will_at = now + will.delay
                b.wills.schedule(session)
        b.save(session)

    def end_session(self, session: Session) -> None:
        """The session ends: its subscriptions go, a pending will is published."""
        b = self.b
        cid = session.client_id
        b.expiry.cancel(cid)
        b.wills.cancel(cid)
        b.load_queue(session)  # its shared-subscription messages go to other members
        if b.sessions.get(cid) is session:
            del b.sessions[cid]
            b.bridge.session_released(cid)
            if b.store is not None and (session.on_disk or session.expiry_interval):
                # (a session that never outlived its connection has nothing stored: a clean
                # session's end cost its worker about a fifth of a connect's CPU in scans
                # and a write for nothing, measured with py-spy under a connect storm)
                b.store.delete_session(cid, session)
        for flt in list(session.subscriptions):
            b.unsubscribe(session, flt)
        b.routing.redistribute_shared(session, everything=True)
        will, session.will = session.will, None
        if will is not None and session.conn is None:
            b.publish_will(will, cid)

    # -- start --------------------------------------------------------------
    def restore(self, sessions: list[Session]) -> int:
        """Sessions loaded from the store at start; returns how many ended.

        Every session is offline now: one that was online when the process
        stopped starts its expiry and will delay from now; one whose expiry
        passed while the node was down ends (and its will is published)."""
        b = self.b
        now = b.now
        by_id, add, ref = b.sessions, b.subs.add, b.subscriptions.ref_filter
        for s in sessions:  # every session first: a will published below reaches them all
            cid = s.client_id
            by_id[cid] = s
            for flt, opts in s.subscriptions.items():
                if add(flt, cid, opts):
                    ref(flt, +1)
        ended = 0
        expiry, wills = b.expiry, b.wills
        for s in sessions:
            changed = False
            if s.expires_at is None and s.expiry_interval != NEVER:
                s.expires_at = now + s.expiry_interval  # it was online when the process stopped
                changed = True
            if s.will is not None and s.will_at is None:
                s.will_at = now + s.will.delay
                changed = True
            if s.expires_at is not None and s.expires_at <= now:
                ended += 1
                self.end_session(s)  # publishes a pending will
                continue
            if s.expires_at is not None:
                expiry.schedule(s)
            if s.will is not None:
                wills.schedule(s)
            if changed:
                b.save(s)  # the deadlines count from now, also after another crash
        return ended
