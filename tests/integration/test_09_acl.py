"""Access control from a mosquitto-style ACL file (SHOAL_ACL_FILE), for 3.1.1 and 5.0:
SUBSCRIBE refused in the SUBACK, PUBLISH refused in the PUBACK/PUBREC (v5) or
acknowledged and dropped (3.1.1), `pattern` with %c and %u, `user` sections,
anonymous clients, delivery filtered by read access, and a bad file."""
import os
import subprocess
import sys
import tempfile
import threading

import pytest

from mqtt import (
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    ReasonCode,
)
from tests.support.clients import subscribe
from tests.support.node import ROOT, Node, wait_for
from tests.support.raw import connect

ACL = """\
# anonymous clients (no username): topic lines before the first user section
topic readwrite acl/open/#
topic read acl/ro/#
topic write acl/wo/#
topic readwrite acl/mixed/#
topic deny acl/mixed/secret

# every client, wherever the line stands
pattern readwrite acl/client/%c/#
pattern readwrite acl/user/%u/#

user watcher
topic readwrite acl/#

user alice
topic readwrite acl/alice/#

user bob
topic read acl/alice/#
"""


def write_acl(text: str) -> str:
    d = tempfile.mkdtemp(prefix="shoal-acl", dir="/tmp")
    path = os.path.join(d, "acl")
    with open(path, "w") as f:
        f.write(text)
    return path


@pytest.fixture(scope="module")
def node():
    n = Node(workers=1, acl_file=write_acl(ACL))
    n.start()
    yield n
    n.stop()


def denied(version: int) -> int:
    """SUBACK code of a filter no ACL rule grants: 0x80 (failure) in 3.1.1, 0x87 Not authorized in 5.0."""
    return ReasonCode.NOT_AUTHORIZED if version == 5 else 0x80


DENY_RULE = 0x80  # a filter a `deny` rule refuses: 0x80 in both versions (what the Paho v5 suite expects)


def refused(version: int) -> int:
    """PUBACK / PUBREC code of a publish the ACL refuses: 0x87 in 5.0; 3.1.1 has no
    code, the broker acknowledges as usual and drops the message."""
    return ReasonCode.NOT_AUTHORIZED if version == 5 else 0


def received(c) -> list[tuple[str, bytes]]:
    """(topic, payload) of every PUBLISH that reached `c` before a PINGREQ round trip."""
    got = c.barrier()
    assert all(isinstance(p, Publish) for p in got), got
    for p in got:
        if p.qos == 1:
            c.send(PubAck(p.packet_id))
    return [(p.topic, p.payload) for p in got]


def watcher(clients, node, name, version, *filters):
    """A client of user "watcher" (read and write on acl/#) subscribed to `filters`."""
    w = clients.connect(node.port, name, version, username="watcher")
    assert subscribe(w, *filters, qos=1, check=False) == [1] * len(filters)
    return w


# -- connecting ---------------------------------------------------------------------
def test_anonymous_clients_are_allowed_by_default(node, version, clients):
    c = clients.open(node.port, version)
    ack = c.connect(f"a09-anon-{version}")
    assert ack.reason_code == 0
    # and one with a username that has no section in the file connects too
    c2 = clients.open(node.port, version)
    assert c2.connect(f"a09-nouser-{version}", username="nobody").reason_code == 0


# -- SUBSCRIBE -----------------------------------------------------------------------
def test_subscribe_denied_in_suback(node, version, clients):
    c = clients.connect(node.port, f"a09-sub-{version}", version)
    codes = subscribe(c, "acl/open/a", "acl/wo/a", "acl/mixed/secret", "#", "acl/open/+/b", "acl/+", qos=1, check=False)
    no = denied(version)
    # granted; write-only; an explicit deny; wider than any grant; inside a grant; wider than a grant
    assert codes == [1, no, DENY_RULE, no, 1, no]
    # the connection stays up and the granted subscription works
    pub = clients.connect(node.port, f"a09-sub-pub-{version}", version, username="watcher")
    pub.send(Publish("acl/wo/a", b"not for you", 0))
    pub.send(Publish("acl/open/a", b"yes", 0))
    pub.barrier()
    assert received(c) == [("acl/open/a", b"yes")]


def test_shared_subscription_is_checked_on_its_filter(node, version, clients):
    c = clients.connect(node.port, f"a09-share-{version}", version)
    assert subscribe(c, "$share/g/acl/open/s", "$share/g/acl/wo/s", qos=1, check=False) == [1, denied(version)]


