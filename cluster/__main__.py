"""`python -m cluster`: the cluster agent of a node (circus watcher ``agent``)."""
from __future__ import annotations

import uvloop

from common import logs
from common.settings import Settings

from common.proc import die_with_parent, steady_gc


def main() -> None:
    die_with_parent()
    settings = Settings()
    logs.setup(settings.log_level, settings.log_format, node=settings.node, process="agent")
    from .agent import Agent  # (after logging is set up: grpc logs at import)

    steady_gc()

    async def run() -> int:
        return await Agent(settings).run()

    # uvloop, as the workers: measured, a gRPC write and read cost the agent about a
    # third less CPU than on asyncio's own loop (docs/architecture.md, Figures)
    raise SystemExit(uvloop.run(run()))


if __name__ == "__main__":
    main()
