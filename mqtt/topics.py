"""Topic names, topic filters and the two tries that match them.

Rules (MQTT 3.1.1 section 4.7, MQTT 5 section 4.7 and 4.8.2):

- Levels are separated by ``/``; empty levels are legal (``a//b``, ``/a``).
- ``+`` matches exactly one level, including an empty one (``a/+`` matches
  ``a/``); it must be alone in its level.
- ``#`` matches any number of levels, including zero: ``a/#`` matches ``a``.
  It must be alone in the last level.
- A wildcard in the first level never matches a topic whose first level starts
  with ``$``: ``#`` and ``+/x`` do not match ``$SYS/x``; ``$SYS/#`` does.
- ``$share/<group>/<filter>`` is a shared subscription to ``<filter>`` for the
  members of ``<group>``. A filter whose first level is ``$share`` must have that
  form, and ``<filter>`` itself must not be another ``$share`` form.

Matching walks a trie of levels (a dict of children per node): at each level it
follows the exact child, the ``+`` child and the ``#`` child, so its cost depends
on the topic's levels, not on how many filters are stored. No regexes.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MAX_TOPIC_BYTES",
    "topic_matches",
    "RetainedTrie",
    "SharedGroup",
    "SubscriptionTrie",
    "parse_shared",
    "valid_filter_shape",
    "valid_topic_filter",
    "valid_topic_name",
]

MAX_TOPIC_BYTES = 65535
"""Longest topic name or filter, in UTF-8 bytes (a two-byte length prefix)."""

_SHARE_PREFIX = "$share/"


def _fits(s: str) -> bool:
    # A code point is at most 4 UTF-8 bytes: skip the encode for short strings.
    if len(s) <= MAX_TOPIC_BYTES // 4:
        return True
    return len(s.encode("utf-8", "surrogatepass")) <= MAX_TOPIC_BYTES


def valid_topic_name(t: str) -> bool:
    """A topic a PUBLISH may carry: non-empty, no wildcard, at most 65535 bytes."""
    return bool(t) and "+" not in t and "#" not in t and _fits(t)


def valid_filter_shape(f: str) -> bool:
    """Wildcard placement only; no ``$share`` rule, no length rule."""
    if not f:
        return False
    if "+" not in f and "#" not in f:
        return True
    levels = f.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level:
            if level != "#" or i != last:
                return False
        elif "+" in level and level != "+":
            return False
    return True


def _is_share_form(f: str) -> bool:
    # First level exactly "$share" ("$shared/x" is an ordinary filter).
    return f.startswith("$share") and (len(f) == 6 or f[6] == "/")


def parse_shared(f: str) -> tuple[str, str] | None:
    """``(group, filter)`` for a valid ``$share/<group>/<filter>``, else None.

    None also for a malformed ``$share`` form (empty group, a group with
    ``+``/``#``, an empty or invalid filter, a nested ``$share`` filter):
    ``valid_topic_filter`` tells those apart from ordinary filters.
    """
    if not f.startswith(_SHARE_PREFIX):
        return None
    group, sep, inner = f[len(_SHARE_PREFIX):].partition("/")
    if not sep or not group or "+" in group or "#" in group:
        return None
    if _is_share_form(inner) or not valid_filter_shape(inner):
        return None
    return group, inner


def topic_matches(topic_filter: str, topic: str) -> bool:
    """Does a plain (non-shared) filter match a topic name? For one-off checks;
    matching many filters belongs in a SubscriptionTrie."""
    f = topic_filter.split("/")
    t = topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False
    for i, level in enumerate(f):
        if level == "#":
            return True
        if i >= len(t) or (level != "+" and level != t[i]):
            return False
    return len(f) == len(t)


def valid_topic_filter(f: str) -> bool:
    """A filter a SUBSCRIBE or UNSUBSCRIBE may carry (shared forms included)."""
    if not _fits(f):
        return False
    if _is_share_form(f):
        return parse_shared(f) is not None
    return valid_filter_shape(f)


class _One:
    """The ``subs`` of a plain node with a single subscriber: (key, value) without
    a dict. Most filters have one (in the router and the cluster agent nearly all:
    one member per filter), and a one-entry dict costs 184 bytes where this costs
    48: with 1,000,000 filters that is over 100 MiB per trie."""

    __slots__ = ("key", "value")

    def __init__(self, key: Hashable, value: Any) -> None:
        self.key = key
        self.value = value


class _Node:
    """One level of a SubscriptionTrie. ``subs`` is keyed by subscriber key in
    the plain root (a ``_One`` while there is a single key) and by group name in
    the shared root. Created on first use and dropped when empty."""

    __slots__ = ("children", "subs")

    def __init__(self) -> None:
        self.children: dict[str, _Node] | None = None
        self.subs: dict | None = None


def _match_dicts(root: _Node, levels: list[str]) -> list:
    """The ``subs`` (dicts, or ``_One`` in the plain root) of every node whose
    filter matches ``levels``.

    ``levels`` is a split topic name (no wildcards). Iterative: a stack of
    (node, depth) pairs; each matching node is reached exactly once.
    """
    found: list[dict] = []
    ch = root.children
    if not ch:
        return found
    n = len(levels)
    stack: list[tuple[_Node, int]] = []
    first = levels[0]
    # Level 0, with the "$" rule: wildcards there do not match "$..." topics.
    child = ch.get(first)
    if child is not None:
        stack.append((child, 1))
    if not first.startswith("$"):
        child = ch.get("#")
        if child is not None and child.subs:
            found.append(child.subs)
        child = ch.get("+")
        if child is not None:
            stack.append((child, 1))
    pop = stack.pop
    push = stack.append
    while stack:
        node, i = pop()
        ch = node.children
        if i == n:
            if node.subs:
                found.append(node.subs)
            if ch:
                child = ch.get("#")  # "a/#" matches "a"
                if child is not None and child.subs:
                    found.append(child.subs)
            continue
        if not ch:
            continue
        child = ch.get("#")
        if child is not None and child.subs:
            found.append(child.subs)
        child = ch.get("+")
        if child is not None:
            push((child, i + 1))
        child = ch.get(levels[i])
        if child is not None:
            push((child, i + 1))
    return found


def _descend(root: _Node, levels: list[str]) -> _Node:
    node = root
    for level in levels:
        ch = node.children
        if ch is None:
            ch = node.children = {}
        child = ch.get(level)
        if child is None:
            child = ch[level] = _Node()
        node = child
    return node


def _path(root: _Node, levels: list[str]) -> list[_Node] | None:
    """Nodes from root to the node of ``levels`` inclusive, or None."""
    path = [root]
    node = root
    for level in levels:
        ch = node.children
        node = ch.get(level) if ch else None
        if node is None:
            return None
        path.append(node)
    return path


def _prune(path: list, levels: list[str]) -> None:
    """Drop empty nodes from the end of ``path`` upwards (root stays)."""
    for depth in range(len(levels), 0, -1):
        node = path[depth]
        if node.subs or node.children:
            return
        parent = path[depth - 1]
        del parent.children[levels[depth - 1]]
        if not parent.children:
            parent.children = None


@dataclass(slots=True, eq=False)
class SharedGroup:
    """The members of one ``$share/<group>/<topic_filter>`` subscription.

    ``topic_filter`` is the filter without the ``$share/<group>/`` prefix;
    ``members`` keeps insertion order; ``cursor`` is the engine's round-robin
    position (the trie never touches it).
    """

    group: str
    topic_filter: str
    members: dict[Hashable, Any] = field(default_factory=dict)
    cursor: int = 0

    @property
    def share_filter(self) -> str:
        """The filter as the client wrote it: ``$share/<group>/<filter>``."""
        return f"{_SHARE_PREFIX}{self.group}/{self.topic_filter}"


MATCH_CACHE = 4096  # topics whose match a SubscriptionTrie keeps answered (per trie)
MATCH_CACHE_RESULT = 64  # ... when the answer is at most this many pairs
_NO_GROUPS: list = []  # (never changed: see match_shared)


class SubscriptionTrie:
    """Topic filter -> {key: value}, matched by topic name.

    Keys are whatever identifies a subscriber (a client id in a worker, a
    member id in the router); one entry per (filter, key). Shared filters are
    kept in a separate root, grouped per (group, filter).
    """

    __slots__ = ("_root", "_shared", "_count", "_hits", "_shared_hits")

    def __init__(self) -> None:
        self._root = _Node()
        self._shared = _Node()  # subs: group name -> SharedGroup
        self._count = 0
        # topic -> what match / match_shared answered, until the trie changes (add, remove);
        # a publisher mostly sends to the topics it sent to before, and a match walks the
        # trie for every level (5.6 µs for a topic of 3 levels among 51 filters, 0.4 µs from
        # here). At most MATCH_CACHE topics (then emptied), answers of at most
        # MATCH_CACHE_RESULT pairs (a long one costs its deliveries far more than its walk)
        self._hits: dict = {}
        self._shared_hits: dict = {}

    def __len__(self) -> int:
        return self._count

    def add(self, topic_filter: str, key: Hashable, value: Any = None) -> bool:
        """Store ``value`` for (topic_filter, key); True if the pair is new
        (otherwise the value is replaced). ValueError on an invalid filter."""
        if self._hits:
            self._hits.clear()
        if self._shared_hits:
            self._shared_hits.clear()
        if _is_share_form(topic_filter):
            parsed = parse_shared(topic_filter)
            if parsed is None:
                raise ValueError(f"invalid shared subscription {topic_filter!r}")
            group, inner = parsed
            node = _descend(self._shared, inner.split("/"))
            if node.subs is None:
                node.subs = {}
            sg = node.subs.get(group)
            if sg is None:
                sg = node.subs[group] = SharedGroup(group, inner)
            members = sg.members
        else:
            if not valid_filter_shape(topic_filter):
                raise ValueError(f"invalid topic filter {topic_filter!r}")
            node = _descend(self._root, topic_filter.split("/"))
            members = node.subs
            if members is None:
                node.subs = _One(key, value)
                self._count += 1
                return True
            if type(members) is _One:
                if members.key == key:
                    members.value = value
                    return False
                members = node.subs = {members.key: members.value}
        new = key not in members
        members[key] = value
        if new:
            self._count += 1
        return new

    def remove(self, topic_filter: str, key: Hashable) -> bool:
        """Forget (topic_filter, key); False if it was not there."""
        if self._hits:
            self._hits.clear()
        if self._shared_hits:
            self._shared_hits.clear()
        if _is_share_form(topic_filter):
            parsed = parse_shared(topic_filter)
            if parsed is None:
                return False
            group, inner = parsed
            levels = inner.split("/")
            path = _path(self._shared, levels)
            if path is None or not path[-1].subs:
                return False
            node = path[-1]
            sg = node.subs.get(group)
            if sg is None or key not in sg.members:
                return False
            del sg.members[key]
            if not sg.members:
                del node.subs[group]
        else:
            levels = topic_filter.split("/")
            path = _path(self._root, levels)
            if path is None:
                return False
            node = path[-1]
            subs = node.subs
            if subs is None:
                return False
            if type(subs) is _One:
                if subs.key != key:
                    return False
                node.subs = None
            elif key not in subs:
                return False
            else:
                del subs[key]
                if len(subs) == 1:
                    (k, v), = subs.items()
                    node.subs = _One(k, v)
        if not node.subs:
            node.subs = None
            _prune(path, levels)
        self._count -= 1
        return True

    def get(self, topic_filter: str, key: Hashable, default: Any = None) -> Any:
        """The value stored for (topic_filter, key), or ``default``."""
        if _is_share_form(topic_filter):
            parsed = parse_shared(topic_filter)
            if parsed is None:
                return default
            group, inner = parsed
            path = _path(self._shared, inner.split("/"))
            if path is None or not path[-1].subs:
                return default
            sg = path[-1].subs.get(group)
            return default if sg is None else sg.members.get(key, default)
        path = _path(self._root, topic_filter.split("/"))
        if path is None or not path[-1].subs:
            return default
        subs = path[-1].subs
        if type(subs) is _One:
            return subs.value if subs.key == key else default
        return subs.get(key, default)

    def match(self, topic: str) -> list[tuple[Hashable, Any]]:
        """(key, value) of every non-shared (filter, key) matching ``topic``
        (a valid topic name). A key subscribed through two overlapping filters
        appears twice: the caller picks the QoS / identifiers. The list may be the
        one an earlier call got (until the trie changes): callers never change it."""
        hits = self._hits
        out = hits.get(topic)
        if out is not None:
            return out
        out = []
        for subs in _match_dicts(self._root, topic.split("/")):
            if type(subs) is _One:
                out.append((subs.key, subs.value))
            else:
                out.extend(subs.items())
        if len(out) <= MATCH_CACHE_RESULT:
            if len(hits) >= MATCH_CACHE:
                hits.clear()
            hits[topic] = out
        return out

    def match_shared(self, topic: str) -> list[SharedGroup]:
        """The shared groups whose filter matches ``topic`` (a list callers never change,
        as match's)."""
        if not self._shared.children:
            return _NO_GROUPS
        hits = self._shared_hits
        out = hits.get(topic)
        if out is not None:
            return out
        out = []
        for groups in _match_dicts(self._shared, topic.split("/")):
            out.extend(groups.values())
        if len(out) <= MATCH_CACHE_RESULT:
            if len(hits) >= MATCH_CACHE:
                hits.clear()
            hits[topic] = out
        return out

    def shared_group(self, topic_filter: str) -> SharedGroup | None:
        """The group of a ``$share/<group>/<filter>`` subscription, if held."""
        parsed = parse_shared(topic_filter)
        if parsed is None:
            return None
        group, inner = parsed
        path = _path(self._shared, inner.split("/"))
        if path is None or not path[-1].subs:
            return None
        return path[-1].subs.get(group)

    def count(self, topic_filter: str) -> int:
        """How many keys hold ``topic_filter`` (the members of a shared group for
        ``$share/g/f``): a table that needs only this keeps no count of its own."""
        if _is_share_form(topic_filter):
            sg = self.shared_group(topic_filter)
            return 0 if sg is None else len(sg.members)
        path = _path(self._root, topic_filter.split("/"))
        if path is None:
            return 0
        subs = path[-1].subs
        if subs is None:
            return 0
        return 1 if type(subs) is _One else len(subs)

    def pairs(self) -> Iterator[tuple[str, Hashable]]:
        """Every (filter, key) held; shared ones as ``$share/g/f``."""
        for topic, subs in _walk(self._root):
            if subs:
                if type(subs) is _One:
                    yield topic, subs.key
                else:
                    for key in subs:
                        yield topic, key
        for topic, groups in _walk(self._shared):
            if groups:
                for group, sg in groups.items():
                    for key in sg.members:
                        yield f"{_SHARE_PREFIX}{group}/{topic}", key

    def filters(self) -> Iterator[str]:
        """Each distinct filter held once; shared ones as ``$share/g/f``."""
        for topic, subs in _walk(self._root):
            if subs:
                yield topic
        for topic, groups in _walk(self._shared):
            if groups:
                for group in groups:
                    yield f"{_SHARE_PREFIX}{group}/{topic}"


def _walk(root: _Node) -> Iterator[tuple[str, dict | None]]:
    """(filter, subs) for every node below ``root``, depth first."""
    stack: list[tuple[str, _Node]] = []
    if root.children:
        stack.extend(root.children.items())
    while stack:
        name, node = stack.pop()
        yield name, node.subs
        if node.children:
            stack.extend((f"{name}/{level}", child) for level, child in node.children.items())


_MISSING = object()


class _RNode:
    """One level of a RetainedTrie; ``value`` is _MISSING when no message is
    retained on exactly this topic."""

    __slots__ = ("children", "value")

    def __init__(self) -> None:
        self.children: dict[str, _RNode] | None = None
        self.value: Any = _MISSING


class RetainedTrie:
    """Topic name -> retained value, matched by topic filter."""

    __slots__ = ("_root", "_count")

    def __init__(self) -> None:
        self._root = _RNode()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def set(self, topic: str, value: Any) -> None:
        """Retain ``value`` on ``topic`` (a valid topic name), replacing any."""
        if not valid_topic_name(topic):
            raise ValueError(f"invalid topic name {topic!r}")
        node = self._root
        for level in topic.split("/"):
            ch = node.children
            if ch is None:
                ch = node.children = {}
            child = ch.get(level)
            if child is None:
                child = ch[level] = _RNode()
            node = child
        if node.value is _MISSING:
            self._count += 1
        node.value = value

    def _find(self, levels: list[str]) -> list[_RNode] | None:
        path = [self._root]
        node = self._root
        for level in levels:
            ch = node.children
            node = ch.get(level) if ch else None
            if node is None:
                return None
            path.append(node)
        return path

    def get(self, topic: str, default: Any = None) -> Any:
        path = self._find(topic.split("/"))
        if path is None or path[-1].value is _MISSING:
            return default
        return path[-1].value

    def delete(self, topic: str) -> bool:
        """Drop the value retained on ``topic``; False if there was none."""
        levels = topic.split("/")
        path = self._find(levels)
        if path is None or path[-1].value is _MISSING:
            return False
        path[-1].value = _MISSING
        self._count -= 1
        for depth in range(len(levels), 0, -1):
            node = path[depth]
            if node.value is not _MISSING or node.children:
                break
            parent = path[depth - 1]
            del parent.children[levels[depth - 1]]
            if not parent.children:
                parent.children = None
        return True

    def match(self, topic_filter: str) -> list[Any]:
        """Values retained on topics matching ``topic_filter`` (a valid,
        non-shared filter). Literal levels follow one child, ``+`` every
        child, ``#`` the whole subtree below its node."""
        out: list[Any] = []
        levels = topic_filter.split("/")
        n = len(levels)
        stack: list[tuple[_RNode, int]] = [(self._root, 0)]
        pop = stack.pop
        push = stack.append
        while stack:
            node, i = pop()
            if i == n:
                if node.value is not _MISSING:
                    out.append(node.value)
                continue
            ch = node.children
            level = levels[i]
            if level == "#":
                if node.value is not _MISSING:  # "a/#" matches "a"
                    out.append(node.value)
                if ch:
                    _subtree(ch, i == 0, out)
                continue
            if not ch:
                continue
            if level == "+":
                if i == 0:
                    for name, child in ch.items():
                        if not name.startswith("$"):
                            push((child, 1))
                else:
                    for child in ch.values():
                        push((child, i + 1))
            else:
                child = ch.get(level)
                if child is not None:
                    push((child, i + 1))
        return out

    def items(self) -> Iterator[tuple[str, Any]]:
        """(topic, value) for every retained message, in no set order."""
        stack: list[tuple[str, _RNode]] = []
        if self._root.children:
            stack.extend(self._root.children.items())
        while stack:
            topic, node = stack.pop()
            if node.value is not _MISSING:
                yield topic, node.value
            if node.children:
                stack.extend((f"{topic}/{level}", child) for level, child in node.children.items())


def _subtree(children: dict[str, _RNode], at_root: bool, out: list[Any]) -> None:
    """Append every value below ``children``; at the root, skip ``$`` topics."""
    if at_root:
        stack = [child for name, child in children.items() if not name.startswith("$")]
    else:
        stack = list(children.values())
    while stack:
        node = stack.pop()
        if node.value is not _MISSING:
            out.append(node.value)
        if node.children:
            stack.extend(node.children.values())
