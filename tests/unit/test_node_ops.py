"""The node protocol's typed ops (core/ops.py): each op's wire form is the list the node has
always sent (op number, then the fields in their old order, as common/wire.py documented
them), written out here by hand; decoding is the inverse and refuses what is not an op."""
from __future__ import annotations

import logging

import msgpack
import pytest

from core import ops as o

M = ["t", b"x", 1, False, None, None, "c"]  # a message record
S = [2, "c", 300, None, [], None, 1, None, None, [], [], []]  # a session record

# (op, its wire form as the old code wrote it: [Op.X, ...] in common/wire.py's field order)
WIRE = [
    (o.Hello(1, ["a/#"], ["c"], [M]), [1, 1, ["a/#"], ["c"], [M]]),
    (o.RouteAdd("a/#", 12.5), [2, "a/#", 12.5]),
    (o.RouteAdd("$share/g/a", None, 3), [2, "$share/g/a", None, 3]),  # the agent: a group on 3 other nodes
    (o.RouteDel("a/#"), [3, "a/#"]),
    (o.Pub(M, 7, 12.5), [4, M, 7, 12.5]),
    (o.Retain(M, 7), [5, M, 7]),
    (o.Claim("c", 3, True), [6, "c", 3, True]),
    (o.Handoff("c", 3, S), [7, "c", 3, S]),
    (o.Release("c"), [8, "c"]),
    (o.Stats({"a": 1}), [9, {"a": 1}]),
    (o.Ping(), [10]),
    (o.SharedPub(M, "g", "t/#"), [11, M, "g", "t/#"]),
    (o.Sync(5), [12, 5]),
    (o.RouteAck(9), [13, 9]),
    (o.Delivered([b"w1", 5]), [14, [b"w1", 5]]),
    (o.Direct(M, "c", 1, False, [3]), [15, M, "c", 1, False, [3]]),
    (o.PubTo(M, "w2"), [16, M, "w2"]),
    (o.PubTo(M, "agent", "a/#", 12.5), [16, M, "agent", "a/#", 12.5]),  # the filter and the read time
    (o.RemotePub(M, True, [["g", "t"]], 4, 12.5), [17, M, True, [["g", "t"]], 4, 12.5]),
    (o.Owned("c", 3, o.Own.REMOTE, S), [18, "c", 3, 2, S]),
    (o.Welcome(77, 9, [["w1", "a"]], [M]), [20, 77, 9, [["w1", "a"]], [M]]),
    (o.Welcome(77, 9, [], [], None, ["c"]), [20, 77, 9, [], [], None, ["c"]]),  # to the agent: the ids held
    (o.Routes(9, [[1, "w1", "a", 12.5], [-1, "w2", "b"]]), [21, 9, [[1, "w1", "a", 12.5], [-1, "w2", "b"]]]),
    (o.Deliver(M, True, [], [b"w1", 5]), [22, M, True, [], [b"w1", 5]]),
    (o.Deliver(M, True, [], None, "a/#", 12.5), [22, M, True, [], None, "a/#", 12.5]),  # a replay, to the agent
    (o.Retained(M), [23, M]),
    (o.Retained(M, [b"w1", 5]), [23, M, [b"w1", 5]]),  # to the agent: the PUBACK waits for it
    (o.Grant("c", 3, S), [24, "c", 3, S]),  # KEEP: no flag, as before
    (o.Grant("c", 3, S, o.Own.FRESH), [24, "c", 3, S, 1]),
    (o.Grant("c", 3, None, o.Own.REFUSED), [24, "c", 3, None, 3]),
    (o.Takeover("c", 3, o.STALE), [25, "c", 3, 2]),
    (o.NodeStats({"a": 1}, {"w1": {"a": 1}}), [26, {"a": 1}, {"w1": {"a": 1}}]),
    (o.Pong(77, 9), [27, 77, 9]),
    (o.Synced(5), [28, 5]),
    (o.Confirm(7, False), [29, 7, False]),
    (o.DeliverDirect(M, "c", 1, False, [3]), [30, M, "c", 1, False, [3]]),
    (o.Moved("c", ["a"]), [31, "c", ["a"]]),
    (o.TakeOwnership("c", 3, False), [32, "c", 3, False]),
    (o.Disown("c"), [33, "c"]),
    (o.Will("c", M, 5), [34, "c", M, 5]),
    (o.WillFire("c", M), [35, "c", M]),
    (o.WillGo(M), [36, M]),
    (o.Drained("w1", [S]), [37, "w1", [S]]),
    (o.DrainDone("w1", ["c"]), [38, "w1", ["c"]]),
    (o.Adopt("c", S), [39, "c", S]),
    (o.Beat("agent", 42, True, 1.5e9, [{"node": "b", "api": None}], 1),
     [40, "agent", 42, True, 1.5e9, [{"node": "b", "api": None}], 1]),
    (o.Ask(3, "stats", {}), [41, 3, "stats", {}]),
    (o.Answer(3, {"a": 1}), [42, 3, {"a": 1}]),
    (o.Bye(), [50]),
    (o.Lease(99.5), [51, 99.5, 0]),
    (o.Lease(None, 7), [51, None, 7]),
    (o.NotOurs("c"), [52, "c"]),
    # SHOAL_CLUSTER_ROUTER_SENDS (router/sender.py)
    (o.PeerInfo("n2", "127.0.0.1:5", "i", True, ["a/#"]), [53, "n2", "127.0.0.1:5", "i", True, ["a/#"]]),
    (o.PeerRoute("n2", "a/#", True, 1.5), [54, "n2", "a/#", True, 1.5]),
    (o.Peers(["n2", "n3"]), [55, ["n2", "n3"]]),
    (o.PeerPub("n2", M, True, [], 3, ["r1", 9]), [56, "n2", M, True, [], 3, ["r1", 9]]),
    (o.Confirms(True, [4, 5, 6]), [57, True, [4, 5, 6]]),
    (o.DeliveredMany([[b"w1", 5], [b"agent", 6]]), [58, [[b"w1", 5], [b"agent", 6]]]),
]


