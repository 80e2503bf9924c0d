"""The worker's one narrow interface to the rest of the node.

`LocalBridge` is the single-worker case: nothing leaves the process. The
router-backed bridge (router_link.py) implements the same methods.
"""
from __future__ import annotations


class LocalBridge:
    """No other members: every call is a no-op and every claim is local."""

    remote = False

    def start(self, broker) -> None:
        self.broker = broker

    def wants(self, topic: str) -> bool:
        return False

    def forward(self, msg, on_owned=None) -> None:
        pass

    def unrouted(self, msg) -> None:
        pass

    def remote_group(self, group: str, flt: str) -> bool:
        return False

    def forward_shared(self, msg, group: str, flt: str) -> None:
        pass

    def send_stats(self, snap: dict) -> None:
        pass

    def node_snapshot(self) -> dict | None:
        return None

    def connect(self) -> None:
        pass

    def filter_added(self, topic_filter: str) -> None:
        pass

    def filter_removed(self, topic_filter: str) -> None:
        pass

    def retained_changed(self, msg, on_owned=None) -> None:
        pass

    def claim(self, conn, connect) -> None:
        """Ask the node for a client id; the answer is always `broker.claimed(...)`."""
        self.broker.claimed(conn, connect, None)

    def direct(self, msg, client_id, qos, retain, sub_ids, ref=None) -> None:
        pass

    def sync(self, fn) -> None:
        fn()

    def session_released(self, client_id: str) -> None:
        pass

    cluster_wills = False  # True: wills are recorded in etcd and published through the agent

    def refuses_connect(self) -> bool:
        """Cluster: the node holds no lease now (issue 11)."""
        return False

    def will_set(self, client_id: str, will) -> None:
        pass

    def will_fire(self, client_id: str, msg) -> None:
        pass

    def session_registered(self, client_id: str) -> None:
        pass

    def close(self) -> None:
        pass
