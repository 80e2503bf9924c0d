"""Access control from a mosquitto-style ``acl_file`` (mosquitto.conf(5)).

File format, one rule a line::

    # comment
    topic [read|write|readwrite|deny] <topic filter>     (access defaults to readwrite)
    user <username>                                      (starts that user's section)
    pattern [read|write|readwrite|deny] <topic filter>   (%c = client id, %u = username)

``topic`` lines before the first ``user`` line apply to anonymous clients (no
username) only; ``topic`` lines in a ``user`` section apply to that username
only (sections with the same name add up); ``pattern`` lines apply to every
client wherever they stand. As in mosquitto, everything after the access word
is the topic (it may hold spaces), and a single word after ``topic`` is the
topic, not an access word (``topic read`` grants readwrite on topic "read").

Decisions, with an ACL file loaded:

- Anything not granted is denied. A ``deny`` rule that applies wins over every
  grant. (mosquitto 2.0 checks the user's ``topic`` rules before the patterns,
  so there a pattern ``deny`` cannot take back a user's grant; here every deny
  is checked first, which only ever denies more.)
- A topic starting with ``$`` is only matched by rules whose first level is
  not a wildcard, as in topic matching.
- ``%c`` / ``%u`` are replaced anywhere in a level (as mosquitto 2.0 does). A
  pattern whose substitution cannot be made does not apply at all: ``%u`` for
  a client without username, and ``%c`` / ``%u`` when the client id / username
  is empty or contains ``+``, ``#`` or ``/`` (that would inject wildcards or
  levels into the rule).
- Publish needs ``write``; delivering a message on a topic needs ``read``.
- Subscribe: mosquitto 2.0's acl_file does not check SUBSCRIBE at all (it
  grants every filter and filters each delivery with the read check). Here a
  filter is checked the way mosquitto's dynamic-security plugin checks
  subscriptions (``mosquitto_sub_matches_acl``): compared as a string against
  the rules, a rule applies when it covers the whole filter (rule ``a/#``
  covers ``a/+/b``, ``a`` and ``a/#``; rule ``a/+`` covers ``a/+`` and ``a/b``
  but not ``a/#``; a literal rule covers only the same literal filter). The
  filter is granted if a read rule covers it and no deny rule covers it. A
  deny rule that only overlaps the filter (``deny test/nosubscribe`` under a
  filter ``test/#``) does not refuse the subscription: those messages are
  withheld at delivery by ``can_read``. A shared subscription
  ``$share/<group>/<filter>`` is checked on ``<filter>``.

Rules are compiled once into tries (one per username, one for anonymous
clients, one for patterns), so a check walks the topic's levels instead of
scanning the rules.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum, IntFlag
from os import PathLike
from pathlib import Path

from mqtt.topics import parse_shared, valid_filter_shape, valid_topic_filter

__all__ = ["Access", "Acl", "AclError"]


class Access(IntFlag):
    NONE = 0
    READ = 1
    WRITE = 2
    READWRITE = 3
    DENY = 4


_ACCESS_WORDS = {
    "read": Access.READ,
    "write": Access.WRITE,
    "readwrite": Access.READWRITE,
    "deny": Access.DENY,
}

_UNSAFE = frozenset("+#/")

# Plain ints on the hot path (IntFlag arithmetic is several times slower).
_READ = int(Access.READ)
_WRITE = int(Access.WRITE)
_DENY = int(Access.DENY)


class AclError(ValueError):
    """A bad ACL file: ``path:line: message``."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message = message
        self.path = path
        self.line = line
        where = path or "<acl>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


# A template level is a tuple of parts: str literals and the two markers.
_CLIENT_ID = 0
_USERNAME = 1
_Template = tuple  # tuple[str | int, ...]


def _template(level: str) -> _Template | None:
    """Parts of a pattern level with %c / %u, or None if it has neither.

    Scans left to right like mosquitto: "%%c" is "%" then the client id.
    """
    if "%c" not in level and "%u" not in level:
        return None
    parts: list[str | int] = []
    text: list[str] = []
    i, n = 0, len(level)
    while i < n:
        ch = level[i]
        if ch == "%" and i + 1 < n and level[i + 1] in "cu":
            if text:
                parts.append("".join(text))
                text.clear()
            parts.append(_CLIENT_ID if level[i + 1] == "c" else _USERNAME)
            i += 2
            continue
        text.append(ch)
        i += 1
    if text:
        parts.append("".join(text))
    return tuple(parts)


