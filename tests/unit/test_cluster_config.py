"""Cluster settings and the embedded etcd member's arguments (no processes started)."""
from __future__ import annotations

import msgpack
import pytest

from cluster.agent import _well_formed
from cluster.etcd import parse_endpoint
from cluster.etcd_member import etcd_args, parse_initial_cluster
from common.settings import Settings


def settings(**env) -> Settings:
    return Settings(**env)


def test_clustering_is_off_without_etcd_settings():
    st = settings(port=1883)
    assert not st.clustered
    assert st.cluster_address == "127.0.0.1:11883"
    assert st.etcd_member_client_url == "http://127.0.0.1:21883"
    assert st.etcd_member_peer_url == "http://127.0.0.1:31883"


def test_clustering_is_on_with_either_setting():
    assert settings(etcd_endpoints="http://a:2379, http://b:2379").etcd_client_endpoints == ["http://a:2379", "http://b:2379"]
    st = settings(etcd_initial_cluster="n1=http://127.0.0.1:31883", node_name="n1")
    assert st.clustered
    assert st.etcd_client_endpoints == ["http://127.0.0.1:21883"]  # the embedded member


def test_initial_cluster_parsing():
    assert parse_initial_cluster("a=http://h:1,b=http://h:2,a=http://h:3") == {"a": ["http://h:1", "http://h:3"], "b": ["http://h:2"]}
    with pytest.raises(ValueError, match="is not name=peerURL"):
        parse_initial_cluster("a")
    with pytest.raises(ValueError, match="is not a http://host:port URL"):
        parse_initial_cluster("a=h:1")


def test_member_args_say_what_to_fix(tmp_path):
    with pytest.raises(ValueError, match=r"add n9=http://127.0.0.1:31883 or set SHOAL_NODE_NAME"):
        etcd_args(settings(node_name="n9", etcd_initial_cluster="n1=http://127.0.0.1:31883", data_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="make them the same"):
        etcd_args(settings(node_name="n1", etcd_initial_cluster="n1=http://127.0.0.1:9", data_dir=str(tmp_path)))
    args = etcd_args(settings(node_name="n1", etcd_initial_cluster="n1=http://127.0.0.1:31883", data_dir=str(tmp_path)))
    assert args[args.index("--data-dir") + 1] == str(tmp_path / "etcd")
    assert args[args.index("--name") + 1] == "n1"
    assert int(args[args.index("--max-request-bytes") + 1]) >= settings().max_packet_size  # any retained message fits


def test_endpoint_parsing():
    assert parse_endpoint("http://10.0.0.1:2379") == ("10.0.0.1", 2379)
    assert parse_endpoint("127.0.0.1:2379") == ("127.0.0.1", 2379)
    with pytest.raises(ValueError):
        parse_endpoint("http://nohost")


def test_peer_messages_are_checked():
    good = msgpack.packb(["a/b", b"x", 1, False, None, None, "c"], use_bin_type=True)
    assert _well_formed(good, "a/b")
    assert not _well_formed(good, "other")  # the topic beside it must be the message's
    assert not _well_formed(b"\x97\x01", "a/b")
    assert not _well_formed(b"", "a/b")
    assert not _well_formed(msgpack.packb(["a/b", b"x", 3, False, None, None, "c"]), "a/b")  # no QoS 3
    assert not _well_formed(msgpack.packb({"a": 1}), "a/b")


def test_owner_records_are_outside_the_watched_range():
    """The agent reads and watches RANGE_START..RANGE_END whole; every CONNECT writes an
    owner record and its session's end deletes it, so those must not be in that range (each
    agent had every node's owner events to throw away), while what the agent caches must be."""
    from cluster.etcd import NODES, RANGE_END, RANGE_START, RETAINED, ROUTES
    from cluster.leader import KEY as LEADER
    from cluster.ownership import OWNERS
    from cluster.wills import WILLS

    def watched(key: bytes) -> bool:
        return RANGE_START <= key < RANGE_END

    for prefix in (NODES, ROUTES, RETAINED):
        assert watched(prefix + b"x") and watched(prefix + b"\xff" * 8)
    for prefix in (OWNERS, WILLS):
        assert not watched(prefix) and not watched(prefix + b"\xff" * 8) and not watched(prefix + b"")
    assert not watched(LEADER)
