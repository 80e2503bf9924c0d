"""Client ids ever owned twice, from etcd's history (issue 11; used by loadtest/chaos.py).

Reads every revision of ``sessions/owners/<client id>`` with a watch from
revision 1 (etcd keeps the whole history unless compacted; the chaos run never compacts)
and replays it. One key per id means etcd never names two owners at one revision; what
can go wrong is a node that goes on acting as owner after its record was taken. A record
``{node: A, lease: La}`` replaced by another node B's record at revision T (a compare-
and-swap, no delete between) while A's lease La is still alive is a move of a live
session. It is sound only if A gave the session up for that claim, which A's agent logs
with the claim's token, T (``session handed to another node ... token=T`` or ``takeover
asked: no session here ... token=T``), or if B did not take it after all (``previous
owner unreachable; CONNECT refused`` / ``takeover refused: newer claim there``, B puts A's
record back or A wins). Any other such replacement is an id owned twice: both A and B
held it as live owners at once. A record whose lease expired goes with the lease (one
delete at one revision), so a later owner never overlaps it.
"""
from __future__ import annotations

import asyncio
import json
import re
from collections import Counter
from urllib.parse import urlparse

from cluster.ownership import OWNERS


async def _history(endpoint: str, prefix: bytes = OWNERS, quiet: float = 3.0) -> list:
    import aetcd

    u = urlparse(endpoint)
    client = aetcd.Client(u.hostname, u.port, timeout=10)
    events = []
    try:
        end = prefix[:-1] + bytes([prefix[-1] + 1])  # every key with that prefix
        watch = await client.watch(prefix, range_end=end, start_revision=1)
        it = watch.__aiter__()
        while True:
            try:
                ev = await asyncio.wait_for(it.__anext__(), quiet)
            except (asyncio.TimeoutError, StopAsyncIteration):
                break
            events.append((ev.kv.mod_revision, ev.kind == "PUT", bytes(ev.kv.key), bytes(ev.kv.value or b""),
                           ev.kv.lease))
        try:
            await asyncio.wait_for(watch.cancel(), 2)
        except Exception:
            pass
    finally:
        await client.close()
    return events


def history(endpoints: str, prefix: bytes = OWNERS, quiet: float = 3.0) -> list:
    """Every event of the keys under prefix (sessions/owners/) from revision 1: (revision, put, key,
    value, lease); the watch ends once it brought nothing for `quiet` seconds."""
    last = None
    for ep in endpoints.split(","):
        try:
            return asyncio.run(_history(ep.strip(), prefix, quiet))
        except Exception as e:  # (a member down: the next one)
            last = e
    raise RuntimeError(f"no etcd endpoint answered: {last}")


def _tokens(logs: dict[str, str]) -> tuple[set, set]:
    """From the agents' logs: (node, client, token) of sessions given up for a claim, and
    (node, client, token) of a node's own claims it gave up (refused) after writing."""
    gave, refused = set(), set()
    for node, text in logs.items():
        for cid, tok in re.findall(r"process=agent event='(?:session handed to another node|takeover asked: no session here)'"
                                   r" client=(\S+) peer=\S+ token=(\d+)", text):
            gave.add((node, cid, int(tok)))
        for cid, tok in re.findall(r"process=agent event='(?:previous owner unreachable; CONNECT refused|takeover refused: "
                                   r"newer claim there)' client=(\S+) owner=\S+ (?:restored=\S+ )?token=(\d+)", text):
            refused.add((node, cid, int(tok)))
    return gave, refused


def owned_twice(events: list, logs: dict[str, str]) -> dict:
    """Figures of the replay: ids owned twice (and the first few cases), live moves, records."""
    gave, refused = _tokens(logs)
    owner: dict[bytes, tuple[str, int]] = {}  # key -> (node, revision of its record)
    twice: Counter = Counter()
    cases = []
    moves = 0
    records = 0
    for rev, put, key, value, lease in sorted(events, key=lambda e: e[0]):
        if not key.startswith(OWNERS):
            continue
        cid = key[len(OWNERS):].decode(errors="replace")
        if not put:
            owner.pop(key, None)
            continue
        try:
            rec = json.loads(value)
            node = rec["node"]
        except (ValueError, KeyError, TypeError):
            continue
        records += 1
        prev = owner.get(key)
        owner[key] = (node, rev)
        if prev is None or prev[0] == node:
            continue  # created (no live owner before), or this node's own record again (a new lease of it)
        moves += 1
        if (prev[0], cid, rev) in gave:
            continue  # the previous owner gave it up for this very claim
        if (node, cid, rev) in refused or (prev[0], cid, prev[1]) in refused:
            continue  # a claim given up after writing (its CONNECT refused), or the record put back after one
        twice[cid] += 1
        if len(cases) < 10:
            cases.append({"client": cid, "revision": rev, "from": prev[0], "to": node})
    # (a replaced record whose node's lease was gone would have been deleted with it, at the
    # lease's expiry: see the module's docstring; so every replacement is of a live owner)
    return {"ids_owned_twice": len(twice), "cases": cases, "live_moves": moves, "owner_records": records,
            "events": len(events)}
