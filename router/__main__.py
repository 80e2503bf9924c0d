"""`python -m router`: the node's ZeroMQ switchboard (see router/router.py)."""
from __future__ import annotations

from .router import main

if __name__ == "__main__":
    main()
