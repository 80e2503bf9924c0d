"""The pieces of the ops interface that need no node: the HTTP request parser
(bounded), the JSON log formatter, the Prometheus rendering of worker figures."""
from __future__ import annotations

import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.logs import JSONFormatter, KVFormatter, kv
from router import prom
from router.http import HttpError, parse
from worker.metrics import Histogram, Metrics

REQ = b"POST /api/v1/clients/a%2Fb/kick?limit=5&client=x HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc"


def test_parse_waits_for_the_whole_request_at_every_split():
    for i in range(len(REQ)):
        assert parse(REQ[:i], 8192) is None
    r = parse(REQ, 8192)
    assert (r.method, r.path, r.query, r.body) == ("POST", "/api/v1/clients/a/b/kick", {"limit": "5", "client": "x"}, b"abc")
    assert r.headers["content-length"] == "3"


@pytest.mark.parametrize("data,status", [
    (b"GET /\r\n\r\n", 400),
    (b"GET / SMTP/1.0\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nno colon\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nContent-Length: 100000\r\n\r\n", 413),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 9000, 431),
])
def test_parse_refuses_bad_and_oversized_requests(data, status):
    with pytest.raises(HttpError) as e:
        parse(data, 8192)
    assert e.value.status == status


def record(msg: str, **fields) -> logging.LogRecord:
    r = logging.LogRecord("shoal.worker", logging.INFO, __file__, 1, msg, (), None)
    r.kv = kv(**fields)["kv"]
    return r


def test_json_log_lines_carry_the_same_fields_as_key_value_lines():
    static = {"node": "n1", "worker": "2"}
    line = JSONFormatter(static).format(record("client kicked", client="c 1", peer="127.0.0.1:5"))
    assert "\n" not in line
    obj = json.loads(line)
    assert obj["level"] == "info" and obj["node"] == "n1" and obj["worker"] == "2"
    assert obj["event"] == "client kicked" and obj["client"] == "c 1" and obj["peer"] == "127.0.0.1:5"
    assert list(obj)[:5] == ["ts", "level", "node", "worker", "event"]  # the order tests/support/node.py reads
    kvline = KVFormatter(static).format(record("client kicked", client="c 1"))
    assert "node=n1 worker=2 event='client kicked' client='c 1'" in kvline


def snapshot(connected: int, pub_in: list, takeover: list) -> dict:
    m = Metrics()
    m.publish_received_qos[:] = pub_in
    m.dropped_queue_full = connected * 2
    d = m.as_dict()
    h = Histogram()
    for v in takeover:
        h.observe(v)
    d.update(clients_connected=connected, uptime=5, retained=3, takeover_seconds=h.as_wire())
    return d


def test_prometheus_text_node_figures_are_the_sums_of_the_workers():
    workers = {"w1": (snapshot(2, [1, 2, 3], [0.002]), True), "w2": (snapshot(5, [10, 20, 30], [0.02, 20.0]), False)}
    text = prom.render("n1", workers, ["w1", "w2"], {"forwarded_messages": 7}, None).decode()
    samples = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    n = (("node", "n1"),)
    assert samples[("shoal_connections", n)] == 7
    assert samples[("shoal_worker_connections", n + (("worker", "2"),))] == 5
    assert samples[("shoal_publish_received_total", (("node", "n1"), ("qos", "2")))] == 33
    assert samples[("shoal_dropped_messages_total", (("cause", "queue_full"), ("node", "n1")))] == 14
    assert samples[("shoal_takeover_seconds_count", n)] == 3
    assert samples[("shoal_takeover_seconds_bucket", (("le", "0.0025"), ("node", "n1")))] == 1
    assert samples[("shoal_takeover_seconds_bucket", (("le", "0.025"), ("node", "n1")))] == 2
    assert samples[("shoal_takeover_seconds_bucket", (("le", "+Inf"), ("node", "n1")))] == 3
    assert samples[("shoal_takeover_seconds_sum", n)] == pytest.approx(20.022)
    assert samples[("shoal_retained_messages", n)] == 3  # one node-wide set, not a sum
    assert samples[("shoal_worker_up", n + (("worker", "1"),))] == 1
    assert samples[("shoal_worker_up", n + (("worker", "2"),))] == 0  # stale figures
    assert samples[("shoal_router_forwarded_messages_total", n)] == 7
    assert samples[("shoal_cluster_enabled", n)] == 0


def test_a_worker_figure_not_named_in_prom_still_shows_summed():
    a, b = snapshot(1, [0, 0, 0], []), snapshot(1, [0, 0, 0], [])
    a["auth_refused"], b["auth_refused"] = 2, 3
    text = prom.render("n1", {"w1": (a, True), "w2": (b, True)}, ["w1", "w2"], {}, None).decode()
    values = {(s.name, s.labels.get("worker")): s.value for f in text_string_to_metric_families(text) for s in f.samples}
    assert values[("shoal_auth_refused", None)] == 5
    assert values[("shoal_worker_auth_refused", "2")] == 3
