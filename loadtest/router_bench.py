"""``python -m loadtest.router_bench``: the CPU a node's router spends per message it forwards.

A component benchmark (mosquitto has no router to set beside it; cluster_bench has the
broker figures with mosquitto in the same run). It starts one real router process
(``python -m router``, as circus.ini does, SHOAL_WORKERS=2) and speaks the node protocol to
it from two DEALER sockets that register as workers w1 and w2: w1 sends PUB ops in batches
(each with a token, as a QoS 1 publish), the router forwards each to w2 (which holds the
only matching filter), w2 answers one DELIVERED per message in one send, and the router
CONFIRMs each to w1. One batch is in flight at a time (a closed loop, like a worker under a
steady rate), so each batch costs the router its wake-ups, reads and sends as on the cluster
path. Prints the router's CPU (utime + stime from /proc) per message for each batch size.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from core import ops as o
from core.ops import WIRE_VERSION, pack, unpack_ops

ROOT = Path(__file__).resolve().parents[1]
CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def recv_ops(sock, deadline: float) -> list:
    if not sock.poll(max(1, int((deadline - time.monotonic()) * 1000))):
        raise TimeoutError("the router did not answer")
    return unpack_ops(sock.recv())


def run(batch: int, messages: int, tmp: Path, payload: int) -> tuple[float, float]:
    """(router CPU-µs per message, messages/s) for one batch size."""
    port = 13999 + batch  # (only names the ipc paths under tmp)
    env = dict(os.environ, SHOAL_PORT=str(port), SHOAL_WORKERS="2", SHOAL_RUN_DIR=str(tmp),
               SHOAL_DATA_DIR=str(tmp / f"data-{batch}"), SHOAL_LOG_LEVEL="WARNING")
    proc = subprocess.Popen([str(ROOT / ".venv/bin/python"), "-m", "router"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    ctx = zmq.Context.instance()
    socks = []
    try:
        endpoint = f"ipc://{tmp}/shoal-{port}-router.sock"
        deadline = time.monotonic() + 30
        while not os.path.exists(endpoint.removeprefix("ipc://")):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"router did not start: {proc.stderr.read().decode(errors='replace')[-2000:]}")
            time.sleep(0.05)  # the router is starting
        pub, sub = (ctx.socket(zmq.DEALER) for _ in range(2))
        socks = [pub, sub]
        for name, s, filters in ((b"w1", pub, []), (b"w2", sub, ["rb/#"])):
            s.setsockopt(zmq.IDENTITY, name)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(endpoint)
            s.send(pack([o.Hello(WIRE_VERSION, filters, [], [])]))
        for s in socks:
            while not any(op.__class__ is o.Welcome for op in recv_ops(s, time.monotonic() + 30)):
                pass
        body = b"x" * payload
        token = 0
        base = None
        sent = 0
        warm = max(200, messages // 10)
        while sent < messages + warm:
            if sent >= warm and base is None:
                base = (cpu_s(proc.pid), time.monotonic())
            ops = []
            for _ in range(batch):
                token += 1
                ops.append(o.Pub([f"rb/{token % 100}", body, 1, False, None, None, "bench"], token, time.monotonic()))
            pub.send(pack(ops))
            refs = []
            deadline = time.monotonic() + 30
            while len(refs) < batch:
                refs += [op.ref for op in recv_ops(sub, deadline) if op.__class__ is o.Deliver]
            sub.send(pack([o.Delivered(r) for r in refs]))
            confirmed = 0
            while confirmed < batch:
                for op in recv_ops(pub, deadline):  # (one CONFIRM each, or CONFIRMS: many in one op)
                    confirmed += 1 if op.__class__ is o.Confirm else len(getattr(op, "tokens", ()))
            sent += batch
        cpu, t0 = base
        used = cpu_s(proc.pid) - cpu
        return used * 1e6 / messages, messages / (time.monotonic() - t0)
    finally:
        for s in socks:
            s.close(0)
        proc.terminate()
        proc.wait(10)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m loadtest.router_bench")
    ap.add_argument("--batches", default="1,10,40", help="PUB ops per send, comma separated")
    ap.add_argument("--messages", type=int, default=20000, help="messages measured per batch size")
    ap.add_argument("--payload", type=int, default=64, help="payload bytes")
    args = ap.parse_args(argv)
    print("| PUBs per send | router CPU-µs per message | messages/s |")
    print("|---:|---:|---:|")
    with tempfile.TemporaryDirectory(prefix="rbench") as tmpdir:
        for b in (int(x) for x in args.batches.split(",")):
            per, rate = run(b, args.messages, Path(tmpdir), args.payload)
            print(f"| {b} | {per:.1f} | {rate:,.0f} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
