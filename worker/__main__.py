"""`python -m worker`: one worker process of a Shoal node (started by circusd)."""
from __future__ import annotations

import argparse
import asyncio
import os

import uvloop

from common import logs
from common.settings import Settings

from .server import WorkerServer


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m worker")
    ap.add_argument("--wid", type=int, default=int(os.environ.get("SHOAL_WORKER_ID", "1") or 1),
                    help="worker id (circus passes $(circus.wid))")
    ap.add_argument("--fd", type=int, default=None, help="listening socket fd handed over by circusd")
    args = ap.parse_args()
    settings = Settings()
    logs.setup(settings.log_level, node=settings.node, worker=str(args.wid))
    server = WorkerServer(settings, args.wid, args.fd)
    uvloop.run(server.run())


if __name__ == "__main__":
    main()
