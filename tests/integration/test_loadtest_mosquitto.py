"""``python -m loadtest`` against a live mosquitto: bounded sub + pub runs where
every message must arrive and the summaries must agree with each other."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.node import free_port

DEADLINE = 30.0  # seconds; a run here takes about two
pytestmark = pytest.mark.skipif(shutil.which("mosquitto") is None,
                                reason="mosquitto is not installed (make install adds it)")


def wait_for_port(port: int, proc: subprocess.Popen, log: Path, deadline: float) -> None:
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {proc.returncode}: {log.read_text()}") from None
            if time.monotonic() > deadline:
                raise TimeoutError(f"mosquitto did not accept connections on {port}") from None
            time.sleep(0.02)  # polling the port, with a deadline


@pytest.fixture(scope="module")
def mosquitto(tmp_path_factory):
    port = free_port()
    tmp = tmp_path_factory.mktemp("mosquitto")
    conf, log = tmp / "mosquitto.conf", tmp / "mosquitto.log"
    # no queue limit: a QoS 1/2 subscriber that falls behind must not lose messages
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nmax_queued_messages 0\n"
                    "max_inflight_messages 100\npersistence false\n")
    with open(log, "wb") as out:
        proc = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, proc, log, time.monotonic() + 10)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


class LoadRun:
    """``python -m loadtest ... --json`` in a subprocess; stderr and stdout collected by threads."""

    def __init__(self, *args: str):
        self.args = [sys.executable, "-m", "loadtest", *args, "--json"]
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.err: list[str] = []
        self.out: list[str] = []
        self.settled = threading.Event()
        self.threads = [threading.Thread(target=self._read_err, daemon=True),
                        threading.Thread(target=self._read_out, daemon=True)]
        for t in self.threads:
            t.start()

    def _read_err(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            if line.startswith('{"settled_s"'):
                self.settled.set()

    def _read_out(self) -> None:
        for line in self.proc.stdout:
            self.out.append(line)

    def log(self) -> str:
        return f"$ {' '.join(self.args)}\nstdout:\n{''.join(self.out)}\nstderr:\n{''.join(self.err)}"

    def wait_settled(self) -> dict:
        assert self.settled.wait(DEADLINE), f"not settled within {DEADLINE}s\n{self.log()}"
        return next(json.loads(line) for line in self.err if line.startswith('{"settled_s"'))

    def finish(self) -> tuple[int, dict]:
        try:
            code = self.proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"loadtest did not finish within {DEADLINE}s\n{self.log()}")
        for t in self.threads:
            t.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()
        assert self.out, self.log()
        return code, json.loads(self.out[-1])

    def series(self) -> list[dict]:
        return [json.loads(line) for line in self.err if line.startswith('{"t"')]


def check_latency(summary: dict, log: str) -> None:
    lat = summary["latency_ms"]
    assert lat["count"] == summary["received"] == summary["latency_hist"]["total"], log
    assert 0 <= lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"], log
    assert lat["max"] < summary["elapsed_s"] * 1000, log  # no message older than the run
    assert sum(n for _, n in summary["latency_hist"]["counts"]) == summary["received"], log


def test_qos1_v5_fan_in_over_two_processes(mosquitto):
    port = str(mosquitto)
    sub = LoadRun("sub", "-h", "127.0.0.1", "-p", port, "-c", "2", "--processes", "2", "-q", "1", "-V", "5",
                  "-t", "fanin/#", "-L", "1200", "--prefix", "t1")
    ready = sub.wait_settled()
    assert ready["ready"] == 2, sub.log()
    pub = LoadRun("pub", "-h", "127.0.0.1", "-p", port, "-c", "3", "--processes", "2", "-q", "1", "-V", "5",
                  "-t", "fanin/%i/%c", "-I", "0", "-L", "600", "-s", "64", "--inflight", "10", "--prefix", "t1",
                  "-w")  # all three connected before any publishes: else the first may spend -L alone
    pub_code, p = pub.finish()
    sub_code, s = sub.finish()
    log = pub.log() + sub.log()
    assert (pub_code, sub_code) == (0, 0), log
    assert (p["sent"], p["acked"], p["errors"], p["connected_max"]) == (600, 600, 0, 3), log
    assert (s["received"], s["errors"], s["connected_max"], s["subscribed_max"]) == (1200, 0, 2, 2), log
    check_latency(s, log)
    assert sum(r["sent"] for r in pub.series()) == 600, log
    assert sum(r["acked"] for r in pub.series()) == 600, log
    assert sum(r["recv"] for r in sub.series()) == 1200, log
    assert s["first_recv_ns"] >= p["first_sent_ns"] and s["last_recv_ns"] >= p["last_sent_ns"], log
    assert p["send_rate"] > 0 and s["recv_rate"] > 0, log


def test_wait_before_publishing_holds_publishers_until_all_connected(mosquitto):
    """-w (emqtt-bench's --wait-before-publishing): the third publisher connects 0.6 s after
    the first (-i 300 over both processes); no message leaves before it is in."""
    sub = LoadRun("sub", "-h", "127.0.0.1", "-p", str(mosquitto), "-c", "1", "--processes", "1", "-q", "1",
                  "-t", "held/#", "-L", "60", "--prefix", "t1w")
    assert sub.wait_settled()["ready"] == 1, sub.log()
    pub = LoadRun("pub", "-h", "127.0.0.1", "-p", str(mosquitto), "-c", "3", "--processes", "2", "-q", "1",
                  "-i", "300", "-t", "held/%i", "-I", "0", "-L", "60", "--inflight", "5", "--prefix", "t1w", "-w")
    pub_code, p = pub.finish()
    sub_code, s = sub.finish()
    log = pub.log() + sub.log()
    assert (pub_code, sub_code) == (0, 0), log
    assert (p["sent"], p["acked"], p["errors"], p["connected_max"]) == (60, 60, 0, 3), log
    assert p["first_sent_ns"] >= p["start_ns"] + 600_000_000, log
    assert s["received"] == 60, log


def test_qos2_v311_shared_group_gets_each_message_once(mosquitto):
    port = str(mosquitto)
    sub = LoadRun("sub", "-h", "127.0.0.1", "-p", port, "-c", "3", "--processes", "1", "-q", "2", "-V", "4",
                  "-t", "work/+", "--shared", "g", "-L", "300", "--prefix", "t2")
    sub.wait_settled()
    pub = LoadRun("pub", "-h", "127.0.0.1", "-p", port, "-c", "3", "--processes", "1", "-q", "2", "-V", "4",
                  "-t", "work/%i", "-I", "2", "-L", "300", "--prefix", "t2")
    pub_code, p = pub.finish()
    sub_code, s = sub.finish()
    log = pub.log() + sub.log()
    assert (pub_code, sub_code) == (0, 0), log
    assert (p["sent"], p["acked"], p["errors"]) == (300, 300, 0), log
    assert (s["received"], s["errors"]) == (300, 0), log  # the group's limit, and no duplicates
    check_latency(s, log)


def test_qos0_v31_fan_out(mosquitto):
    port = str(mosquitto)
    sub = LoadRun("sub", "-h", "127.0.0.1", "-p", port, "-c", "4", "--processes", "1", "-q", "0", "-V", "3",
                  "-t", "fanout", "-L", "2000", "--prefix", "t3")
    sub.wait_settled()
    pub = LoadRun("pub", "-h", "127.0.0.1", "-p", port, "-c", "1", "--processes", "1", "-q", "0", "-V", "3",
                  "-t", "fanout", "-I", "1", "-L", "500", "-s", "8", "--prefix", "t3")
    pub_code, p = pub.finish()
    sub_code, s = sub.finish()
    log = pub.log() + sub.log()
    assert (pub_code, sub_code) == (0, 0), log
    assert (p["sent"], p["acked"], p["errors"]) == (500, 0, 0), log
    assert (s["received"], s["errors"]) == (2000, 0), log
    check_latency(s, log)


def test_conn_holds_then_disconnects_and_duration_bounds_a_run(mosquitto):
    # at most 2 x 20 connects in flight: mosquitto's listen backlog is 100, and a dropped SYN costs 1 s
    conn = LoadRun("conn", "-h", "127.0.0.1", "-p", str(mosquitto), "-c", "300", "-i", "0", "--processes", "2",
                   "--max-connecting", "20", "--duration", "0.5", "--prefix", "t4")
    code, c = conn.finish()
    assert code == 0, conn.log()
    assert (c["connected_max"], c["errors"], c["connect_ms"]["count"]) == (300, 0, 300), conn.log()
    assert c["settled_s"] is not None and c["settled_s"] <= c["elapsed_s"], conn.log()
    assert 0.5 <= c["elapsed_s"] < 0.5 + 6, conn.log()  # stopped by --duration, not by anything else
    assert conn.series()[-1]["connected"] == 0, conn.log()


def test_refused_connections_are_errors():
    conn = LoadRun("conn", "-h", "127.0.0.1", "-p", str(free_port()), "-c", "5", "--processes", "1", "-i", "0")
    code, c = conn.finish()
    assert code == 1, conn.log()
    assert (c["errors"], c["errors_by_kind"], c["connected_max"]) == (5, {"connect_failed": 5}, 0), conn.log()


# -- -L: the messages of the whole run, as in emqtt-bench ---------------------------------

class Counter:
    """A paho subscriber to ``<root>/#`` and ``<root>-end`` that counts what arrives before the
    sentinel: every message a publisher got a PUBACK for came in before it."""

    def __init__(self, port: int, root: str):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.root = root
        self.count = 0
        self.topics: set[str] = set()  # the publishers heard from (one topic each)
        self.subscribed = threading.Event()
        self.ended = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"{root}-counter", protocol=paho.MQTTv311)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe([(f"{root}/#", 1), (f"{root}-end", 1)])
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(DEADLINE), "the counting subscriber did not get its SUBACK"

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic == f"{self.root}-end":
            self.ended.set()
        elif not self.ended.is_set():
            self.count += 1
            self.topics.add(msg.topic)

    def total(self) -> int:
        """Publish the sentinel and return what arrived before it."""
        self.client.publish(f"{self.root}-end", b"", qos=1)
        assert self.ended.wait(DEADLINE), "the sentinel did not come back"
        self.client.loop_stop()
        self.client.disconnect()
        return self.count


@pytest.fixture(params=["mosquitto", "shoal"])
def broker_port(request) -> int:
    """mosquitto's port, or a one-worker Shoal node's (tests/conftest.py's ``node``)."""
    if request.param == "shoal":
        return request.getfixturevalue("node").port
    return request.getfixturevalue("mosquitto")


@pytest.mark.parametrize("processes", ["1", "2"])
def test_limit_counts_the_whole_run_over_every_publisher(broker_port, processes):
    """``pub -c 20 -L 2000`` sends 2,000 messages in all (emqtt-bench's one shared counter,
    pub_limit_fun_init), not 2,000 per publisher; ``sub -c 2 -L 4000`` stops after 4,000 in all."""
    port, root = str(broker_port), f"lim{processes}"
    counter = Counter(broker_port, root)
    sub = LoadRun("sub", "-h", "127.0.0.1", "-p", port, "-c", "2", "--processes", processes, "-q", "1",
                  "-t", f"{root}/#", "-L", "4000", "--prefix", f"{root}s")
    sub.wait_settled()
    # -I 10: 2,000 msg/s in all, which a paho counter keeps up with on a loaded machine; at -I 1
    # (20,000 msg/s) it fell behind and the broker's 1,000-message session queue dropped the excess
    pub = LoadRun("pub", "-h", "127.0.0.1", "-p", port, "-c", "20", "-i", "1", "-I", "10", "--processes", processes,
                  "-q", "1", "-t", f"{root}/%i", "-L", "2000", "--prefix", f"{root}p")
    pub_code, p = pub.finish()
    sub_code, s = sub.finish()
    received = counter.total()
    log = pub.log() + sub.log()
    assert (pub_code, sub_code) == (0, 0), log
    assert (p["sent"], p["acked"], p["errors"], p["connected_max"]) == (2000, 2000, 0, 20), log
    assert received == 2000, log
    assert (s["received"], s["errors"]) == (4000, 0), log
    assert any(line.startswith('{"limit_reached_s"') for line in pub.err), log


EMQTT_BENCH = os.environ.get("EMQTT_BENCH") or shutil.which("emqtt_bench")


@pytest.mark.skipif(EMQTT_BENCH is None, reason="cross-check against the real emqtt-bench skipped: no emqtt_bench "
                    "binary (set EMQTT_BENCH=/path/to/emqtt_bench or put it on PATH)")
def test_limit_matches_the_real_emqtt_bench(broker_port):
    """The same ``pub -c 20 -I 10 -L 2000 -q 1`` with emqtt-bench and with loadtest: a subscriber
    gets 2,000 messages, from all 20 publishers, from each tool.  emqtt-bench may miss its total
    by a few: its counter is read, then decremented, and its run halts as soon as one publisher
    finds it at 0, while another may have taken one and not yet sent it."""
    args = ["-h", "127.0.0.1", "-p", str(broker_port), "-c", "20", "-I", "10", "-L", "2000", "-q", "1"]
    results = {}
    for tool, argv in (("emqtt_bench", [EMQTT_BENCH, "pub"]), ("loadtest", [sys.executable, "-m", "loadtest", "pub"])):
        root = f"xc{tool[0]}"
        counter = Counter(broker_port, root)
        done = subprocess.run([*argv, *args, "-t", f"{root}/%i", "--prefix", root], capture_output=True, text=True,
                              timeout=120)
        received = counter.total()
        results[tool] = (done.returncode, received, len(counter.topics), done.stdout[-2000:] + done.stderr[-2000:])
    log = "\n".join(f"{tool}: rc={r[0]} received={r[1]} publishers={r[2]}\n{r[3]}" for tool, r in results.items())
    assert results["loadtest"][:3] == (0, 2000, 20), log
    rc, received, publishers, _ = results["emqtt_bench"]
    assert (rc, publishers) == (0, 20) and 2000 - 19 <= received <= 2000 + 19, log
    assert "publish complete" in results["emqtt_bench"][3] and "publish complete" in results["loadtest"][3], log
