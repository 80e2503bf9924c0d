"""Benchmark scenarios: plain TOML files in ``loadtest/scenarios/``.

A scenario is a list of client groups, each one ``python -m loadtest`` run::

    name = "fan-in"
    description = "..."
    duration = 60      # seconds: every group stops by then (--duration)
    drain = 5          # seconds the subscribers get once the other groups are done

    [[group]]          # sub groups start first; the others once every subscriber is ready
    verb = "sub"       # conn | sub | pub
    clients = 1
    topic = "bench/fanin/#"
    limit = 100000     # -L: messages of the whole group, over all its clients

The keys of a group are the fields of :class:`Group`.
"""
from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass
from pathlib import Path

from loadtest.options import Verb

SCENARIO_DIR = Path(__file__).resolve().parent.parent / "scenarios"


@dataclass(slots=True, frozen=True)
class Group:
    verb: Verb
    clients: int
    topic: str = ""
    qos: int = 0
    version: int = 4
    limit: int = 0  # -L: messages of the whole group, over all its clients (emqtt-bench's pub -L)
    interval_ms: float = 1000.0  # -I, publishers
    connect_interval_ms: float = 0.0  # -i
    size: int = 64  # -s, publishers
    shared: str | None = None
    inflight: int = 100
    processes: int = 1
    max_connecting: int = 50
    keepalive: int = 60
    hold: float | None = None  # conn: seconds to hold once connected

    def argv(self, host: str, port: int, prefix: str, duration: float) -> list[str]:
        """The ``python -m loadtest`` arguments of this group."""
        a = [self.verb.word, "-h", host, "-p", str(port), "-c", str(self.clients), "-V", str(self.version),
             "-i", f"{self.connect_interval_ms:g}", "-k", str(self.keepalive), "--processes", str(self.processes),
             "--max-connecting", str(self.max_connecting), "--prefix", prefix, "--duration", f"{duration:g}", "--json"]
        if self.verb is not Verb.CONN:
            a += ["-t", self.topic, "-q", str(self.qos)]
            if self.limit:
                a += ["-L", str(self.limit)]
        if self.verb is Verb.PUB:
            a += ["-I", f"{self.interval_ms:g}", "-s", str(self.size), "--inflight", str(self.inflight)]
        if self.verb is Verb.SUB and self.shared:
            a += ["--shared", self.shared]
        if self.verb is Verb.CONN and self.hold is not None:
            a += ["--hold", f"{self.hold:g}"]
        return a


@dataclass(slots=True, frozen=True)
class Scenario:
    name: str
    description: str
    duration: float
    drain: float
    groups: tuple[Group, ...]

    @property
    def subscribers(self) -> tuple[Group, ...]:
        return tuple(g for g in self.groups if g.verb is Verb.SUB)

    @property
    def drivers(self) -> tuple[Group, ...]:
        """The groups that start once the subscribers are ready: publishers, connectors."""
        return tuple(g for g in self.groups if g.verb is not Verb.SUB)

    def scaled(self, factor: float) -> Scenario:
        """Message limits, duration and conn client counts times ``factor`` (for a quick look)."""
        if factor == 1:
            return self
        groups = []
        for g in self.groups:
            changes = {"limit": max(1, round(g.limit * factor)) if g.limit else 0}
            if g.verb is Verb.CONN:
                changes["clients"] = max(1, round(g.clients * factor))
            groups.append(dataclasses.replace(g, **changes))
        return dataclasses.replace(self, duration=max(5.0, self.duration * factor), groups=tuple(groups))


_GROUP_FIELDS = {f.name for f in dataclasses.fields(Group)}


def parse(text: str, name: str) -> Scenario:
    data = tomllib.loads(text)
    unknown = set(data) - {"name", "description", "duration", "drain", "group"}
    if unknown:
        raise ValueError(f"scenario {name}: unknown keys {sorted(unknown)}")
    groups = []
    for i, raw in enumerate(data.get("group", [])):
        bad = set(raw) - _GROUP_FIELDS
        if bad:
            raise ValueError(f"scenario {name}, group {i + 1}: unknown keys {sorted(bad)}")
        try:
            verb = Verb[str(raw["verb"]).upper()]
        except KeyError:
            raise ValueError(f"scenario {name}, group {i + 1}: verb must be conn, sub or pub") from None
        g = Group(**{**raw, "verb": verb})
        if verb is not Verb.CONN and not g.topic:
            raise ValueError(f"scenario {name}, group {i + 1}: a {verb.word} group needs a topic")
        groups.append(g)
    if not groups:
        raise ValueError(f"scenario {name}: no [[group]]")
    return Scenario(name=data.get("name", name), description=data.get("description", ""),
                    duration=float(data["duration"]), drain=float(data.get("drain", 5)), groups=tuple(groups))


def names() -> list[str]:
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.toml"))


def load(name: str) -> Scenario:
    path = SCENARIO_DIR / f"{name}.toml"
    if not path.is_file():
        raise ValueError(f"no scenario {name!r}; there are: {', '.join(names())}")
    return parse(path.read_text(), name)
