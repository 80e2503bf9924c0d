"""`shoalctl`: list nodes, clients, sessions, subscriptions and routes; kick a client.

It talks to the node's HTTP admin API (router/admin.py): by default over the
node's Unix socket, ``$SHOAL_RUN_DIR/shoal-$SHOAL_PORT-admin.sock`` (the same
SHOAL_* variables that started the node pick it), or over TCP with ``--url
http://host:SHOAL_METRICS_PORT``. In a cluster it asks the node it talks to
for the other nodes (``/api/v1/nodes``) and asks each of them too; every row
names its node and worker.

    shoalctl nodes
    shoalctl clients [--client ID] [--limit N]
    shoalctl sessions | subscriptions | routes [--client ID] [--limit N]
    shoalctl kick CLIENT_ID
    shoalctl --json clients        # the rows as JSON, one object per node answer
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import sys
from urllib.parse import quote, urlencode, urlsplit

PROTOCOLS = {3: "3.1", 4: "3.1.1", 5: "5.0"}

COLUMNS = {
    "clients": [("NODE", "node"), ("WORKER", "worker"), ("CLIENT", "client"), ("PROTOCOL", "protocol"),
                ("KEEPALIVE", "keepalive"), ("ADDRESS", "address"), ("USERNAME", "username")],
    "sessions": [("NODE", "node"), ("WORKER", "worker"), ("CLIENT", "client"), ("CONNECTED", "connected"),
                 ("EXPIRY", "expiry"), ("EXPIRES_IN", "expires_in"), ("SUBSCRIPTIONS", "subscriptions"),
                 ("QUEUED", "queued"), ("INFLIGHT", "inflight")],
    "subscriptions": [("NODE", "node"), ("WORKER", "worker"), ("CLIENT", "client"), ("FILTER", "filter"),
                      ("QOS", "qos"), ("OPTIONS", "options")],
    "routes": [("NODE", "node"), ("WORKER", "worker"), ("FILTER", "filter"), ("SESSIONS", "sessions")],
    "nodes": [("NODE", "node"), ("MQTT", "mqtt"), ("API", "api"), ("WORKERS", "workers"), ("READY", "ready")],
}


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.path)


class Target:
    """One node's admin API: a Unix socket path or an http:// URL."""

    def __init__(self, where: str, token: str, timeout: float):
        self.where = where
        self.token = token
        self.timeout = timeout

    def request(self, method: str, path: str) -> tuple[int, dict]:
        if self.where.startswith("http://"):
            u = urlsplit(self.where)
            conn = http.client.HTTPConnection(u.hostname, u.port or 80, timeout=self.timeout)
        else:
            conn = UnixHTTPConnection(self.where, self.timeout)
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            conn.request(method, path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        try:
            return resp.status, json.loads(body)
        except ValueError:
            return resp.status, {"error": body.decode(errors="replace").strip()}


def default_socket() -> str:
    from common.settings import Settings

    return str(Settings().admin_socket)


def nodes(target: Target) -> list[tuple[dict, Target]]:
    """Every node of the cluster with the Target that reaches it (this one first)."""
    status, answer = target.request("GET", "/api/v1/nodes")
    if status != 200:
        raise SystemExit(f"shoalctl: {target.where}: {status} {answer.get('error', '')}")
    out = []
    for n in answer["nodes"]:
        if n.get("self"):
            out.append((n, target))
        elif n.get("api"):
            out.append((n, Target(n["api"], target.token, target.timeout)))
        else:
            out.append((n, None))
    return out


def _cell(key: str, row: dict) -> str:
    if key == "protocol":
        return PROTOCOLS.get(row.get("protocol"), str(row.get("protocol")))
    if key == "options":
        opts = []
        if row.get("no_local"):
            opts.append("nl")
        if row.get("retain_as_published"):
            opts.append("rap")
        if row.get("retain_handling"):
            opts.append(f"rh={row['retain_handling']}")
        if row.get("id") is not None:
            opts.append(f"id={row['id']}")
        return ",".join(opts) or "-"
    if key == "workers":
        return ",".join(f"{w['worker']}{'' if w['serving'] else '(down)'}" for w in row.get("workers", []))
    if key == "worker" and row.get("worker") is None:
        return row.get("member", "-")
    v = row.get(key)
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def table(what: str, rows: list[dict], out) -> None:
    cols = COLUMNS[what]
    cells = [[h for h, _ in cols]] + [[_cell(k, r) for _, k in cols] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(cols))]
    for c in cells:
        out.write("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip() + "\n")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="shoalctl", description="Shoal admin: nodes, clients, sessions, subscriptions, routes, kick")
    ap.add_argument("--url", help="a node's admin API over TCP, http://host:SHOAL_METRICS_PORT")
    ap.add_argument("--socket", help="a node's admin socket (default: $SHOAL_RUN_DIR/shoal-$SHOAL_PORT-admin.sock)")
    ap.add_argument("--token", default=os.environ.get("SHOAL_ADMIN_TOKEN", ""), help="SHOAL_ADMIN_TOKEN of the nodes (TCP)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("nodes", help="the nodes of the cluster (this one alone when not clustered)")
    for name in ("clients", "sessions", "subscriptions", "routes"):
        p = sub.add_parser(name, help=f"list {name} of every node")
        p.add_argument("--client", help="only this client id")
        p.add_argument("--limit", type=int, help="at most this many rows per worker")
    p = sub.add_parser("kick", help="close a client's connection (v5: DISCONNECT 0x98 administrative action)")
    p.add_argument("client")
    args = ap.parse_args(argv)

    target = Target(args.url or args.socket or default_socket(), args.token, args.timeout)
    try:
        run(args, target)
    except (OSError, http.client.HTTPException) as e:
        print(f"shoalctl: cannot reach {target.where}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def run(args, target: Target) -> None:
    out = sys.stdout
    cluster = nodes(target)
    if args.command == "nodes":
        rows = []
        for n, t in cluster:
            if t is not None and not n.get("self"):  # a peer: its own account of itself
                try:
                    status, answer = t.request("GET", "/api/v1/nodes")
                    n = next((x for x in answer.get("nodes", []) if x.get("self")), n) if status == 200 else n
                except (OSError, http.client.HTTPException) as e:
                    print(f"shoalctl: node {n.get('node')}: {e}", file=sys.stderr)
            rows.append(n)
        if args.json:
            json.dump({"nodes": rows}, out, indent=2)
            out.write("\n")
        else:
            table("nodes", rows, out)
        return
    if args.command == "kick":
        for n, t in cluster:
            if t is None:
                continue
            status, answer = t.request("POST", f"/api/v1/clients/{quote(args.client, safe='')}/kick")
            if status == 200 and answer.get("kicked"):
                if args.json:
                    json.dump(answer, out)
                    out.write("\n")
                else:
                    out.write(f"kicked {args.client} on node {answer['node']} worker {answer['worker']}"
                              f" ({answer.get('address')})\n")
                return
        print(f"shoalctl: no connected client {args.client!r} on any node", file=sys.stderr)
        raise SystemExit(1)
    query = {k: v for k, v in (("client", args.client), ("limit", args.limit)) if v is not None}
    path = f"/api/v1/{args.command}" + (f"?{urlencode(query)}" if query else "")
    rows, answers, failed = [], [], False
    for n, t in cluster:
        if t is None:
            print(f"shoalctl: node {n['node']} has no admin API address", file=sys.stderr)
            failed = True
            continue
        try:
            status, answer = t.request("GET", path)
        except (OSError, http.client.HTTPException) as e:
            print(f"shoalctl: node {n['node']}: {e}", file=sys.stderr)
            failed = True
            continue
        if status != 200:
            print(f"shoalctl: node {n['node']}: {status} {answer.get('error', '')}", file=sys.stderr)
            failed = True
            continue
        answers.append(answer)
        rows += answer[args.command]
        if answer.get("truncated"):
            print(f"shoalctl: node {n['node']}: more than the limit; showing {len(answer[args.command])} of {answer['total']}",
                  file=sys.stderr)
        if answer.get("workers_missing"):
            print(f"shoalctl: node {n['node']}: workers {answer['workers_missing']} did not answer", file=sys.stderr)
            failed = True
    if args.json:
        json.dump({args.command: rows, "answers": len(answers)}, out, indent=2)
        out.write("\n")
    else:
        table(args.command, rows, out)
    if failed:
        raise SystemExit(2)