# -- PUBLISH -------------------------------------------------------------------------
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_denied(node, version, clients, qos):
    w = watcher(clients, node, f"a09-pubw-{version}-{qos}", version, "acl/#")
    pub = clients.connect(node.port, f"a09-pub-{version}-{qos}", version)
    pub.send(Publish("acl/ro/x", b"refused", qos, packet_id=5 if qos else None))
    if qos == 1:
        ack = pub.expect(PubAck)
        assert ack.packet_id == 5
        assert ack.reason_code == refused(version)
    elif qos == 2:
        rec = pub.expect(PubRec)
        assert rec.packet_id == 5
        if version == 5:
            assert rec.reason_code == ReasonCode.NOT_AUTHORIZED  # the flow ends here
        else:  # 3.1.1: acknowledged as usual, to the end of the handshake
            assert rec.reason_code == 0
            pub.send(PubRel(5))
            assert pub.expect(PubComp).packet_id == 5
    # a sentinel on a granted topic, with the same packet id (free again after a
    # refused QoS 2, or it would be taken for a resend and dropped): the watcher
    # sees it and nothing before it
    pub.send(Publish("acl/open/sentinel", b"s", 2, packet_id=5))
    assert pub.expect(PubRec).reason_code == 0
    pub.send(PubRel(5))
    assert pub.expect(PubComp).packet_id == 5
    assert received(w) == [("acl/open/sentinel", b"s")]
    assert pub.barrier() == []  # the publisher is still connected


def test_publish_denied_is_not_retained(node, version, clients):
    pub = clients.connect(node.port, f"a09-ret-{version}", version)
    pub.send(Publish(f"acl/ro/retained{version}", b"refused", 1, retain=True, packet_id=1))
    pub.expect(PubAck)
    pub.send(Publish(f"acl/open/retained{version}", b"kept", 1, retain=True, packet_id=2))
    pub.expect(PubAck)
    w = clients.connect(node.port, f"a09-retw-{version}", version, username="watcher")
    assert subscribe(w, f"acl/ro/retained{version}", f"acl/open/retained{version}", qos=1, check=False) == [1, 1]
    got = w.barrier()
    assert [(p.topic, p.payload, p.retain) for p in got] == [(f"acl/open/retained{version}", b"kept", True)]
    pub.send(Publish(f"acl/open/retained{version}", b"", 1, retain=True, packet_id=3))  # clean up
    pub.expect(PubAck)


def test_write_only_topic(node, version, clients):
    w = watcher(clients, node, f"a09-wow-{version}", version, "acl/wo/#")
    pub = clients.connect(node.port, f"a09-wo-{version}", version)
    pub.send(Publish("acl/wo/x", b"written", 1, packet_id=1))
    assert pub.expect(PubAck).reason_code == 0
    assert received(w) == [("acl/wo/x", b"written")]


# -- delivery ------------------------------------------------------------------------
def test_delivery_respects_read_access(node, version, clients):
    """A filter granted as a whole (acl/mixed/#) still withholds the topics the
    client may not read (acl/mixed/secret), live and retained."""
    pub = clients.connect(node.port, f"a09-readp-{version}", version, username="watcher")
    pub.send(Publish("acl/mixed/secret", b"retained secret", 1, retain=True, packet_id=1))
    pub.expect(PubAck)
    sub = clients.connect(node.port, f"a09-read-{version}", version)
    assert subscribe(sub, "acl/mixed/#", qos=1, check=False) == [1]
    assert sub.barrier() == []  # the retained secret is not delivered on subscribe
    pub.send(Publish("acl/mixed/secret", b"secret", 1, packet_id=2))
    pub.expect(PubAck)
    pub.send(Publish("acl/mixed/ok", b"ok", 1, packet_id=3))
    pub.expect(PubAck)
    assert received(sub) == [("acl/mixed/ok", b"ok")]
    pub.send(Publish("acl/mixed/secret", b"", 1, retain=True, packet_id=4))  # clean up
    pub.expect(PubAck)


def test_anonymous_topic_rules_do_not_apply_to_users(node, version, clients):
    """`topic` lines before the first `user` line are for anonymous clients only."""
    alice = clients.connect(node.port, f"a09-alice-anon-{version}", version, username="alice")
    assert subscribe(alice, "acl/open/x", qos=1, check=False) == [denied(version)]
    alice.send(Publish("acl/open/x", b"x", 1, packet_id=1))
    assert alice.expect(PubAck).reason_code == refused(version)