def _render(parts: _Template, client_id: str | None, username: str | None) -> str | None:
    out: list[str] = []
    for part in parts:
        if part == _CLIENT_ID:
            if client_id is None:
                return None
            out.append(client_id)
        elif part == _USERNAME:
            if username is None:
                return None
            out.append(username)
        else:
            out.append(part)
    return "".join(out)


def _safe(name: str | None) -> str | None:
    """``name`` if it may be substituted into a rule, else None.

    A rendered template is compared with one level of the topic, so a name
    with ``/`` or a wildcard could not match anyway; refusing it here makes
    the rule explicit and skips the rendering."""
    if not name or not _UNSAFE.isdisjoint(name):
        return None
    return name


class _Rule:
    """One level of a rule trie. ``access`` is the OR of the rules ending
    here; ``templates`` maps a pattern level's text to (parts, child)."""

    __slots__ = ("children", "templates", "access")

    def __init__(self) -> None:
        self.children: dict[str, _Rule] | None = None
        self.templates: dict[str, tuple[_Template, _Rule]] | None = None
        self.access = 0

    def add(self, topic: str, access: Access, pattern: bool) -> None:
        node = self
        for level in topic.split("/"):
            parts = _template(level) if pattern else None
            if parts is None:
                if node.children is None:
                    node.children = {}
                child = node.children.get(level)
                if child is None:
                    child = node.children[level] = _Rule()
            else:
                if node.templates is None:
                    node.templates = {}
                entry = node.templates.get(level)
                if entry is None:
                    entry = node.templates[level] = (parts, _Rule())
                child = entry[1]
            node = child
        node.access |= int(access)

    def collect(self, levels: list[str], client_id: str | None, username: str | None) -> int:
        """OR of the access of every rule that covers ``levels``.

        ``levels`` is a split topic name or topic filter. A rule level covers a
        literal level if it is the same literal, ``+`` or ``#``; a ``+`` level
        if it is ``+`` or ``#``; a ``#`` level only if it is ``#``. A rule
        ``.../#`` also covers its parent level. Stops early on a deny.
        """
        acc = 0
        n = len(levels)
        dollar = levels[0].startswith("$")
        stack: list[tuple[_Rule, int]] = [(self, 0)]
        while stack:
            node, i = stack.pop()
            ch = node.children
            if i == n:
                acc |= node.access
                if ch:
                    child = ch.get("#")
                    if child is not None:
                        acc |= child.access
                if acc & _DENY:
                    return acc
                continue
            level = levels[i]
            wild_ok = i > 0 or not dollar
            if ch:
                if wild_ok:
                    child = ch.get("#")
                    if child is not None:
                        acc |= child.access
                        if acc & _DENY:
                            return acc
                if level != "#":
                    if wild_ok:
                        child = ch.get("+")
                        if child is not None:
                            stack.append((child, i + 1))
                    if level != "+":
                        child = ch.get(level)
                        if child is not None:
                            stack.append((child, i + 1))
            if node.templates and level != "+" and level != "#":
                for parts, child in node.templates.values():
                    if _render(parts, client_id, username) == level:
                        stack.append((child, i + 1))
        return acc


class _Kind(IntEnum):
    TOPIC = 1
    PATTERN = 2
    USER = 3


_KEYWORDS = {"topic": _Kind.TOPIC, "pattern": _Kind.PATTERN, "user": _Kind.USER}


@dataclass(slots=True)
class _Line:
    kind: _Kind
    access: Access
    value: str


def _parse_line(raw: str) -> _Line | None:
    line = raw.strip()
    if not line or line.startswith("#"):
        return None
    words = line.split(None, 1)
    keyword = words[0]
    kind = _KEYWORDS.get(keyword)
    rest = words[1] if len(words) > 1 else ""
    if kind is None:
        raise ValueError(f"unknown keyword {keyword!r} (topic, pattern or user)")
    if kind is _Kind.USER:
        if not rest:
            raise ValueError("missing username")
        return _Line(kind, Access.NONE, rest)
    if not rest:
        raise ValueError(f"empty {keyword}")
    words = rest.split(None, 1)
    if len(words) == 1:  # "topic foo": the one word is the topic
        access, topic = Access.READWRITE, words[0]
    else:
        access = _ACCESS_WORDS.get(words[0])
        if access is None:
            raise ValueError(f"invalid access {words[0]!r} (read, write, readwrite or deny)")
        topic = words[1].strip()
    if not valid_filter_shape(topic):  # any well-formed filter, as mosquitto_sub_topic_check
        raise ValueError(f"invalid topic {topic!r}")
    return _Line(kind, access, topic)


