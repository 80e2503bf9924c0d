"""`python -m worker`: one worker process of a Shoal node (started by circusd)."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys

import uvloop

from common import logs
from common.proc import die_with_parent, steady_gc
from common.settings import SettingsError, load

from .acl import AclError
from .passwd import PasswordError
from .server import WorkerServer
from .store import StoreError
from .tls import TlsError


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m worker")
    ap.add_argument("--wid", type=int, default=int(os.environ.get("SHOAL_WORKER_ID", "1") or 1),
                    help="worker id (circus passes $(circus.wid))")
    ap.add_argument("--fd", type=int, default=None, help="listening socket fd handed over by circusd")
    args = ap.parse_args()
    die_with_parent()
    # SIGHUP reloads the password and ACL files once serving; until then it must not end the process
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        settings = load()  # circusd checked them already (supervisor/hooks.py); run alone, check here
    except SettingsError as e:
        for problem in e.problems:
            print(f"shoal worker {args.wid}: invalid setting {problem}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup(settings.log_level, settings.log_format, node=settings.node, worker=str(args.wid))
    try:
        server = WorkerServer(settings, args.wid, args.fd)  # loads the ACL and password files
        steady_gc()
        uvloop.run(server.run())
    except (AclError, PasswordError, StoreError, TlsError) as e:
        # never serve without the configured ACL or store: exit; circus retries
        # every check_delay, so the worker starts once the file is fixed
        logging.getLogger("shoal.worker").error("cannot start: %s", e)
        print(f"shoal worker {args.wid}: cannot start: {e}", file=sys.stderr)
        raise SystemExit(3) from None


if __name__ == "__main__":
    main()
