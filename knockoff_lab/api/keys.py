"""API keys of a served prediction API, hashed at rest: a JSON file mapping the SHA-256 of each
key to its client (name, optional own budget, whether it is the owner's). Keys are random
tokens, so one unsalted SHA-256 is enough: the file alone lets nobody in. A presented key is
hashed and compared with every entry by `hmac.compare_digest`: no early exit, no timing of
how much of a key was right. Keys are printed once, when made, and never logged.

    {"clients": [{"sha256": "<64 hex>", "client": "alice", "budget": 2000, "owner": false}]}
"""

import fcntl
import hashlib
import hmac
import json
import os
import secrets
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from knockoff_lab.core.errors import ConfigError


@dataclass(frozen=True)
class KeyEntry:
    sha256: str
    client: str
    budget: int | None = None  # this client's own cap, below the deployment's budget
    owner: bool = False  # owner-side endpoints: evaluation, everyone's books


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def read_keys(path: str | Path) -> list[KeyEntry]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"keys file {path} does not exist: make a key with "
            "`python main.py serve --config CONFIG --add_client NAME`"
        )
    try:
        entries = [KeyEntry(**entry) for entry in json.loads(path.read_text())["clients"]]
    except (ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"keys file {path} is not a keys file ({err})") from None
    for entry in entries:
        if len(entry.sha256) != 64 or any(c not in "0123456789abcdef" for c in entry.sha256):
            raise ConfigError(f"keys file {path}: client {entry.client!r} has no SHA-256 hex")
        if entry.budget is not None and entry.budget < 1:
            raise ConfigError(f"keys file {path}: client {entry.client!r} budget must be >= 1")
    names = [e.client for e in entries]
    if len(set(names)) != len(names):
        raise ConfigError(f"keys file {path} names a client twice")
    return entries


def add_client(
    path: str | Path, client: str, budget: int | None = None, owner: bool = False
) -> str:
    """Make a key for a new `client`, store its hash (atomically, the file private to its
    owner) and return the key: the only time it is seen. Concurrent calls on one keys file
    take turns (an exclusive lock beside it) and write through their own temporary files, so
    none drops another's key."""
    if not isinstance(client, str) or not client.strip():
        raise ConfigError(f"--add_client needs a client name, got {client!r}")
    if budget is not None and budget < 1:
        raise ConfigError(f"--client_budget must be >= 1 (or absent: no own budget), got {budget}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = os.open(path.with_name(path.name + ".lock"), os.O_RDONLY | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = read_keys(path) if path.exists() else []
        if any(e.client == client for e in entries):
            raise ConfigError(f"keys file {path} already has a client {client!r}")
        key = secrets.token_urlsafe(32)
        entries.append(KeyEntry(key_hash(key), client, budget, owner))
        fd, partial = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:  # mkstemp: readable by its owner only
            json.dump({"clients": [asdict(e) for e in entries]}, f, indent=1)
        os.replace(partial, path)
    finally:
        os.close(lock)  # releases the lock
    return key


class KeyRing:
    def __init__(self, entries: list[KeyEntry]):
        self.entries = entries

    def lookup(self, key: str | None) -> KeyEntry | None:
        """The entry of `key`, compared in constant time with every entry; None if unknown."""
        if not key:
            return None
        presented = key_hash(key).encode()
        found = None
        for entry in self.entries:
            if hmac.compare_digest(presented, entry.sha256.encode()):
                found = entry
        return found