def test_every_op_of_the_protocol_is_covered_here():
    assert {w[0] for _, w in WIRE} == {int(c) for c in o.Op} == set(o.BY_CODE)


@pytest.mark.parametrize("op,wire", WIRE, ids=[type(op).__name__ for op, _ in WIRE])
def test_wire_form_is_the_old_list_and_decodes_back(op, wire):
    assert op.to_wire() == wire
    assert msgpack.packb(op.to_wire(), use_bin_type=True) == msgpack.packb(wire, use_bin_type=True)
    back = o.decode(msgpack.unpackb(msgpack.packb(wire, use_bin_type=True), raw=False, strict_map_key=False))
    assert back == op and back.__class__ is op.__class__
    assert int(op.CODE) == wire[0] and o.Op(wire[0]).value == op.CODE


def test_shorter_forms_old_senders_wrote_still_decode_with_their_defaults():
    assert o.decode([53, "n2", None, "i", False]) == o.PeerInfo("n2", None, "i", False, None)  # no filters
    assert o.decode([54, "n2", "a", False]) == o.PeerRoute("n2", "a", False, None)  # no moment
    assert o.decode([2, "a"]) == o.RouteAdd("a", None)  # the agent's ROUTE_ADD: no since
    assert o.decode([5, M]) == o.Retain(M, None)  # the agent's RETAIN: no token
    assert o.decode([2, "a", 12.5]) == o.RouteAdd("a", 12.5, None)  # a worker's: no weight
    assert o.decode([16, M, "w2"]) == o.PubTo(M, "w2", None, None)  # before the replay fields
    assert o.decode([22, M, True, [], [b"w1", 5]]) == o.Deliver(M, True, [], [b"w1", 5], None, None)
    assert o.decode([23, M]) == o.Retained(M, None)  # no ref: nothing waits for the agent
    assert o.decode([22, M, False, [["g", "t"]]]) == o.Deliver(M, False, [["g", "t"]], None)
    assert o.decode([24, "c", 3, S]).flag == o.Own.KEEP
    assert o.decode([40, "w1", 42, True, 1.5e9]) == o.Beat("w1", 42, True, 1.5e9, None, 1)  # wire 1 then


def test_extra_trailing_fields_of_a_newer_sender_are_ignored():
    assert o.decode([27, 77, 9, "later"]) == o.Pong(77, 9)


@pytest.mark.parametrize("bad", [[], "x", None, [999], [o.Op.PUB], [o.Op.CLAIM, "c", 1], [[1], 2], 5])
def test_what_is_not_an_op_is_refused_with_bad_op(bad):
    with pytest.raises(o.BadOp):
        o.decode(bad)


def test_unpack_ops_skips_bad_ops_and_keeps_the_others():
    seen = []
    data = msgpack.packb([[10], [999], [o.Op.SYNC], [12, 4]])
    assert o.unpack_ops(data, lambda e, w: seen.append(w)) == [o.Ping(), o.Sync(4)]
    assert seen == [[999], [12]]


def test_pack_takes_typed_ops_and_old_style_lists():
    assert o.unpack(o.pack([o.Ping(), [10], o.Sync(1)])) == [[10], [10], [12, 1]]


def test_ops_are_slotted():
    with pytest.raises(AttributeError):
        o.Ping().extra = 1  # noqa: B018
    assert not hasattr(o.Pub(M), "__dict__")


def test_wire_check_refuses_counts_every_time_and_logs_once_per_member(caplog):
    check = o.WireCheck("n1")
    with caplog.at_level(logging.ERROR, logger="shoal.wire"):
        assert check.accept("w1", o.WIRE_VERSION, "router")
        assert not check.accept("w1", o.WIRE_VERSION + 1, "router")
        assert not check.accept("w1", o.WIRE_VERSION + 1, "router")
        assert not check.accept("w2", None, "ops")
    assert check.refused == 3
    msgs = [r for r in caplog.records if r.name == "shoal.wire"]
    assert len(msgs) == 2
    assert all("make install" in r.getMessage() for r in msgs)
    fields = msgs[0].kv
    assert (fields["member"], fields["version"], fields["node"]) == ("w1", o.WIRE_VERSION + 1, "n1")
