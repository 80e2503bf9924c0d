"""Settings checked at start (issue 12, point 8), with a real `circusd circus.ini`:
a wrong value stops circusd (exit 2) before any process starts, naming the
variable, the value and what is allowed; an unknown SHOAL_ variable is
reported with the closest known name and the node starts anyway."""
from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

from tests.support.node import ROOT, VENV_BIN, Node, free_port


def circusd(**env) -> subprocess.CompletedProcess:
    tmp = tempfile.mkdtemp(prefix="shoal-settings", dir="/tmp")
    full = dict(os.environ, SHOAL_RUN_DIR=tmp, SHOAL_DATA_DIR=os.path.join(tmp, "data"))
    full.update({f"SHOAL_{k.upper()}": str(v) for k, v in env.items()})
    return subprocess.run([str(VENV_BIN / "circusd"), "circus.ini"], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("env, words", [
    ({"port": "abc", "prot": "1"}, ["SHOAL_PORT='abc': should be a valid integer"]),
    ({"port": "70000"}, ["SHOAL_PORT='70000': should be a number from 0 to 65535"]),
    ({"sync": "sometimes", "max_connections": "lots"},
     ["SHOAL_SYNC='sometimes': should be 'always', 'batch' or 'off'", "SHOAL_MAX_CONNECTIONS='lots'"]),
    ({"workers": "0", "auth_fail_delay": "-1"},
     ["SHOAL_WORKERS='0': should be a number from 1 to 1024", "SHOAL_AUTH_FAIL_DELAY='-1'"]),
])
def test_bad_value_stops_circusd(env, words):
    env.setdefault("port", str(free_port()))
    proc = circusd(**env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    for w in words:
        assert f"shoal: invalid setting {w}" in proc.stderr, out
    assert "router started" not in out and "worker started" not in out  # nothing was started
    assert "Traceback" not in out
    if "prot" in env:
        assert "unknown setting SHOAL_PROT (ignored); did you mean SHOAL_PORT?" in out


def test_unknown_variable_is_reported_and_the_node_starts():
    with Node(workers=1, prot="1", max_conections="5") as n:
        log = n.log()
        assert "unknown setting SHOAL_PROT (ignored); did you mean SHOAL_PORT?" in log
        assert "unknown setting SHOAL_MAX_CONECTIONS (ignored); did you mean SHOAL_MAX_CONNECTIONS?" in log
