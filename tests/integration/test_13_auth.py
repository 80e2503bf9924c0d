"""Authentication (issue 12, point 1): a password file made by the real
mosquitto_passwd ($7$ PBKDF2-SHA512 and $6$ SHA512), the CONNACK codes of
3.1.1 and 5.0, anonymous clients with and without SHOAL_ALLOW_ANONYMOUS,
mosquitto_pub and paho with credentials, addresses that fail again and again
slowed and then refused (counted in $SYS, logged), a storm of bad logins that
does not starve a good client, and SIGHUP reloading the password and ACL
files of every worker without dropping anyone."""
from __future__ import annotations

import base64
import hashlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from mqtt import Connack, Connect, PubAck, Publish, ReasonCode, Subscribe, SubAck, Subscription
from tests.integration.test_13_ops import OpsNode, scrape, value
from tests.integration.test_20_multiworker import SysView
from tests.support.node import ROOT, VENV_BIN, Node, wait_for
from tests.support.raw import Closed, RawClient

BAD_CREDENTIALS = {4: 4, 5: ReasonCode.BAD_USER_NAME_OR_PASSWORD}  # 3.1.1 return code 4 / v5 0x86
NOT_AUTHORIZED = {4: 5, 5: ReasonCode.NOT_AUTHORIZED}  # 5 / 0x87
BANNED = {4: 5, 5: ReasonCode.BANNED}  # 5 / 0x8A
BUSY = {4: 3, 5: ReasonCode.SERVER_BUSY}


def tmpdir() -> str:
    return tempfile.mkdtemp(prefix="shoal-auth", dir="/tmp")


def mosquitto_passwd(path: str, users: dict[str, str], create: bool = True, sha512: tuple = ()) -> str:
    """Write users into `path` with the real mosquitto_passwd (-c -b for the first)."""
    for i, (name, password) in enumerate(users.items()):
        cmd = ["mosquitto_passwd"] + (["-H", "sha512"] if name in sha512 else [])
        cmd += ["-c"] if create and i == 0 else []
        subprocess.run(cmd + ["-b", path, name, password], check=True, capture_output=True)
    return path


def slow_entry(name: str, password: str, iterations: int) -> str:
    """A $7$ line with many iterations (mosquitto_passwd 2.0.11 has no option for
    the count; the format is the one it writes)."""
    salt = os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, iterations)
    return f"{name}:$7${iterations}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}\n"


def attempt(port, version, cid, username=None, password=None, source=None, timeout=10.0) -> int:
    """One CONNECT; the CONNACK's code (the broker closes after a refusal)."""
    with RawClient(port, version, source=source, timeout=timeout) as c:
        ack = c.connect(cid, username=username, password=password)
        assert isinstance(ack, Connack), ack
        return ack.reason_code


@pytest.fixture(scope="module")
def users_file():
    path = os.path.join(tmpdir(), "passwd")
    return mosquitto_passwd(path, {"alice": "secret", "bob": "old-style"}, sha512=("bob",))


@pytest.fixture(scope="module")
def node(users_file):
    # the throttle is off here: these tests fail logins from 127.0.0.1 on purpose (it has tests of its own)
    n = Node(workers=1, password_file=users_file, sys_interval=1, auth_fail_delay_after=0, auth_ban_after=0)
    n.start()
    yield n
    n.stop()


# -- credentials ---------------------------------------------------------------------------------
def test_good_credentials_both_hashes(node, version):
    assert attempt(node.port, version, f"a13-alice-{version}", "alice", b"secret") == 0
    assert attempt(node.port, version, f"a13-bob-{version}", "bob", b"old-style") == 0


@pytest.mark.parametrize("username, password", [
    ("alice", b"wrong"), ("alice", b""), ("alice", None), ("nobody", b"secret"), ("bob", b"secret"),
], ids=["wrong", "empty", "none", "unknown-user", "other-users-password"])
def test_bad_credentials_are_refused(node, version, username, password):
    with RawClient(node.port, version) as c:
        ack = c.connect(f"a13-bad-{version}", username=username, password=password)
        assert ack.reason_code == BAD_CREDENTIALS[version]
        assert c.expect_closed() == []


