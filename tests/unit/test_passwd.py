"""Password files: made by the real mosquitto_passwd ($7$ and $6$), and every
kind of bad line refused with path:line."""
import base64
import os
import shutil
import subprocess
import tempfile

import pytest

from worker.passwd import PasswordError, PasswordFile, verify

needs_tool = pytest.mark.skipif(shutil.which("mosquitto_passwd") is None,
                                reason="mosquitto_passwd missing (make install installs mosquitto)")


def made_by_mosquitto(*users, hash_arg=None):
    """A password file written by mosquitto_passwd: users are (name, password)."""
    d = tempfile.mkdtemp(prefix="shoal-pw", dir="/tmp")
    path = os.path.join(d, "passwd")
    for i, (name, password) in enumerate(users):
        cmd = ["mosquitto_passwd"] + (["-H", hash_arg] if hash_arg else []) + (["-c"] if i == 0 else [])
        subprocess.run(cmd + ["-b", path, name, password], check=True, capture_output=True)
    return path


@needs_tool
def test_pbkdf2_file_from_mosquitto_passwd():
    path = made_by_mosquitto(("alice", "secret"), ("bob", "h\u00e9llo w0rld"))
    pw = PasswordFile.load(path)
    assert len(pw) == 2
    alice = pw.get("alice")
    assert alice.kind == 7 and alice.iterations >= 1
    assert verify(alice, b"secret")
    assert not verify(alice, b"Secret")
    assert not verify(alice, b"")
    assert verify(pw.get("bob"), "h\u00e9llo w0rld".encode())
    assert pw.get("carol") is None


@needs_tool
def test_sha512_file_from_mosquitto_passwd():
    path = made_by_mosquitto(("old", "pw6"), hash_arg="sha512")
    entry = PasswordFile.load(path).get("old")
    assert entry.kind == 6 and entry.cheap
    assert verify(entry, b"pw6") and not verify(entry, b"pw7")


def test_comments_blank_lines_and_blanks_are_skipped():
    salt = base64.b64encode(b"s" * 12).decode()
    digest = base64.b64encode(b"h" * 64).decode()
    text = f"# users\n\n  u1 : $6${salt}${digest}  \r\n#u2:$6$x$y\n"
    pw = PasswordFile.parse(text, "f")
    assert list(pw.users) == ["u1"]


S = base64.b64encode(b"s" * 12).decode()
H = base64.b64encode(b"h" * 64).decode()


@pytest.mark.parametrize("line, words", [
    ("justaname", "expected username:hash"),
    (f":$6${S}${H}", "empty username"),
    ("bob:", "no password hash"),
    ("bob:plaintext", "plain-text passwords are not accepted"),
    (f"bob:$5${S}${H}", "should start with $7$"),
    (f"bob:$7$0${S}${H}", "iterations '0'"),
    (f"bob:$7$abc${S}${H}", "iterations 'abc'"),
    (f"bob:$7$101${S}", "a $7$ hash is"),
    (f"bob:$6${S}", "a $6$ hash is"),
    (f"bob:$6$!!!!${H}", "salt is not base64"),
    (f"bob:$6${base64.b64encode(b's' * 8).decode()}${H}", "salt is 8 bytes"),
    (f"bob:$6${S}${base64.b64encode(b'h' * 32).decode()}", "hash is 32 bytes"),
])
def test_bad_line_names_file_and_line(line, words):
    text = f"# first\nalice:$6${S}${H}\n{line}\n"
    with pytest.raises(PasswordError) as e:
        PasswordFile.parse(text, "/etc/shoal/passwd")
    assert str(e.value).startswith("/etc/shoal/passwd:3: ")
    assert words in str(e.value)


def test_duplicate_user_is_refused():
    with pytest.raises(PasswordError, match=r"f:2: user 'a' appears twice"):
        PasswordFile.parse(f"a:$6${S}${H}\na:$6${S}${H}\n", "f")


def test_missing_file():
    with pytest.raises(PasswordError, match="cannot read password file"):
        PasswordFile.load("/nonexistent/shoal-passwd")


def test_unknown_users_are_checked_at_the_cost_of_the_files_hashes():
    text = f"a:$7$5000${S}${H}\nb:$7$101${S}${H}\nc:$6${S}${H}\n"
    pw = PasswordFile.parse(text, "f")
    assert pw.dummy.kind == 7 and pw.dummy.iterations == 5000
    assert not verify(pw.dummy, b"anything")
    assert PasswordFile.parse(f"c:$6${S}${H}\n").dummy.iterations == 101
