"""Command-line options of ``python -m loadtest``, spelled like emqtt-bench's.

``-h`` is the host (as in emqtt-bench), so help is ``--help`` only.  The parsed
result is one :class:`Options` object, built once and passed down to every
process.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from enum import IntEnum

MIN_PAYLOAD = 8  # the send timestamp (u64 big-endian ns) lives in the first 8 bytes


class Verb(IntEnum):
    CONN = 1
    SUB = 2
    PUB = 3

    @property
    def word(self) -> str:
        return self.name.lower()


@dataclass(slots=True, frozen=True)
class Options:
    verb: Verb
    host: str = "localhost"
    port: int = 1883
    clients: int = 200
    start_number: int = 0
    connect_interval_ms: float = 10.0
    publish_interval_ms: float = 1000.0
    topic: str = ""
    payload_size: int = 256
    qos: int = 0
    retain: bool = False
    version: int = 5
    limit: int = 0
    keepalive: int = 300
    clean: bool = True
    session_expiry: int = 0
    username: str | None = None
    password: str | None = None
    shared: str | None = None
    prefix: str = ""
    processes: int = 1
    duration: float | None = None
    hold: float | None = None
    json: bool = False
    inflight: int = 1
    batch: int = 64
    wait_before_publishing: bool = False
    max_connecting: int = 100
    connect_timeout: float = 30.0

    @property
    def subscribe_filter(self) -> str:
        """The filter a subscriber sends, before %i/%c substitution."""
        return f"$share/{self.shared}/{self.topic}" if self.shared else self.topic


def unsupported_level(template: str) -> str | None:
    """A topic level emqtt-bench renders per message (``%s``, ``%rand_N``), which a topic
    encoded once per client cannot follow; None if there is none."""
    for level in template.split("/"):
        if level == "%s" or level.startswith("%rand_"):
            return level
    return None


def parse_bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes", "on"):
        return True
    if low in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {n}")
    return n


def _non_negative_int(text: str) -> int:
    n = int(text)
    if n < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {n}")
    return n


def _non_negative_float(text: str) -> float:
    x = float(text)
    if x < 0:
        raise argparse.ArgumentTypeError(f"must not be negative, got {x}")
    return x


def _common(p: argparse.ArgumentParser) -> None:
    add = p.add_argument
    nonneg_int, nonneg_float = _non_negative_int, _non_negative_float
    add("--help", action="help", help="show this help and exit")
    add("-h", "--host", default="localhost", help="broker host (default: localhost)")
    add("-p", "--port", type=int, default=1883, help="broker port (default: 1883)")
    add("-V", "--version", type=int, choices=(3, 4, 5), default=5,
        help="MQTT protocol level: 3 (3.1), 4 (3.1.1), 5 (default: 5)")
    add("-c", "--count", dest="clients", type=_positive_int, default=200, help="number of clients (default: 200)")
    add("-n", "--startnumber", dest="start_number", type=nonneg_int, default=0,
        help="client index offset: %%i runs from n+1 (default: 0)")
    add("-i", "--interval", dest="connect_interval_ms", type=nonneg_float, default=10.0,
        help="ms between two client connects, over all processes (default: 10)")
    add("-u", "--username", default=None, help="user name; %%i: the client index, %%rand_N: a random number 1..N")
    add("-P", "--password", default=None)
    add("-k", "--keepalive", type=nonneg_int, default=300, help="keep alive in seconds (default: 300)")
    add("-C", "--clean", type=parse_bool, default=True, metavar="true|false",
        help="clean start / clean session (default: true)")
    add("-x", "--session-expiry", dest="session_expiry", type=nonneg_int, default=0,
        help="v5 session expiry interval in seconds (default: 0)")
    add("--prefix", default="", help="client id prefix: ids are <prefix>_bench_<verb>_<n> "
                                     "(default: <host>_bench_<verb>_<random>_<n>, as emqtt-bench)")
    add("--processes", type=_positive_int, default=os.cpu_count() or 1,
        help="processes to spread the clients over (default: number of cores)")
    add("--duration", type=nonneg_float, default=None, help="stop after this many seconds")
    add("--json", action="store_true", help="per-second lines on stderr and the summary (last line of stdout) as JSON")
    add("--max-connecting", dest="max_connecting", type=_positive_int, default=100,
        help="connects in flight per process (default: 100)")
    add("--connect-timeout", dest="connect_timeout", type=nonneg_float, default=30.0,
        help="seconds from TCP connect to CONNACK (default: 30)")


def _messaging(p: argparse.ArgumentParser, *, pub: bool) -> None:
    add = p.add_argument
    add("-t", "--topic", required=True,
        help="topic; a level %%i is the client index, %%c the client id, %%u the -u option")
    add("-q", "--qos", type=int, choices=(0, 1, 2), default=0, help="QoS (default: 0)")
    if pub:
        add("-L", "--limit", type=_non_negative_int, default=0,
            help="messages of the whole run, over all publishers (as emqtt-bench), then stop (default: 0, no limit)")
        add("-I", "--interval_of_msg", dest="publish_interval_ms", type=_non_negative_float, default=1000.0,
            help="ms between two publishes of one client; 0: as fast as the window allows (default: 1000)")
        add("-s", "--size", dest="payload_size", type=int, default=256,
            help=f"payload bytes, at least {MIN_PAYLOAD} (default: 256)")
        add("-r", "--retain", type=parse_bool, default=False, metavar="true|false", help="retain flag (default: false)")
        add("-F", "--inflight", type=_non_negative_int, default=1,
            help="unacknowledged QoS 1/2 publishes per client; 0: as many as the broker's Receive Maximum "
                 "(default: 1, as emqtt-bench)")
        add("--batch", type=_positive_int, default=64, help="QoS 0 publishes per write with -I 0 (default: 64)")
        add("-w", "--wait-before-publishing", dest="wait_before_publishing", action="store_true",
            help="publish only once every publisher of every process has connected or failed (as emqtt-bench)")
    else:
        add("-L", "--limit", type=_non_negative_int, default=0,
            help="messages of the whole run, over all subscribers, then stop (default: 0, no limit)")
        add("--shared", default=None, metavar="GROUP", help="subscribe as $share/GROUP/<topic>")


def build_parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m loadtest", add_help=False,
                                  description="An emqtt-bench style MQTT load generator.")
    top.add_argument("--help", action="help", help="show this help and exit")
    verbs = top.add_subparsers(dest="verb", required=True, metavar="conn|sub|pub")
    conn = verbs.add_parser("conn", add_help=False, help="connect clients and hold the connections")
    _common(conn)
    conn.add_argument("--hold", type=_non_negative_float, default=None,
                      help="seconds to hold once all clients are connected (default: until --duration or Ctrl-C)")
    sub = verbs.add_parser("sub", add_help=False, help="subscribe clients and count what arrives")
    _common(sub)
    _messaging(sub, pub=False)
    pub = verbs.add_parser("pub", add_help=False, help="publish from clients")
    _common(pub)
    _messaging(pub, pub=True)
    return top


def parse(argv: list[str] | None = None) -> Options:
    parser = build_parser()
    ns = parser.parse_args(argv)
    verb = Verb[ns.verb.upper()]
    values = {k: v for k, v in vars(ns).items() if k != "verb"}
    if verb is Verb.PUB and values["payload_size"] < MIN_PAYLOAD:
        parser.error(f"-s/--size must be at least {MIN_PAYLOAD}: the payload carries the send timestamp")
    if values.get("shared") is not None and (not values["shared"] or any(ch in values["shared"] for ch in "+#/")):
        parser.error("--shared: the group name must be non-empty and contain no '+', '#' or '/'")
    if values["session_expiry"] and values["version"] != 5:
        parser.error("-x/--session-expiry needs -V 5")
    level = unsupported_level(values.get("topic") or "")
    if level is not None:
        parser.error(f"-t: {level} (a value per message in emqtt-bench) is not supported; %i, %c and %u are")
    values["processes"] = min(values["processes"], values["clients"])
    return Options(verb=verb, **values)
