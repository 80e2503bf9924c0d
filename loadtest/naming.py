"""Client ids, user names and topic templates, as emqtt-bench names them
(``client_id/3``, ``feed_username_var/1`` and ``feed_var/2`` in emqtt_bench.erl)."""
from __future__ import annotations

import random
import socket

from loadtest.options import Verb

RAND_MAX = 0xFFFFFFFF  # emqtt-bench: rand:uniform(16#FFFFFFFF)


def client_id(prefix: str, verb: Verb, n: int, rng: random.Random | None = None) -> str:
    """``<prefix>_bench_<verb>_<n>``; without a prefix ``<host>_bench_<verb>_<random>_<n>``, a
    random number per client, so that two runs on one host do not take over each other's
    sessions.  ``n`` is the 1-based client index (plus -n)."""
    if prefix:
        return f"{prefix}_bench_{verb.word}_{n}"
    rand = (rng or random).randint(1, RAND_MAX)
    return f"{socket.gethostname()}_bench_{verb.word}_{rand}_{n}"


def username(template: str | None, n: int, rng: random.Random | None = None) -> str | None:
    """-u: ``%i`` (the whole user name) is the client index, ``%rand_N`` a random number from
    1 to N; anything else is used as it is."""
    if template == "%i":
        return str(n)
    if template is not None and template.startswith("%rand_") and template[6:].isdigit():
        return str((rng or random).randint(1, int(template[6:])))
    return template


def expand_topic(template: str, index: int, cid: str, user: str | None = None) -> str:
    """Replace a topic level that is exactly ``%i`` with the client index, ``%c`` with the client
    id, ``%u`` with the -u option as given (``undefined`` without one).  As in emqtt-bench only
    whole levels are placeholders: ``dev%i`` stays ``dev%i``; and each level is replaced once
    (a client id containing ``%i`` is not expanded again)."""
    if "%" not in template:
        return template
    values = {"%i": str(index), "%c": cid, "%u": "undefined" if user is None else user}
    return "/".join(values.get(level, level) for level in template.split("/"))


def client_indices(clients: int, start_number: int, processes: int, proc: int) -> list[int]:
    """The 1-based client indices process ``proc`` (0-based) runs: round robin, so that
    every process connects at the same pace and -i holds over the whole run."""
    return [start_number + i for i in range(1 + proc, clients + 1, processes)]