# -- user sections ---------------------------------------------------------------------
def test_user_sections(node, version, clients):
    alice = clients.connect(node.port, f"a09-alice-{version}", version, username="alice")
    bob = clients.connect(node.port, f"a09-bob-{version}", version, username="bob")
    anon = clients.connect(node.port, f"a09-anon-alice-{version}", version)
    assert subscribe(alice, "acl/alice/#", qos=1, check=False) == [1]
    assert subscribe(bob, "acl/alice/#", qos=1, check=False) == [1]  # bob: read only
    assert subscribe(anon, "acl/alice/#", qos=1, check=False) == [denied(version)]
    # bob may not write there
    bob.send(Publish("acl/alice/from-bob", b"b", 1, packet_id=1))
    assert bob.expect(PubAck).reason_code == refused(version)
    alice.send(Publish("acl/alice/from-alice", b"a", 0))
    assert received(alice) == [("acl/alice/from-alice", b"a")]
    assert received(bob) == [("acl/alice/from-alice", b"a")]
    assert received(anon) == []


# -- patterns ----------------------------------------------------------------------------
def test_pattern_with_client_id(node, version, clients):
    cid = f"a09-pc-{version}"
    c = clients.connect(node.port, cid, version)
    other = clients.connect(node.port, f"a09-pc-other-{version}", version)
    assert subscribe(c, f"acl/client/{cid}/#", f"acl/client/a09-pc-other-{version}/#", qos=1, check=False) == [1, denied(version)]
    # the other client cannot write into c's tree, c can
    other.send(Publish(f"acl/client/{cid}/x", b"intruder", 1, packet_id=1))
    assert other.expect(PubAck).reason_code == refused(version)
    c.send(Publish(f"acl/client/{cid}/x", b"mine", 0))
    assert received(c) == [(f"acl/client/{cid}/x", b"mine")]


def test_pattern_with_username(node, version, clients):
    carol = clients.connect(node.port, f"a09-carol-{version}", version, username="carol")
    anon = clients.connect(node.port, f"a09-pu-anon-{version}", version)
    assert subscribe(carol, "acl/user/carol/#", "acl/user/dave/#", qos=1, check=False) == [1, denied(version)]
    # %u never matches a client without a username
    assert subscribe(anon, "acl/user/carol/#", qos=1, check=False) == [denied(version)]
    carol.send(Publish("acl/user/carol/note", b"n", 0))
    assert received(carol) == [("acl/user/carol/note", b"n")]


# -- a bad ACL file ------------------------------------------------------------------------
BAD_ACL = "topic read a/#\nfrobnicate b\n"


def test_bad_acl_file_stops_the_worker():
    """A line that is not understood: the worker exits with status 3 and a
    message naming the file and the line, instead of serving without the ACL."""
    path = write_acl(BAD_ACL)
    env = dict(os.environ, SHOAL_ACL_FILE=path, SHOAL_PORT="0", SHOAL_WORKERS="1",
               SHOAL_DATA_DIR=os.path.join(os.path.dirname(path), "data"), SHOAL_PERSISTENCE="false")
    proc = subprocess.run([sys.executable, "-m", "worker", "--wid", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert f"{path}:2:" in proc.stderr and "frobnicate" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_acl_file_under_circus():
    """Under circusd the node log names the file and the line and no worker
    serves; circus keeps retrying the worker, so it starts once the file is fixed."""
    path = write_acl(BAD_ACL)
    n = Node(workers=1, acl_file=path)
    refused: list[str] = []

    def fix_once_refused():
        wait_for(lambda: f"cannot start: {path}:2:" in n.log(), 30, what="the ACL error in the node log")
        refused.append(n.log())
        with open(path, "w") as f:
            f.write("topic readwrite ok/#\n")

    fixer = threading.Thread(target=fix_once_refused)
    fixer.start()
    try:
        n.start(timeout=60)  # ready only once circus has restarted the worker on the fixed file
    finally:
        fixer.join()
    try:
        assert refused and "event=serving" not in refused[0]
        assert "frobnicate" in refused[0]
        with connect(n.port, "a09-fixed", 4) as c:
            assert subscribe(c, "ok/x", "other/x", qos=1, check=False) == [1, 0x80]
    finally:
        n.stop()