class Acl:
    """Checks for one ACL file (or none: ``Acl.allow_all()``)."""

    __slots__ = ("allows_all", "_anonymous", "_users", "_patterns")

    def __init__(self, allows_all: bool = False) -> None:
        self.allows_all = allows_all
        self._anonymous: _Rule | None = None
        self._users: dict[str, _Rule] = {}
        self._patterns: _Rule | None = None

    @classmethod
    def allow_all(cls) -> Acl:
        """No ACL file configured: every check passes."""
        return cls(allows_all=True)

    @classmethod
    def parse(cls, text: str, path: str | None = None) -> Acl:
        """Compile ACL file text; AclError names ``path`` and the line."""
        acl = cls()
        user: str | None = None
        for lineno, raw in enumerate(text.splitlines(), 1):
            try:
                line = _parse_line(raw)
            except ValueError as e:
                raise AclError(str(e), path, lineno) from None
            if line is None:
                continue
            if line.kind is _Kind.USER:
                user = line.value
            elif line.kind is _Kind.PATTERN:
                if acl._patterns is None:
                    acl._patterns = _Rule()
                acl._patterns.add(line.value, line.access, pattern=True)
            else:
                if user is None:
                    if acl._anonymous is None:
                        acl._anonymous = _Rule()
                    rules = acl._anonymous
                else:
                    rules = acl._users.get(user)
                    if rules is None:
                        rules = acl._users[user] = _Rule()
                rules.add(line.value, line.access, pattern=False)
        return acl

    @classmethod
    def load(cls, path: str | PathLike) -> Acl:
        """Read and compile an ACL file; AclError on a bad line or no file."""
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise AclError(f"cannot read ACL file: {e}", name) from None
        return cls.parse(text, name)

    def _access(self, client_id: str | None, username: str | None, levels: list[str]) -> int:
        rules = self._anonymous if username is None else self._users.get(username)
        acc = 0
        if rules is not None:
            acc = rules.collect(levels, None, None)
            if acc & _DENY:
                return acc
        if self._patterns is not None:
            acc |= self._patterns.collect(levels, _safe(client_id), _safe(username))
        return acc

    def _allowed(self, client_id: str | None, username: str | None, topic: str, need: int) -> bool:
        if self.allows_all:
            return True
        if not topic or "+" in topic or "#" in topic:
            return False
        acc = self._access(client_id, username, topic.split("/"))
        return not acc & _DENY and bool(acc & need)

    def can_publish(self, client_id: str | None, username: str | None, topic: str) -> bool:
        """May this client publish on ``topic`` (write access)?"""
        return self._allowed(client_id, username, topic, _WRITE)

    def can_read(self, client_id: str | None, username: str | None, topic: str) -> bool:
        """May a message on ``topic`` be delivered to this client (read access)?"""
        return self._allowed(client_id, username, topic, _READ)

    def can_subscribe(self, client_id: str | None, username: str | None, topic_filter: str) -> bool:
        """May this client subscribe to ``topic_filter``? Granted when a read
        rule covers the whole filter and no deny rule does (see module doc)."""
        if self.allows_all:
            return True
        if not valid_topic_filter(topic_filter):
            return False
        shared = parse_shared(topic_filter)
        if shared is not None:
            topic_filter = shared[1]
        acc = self._access(client_id, username, topic_filter.split("/"))
        return not acc & _DENY and bool(acc & _READ)

    def subscribe_denied_explicitly(self, client_id: str | None, username: str | None, topic_filter: str) -> bool:
        """Is the filter refused by a ``deny`` rule (rather than just not granted)?"""
        if self.allows_all or not valid_topic_filter(topic_filter):
            return False
        shared = parse_shared(topic_filter)
        if shared is not None:
            topic_filter = shared[1]
        return bool(self._access(client_id, username, topic_filter.split("/")) & _DENY)
