"""Network namespaces for partition tests (issue 11): each node in a namespace of its own,
joined by a veth pair to a bridge in the root namespace, where etcd and the test run.

    root namespace:  bridge <tag>br  10.A.B.1/24   (etcd listens here; the test's clients too)
                       |-- <tag>v1 ==veth== eth0 in namespace <tag>-n1  10.A.B.11/24
                       |-- <tag>v2 ==veth== eth0 in namespace <tag>-n2  10.A.B.12/24
                       ...

`cut(ns)` sets the root end of the node's veth down: the node can reach neither etcd nor
the other nodes nor clients outside, while clients inside its namespace (`ns.call`) still
reach it over its loopback, as devices on the node's side of a partition would.
`slow(ns)` narrows the link with a token bucket (tbf) and keeps it congested, so that
every packet waits in the queue. (netem would add a plain delay; kernels without
CONFIG_NET_SCH_NETEM, this machine's included, have tbf.)

Needs root and iproute2 (Debian: `apt-get install iproute2`; the Makefile's test target
installs it when missing). Names carry the test process's pid, so runs beside each other
never share a namespace, a bridge or a subnet. `close()` removes everything.
"""
from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "partition tests need root (network namespaces)"
    try:
        ip("-V")
    except (OSError, subprocess.CalledProcessError) as e:
        return f"iproute2 missing: {e}"
    return None


def _subnet_in_use(prefix: str) -> bool:
    out = ip("-4", "-o", "addr", "show").stdout + ip("-4", "route", "show").stdout
    return f"{prefix}." in out


class Namespace:
    def __init__(self, net: "Net", index: int):
        self.net = net
        self.name = f"{net.tag}-n{index}"
        self.root_if = f"{net.tag}v{index}"  # the root namespace's end of the veth pair
        self.addr = f"{net.prefix}.{10 + index}"

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([*self.exec_prefix(), *cmd], capture_output=True, text=True, timeout=30, check=check)

    def call(self, fn, *args, **kw):
        """fn(*args) in a thread that entered this namespace: a socket made there belongs
        to the namespace for its whole life (the test's own threads stay in the root one)."""
        out: dict = {}

        def body():
            try:
                fd = os.open(f"/run/netns/{self.name}", os.O_RDONLY)
                try:
                    if _libc.setns(fd, CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns failed")
                finally:
                    os.close(fd)
                out["value"] = fn(*args, **kw)
            except BaseException as e:  # noqa: BLE001 (raised again in the caller)
                out["error"] = e

        t = threading.Thread(target=body, name=f"in-{self.name}")
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["value"]

    def cut(self) -> None:
        """The node's only link goes down: no etcd, no peers, no clients from outside."""
        ip("link", "set", self.root_if, "down")

    def heal(self) -> None:
        ip("link", "set", self.root_if, "up")

    def slow(self, rate: str = "400kbit", latency: str = "100ms") -> None:
        """A narrow link both ways (tbf on each end of the veth); see Congestion."""
        subprocess.run(["tc", "qdisc", "replace", "dev", self.root_if, "root", "tbf",
                        "rate", rate, "burst", "3000", "latency", latency],
                       check=True, capture_output=True, text=True, timeout=30)
        self.run("tc", "qdisc", "replace", "dev", "eth0", "root", "tbf",
                 "rate", rate, "burst", "3000", "latency", latency)

    def fast(self) -> None:
        subprocess.run(["tc", "qdisc", "del", "dev", self.root_if, "root"], capture_output=True, timeout=30)
        self.run("tc", "qdisc", "del", "dev", "eth0", "root", check=False)


class Congestion:
    """UDP filler traffic over a slowed link, both ways, a fifth above the link's rate, so
    that its queues stay full and each packet of the node waits about the queue's latency
    (and about one in six is dropped, as on a congested link). Stops with stop()."""

    def __init__(self, ns: Namespace, root_addr: str, bytes_per_second: int = 60_000):
        self.ns = ns
        self.stop_event = threading.Event()
        self.rate = bytes_per_second
        self.sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM)]
        self.sinks[0].bind((root_addr, 0))
        self.inner_sink = ns.call(self._bind_inner)
        self.sinks.append(self.inner_sink)
        out = ns.call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
        back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.threads = [
            threading.Thread(target=self._blast, args=(out, self.sinks[0].getsockname()), daemon=True),
            threading.Thread(target=self._blast, args=(back, self.inner_sink.getsockname()), daemon=True),
        ]
        self.socks = [out, back]
        for t in self.threads:
            t.start()

    def _bind_inner(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((self.ns.addr, 0))
        return s

    def _blast(self, sock, dest) -> None:
        chunk = b"\0" * 1000
        per_tick = max(1, self.rate // 1000 // 20)  # 20 ticks a second
        while not self.stop_event.wait(0.05):  # (a pacing interval of the filler, not a test's wait)
            for _ in range(per_tick):
                try:
                    sock.sendto(chunk, dest)
                except OSError:
                    pass  # (a full queue, or the link down)

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(5)
        for s in self.socks + self.sinks:
            s.close()


class Net:
    def __init__(self):
        self.tag = f"sh{os.getpid() % 100000:05d}"  # interface names stay under 15 characters
        self.bridge = f"{self.tag}br"
        self.namespaces: list[Namespace] = []
        pid = os.getpid()
        for i in range(200):
            a, b = 100 + (pid + i) % 150, (pid // 150 + i) % 250
            if not _subnet_in_use(f"10.{a}.{b}"):
                break
        else:
            raise RuntimeError("no free 10.x.y.0/24 for the test's bridge")
        self.prefix = f"10.{a}.{b}"
        self.root_addr = f"{self.prefix}.1"
        self.close()  # leftovers of a killed run with this pid
        ip("link", "add", self.bridge, "type", "bridge")
        ip("addr", "add", f"{self.root_addr}/24", "dev", self.bridge)
        ip("link", "set", self.bridge, "up")

    def add(self) -> Namespace:
        ns = Namespace(self, len(self.namespaces) + 1)
        self.namespaces.append(ns)
        ip("netns", "add", ns.name)
        ns.run("ip", "link", "set", "lo", "up")
        ip("link", "add", ns.root_if, "type", "veth", "peer", "name", "eth0", "netns", ns.name)
        ip("link", "set", ns.root_if, "master", self.bridge)
        ip("link", "set", ns.root_if, "up")
        ns.run("ip", "addr", "add", f"{ns.addr}/24", "dev", "eth0")
        ns.run("ip", "link", "set", "eth0", "up")
        return ns

    def close(self) -> None:
        """Remove every namespace (their veth pairs go with them) and the bridge."""
        listed = ip("netns", "list", check=False).stdout.split()
        for name in [n for n in listed if n.startswith(f"{self.tag}-")]:
            ip("netns", "del", name, check=False)
        for line in ip("-o", "link", "show", check=False).stdout.splitlines():
            parts = line.split(":")
            if len(parts) > 1 and parts[1].strip().split("@")[0].startswith(self.tag):
                ip("link", "del", parts[1].strip().split("@")[0], check=False)
        self.namespaces = []