def test_anonymous_allowed_with_a_password_file(node, version):
    """SHOAL_ALLOW_ANONYMOUS=true (the default) with a password file: clients without a
    username connect, as in mosquitto 2.0 (its password check defers to allow_anonymous)."""
    assert attempt(node.port, version, f"a13-anon-{version}") == 0


def test_refusal_is_logged_with_client_address_node_worker(node):
    mark = node._log_size()
    assert attempt(node.port, 5, "a13-logged", "alice", b"nope") == BAD_CREDENTIALS[5]
    line = wait_for(lambda: re.search(r".*event='authentication failed'.*client=a13-logged.*", node.log(mark)),
                    10, what="the log line").group(0)
    assert "address=127.0.0.1" in line and "worker=1" in line and f"node=" in line and "username=alice" in line
    assert "nope" not in line  # never the password


def test_mosquitto_pub_and_sub_with_credentials(node):
    port = str(node.port)
    sub = subprocess.Popen(["mosquitto_sub", "-p", port, "-u", "alice", "-P", "secret", "-t", "a13/cli",
                            "-C", "1", "-q", "1", "-i", "a13-cli-sub"], stdout=subprocess.PIPE, text=True)
    try:
        # publish until one reaches the subscriber (its SUBSCRIBE may still be on the way)
        deadline = time.monotonic() + 15
        while sub.poll() is None and time.monotonic() < deadline:
            subprocess.run(["mosquitto_pub", "-p", port, "-u", "bob", "-P", "old-style", "-t", "a13/cli",
                            "-m", "hello", "-q", "1"], check=True, timeout=10)
            try:
                sub.wait(0.3)
            except subprocess.TimeoutExpired:
                pass
        out, _ = sub.communicate(timeout=5)
        assert sub.returncode == 0 and out.strip() == "hello"
    finally:
        sub.kill()
        sub.communicate()
    bad = subprocess.run(["mosquitto_pub", "-p", port, "-u", "alice", "-P", "wrong", "-t", "a13/cli", "-m", "x"],
                         capture_output=True, text=True, timeout=10)
    assert bad.returncode != 0
    assert "not authorised" in bad.stderr.lower() or "bad user name or password" in bad.stderr.lower()


def test_paho_with_credentials(node):
    results = {}
    done = threading.Event()

    def on_connect(client, userdata, flags, rc, props=None):
        results[userdata] = rc
        done.set()

    for name, password in (("good", "secret"), ("bad", "nope")):
        done.clear()
        c = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"a13-paho-{name}", protocol=paho.MQTTv5,
                        userdata=name)
        c.username_pw_set("alice", password)
        c.on_connect = on_connect
        c.connect("127.0.0.1", node.port)
        c.loop_start()
        try:
            assert done.wait(10)
        finally:
            c.loop_stop()
            c.disconnect()
    assert results["good"] == 0
    assert results["bad"] == ReasonCode.BAD_USER_NAME_OR_PASSWORD


def test_no_anonymous(users_file, version):
    with Node(workers=1, password_file=users_file, allow_anonymous="false") as n:
        with RawClient(n.port, version) as c:
            assert c.connect(f"a13-noanon-{version}").reason_code == NOT_AUTHORIZED[version]
            assert c.expect_closed() == []
        assert attempt(n.port, version, f"a13-noanon-alice-{version}", "alice", b"secret") == 0


