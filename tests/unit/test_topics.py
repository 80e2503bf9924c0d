"""Topic validation and the two tries of mqtt/topics.py."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mqtt.topics import (
    RetainedTrie,
    SharedGroup,
    SubscriptionTrie,
    parse_shared,
    valid_topic_filter,
    valid_topic_name,
)

# -- validation -------------------------------------------------------------

VALID_NAMES = ["a", "a/b", "/", "a//b", "/a", "a/", "$SYS/x", "sport/tennis player1", "ü/€", "x" * 65535,
               "€" * 21845]
INVALID_NAMES = ["", "+", "#", "a/+", "a/#", "a+", "a#b", "x" * 65536, "€" * 21846]


@pytest.mark.parametrize("name", VALID_NAMES)
def test_valid_topic_name(name):
    assert valid_topic_name(name) is True


@pytest.mark.parametrize("name", INVALID_NAMES)
def test_invalid_topic_name(name):
    assert valid_topic_name(name) is False


VALID_FILTERS = [
    "a", "a/b", "#", "+", "+/+", "a/#", "a/+/b", "+/#", "/", "//", "/#", "a//#", "$SYS/#", "$SYS/+",
    "$shared/x", "$sharefoo", "a/$share", "x" * 65535,
    "$share/g/a", "$share/g/#", "$share/g/+/b", "$share/g/$SYS/#", "$share/g//", "$share/group name/a",
]
INVALID_FILTERS = [
    "", "a#", "#/a", "a/#/b", "a/b#", "a+", "+a", "a/+b", "a/b+/c", "##", "++", "x" * 65536,
    "$share", "$share/", "$share/g", "$share/g/", "$share//a", "$share/g+/a", "$share/g#/a",
    "$share/+/a", "$share/#", "$share/g/a#", "$share/g/#/a", "$share/g/$share/h/a",
]


@pytest.mark.parametrize("f", VALID_FILTERS)
def test_valid_topic_filter(f):
    assert valid_topic_filter(f) is True


@pytest.mark.parametrize("f", INVALID_FILTERS)
def test_invalid_topic_filter(f):
    assert valid_topic_filter(f) is False


@pytest.mark.parametrize(
    ("f", "expected"),
    [
        ("$share/g/a/b", ("g", "a/b")),
        ("$share/g/#", ("g", "#")),
        ("$share/g//", ("g", "/")),
        ("$share/g/$SYS/+", ("g", "$SYS/+")),
        ("a/b", None),
        ("$sharefoo/g/a", None),
        ("$share/g", None),
        ("$share//a", None),
        ("$share/g/a/#/b", None),
    ],
)
def test_parse_shared(f, expected):
    assert parse_shared(f) == expected


# -- SubscriptionTrie -------------------------------------------------------


def test_add_replace_remove_len():
    t = SubscriptionTrie()
    assert len(t) == 0
    assert t.add("a/b", "c1", 1) is True
    assert t.add("a/b", "c2", 2) is True
    assert t.add("a/+", "c1", 3) is True
    assert len(t) == 3
    assert t.add("a/b", "c1", 9) is False  # replaces the value
    assert len(t) == 3
    assert t.get("a/b", "c1") == 9
    assert sorted(t.match("a/b")) == [("c1", 3), ("c1", 9), ("c2", 2)]
    assert t.remove("a/b", "c1") is True
    assert t.remove("a/b", "c1") is False
    assert t.remove("a/c", "c1") is False
    assert t.remove("a/b/c", "c2") is False
    assert len(t) == 2
    assert sorted(t.match("a/b")) == [("c1", 3), ("c2", 2)]
    assert t.remove("a/b", "c2") and t.remove("a/+", "c1")
    assert len(t) == 0
    assert t.match("a/b") == []
    assert list(t.filters()) == []


def test_one_subscriber_and_then_more_on_one_filter():
    # a filter's first subscriber is kept without a dict (memory); a second, and the
    # way back to one, must change nothing a caller sees
    t = SubscriptionTrie()
    assert t.add("a/b", "c1", 1) is True
    assert t.add("a/b", "c1", 5) is False
    assert t.get("a/b", "c1") == 5 and t.get("a/b", "c2", "none") == "none"
    assert t.remove("a/b", "c2") is False
    assert t.add("a/b", "c2", 2) is True
    assert t.match("a/b") == [("c1", 5), ("c2", 2)]
    assert t.remove("a/b", "c1") is True
    assert t.match("a/b") == [("c2", 2)] and t.get("a/b", "c2") == 2 and t.get("a/b", "c1") is None
    assert t.add("a/b", "c3", 3) is True
    assert t.match("a/b") == [("c2", 2), ("c3", 3)]
    assert len(t) == 2 and list(t.filters()) == ["a/b"]
    assert t.remove("a/b", "c3") and t.remove("a/b", "c2")
    assert len(t) == 0 and t._root.children is None and t.match("a/b") == []


def test_remove_prunes_empty_nodes():
    t = SubscriptionTrie()
    t.add("a/b/c/d", 1)
    t.add("a/b", 2)
    t.add("$share/g/x/y", 3)
    t.remove("a/b/c/d", 1)
    assert list(t._root.children) == ["a"]
    assert t._root.children["a"].children["b"].children is None
    t.remove("a/b", 2)
    assert t._root.children is None
    t.remove("$share/g/x/y", 3)
    assert t._shared.children is None


def test_match_rules():
    t = SubscriptionTrie()
    for f in ["#", "+", "a", "a/#", "a/+", "+/b", "a/b", "a//b", "/#", "+/+", "$SYS/#", "+/x", "$SYS/+"]:
        t.add(f, f)

    def m(topic):
        keys = [k for k, _ in t.match(topic)]
        assert len(keys) == len(set(keys)), "one entry per matching (filter, key)"
        return set(keys)

    assert m("a") == {"#", "+", "a", "a/#"}  # "a/#" matches its parent level
    assert m("a/") == {"#", "+/+", "a/#", "a/+"}  # "+" matches an empty level
    assert m("a/b") == {"#", "+/+", "+/b", "a/#", "a/+", "a/b"}
    assert m("a//b") == {"#", "a//b", "a/#"}
    assert m("/b") == {"#", "+/+", "+/b", "/#"}
    assert m("b/c/d") == {"#"}
    # The "$" rule: wildcards in the first level do not match "$" topics.
    assert m("$SYS/x") == {"$SYS/#", "$SYS/+"}
    assert m("$SYS") == {"$SYS/#"}
    assert m("$other") == set()


def test_same_key_two_filters_appears_twice():
    t = SubscriptionTrie()
    t.add("a/#", "c", 1)
    t.add("a/b", "c", 2)
    assert sorted(t.match("a/b")) == [("c", 1), ("c", 2)]


def test_invalid_filters_rejected_by_add():
    t = SubscriptionTrie()
    for f in ["a/#/b", "a+", "$share/g", "$share", ""]:
        with pytest.raises(ValueError):
            t.add(f, "k", 1)
    assert len(t) == 0


def test_filters_lists_each_distinct_filter_once():
    t = SubscriptionTrie()
    t.add("a/b", 1)
    t.add("a/b", 2)
    t.add("a", 1)
    t.add("a/#", 1)
    t.add("$share/g/a/b", 1)
    t.add("$share/g/a/b", 2)
    t.add("$share/h/a/b", 1)
    assert sorted(t.filters()) == ["$share/g/a/b", "$share/h/a/b", "a", "a/#", "a/b"]


def test_shared_groups():
    t = SubscriptionTrie()
    assert t.add("$share/g/a/+", "c1", 1) is True
    assert t.add("$share/g/a/+", "c2", 2) is True
    assert t.add("$share/g/a/+", "c1", 5) is False
    assert t.add("$share/h/a/#", "c3", 3) is True
    assert t.add("a/+", "c9", 9) is True
    assert len(t) == 4
    # match() never returns shared members.
    assert t.match("a/b") == [("c9", 9)]
    groups = {(g.group, g.topic_filter): g for g in t.match_shared("a/b")}
    assert set(groups) == {("g", "a/+"), ("h", "a/#")}
    g = groups[("g", "a/+")]
    assert isinstance(g, SharedGroup)
    assert list(g.members.items()) == [("c1", 5), ("c2", 2)]  # insertion order kept
    assert g.share_filter == "$share/g/a/+"
    assert g.cursor == 0
    g.cursor = 1  # the engine's round-robin position survives later matches
    assert t.match_shared("a/c")[0].cursor in (0, 1)
    assert t.shared_group("$share/g/a/+") is g
    assert t.get("$share/g/a/+", "c2") == 2
    assert [x.group for x in t.match_shared("a")] == ["h"]
    assert t.remove("$share/g/a/+", "c1") and t.remove("$share/g/a/+", "c2")
    assert t.shared_group("$share/g/a/+") is None
    assert t.remove("$share/g/a/+", "c2") is False
    assert [x.group for x in t.match_shared("a/b")] == ["h"]
    assert len(t) == 2


def test_shared_dollar_rule():
    t = SubscriptionTrie()
    t.add("$share/g/#", "c1", 1)
    t.add("$share/g/$SYS/#", "c2", 2)
    assert [g.topic_filter for g in t.match_shared("$SYS/x")] == ["$SYS/#"]
    assert [g.topic_filter for g in t.match_shared("x")] == ["#"]


def test_generic_keys():
    # The router keys subscriptions by member id.
    t = SubscriptionTrie()
    t.add("a/#", 3, None)
    t.add("a/#", (1, "w"), None)
    assert set(t.match("a/b")) == {(3, None), ((1, "w"), None)}


# -- RetainedTrie -----------------------------------------------------------


def test_retained_set_get_delete():
    r = RetainedTrie()
    r.set("a/b", "m1")
    r.set("a/b", "m2")
    r.set("a", "m0")
    assert len(r) == 2
    assert r.get("a/b") == "m2"
    assert r.get("a/c") is None
    assert r.get("a/b/c", "none") == "none"
    assert sorted(r.items()) == [("a", "m0"), ("a/b", "m2")]
    assert r.delete("a/b") is True
    assert r.delete("a/b") is False
    assert r.delete("x") is False
    assert len(r) == 1
    assert r._root.children["a"].children is None  # pruned
    assert r.delete("a") is True
    assert r._root.children is None
    with pytest.raises(ValueError):
        r.set("a/+", "m")


def test_retained_value_none_is_kept():
    r = RetainedTrie()
    r.set("a", None)
    assert len(r) == 1
    assert r.match("#") == [None]


def test_retained_match_rules():
    r = RetainedTrie()
    for topic in ["a", "a/", "a/b", "a/b/c", "a//b", "/b", "b", "$SYS/x", "$SYS", "x/$y"]:
        r.set(topic, topic)

    def m(f):
        found = r.match(f)
        assert len(found) == len(set(found)), "each retained message once"
        return set(found)

    assert m("#") == {"/b", "a", "a/", "a/b", "a/b/c", "a//b", "b", "x/$y"}
    assert m("a/#") == {"a", "a/", "a/b", "a/b/c", "a//b"}
    assert m("a/+") == {"a/", "a/b"}
    assert m("+") == {"a", "b"}
    assert m("+/b") == {"/b", "a/b"}
    assert m("+/+") == {"/b", "a/", "a/b", "x/$y"}
    assert m("$SYS/#") == {"$SYS", "$SYS/x"}
    assert m("$SYS/+") == {"$SYS/x"}
    assert m("+/x") == set()
    assert m("a/b/c/d") == set()
    assert m("nothing/#") == set()


def test_retained_match_follows_one_child_for_literals():
    # Many unrelated topics: a literal filter must not look at them.
    r = RetainedTrie()
    for i in range(1000):
        r.set(f"other{i}/x", i)
    r.set("a/x", "hit")
    calls = 0

    # Count visits by wrapping the root's children dict in a subclass that
    # records iteration; a literal first level must never iterate it.
    class Watched(dict):
        def values(self):
            nonlocal calls
            calls += 1
            return dict.values(self)

        def items(self):
            nonlocal calls
            calls += 1
            return dict.items(self)

    r._root.children = Watched(r._root.children)
    assert r.match("a/x") == ["hit"]
    assert r.match("a/+") == ["hit"]
    assert calls == 0
    assert len(r.match("+/x")) == 1001
    assert calls == 1


# -- property tests against a brute-force matcher written from the spec ------

LEVELS = ["a", "b", "", "$SYS"]


def spec_matches(topic_filter: str, topic: str) -> bool:
    """Does ``topic_filter`` match ``topic``, straight from MQTT 4.7."""
    f = topic_filter.split("/")
    t = topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True  # the rest, including nothing ("a/#" matches "a")
        if i >= len(t):
            return False
        if level != "+" and level != t[i]:
            return False
    return len(f) == len(t)


topics = st.lists(st.sampled_from(LEVELS), min_size=1, max_size=4).map("/".join).filter(bool)


@st.composite
def filters(draw):
    levels = draw(st.lists(st.sampled_from(LEVELS + ["+", "+"]), max_size=4))
    if not levels or draw(st.booleans()):
        levels.append("#")
    return "/".join(levels) or "+"  # [""] would be the empty (invalid) filter


@st.composite
def trie_ops(draw):
    plain = draw(st.lists(st.tuples(filters(), st.integers(0, 3)), max_size=20))
    shared = draw(st.lists(st.tuples(st.sampled_from(["g", "h"]), filters(), st.integers(0, 3)), max_size=8))
    removals = draw(st.lists(st.integers(0, 40), max_size=10))
    return plain, shared, removals


@settings(max_examples=300, deadline=None)
@given(trie_ops(), st.lists(topics, min_size=1, max_size=8))
def test_subscription_trie_matches_spec(ops, probe_topics):
    plain, shared, removals = ops
    t = SubscriptionTrie()
    expected_plain: dict[tuple[str, int], int] = {}
    expected_shared: dict[tuple[str, str], dict[int, int]] = {}
    for n, (f, key) in enumerate(plain):
        assert t.add(f, key, n) is ((f, key) not in expected_plain)
        expected_plain[(f, key)] = n
    for n, (group, f, key) in enumerate(shared):
        members = expected_shared.setdefault((group, f), {})
        assert t.add(f"$share/{group}/{f}", key, n) is (key not in members)
        members[key] = n
    entries = list(expected_plain)
    for r in removals:
        if r < len(entries):
            f, key = entries[r]
            assert t.remove(f, key) is ((f, key) in expected_plain)
            expected_plain.pop((f, key), None)
    assert len(t) == len(expected_plain) + sum(len(m) for m in expected_shared.values())
    assert sorted(t.filters()) == sorted(
        {f for f, _ in expected_plain} | {f"$share/{g}/{f}" for g, f in expected_shared}
    )
    for topic in probe_topics:
        want = sorted((key, n) for (f, key), n in expected_plain.items() if spec_matches(f, topic))
        assert sorted(t.match(topic)) == want, topic
        want_shared = sorted(
            (g, f, tuple(m.items())) for (g, f), m in expected_shared.items() if spec_matches(f, topic)
        )
        got_shared = sorted((sg.group, sg.topic_filter, tuple(sg.members.items())) for sg in t.match_shared(topic))
        assert got_shared == want_shared, topic


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(topics, st.integers()), max_size=25),
    st.lists(topics, max_size=8),
    st.lists(filters(), min_size=1, max_size=8),
)
def test_retained_trie_matches_spec(sets, deletes, probe_filters):
    r = RetainedTrie()
    expected: dict[str, int] = {}
    for topic, value in sets:
        r.set(topic, value)
        expected[topic] = value
    for topic in deletes:
        assert r.delete(topic) is (topic in expected)
        expected.pop(topic, None)
    assert len(r) == len(expected)
    assert dict(r.items()) == expected
    for f in probe_filters:
        want = sorted(v for topic, v in expected.items() if spec_matches(f, topic))
        assert sorted(r.match(f)) == want, f
