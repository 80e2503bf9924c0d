"""``python -m loadtest conn|sub|pub [options]``; ``--help`` for the options."""
from __future__ import annotations

import json
import sys

from loadtest.options import parse
from loadtest.runner import run
from loadtest.summary import render_text


def main(argv: list[str] | None = None) -> int:
    opts = parse(argv)
    summary = run(opts)
    print(render_text(summary), flush=True)
    if opts.json:
        print(json.dumps(summary, separators=(",", ":")), flush=True)
    if summary["crashed"]:
        return 2
    return 1 if summary["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
