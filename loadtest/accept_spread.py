"""``python -m loadtest.accept_spread``: connections per worker with one shared
listening socket (handed to every worker, ``--fd``) against one SO_REUSEPORT
socket per worker (what Shoal does). Two workers without a router
(SHOAL_WORKERS=1 each), 600 MQTT clients connecting one after another; prints
the clients each worker holds, three rounds per mode."""
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mqtt import Connect, encode

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sockets(pid: int) -> int:
    return sum(1 for f in os.listdir(f"/proc/{pid}/fd") if os.readlink(f"/proc/{pid}/fd/{f}").startswith("socket:"))

def run(mode, n_workers=2, n_clients=600):
    port = free_port(); d = tempfile.mkdtemp(prefix="spr", dir="/tmp")
    env = dict(os.environ, SHOAL_PORT=str(port), SHOAL_WORKERS="1", SHOAL_DATA_DIR=d, SHOAL_RUN_DIR=d, SHOAL_PERSISTENCE="false", SHOAL_LOG_LEVEL="WARNING")
    procs = []
    if mode == "shared":
        ls = socket.socket(); ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); ls.bind(("127.0.0.1", port)); ls.listen(1024)
        for w in range(n_workers):
            procs.append(subprocess.Popen([sys.executable, "-m", "worker", "--wid", str(w + 1), "--fd", str(ls.fileno())], cwd=ROOT, env=env, pass_fds=[ls.fileno()], stderr=subprocess.DEVNULL))
    else:
        for w in range(n_workers):
            procs.append(subprocess.Popen([sys.executable, "-m", "worker", "--wid", str(w + 1)], cwd=ROOT, env=env, stderr=subprocess.DEVNULL))
    deadline = time.monotonic() + 10
    while True:  # every worker serving: the listening socket accepts
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    time.sleep(0.5)  # the other worker(s) finish starting
    base = [sockets(p.pid) for p in procs]
    conns = []
    pkt = encode(Connect(client_id="", version=4), 4)
    for i in range(n_clients):
        s = socket.create_connection(("127.0.0.1", port)); s.sendall(pkt); s.recv(4); conns.append(s)
    counts = [sockets(p.pid) - b for p, b in zip(procs, base)]
    for s in conns: s.close()
    for p in procs: p.terminate(); p.wait()
    return counts

def main() -> None:
    for mode in ("shared", "reuseport"):
        print(mode, [run(mode) for _ in range(3)])


if __name__ == "__main__":
    main()
