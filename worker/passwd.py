"""Password files in mosquitto_passwd's format, so a file made with
``mosquitto_passwd`` works unchanged.

One ``username:hash`` a line; ``#`` starts a comment line, blank lines are
skipped, blanks around the user name and the hash are trimmed (as mosquitto's
``pwfile__parse``). The hashes, as mosquitto 2.0 writes and checks them
(``src/password_mosq.c``, ``pw__hash``)::

    $7$<iterations>$<base64 salt>$<base64 hash>   PBKDF2-HMAC-SHA512 (mosquitto_passwd's default)
    $6$<base64 salt>$<base64 hash>                SHA512(password + salt) (mosquitto 1.6 and older)

The salt is 12 bytes and the hash 64. Where mosquitto drops a line it does
not understand with a log line and goes on, Shoal refuses the whole file
with ``path:line`` (a half-loaded password file is worse than none: at start
the worker does not serve, on reload the previous file stays in force).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from dataclasses import dataclass
from os import PathLike
from pathlib import Path

__all__ = ["PasswordEntry", "PasswordError", "PasswordFile", "verify"]

SALT_LEN = 12
HASH_LEN = 64
MAX_ITERATIONS = 10_000_000  # a file asking more would stall every login for seconds


class PasswordError(ValueError):
    """A bad password file: ``path:line: message``."""

    def __init__(self, message: str, path: str | None = None, line: int | None = None):
        self.message = message
        self.path = path
        self.line = line
        where = path or "<password file>"
        if line is not None:
            where = f"{where}:{line}"
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True, slots=True)
class PasswordEntry:
    kind: int  # 6 (salted SHA512) or 7 (PBKDF2-SHA512)
    iterations: int  # 0 for kind 6
    salt: bytes
    digest: bytes
    text: str  # the hash as written in the file (identifies this version of the entry)

    @property
    def cheap(self) -> bool:
        """One SHA512 (kind 6): cheaper to compute in place than to hand to a thread."""
        return self.kind == 6


def _b64(text: str, what: str, length: int) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{what} is not base64") from None
    if len(raw) != length:
        raise ValueError(f"{what} is {len(raw)} bytes, mosquitto_passwd writes {length}")
    return raw


def parse_hash(text: str) -> PasswordEntry:
    """One ``$7$...`` or ``$6$...`` hash; ValueError says what is wrong."""
    parts = text.split("$")
    if len(parts) < 2 or parts[0] != "" or parts[1] not in ("6", "7"):
        raise ValueError("hash should start with $7$ (PBKDF2-SHA512) or $6$ (SHA512); "
                         "plain-text passwords are not accepted (hash them with mosquitto_passwd -U)")
    if parts[1] == "7":
        if len(parts) != 5:
            raise ValueError("a $7$ hash is $7$<iterations>$<salt>$<hash>")
        it = parts[2]
        if not it.isdigit() or not 1 <= int(it) <= MAX_ITERATIONS:
            raise ValueError(f"iterations {it!r} should be a number from 1 to {MAX_ITERATIONS}")
        return PasswordEntry(7, int(it), _b64(parts[3], "salt", SALT_LEN), _b64(parts[4], "hash", HASH_LEN), text)
    if len(parts) != 4:
        raise ValueError("a $6$ hash is $6$<salt>$<hash>")
    return PasswordEntry(6, 0, _b64(parts[2], "salt", SALT_LEN), _b64(parts[3], "hash", HASH_LEN), text)


def digest(entry: PasswordEntry, password: bytes) -> bytes:
    if entry.kind == 7:
        return hashlib.pbkdf2_hmac("sha512", password, entry.salt, entry.iterations)
    return hashlib.sha512(password + entry.salt).digest()


def verify(entry: PasswordEntry, password: bytes) -> bool:
    """Does ``password`` match? (CPU-bound for $7$: call it off the event loop.)"""
    return hmac.compare_digest(digest(entry, password), entry.digest)


class PasswordFile:
    """The users of one password file."""

    __slots__ = ("path", "users", "dummy")

    def __init__(self, users: dict[str, PasswordEntry], path: str | None = None):
        self.users = users
        self.path = path
        # checked for a username the file does not have, at the cost of the file's own
        # hashes, so that an unknown user answers as slowly as a known one (no user
        # enumeration by timing)
        rounds = max((e.iterations for e in users.values() if e.kind == 7), default=DUMMY.iterations)
        self.dummy = PasswordEntry(7, rounds, DUMMY.salt, DUMMY.digest, "")

    def __len__(self) -> int:
        return len(self.users)

    def get(self, username: str) -> PasswordEntry | None:
        return self.users.get(username)

    @classmethod
    def parse(cls, text: str, path: str | None = None) -> PasswordFile:
        users: dict[str, PasswordEntry] = {}
        for lineno, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, rest = line.partition(":")
            user, rest = user.strip(), rest.strip()
            if not sep:
                raise PasswordError("expected username:hash", path, lineno)
            if not user:
                raise PasswordError("empty username", path, lineno)
            if len(user.encode()) > 65535:
                raise PasswordError("username longer than 65535 bytes", path, lineno)
            if not rest:
                raise PasswordError(f"no password hash for user {user!r}", path, lineno)
            if user in users:
                raise PasswordError(f"user {user!r} appears twice", path, lineno)
            try:
                users[user] = parse_hash(rest)
            except ValueError as e:
                raise PasswordError(f"user {user!r}: {e}", path, lineno) from None
        return cls(users, path)

    @classmethod
    def load(cls, path: str | PathLike) -> PasswordFile:
        name = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise PasswordError(f"cannot read password file: {e}", name) from None
        return cls.parse(text, name)


# Compared against for a username the file does not have, so that an unknown
# user costs as long as a known one (no user enumeration by timing).
DUMMY = PasswordEntry(7, 101, b"\0" * SALT_LEN, b"\0" * HASH_LEN, "")
