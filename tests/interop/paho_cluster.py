"""The Eclipse Paho interoperability suite against three nodes behind HAProxy.

    .venv/bin/python -m tests.interop.paho_cluster PAHO_CHECKOUT [unittest args]

Starts one etcd, three one-worker nodes under circusd joined to it (as
tests/support/cluster.py does, with the settings run_paho.sh gives one node: an
ACL that denies test/nosubscribe, SHOAL_MAX_KEEPALIVE=60) and HAProxy in TCP mode,
round robin over the three MQTT ports (tests/support/haproxy.py), then runs
interoperability/client_test.py (MQTT 3.1.1) and client_test5.py (MQTT 5.0)
against HAProxy's port: every connection a test makes lands on the next node.
Exits non-zero if either suite failed. Like run_paho.sh it is not part of
`make test` (the suite is a separate checkout); tests/integration/test_32_haproxy.py
checks the same things with our own clients.

The suite runs under a plain python3 (PYTHON to choose): it has a package called
`mqtt` of its own that must not meet Shoal's.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile

from tests.support.cluster import Etcd, cluster_node, wait_nodes
from tests.support.haproxy import HAProxy

HERE = os.path.dirname(os.path.abspath(__file__))
NAMES = ["h1", "h2", "h3"]
ACL = """\
# Paho interoperability: everything is allowed but subscribing to test/nosubscribe
pattern readwrite #
pattern deny test/nosubscribe
"""


def main() -> int:
    if len(sys.argv) < 2 or not os.path.isfile(os.path.join(sys.argv[1], "interoperability", "client_test5.py")):
        raise SystemExit(__doc__)
    paho = os.path.abspath(sys.argv[1])
    rest = sys.argv[2:]
    tmp = tempfile.mkdtemp(prefix="shoal-paho-cluster", dir="/tmp")
    acl = os.path.join(tmp, "acl")
    with open(acl, "w") as f:
        f.write(ACL)
    etcd = Etcd().start()
    nodes = [cluster_node(name, etcd.url, acl_file=acl, max_keepalive=60, cluster_lease_loss="disconnect")
             for name in NAMES]
    proxy = None
    status = 0
    try:
        for n in nodes:
            n.start(60)
        wait_nodes(nodes, set(NAMES))
        proxy = HAProxy({name: n.port for name, n in zip(NAMES, nodes)}).start()
        print(f"three nodes {[n.port for n in nodes]}, HAProxy on {proxy.port}, files in {tmp}", flush=True)
        for suite in ("client_test.py", "client_test5.py"):
            before = proxy.sessions()
            out_path = os.path.join(tmp, suite + ".out")
            with open(out_path, "w") as out:
                rc = subprocess.run([os.environ.get("PYTHON", "python3"), os.path.join(HERE, "paho_main.py"),
                                     suite, str(proxy.port), *rest],
                                    cwd=os.path.join(paho, "interoperability"), stdout=out, stderr=subprocess.STDOUT,
                                    env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"}).returncode
            status |= rc != 0
            landed = proxy.landed(before)
            with open(out_path) as f:
                text = f.read()
            print(f"== {suite}: connections per node {dict((n, landed.count(n)) for n in NAMES)}")
            for line in text.splitlines():
                if re.match(r"^(FAIL|ERROR): test|^Ran |^OK|^FAILED", line):
                    print(line)
        print(f"output of each suite and the node logs: {tmp} and {[n.tmp for n in nodes]}")
    finally:
        if proxy is not None:
            proxy.stop()
        for n in nodes:
            n.stop()
        etcd.stop()
    return status


if __name__ == "__main__":
    sys.exit(main())
