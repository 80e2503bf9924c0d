"""Who may connect: the password file, anonymous clients, and the addresses
that fail again and again (issue 12, point 1).

The CONNECT path of a worker (handlers.handle_connect) hands every CONNECT to
``Authenticator.start``, which ends in ``proceed()`` (the connect goes on) or
in a refusing CONNACK, maybe later:

1. An address on the refusal list gets v5 0x8A Banned / 3.1.1 5 at once.
2. An address with ``auth_fail_delay_after`` recent failures waits
   ``auth_fail_delay`` seconds before its CONNECT is looked at at all.
3. No username: ``allow_anonymous`` decides (refused: 0x87 / 5). With a
   password file and ``allow_anonymous=true``, clients without a username
   connect, as mosquitto 2.0 does (its password check defers for them).
4. A username with a password file: the password is checked against the
   user's hash (an unknown user against a dummy hash as costly as the file's); wrong
   or missing: 0x86 / 4. Without a password file any username connects, as
   before. (mosquitto 2.0 answers a wrong password with 0x87 / 5; Shoal uses
   the codes MQTT 5.0 3.2.2.2 and 3.1.1 3.2.2.3 name for bad credentials.)

PBKDF2 ($7$) runs in a small thread pool (hashlib releases the GIL), fed from
a queue that serves the waiting addresses in turn, so a storm from a few
addresses only delays its own logins; the queue is bounded (0x89 Server busy
past it, and past an eighth of it for one address). A hash that costs about
what a connect costs anyway is computed in place: $6$ (one SHA512) and $7$
with at most ``auth_inline_iterations`` rounds (200: mosquitto_passwd's
default of 101 rounds takes ~55 µs here, less than the thread hand-off). Successful verifications are remembered in a bounded
cache keyed by an HMAC (random key per process) of user and password, tied
to the user's hash in the file, so a reconnect storm costs no PBKDF2 and a
changed or removed user is checked afresh.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor

from common.logs import kv
from mqtt import ReasonCode

from .limits import Sparse
from .passwd import PasswordFile, verify

log = logging.getLogger("shoal.auth")

OK, DELAY, BANNED = 0, 1, 2


def address_of(peer: str) -> str:
    """The address part of ``host:port`` (IPv4 or IPv6)."""
    return peer.rsplit(":", 1)[0] if ":" in peer else peer


class _Record:
    __slots__ = ("failures", "banned_until")

    def __init__(self, keep: int) -> None:
        self.failures: deque[float] = deque(maxlen=keep)
        self.banned_until = 0.0


class FailureThrottle:
    """Failed logins per address over a sliding window; no I/O, the caller
    passes the time. ``delay_after`` / ``ban_after`` of 0 turn that step off."""

    def __init__(self, window: float, delay_after: int, delay: float, ban_after: int, ban_time: float,
                 capacity: int) -> None:
        self.window = window
        self.delay_after = delay_after
        self.delay = delay
        self.ban_after = ban_after
        self.ban_time = ban_time
        self.capacity = capacity
        self.keep = max(delay_after, ban_after, 1)
        self.records: OrderedDict[str, _Record] = OrderedDict()

    def _recent(self, rec: _Record, now: float) -> int:
        f = rec.failures
        while f and f[0] <= now - self.window:
            f.popleft()
        return len(f)

    def check(self, addr: str, now: float) -> tuple[int, float]:
        """(OK, 0), (DELAY, seconds to wait) or (BANNED, seconds left)."""
        rec = self.records.get(addr)
        if rec is None:
            return OK, 0.0
        if rec.banned_until:
            if now < rec.banned_until:
                return BANNED, rec.banned_until - now
            rec.banned_until = 0.0
            rec.failures.clear()  # the ban is served: a fresh start
        n = self._recent(rec, now)
        if n == 0:
            del self.records[addr]
            return OK, 0.0
        if self.delay_after and n >= self.delay_after and self.delay > 0:
            return DELAY, self.delay
        return OK, 0.0

    def failed(self, addr: str, now: float) -> int:
        """Count a failure; returns the failures in the window if this one
        starts a ban, else 0."""
        rec = self.records.get(addr)
        if rec is None:
            rec = self.records[addr] = _Record(self.keep)
            while len(self.records) > self.capacity:
                self.records.popitem(last=False)  # the address seen least recently
        else:
            self.records.move_to_end(addr)
        rec.failures.append(now)
        n = self._recent(rec, now)
        if self.ban_after and n >= self.ban_after and self.ban_time > 0 and not rec.banned_until:
            rec.banned_until = now + self.ban_time
            return n
        return 0

    def banned(self) -> int:
        return sum(1 for r in self.records.values() if r.banned_until)


class HashQueue:
    """PBKDF2 jobs for a thread pool, served one address at a time in turn."""

    def __init__(self, loop, threads: int, limit: int) -> None:
        self.loop = loop
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="shoal-auth")
        self.limit = limit
        self.per_address = max(1, limit // 8)
        self.waiting: OrderedDict[str, deque] = OrderedDict()
        self.queued: dict[str, int] = {}  # jobs per address, waiting or running
        self.pending = 0
        self.running = 0

    def submit(self, addr: str, entry, password: bytes, done, conn=None) -> bool:
        """Queue a verification; done(ok) is called on the loop (not at all if
        ``conn`` closed before its turn came). False: queue full."""
        if self.pending >= self.limit or self.queued.get(addr, 0) >= self.per_address:
            return False
        self.pending += 1
        self.queued[addr] = self.queued.get(addr, 0) + 1
        q = self.waiting.get(addr)
        if q is None:
            q = self.waiting[addr] = deque()
        q.append((entry, password, done, conn))
        self._dispatch()
        return True

    def _dispatch(self) -> None:
        while self.running < self.threads and self.waiting:
            addr, q = next(iter(self.waiting.items()))
            entry, password, done, conn = q.popleft()
            if q:
                self.waiting.move_to_end(addr)  # the next address goes first
            else:
                del self.waiting[addr]
            if conn is not None and conn.closed:  # the client gave up waiting: no hash for nobody
                self._forget(addr)
                continue
            self.running += 1
            fut = self.loop.run_in_executor(self.pool, verify, entry, password)
            fut.add_done_callback(lambda f, a=addr, d=done: self._finished(a, d, f))

    def _forget(self, addr: str) -> None:
        self.pending -= 1
        n = self.queued[addr] - 1
        if n:
            self.queued[addr] = n
        else:
            del self.queued[addr]

    def _finished(self, addr: str, done, fut) -> None:
        self.running -= 1
        self._forget(addr)
        try:
            ok = fut.result()
        except Exception:  # pragma: no cover - verify raises nothing on valid entries
            log.exception("password check failed")
            ok = False
        self._dispatch()
        done(ok)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)


class Authenticator:
    def __init__(self, settings, metrics, clock, loop=None, passwords: PasswordFile | None = None) -> None:
        st = settings
        self.settings = st
        self.metrics = metrics
        self.clock = clock
        self.loop = loop
        self.passwords = passwords
        self.throttle = FailureThrottle(st.auth_fail_window, st.auth_fail_delay_after, st.auth_fail_delay,
                                        st.auth_ban_after, st.auth_ban_time, st.auth_fail_addresses)
        self.queue = HashQueue(loop, st.auth_threads, st.auth_queue) if loop is not None else None
        self.cache_size = st.auth_cache
        self.inline_iterations = st.auth_inline_iterations
        self.busy_log = Sparse()
        self.cache: OrderedDict[bytes, str] = OrderedDict()  # key -> the user's hash text it matched
        self._key = os.urandom(32)

    # -- reload -------------------------------------------------------------
    def replace(self, passwords: PasswordFile) -> None:
        self.passwords = passwords
        self.cache.clear()

    def close(self) -> None:
        if self.queue is not None:
            self.queue.close()

    # -- the CONNECT path ------------------------------------------------------
    def start(self, conn, p, proceed, refuse, addr: str | None = None, delayed: bool = False) -> None:
        """Let this CONNECT go on (``proceed()``) or refuse it (``refuse(conn, code, detail)``), maybe later."""
        if conn.closed:
            return
        addr = addr or address_of(conn.peer)
        verdict, wait = self.throttle.check(addr, self.clock())
        if delayed and verdict == DELAY:  # waited once already (the ban may have started meanwhile)
            verdict = OK
        if verdict == BANNED:
            self.metrics.auth_refused_banned += 1
            log.debug("connect refused: address banned",
                      extra=kv(client=conn.client_id, address=addr, seconds_left=round(wait, 1)))
            refuse(conn, ReasonCode.BANNED, "too many failed logins from this address, try later")
            return
        if verdict == DELAY:
            self.metrics.auth_delayed += 1
            log.debug("connect delayed: address failed before", extra=kv(client=conn.client_id, address=addr))
            if self.loop is not None:
                self.loop.call_later(wait, self.start, conn, p, proceed, refuse, addr, True)
                return
        self._decide(conn, p, proceed, refuse, addr)

    def _decide(self, conn, p, proceed, refuse, addr: str) -> None:
        if conn.closed:
            return
        user = p.username
        if user is None:
            if self.settings.allow_anonymous:
                proceed()
            else:
                self._failed(conn, refuse, addr, ReasonCode.NOT_AUTHORIZED, "anonymous clients are not allowed")
            return
        if self.passwords is None:
            proceed()
            return
        password = p.password
        if password is None:
            self._failed(conn, refuse, addr, ReasonCode.BAD_USER_NAME_OR_PASSWORD, "no password")
            return
        entry = self.passwords.get(user)
        key = None
        if entry is not None and self.cache_size:
            key = hmac.new(self._key, user.encode() + b"\0" + bytes(password), hashlib.sha256).digest()
            if self.cache.get(key) == entry.text:
                self.cache.move_to_end(key)
                self.metrics.auth_cache_hits += 1
                proceed()
                return
        checked = entry if entry is not None else self.passwords.dummy

        def done(ok: bool) -> None:
            now_entry = self.passwords.get(user) if self.passwords is not None else None
            ok = ok and entry is not None and now_entry is not None and now_entry.text == entry.text
            if ok and key is not None:
                self.cache[key] = entry.text
                while len(self.cache) > self.cache_size:
                    self.cache.popitem(last=False)
            if conn.closed:
                if not ok:
                    self._count_failure(conn, addr, "bad user name or password")
                return
            if ok:
                proceed()
            else:
                self._failed(conn, refuse, addr, ReasonCode.BAD_USER_NAME_OR_PASSWORD, "bad user name or password")

        if checked.cheap or checked.iterations <= self.inline_iterations or self.queue is None:
            done(verify(checked, bytes(password)))
        elif not self.queue.submit(addr, checked, bytes(password), done, conn):
            self.metrics.auth_busy += 1
            held = self.busy_log.due(self.clock())
            if held is not None:
                log.warning("connect refused: password check queue full",
                            extra=kv(client=conn.client_id, address=addr, pending=self.queue.pending,
                                     not_logged_since_last=held))
            refuse(conn, ReasonCode.SERVER_BUSY, "server busy, try later")

    def _count_failure(self, conn, addr: str, why: str) -> None:
        self.metrics.auth_failures += 1
        log.info("authentication failed", extra=kv(client=conn.client_id, address=addr, peer=conn.peer,
                                                   username=conn.username or "-", reason=why))
        n = self.throttle.failed(addr, self.clock())
        if n:
            self.metrics.auth_bans += 1
            log.warning("address banned after failed logins",
                        extra=kv(client=conn.client_id, address=addr, failures=n, seconds=self.throttle.ban_time))

    def _failed(self, conn, refuse, addr: str, code: int, why: str) -> None:
        self._count_failure(conn, addr, why)
        refuse(conn, code, why)
