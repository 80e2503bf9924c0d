"""Client ids and topic templates, as emqtt-bench names them."""
from __future__ import annotations

import re

from loadtest.options import Verb

_PLACEHOLDER = re.compile(r"%([ic])")


def client_id(prefix: str, verb: Verb, n: int) -> str:
    """``<prefix>_bench_<verb>_<n>``; ``n`` is the 1-based client index (plus -n)."""
    return f"{prefix}_bench_{verb.word}_{n}"


def expand_topic(template: str, index: int, cid: str) -> str:
    """Replace ``%i`` with the client index and ``%c`` with the client id, in one pass
    (so a client id containing ``%i`` is not expanded again)."""
    if "%" not in template:
        return template
    return _PLACEHOLDER.sub(lambda m: str(index) if m.group(1) == "i" else cid, template)


def client_indices(clients: int, start_number: int, processes: int, proc: int) -> list[int]:
    """The 1-based client indices process ``proc`` (0-based) runs: round robin, so that
    every process connects at the same pace and -i holds over the whole run."""
    return [start_number + i for i in range(1 + proc, clients + 1, processes)]