# -- addresses that fail again and again ------------------------------------------------------------
def test_failing_address_is_slowed_then_refused_then_let_in(users_file, version):
    """From 127.0.0.2: two failures, then each CONNECT waits SHOAL_AUTH_FAIL_DELAY; at four
    the address is refused (good credentials too) for SHOAL_AUTH_BAN_TIME; 127.0.0.1 is not
    touched throughout; $SYS counts it all."""
    delay = 1.5
    with OpsNode(workers=1, password_file=users_file, sys_interval=1, auth_fail_delay_after=2,
                 auth_fail_delay=delay, auth_ban_after=4, auth_ban_time=3) as n:
        bad = "127.0.0.2"
        for i in range(2):
            assert attempt(n.port, version, f"a13-f{i}", "alice", b"x", source=bad) == BAD_CREDENTIALS[version]
        t0 = time.monotonic()
        assert attempt(n.port, version, "a13-f2", "alice", b"x", source=bad) == BAD_CREDENTIALS[version]
        assert time.monotonic() - t0 >= delay  # slowed
        assert attempt(n.port, version, "a13-good-here", "alice", b"secret") == 0  # other address: at once
        assert attempt(n.port, version, "a13-f3", "alice", b"x", source=bad) == BAD_CREDENTIALS[version]
        with RawClient(n.port, version, source=bad) as c:  # the fourth failure started the ban
            ack = c.connect("a13-banned", username="alice", password=b"secret")
            assert ack.reason_code == BANNED[version]
            assert c.expect_closed() == []
        # (log lines reach the file through circusd's pipe, maybe after the CONNACK)
        line = wait_for(lambda: re.search(r".*event='address banned after failed logins'.*", n.log()), 20,
                        what="the ban logged").group(0)
        assert "client=a13-f3" in line and "address=127.0.0.2" in line and "worker=1" in line
        # the ban ends by itself
        wait_for(lambda: attempt(n.port, version, "a13-back", "alice", b"secret", source=bad) == 0, 20, 0.3,
                 what="the ban to end")
        with RawClient(n.port, version) as c:
            assert c.connect("a13-sys", username="alice", password=b"secret").reason_code == 0
            view = SysView(c)
            view.poll(lambda v: v.node("auth/failures") == 4 and v.node("auth/bans") == 1
                      and (v.node("auth/refused/banned") or 0) >= 1 and v.node("auth/delayed") >= 2,
                      15, "auth counters")
        # and in /metrics
        def counted():
            figs = scrape(n)
            return (value(figs, "shoal_connects_refused_total", cause="bad_credentials") == 4
                    and value(figs, "shoal_auth_address_bans_total") == 1
                    and value(figs, "shoal_connects_refused_total", cause="address_banned") >= 1
                    and value(figs, "shoal_worker_auth_delayed_connects_total", worker="1") >= 2)

        wait_for(counted, 15, 0.2, what="auth figures in /metrics")


def storm_round(port, cid, username, password, source, width, answers, stop):
    """`width` CONNECTs in flight at once from `source`, then every answer read;
    once `stop` is set the round's sockets are closed without waiting."""
    socks = []
    try:
        for i in range(width):
            try:
                c = RawClient(port, 5, source=source, timeout=60)
            except OSError:
                continue
            socks.append(c)
            c.send(Connect(client_id=f"{cid}-{i}", version=5, keepalive=60, username=username, password=password))
        waiting = deque(socks)
        while waiting and not stop.is_set():
            c = waiting.popleft()
            try:
                rc = c.recv(timeout=0.5).reason_code
            except TimeoutError:
                waiting.append(c)  # not answered yet: read the others first
                continue
            except (OSError, Closed):
                continue
            answers[rc] = answers.get(rc, 0) + 1
    finally:
        for c in socks:
            c.close()


