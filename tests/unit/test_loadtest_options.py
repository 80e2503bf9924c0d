"""Option parsing of ``python -m loadtest`` (emqtt-bench spellings) and the
names it derives: client ids, %i / %c topic substitution, client spread."""
from __future__ import annotations

import pytest

import random
import socket

from loadtest.naming import client_id, client_indices, expand_topic, username
from loadtest.options import Options, Verb, parse


def test_pub_options_like_emqtt_bench():
    o = parse(["pub", "-h", "broker.local", "-p", "1999", "-c", "50", "-i", "5", "-I", "20", "-t", "bench/%i",
               "-s", "64", "-q", "1", "-V", "4", "-L", "1000", "-k", "30", "-C", "false", "-u", "user",
               "-P", "secret", "--processes", "3", "--duration", "12.5", "--json", "--inflight", "7",
               "--prefix", "lt"])
    assert o == Options(verb=Verb.PUB, host="broker.local", port=1999, clients=50, connect_interval_ms=5.0,
                        publish_interval_ms=20.0, topic="bench/%i", payload_size=64, qos=1, version=4, limit=1000,
                        keepalive=30, clean=False, username="user", password="secret", processes=3, duration=12.5,
                        json=True, inflight=7, prefix="lt")


def test_defaults_follow_emqtt_bench():
    o = parse(["pub", "-t", "t", "--processes", "2"])
    assert (o.host, o.port, o.clients) == ("localhost", 1883, 200)
    assert (o.connect_interval_ms, o.publish_interval_ms) == (10.0, 1000.0)
    assert (o.payload_size, o.qos, o.version, o.limit, o.keepalive, o.clean) == (256, 0, 5, 0, 300, True)
    # emqtt-bench's -F is 1, and its pub waits for each QoS 1/2 ack before the next publish
    assert (o.inflight, o.duration, o.json, o.shared) == (1, None, False, None)
    assert o.prefix == ""  # client ids then carry the host name and a random number


def test_inflight_zero_is_emqtt_bench_infinity():
    assert parse(["pub", "-t", "t", "-F", "0"]).inflight == 0  # the window is then the broker's Receive Maximum


def test_limit_help_says_whole_run(capsys):
    with pytest.raises(SystemExit):
        parse(["pub", "--help"])
    assert "messages of the whole run, over all publishers" in " ".join(capsys.readouterr().out.split())


def test_sub_shared_group_prefixes_the_filter():
    o = parse(["sub", "-t", "a/+/c", "--shared", "g1", "-q", "2", "-L", "10"])
    assert (o.verb, o.shared, o.qos, o.limit) == (Verb.SUB, "g1", 2, 10)
    assert o.subscribe_filter == "$share/g1/a/+/c"
    assert parse(["sub", "-t", "a/#"]).subscribe_filter == "a/#"


def test_conn_hold():
    o = parse(["conn", "-c", "10", "--hold", "2"])
    assert (o.verb, o.clients, o.hold) == (Verb.CONN, 10, 2.0)


def test_processes_never_exceed_clients():
    assert parse(["conn", "-c", "3", "--processes", "8"]).processes == 3


@pytest.mark.parametrize("text, expected", [("true", True), ("FALSE", False), ("1", True), ("0", False),
                                            ("yes", True), ("no", False)])
def test_clean_start_values(text, expected):
    assert parse(["conn", "-C", text]).clean is expected


@pytest.mark.parametrize("argv", [
    ["pub", "-t", "t", "-s", "7"],  # no room for the timestamp
    ["pub", "-t", "t", "-q", "3"],
    ["pub", "-t", "t", "-V", "6"],
    ["pub"],  # -t is required
    ["sub", "-t", "t", "--shared", "a/b"],
    ["sub", "-t", "t", "--shared", ""],
    ["conn", "-c", "0"],
    ["conn", "-C", "maybe"],
    ["conn", "-x", "60", "-V", "4"],  # session expiry is v5 only
    ["pub", "-t", "t", "-I", "-1"],
    ["bench"],
])
def test_bad_options_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as e:
        parse(argv)
    assert e.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_dash_h_is_the_host_and_help_is_long(capsys):
    assert parse(["conn", "-h", "10.0.0.1"]).host == "10.0.0.1"
    with pytest.raises(SystemExit) as e:
        parse(["pub", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "-I" in out and "--inflight" in out and "-h HOST" in out


# -- naming ---------------------------------------------------------------------

def test_client_id_like_emqtt_bench():
    assert client_id("host", Verb.PUB, 7) == "host_bench_pub_7"
    assert client_id("x", Verb.SUB, 1) == "x_bench_sub_1"


def test_client_id_without_prefix_is_host_random_index():
    # emqtt-bench: <host>_bench_<verb>_<rand:uniform(16#FFFFFFFF)>_<n>, a random number per client
    rng = random.Random(7)
    ids = [client_id("", Verb.PUB, n, rng) for n in (1, 2)]
    host, rest = socket.gethostname(), [i.rsplit("_", 2) for i in ids]
    assert [r[0] for r in rest] == [f"{host}_bench_pub"] * 2 and [r[2] for r in rest] == ["1", "2"]
    assert all(1 <= int(r[1]) <= 0xFFFFFFFF for r in rest) and rest[0][1] != rest[1][1]


@pytest.mark.parametrize("template, expected", [
    ("t/%i", "t/12"),
    ("t/%c/x", "t/h_bench_pub_12/x"),
    ("%i/%c/%i", "12/h_bench_pub_12/12"),
    ("plain/topic", "plain/topic"),
    ("100%/%x/%", "100%/%x/%"),  # only %i, %c and %u are placeholders
    ("t/dev%i/%i-x", "t/dev%i/%i-x"),  # emqtt-bench replaces whole levels only
    ("t/%u", "t/undefined"),  # %u without -u, as emqtt-bench renders it
])
def test_topic_substitution(template, expected):
    assert expand_topic(template, 12, "h_bench_pub_12") == expected


def test_topic_user_is_the_option_as_given():
    assert expand_topic("u/%u/%i", 3, "c", "bob") == "u/bob/3"


def test_username_placeholders_like_emqtt_bench():
    assert username("%i", 42) == "42"
    assert 1 <= int(username("%rand_5", 1, random.Random(1))) <= 5
    assert (username("bob", 3), username(None, 3), username("a%i", 3)) == ("bob", None, "a%i")


@pytest.mark.parametrize("topic", ["t/%s", "t/%rand_10/x"])
def test_per_message_topic_levels_are_refused(topic, capsys):
    with pytest.raises(SystemExit):
        parse(["pub", "-t", topic])
    assert "not supported" in capsys.readouterr().err


def test_substitution_is_one_pass():
    # a client id that itself contains %i is not expanded again
    assert expand_topic("a/%c", 3, "id/%i") == "a/id/%i"


@pytest.mark.parametrize("clients, start, processes", [(10, 0, 3), (1, 0, 1), (7, 100, 2), (5, 0, 5)])
def test_client_indices_partition_the_clients(clients, start, processes):
    shares = [client_indices(clients, start, processes, p) for p in range(processes)]
    flat = sorted(i for share in shares for i in share)
    assert flat == list(range(start + 1, start + clients + 1))  # 1-based, each exactly once
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # evenly spread
    for share in shares:
        assert share == sorted(share)
