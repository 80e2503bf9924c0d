"""The live fuzzer (`make fuzz`, tests/fuzz/live.py) in a short run, so that the
tool keeps working: a few seconds over TCP against a real node, its report read
back from the JSON it writes."""
from __future__ import annotations

import json
import subprocess
import sys

from tests.support.node import ROOT


def test_live_fuzz_smoke(tmp_path) -> None:
    out = tmp_path / "fuzz.json"
    cmd = [sys.executable, "-m", "tests.fuzz.live", "--seconds", "6", "--transports", "tcp", "--lanes", "8",
           "--settle", "1", "--case-timeout", "3", "--pool", "60", "--json", str(out)]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.exists(), r.stdout + r.stderr
    report = json.loads(out.read_text())
    assert r.returncode == (0 if report["ok"] else 1), r.stdout + r.stderr
    assert report["ok"], r.stdout + r.stderr
    sent = report["sent"]["tcp"]
    assert sent["connections"] > 50 and sent["packets"] > 100, sent
    assert sent["outcomes"].get("closed by node", 0) > 0, sent  # the node refused bad input
    assert report["crashes"] == 0
    [canary] = report["canary"]
    assert canary["received"] >= canary["acked"] > 0 and canary["lost"] == 0, canary
    mem = report["memory"]
    assert mem["before_kib"] > 0 and mem["after_settle_kib"] > 0
    assert set(mem["per_process_before"]) == set(mem["per_process_after_settle"])  # router + 2 workers, same pids
    assert len(mem["per_process_before"]) == 3
    assert "shoal live fuzz:" in r.stdout and "result: OK" in r.stdout