@pytest.mark.alone  # saturates the CPU on purpose and times the good client: not beside other files
def test_storm_of_bad_logins_does_not_starve_a_good_client(users_file):
    """From 127.0.0.2, 160 CONNECTs at a time keep arriving with wrong passwords for a
    user whose hash costs 400,000 PBKDF2 rounds (throttle off, so each is hashed:
    over 100 wait at any moment, ~15 s of hashing). A good client from 127.0.0.1
    (the same costly user) connects, subscribes and gets its QoS 1 message back
    well before that: the hash queue serves the waiting addresses in turn."""
    d = tmpdir()
    path = os.path.join(d, "passwd")
    with open(path, "w") as f:
        f.write(slow_entry("slow", "right", 400_000))
    with Node(workers=1, password_file=path, sys_interval=1, auth_fail_delay_after=0, auth_ban_after=0) as n:
        stop = threading.Event()
        answers: dict[int, int] = {}

        def storm(i):
            while not stop.is_set():
                storm_round(n.port, f"a13-storm-{i}", "slow", b"wrong", "127.0.0.2", 40, answers, stop)

        threads = [threading.Thread(target=storm, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        try:
            # under way: the queue is full for 127.0.0.2 (its share of it refused with 0x89)
            wait_for(lambda: answers.get(ReasonCode.SERVER_BUSY, 0) >= 1, 60, what="the storm filling the queue")
            t0 = time.monotonic()
            with RawClient(n.port, 5, timeout=30) as c:
                assert c.connect("a13-good", username="slow", password=b"right").reason_code == 0
                c.send(Subscribe(1, [Subscription("a13/storm", 1)]))
                assert c.expect(SubAck).reason_codes == [1]
                c.send(Publish("a13/storm", b"through", 1, packet_id=2))
                got = []
                for _ in range(2):
                    p = c.recv(timeout=30)
                    got.append(type(p).__name__)
                    if isinstance(p, Publish):
                        assert p.payload == b"through"
                        c.send(PubAck(p.packet_id))
                assert sorted(got) == ["PubAck", "Publish"]
            elapsed = time.monotonic() - t0
            print(f"good client through the storm in {elapsed:.2f}s")
            assert elapsed < 6, f"the good client needed {elapsed:.1f}s"
            # the storm's own answers come as its hashes finish (15 s of them, slower on a
            # loaded host): the storm goes on until two wrong passwords were answered 0x86
            wait_for(lambda: answers.get(ReasonCode.BAD_USER_NAME_OR_PASSWORD, 0) >= 2, 120, 0.1,
                     "wrong passwords of the storm answered 0x86")
        finally:
            stop.set()
            for t in threads:
                t.join(120)
        assert set(answers) <= {ReasonCode.BAD_USER_NAME_OR_PASSWORD, ReasonCode.SERVER_BUSY}
        assert answers.get(ReasonCode.BAD_USER_NAME_OR_PASSWORD, 0) >= 2


@pytest.mark.alone  # a storm of connections that times the good client: not beside other files
def test_storm_with_the_default_throttle_is_banned_and_cheap(users_file):
    """Default settings: a storm from 127.0.0.2 is refused (0x8A) after ten failures;
    a good client from 127.0.0.1 connects within the deadline throughout."""
    with Node(workers=1, password_file=users_file, sys_interval=1) as n:
        stop = threading.Event()
        answers: dict[int, int] = {}

        def storm(i):
            while not stop.is_set():
                try:
                    rc = attempt(n.port, 5, f"a13-dstorm-{i}", "alice", b"wrong", source="127.0.0.2", timeout=30)
                except (OSError, Closed):
                    continue
                answers[rc] = answers.get(rc, 0) + 1

        threads = [threading.Thread(target=storm, args=(i,), daemon=True) for i in range(4)]
        for t in threads:
            t.start()
        try:
            wait_for(lambda: answers.get(ReasonCode.BANNED, 0) >= 20, 60, what="the storm banned")
            for i in range(5):
                t0 = time.monotonic()
                assert attempt(n.port, 5, f"a13-dgood-{i}", "alice", b"secret", timeout=20) == 0
                assert time.monotonic() - t0 < 10
        finally:
            stop.set()
            for t in threads:
                t.join(60)
        # ten failures start the ban (and the few already past the check when it started); then
        # every CONNECT is refused before its password is looked at
        assert 10 <= answers.get(ReasonCode.BAD_USER_NAME_OR_PASSWORD, 0) <= 10 + len(threads)


# -- SIGHUP -----------------------------------------------------------------------------------
ACL_BEFORE = "user alice\ntopic readwrite before/#\n"
ACL_AFTER = "user alice\ntopic readwrite before/#\ntopic readwrite after/#\n"


def test_sighup_reloads_password_and_acl_files_without_dropping_anyone():
    """`circusctl signal worker hup`, then SIGHUP to circusd (README): every worker reloads
    both files; a client connected before stays connected and its next SUBSCRIBE sees the
    new ACL; a new user logs in; a bad file keeps the previous one and the log says file:line;
    no process restarts."""
    d = tmpdir()
    pw = mosquitto_passwd(os.path.join(d, "passwd"), {"alice": "secret"})
    acl = os.path.join(d, "acl")
    with open(acl, "w") as f:
        f.write(ACL_BEFORE)
    with Node(workers=2, password_file=pw, acl_file=acl) as n:
        def hup():
            mark = n._log_size()
            subprocess.run([str(VENV_BIN / "circusctl"), "--endpoint", f"ipc:///tmp/shoal-circus-{n.port}.ctl",
                            "signal", "worker", "hup"], check=True, capture_output=True, timeout=30)
            return mark

        clients = []
        for i in range(6):  # on both workers (the kernel spreads them)
            c = RawClient(n.port, 5)
            assert c.connect(f"a13-hup-{i}", username="alice", password=b"secret").reason_code == 0
            clients.append(c)
        c0 = clients[0]
        c0.send(Subscribe(1, [Subscription("after/x", 0)]))
        assert c0.expect(SubAck).reason_codes == [ReasonCode.NOT_AUTHORIZED]
        assert attempt(n.port, 5, "a13-carol", "carol", b"c4r0l") == BAD_CREDENTIALS[5]

        mosquitto_passwd(pw, {"carol": "c4r0l"}, create=False)
        with open(acl, "w") as f:
            f.write(ACL_AFTER)
        mark = hup()
        wait_for(lambda: len(re.findall(r"worker=\d event='password file reloaded'", n.log(mark))) == 2
                 and len(re.findall(r"worker=\d event='ACL file reloaded'", n.log(mark))) == 2, 20,
                 what="both workers reloaded")
        for c in clients:
            assert c.barrier() == []  # nobody was dropped
        c0.send(Subscribe(2, [Subscription("after/x", 0)]))
        assert c0.expect(SubAck).reason_codes == [0]
        for i in range(4):  # whichever worker takes it
            assert attempt(n.port, 5, f"a13-carol-{i}", "carol", b"c4r0l") == 0
        assert attempt(n.port, 5, "a13-alice-again", "alice", b"secret") == 0

        # a bad password file and a bad ACL file: both kept as they were. This time SIGHUP
        # goes to circusd itself (mosquitto's `kill -HUP`): circus.ini's send_hup passes it on
        # to the processes instead of restarting them
        with open(pw, "a") as f:
            f.write("dave:plaintext\n")
        with open(acl, "a") as f:
            f.write("frobnicate x\n")
        pids = set(n.children())
        mark = n._log_size()
        os.kill(n.proc.pid, signal.SIGHUP)
        wait_for(lambda: len(re.findall(rf"password file not reloaded.*{re.escape(pw)}:3:", n.log(mark))) == 2
                 and len(re.findall(rf"ACL file not reloaded.*{re.escape(acl)}:4:", n.log(mark))) == 2, 20,
                 what="both refusals logged")
        for i in range(4):
            assert attempt(n.port, 5, f"a13-carol-b{i}", "carol", b"c4r0l") == 0
        for c in clients:
            assert c.barrier() == []
        assert set(n.children()) == pids  # no process was restarted (router included)
        c0.send(Subscribe(3, [Subscription("after/y", 0)]))
        assert c0.expect(SubAck).reason_codes == [0]
        for c in clients:
            c.close()


def test_bad_password_file_stops_the_worker():
    """A line that is not understood: the worker exits with status 3 naming file and
    line instead of serving without the passwords it was given (as for the ACL file)."""
    d = tmpdir()
    path = mosquitto_passwd(os.path.join(d, "passwd"), {"alice": "secret"})
    with open(path, "a") as f:
        f.write("bob:plain-text-password\n")
    env = dict(os.environ, SHOAL_PASSWORD_FILE=path, SHOAL_PORT="0", SHOAL_WORKERS="1",
               SHOAL_DATA_DIR=os.path.join(d, "data"), SHOAL_PERSISTENCE="false")
    proc = subprocess.run([sys.executable, "-m", "worker", "--wid", "1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert f"{path}:2: user 'bob': hash should start with $7$" in proc.stderr
    assert "Traceback" not in proc.stderr
