"""``python -m loadtest.restore_bench`` small: a real node (and mosquitto, when installed) prepared
through MQTT, restarted on its data, every session back with its queue."""
from __future__ import annotations

import re
import shutil

from loadtest import restore_bench


def test_restore_benchmark_runs_small(capsys):
    argv = ["--sessions", "300", "--queued", "3", "--repeat", "1"]
    mosquitto = shutil.which("mosquitto") is not None
    if not mosquitto:
        argv.append("--no-mosquitto")
    assert restore_bench.main(argv) == 0
    out = capsys.readouterr().out
    # 300 sessions and the probe's, each of the 300 with its 3 messages received after the restart
    assert "restored 301 sessions; 900 queued messages received afterwards" in out
    assert re.search(r"restore: the worker's 'store opened' seconds .*: \d+\.\d+\n", out)
    assert re.search(r"serving: circusd started until CONNECT answers session present=1: \d+\.\d+ / \d+\.\d+", out)
    if mosquitto:
        assert re.search(r"mosquitto \(persistence true.*serving \d+\.\d+ / cpu \d+\.\d+; reconnect .*\(900 messages\)", out)
