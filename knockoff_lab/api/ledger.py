"""Per-client accounting of a prediction API, in SQLite: queries asked, answered, flagged and
refused, the budget left, the position of the client's first flagged query (queries to
detection), each stateful defence's per-client state, and the recent replies to requests that
carry an idempotency key. A file survives restarts and kills and is shared by the processes of
one deployment (DDP ranks, served API workers); `None` keeps the books in memory for one process.
A file from before `first_flagged` gains the column on opening.

Books are kept per deployment, the victim's bytes with its defences: another defence stack is
another service with books of its own.

**A call is one recoverable unit.** `reserve` counts the queries as asked and writes an
`in_flight` row naming the process's session; `settle` (answers made) or `release` (the API
failed) removes the row in the same transaction that moves the counts, so at every instant
asked == answered + refused + the queries of `in_flight` rows. Each process holds an exclusive
`flock` on its session file (`<ledger>.sessions/<id>`) while it lives; the kernel drops it when
the process dies, even by SIGKILL. `recover()` (run when the books open, before a refusal and
before the owner reads everyone's books) releases the rows of sessions whose lock is free: a
killed process's queries were never answered, so they are not charged.

**A retried request is answered from the books.** A call with a `request` name stores its answers
with the name and a digest of its images, in the settling transaction; the same name with the
same images is answered with the stored answers and charged nothing, the same name with other
images is refused. The last `REPLIES_KEPT` replies of each client are kept.
"""

import fcntl
import io
import os
import sqlite3
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from knockoff_lab.core.errors import ConfigError

SCHEMA = """
CREATE TABLE IF NOT EXISTS clients (
    deployment TEXT, client TEXT, asked INTEGER, answered INTEGER, flagged INTEGER,
    refused INTEGER, first_flagged INTEGER, PRIMARY KEY (deployment, client));
CREATE TABLE IF NOT EXISTS defence_state (
    deployment TEXT, client TEXT, defence INTEGER, state BLOB,
    PRIMARY KEY (deployment, client, defence));
CREATE TABLE IF NOT EXISTS in_flight (
    id INTEGER PRIMARY KEY, deployment TEXT, client TEXT, count INTEGER, session TEXT,
    request TEXT);
CREATE TABLE IF NOT EXISTS replies (
    id INTEGER PRIMARY KEY, deployment TEXT, client TEXT, request TEXT, digest TEXT,
    answers BLOB, UNIQUE (deployment, client, request));
"""
REPLIES_KEPT = 64  # per client: a retry comes right after the failure it repairs


class BudgetExhausted(ConfigError):
    """A client asked for more queries than its budget leaves (a served API answers 429)."""


class RequestInFlight(ConfigError):
    """A request with this name is being answered by a live process (a served API answers 409:
    retry, and the books answer it)."""


@dataclass
class ClientRecord:
    client: str
    asked: int = 0
    answered: int = 0
    flagged: int = 0
    refused: int = 0
    budget: int | None = None
    first_flagged: int | None = None  # 1-based position among its asked queries; None: never

    @property
    def budget_left(self) -> int | None:
        return None if self.budget is None else self.budget - self.asked


@dataclass
class Reservation:
    """Queries counted as asked and not yet settled (`id`), or a request already answered
    (`reply`: its stored answers, nothing charged)."""

    client: str
    count: int
    before: int  # the client's asked queries before these
    id: int | None = None
    request: str | None = None
    digest: str | None = None
    reply: bytes | None = None


def _blob(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _end_session(fd: int, path: Path, pid: int) -> None:
    if os.getpid() == pid:  # not in a forked child, which shares the lock until it exits
        path.unlink(missing_ok=True)
        os.close(fd)  # drops the lock


class Ledger:
    def __init__(self, path: str | Path | None, deployment: str, budget: int | None = None):
        if budget is not None and budget < 1:
            raise ConfigError(f"budget must be >= 1 query, got {budget}")
        self.path, self.deployment, self.budget = path, deployment, budget
        self.session = "memory"  # a file's books: this process's session, named when opened
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:  # opened on first use: an API object may be built and never used
            if self.path is not None:  # other clients' books (and queries): the owner's only
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # journals copy it
                self._begin_session()
            target = ":memory:" if self.path is None else str(self.path)
            self._db = sqlite3.connect(target, timeout=120, isolation_level=None)
            self._db.executescript(SCHEMA)
            self._migrate()
            self.recover()
        return self._db

    @property
    def sessions(self) -> Path:
        return Path(f"{self.path}.sessions")

    def _begin_session(self) -> None:
        """This process's session file, locked while it lives (its in-flight rows are live)."""
        self.sessions.mkdir(mode=0o700, exist_ok=True)
        self.session = uuid.uuid4().hex
        path = self.sessions / self.session
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        weakref.finalize(self, _end_session, fd, path, os.getpid())

    def _alive(self, session: str) -> bool:
        """Whether `session`'s process still holds its lock."""
        try:
            fd = os.open(self.sessions / session, os.O_RDWR)
        except FileNotFoundError:
            return False  # it ended: a row it left belongs to a call that never finished
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False

    def recover(self) -> int:
        """Release the in-flight queries of sessions whose process died (never answered, so not
        charged); return how many."""
        sessions = [
            s
            for (s,) in self.db.execute(
                "SELECT DISTINCT session FROM in_flight WHERE session != ?", (self.session,)
            )
        ]
        released = 0
        for session in (s for s in sessions if not self._alive(s)):
            with self._transaction():
                rows = self.db.execute(
                    "SELECT id, deployment, client, count FROM in_flight WHERE session=?",
                    (session,),
                ).fetchall()
                for row_id, deployment, client, count in rows:
                    self._drop(row_id, deployment, client, count)
                    released += count
            (self.sessions / session).unlink(missing_ok=True)
        return released

    def _migrate(self) -> None:
        """Bring a file made by an earlier version up to the schema: books written before
        `first_flagged` existed gain the column (NULL: no flag known), under the write lock, so
        two processes opening one old file do not both add it."""

        def missing() -> bool:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(clients)")}
            return "first_flagged" not in columns

        if missing():  # checked again under the lock: another process may have just added it
            with self._transaction():
                if missing():
                    self._db.execute("ALTER TABLE clients ADD COLUMN first_flagged INTEGER")

    def record(self, client: str) -> ClientRecord:
        row = self.db.execute(
            "SELECT asked, answered, flagged, refused, first_flagged FROM clients WHERE "
            "deployment=? AND client=?",
            (self.deployment, client),
        ).fetchone()
        *counts, first = row or (0, 0, 0, 0, None)
        return ClientRecord(client, *counts, budget=self.budget, first_flagged=first)

    def records(self) -> list[ClientRecord]:
        """Every client's books in this deployment, by client name (a Sybil split shows here),
        after releasing what killed processes left in flight."""
        self.recover()
        rows = self.db.execute(
            "SELECT client, asked, answered, flagged, refused, first_flagged FROM clients "
            "WHERE deployment=? ORDER BY client",
            (self.deployment,),
        ).fetchall()
        return [ClientRecord(*row[:5], budget=self.budget, first_flagged=row[5]) for row in rows]

    def in_flight(self, client: str | None = None) -> int:
        """Queries counted as asked and not yet settled or released (of `client`, or all)."""
        where, args = "deployment=?", [self.deployment]
        if client is not None:
            where, args = where + " AND client=?", [*args, client]
        (count,) = self.db.execute(
            f"SELECT SUM(count) FROM in_flight WHERE {where}", args
        ).fetchone()
        return count or 0

    def reserve(
        self,
        client: str,
        count: int,
        cap: int | None = None,
        request: str | None = None,
        digest: str | None = None,
    ) -> Reservation:
        """Count `count` queries as asked, in flight in this session, or refuse them all if they
        exceed the deployment's budget or `cap` (the client's own); `request` with the images'
        `digest`: a request answered before returns its stored reply instead, charging nothing.
        One transaction: exact when several processes serve one client."""
        for attempt in (0, 1):
            try:
                with self._transaction():
                    return self._reserve(client, count, cap, request, digest)
            except (BudgetExhausted, RequestInFlight):
                if attempt or not self.recover():  # a dead process's queries held it
                    raise
        raise AssertionError("unreachable")

    def _reserve(self, client, count, cap, request, digest) -> Reservation:
        asked = self.record(client).asked
        if request is not None:
            stored = self.db.execute(
                "SELECT digest, answers FROM replies WHERE deployment=? AND client=? AND request=?",
                (self.deployment, client, request),
            ).fetchone()
            if stored is not None and stored[0] != digest:
                raise ConfigError(
                    f"request {request!r} of client {client!r} was answered for other images: "
                    "a request name may not be reused"
                )
            if stored is not None:
                return Reservation(client, count, asked, request=request, reply=stored[1])
            if self.db.execute(
                "SELECT 1 FROM in_flight WHERE deployment=? AND client=? AND request=?",
                (self.deployment, client, request),
            ).fetchone():
                raise RequestInFlight(f"request {request!r} of client {client!r} is in flight")
        budgets = [b for b in (self.budget, cap) if b is not None]
        if budgets and asked + count > min(budgets):
            raise BudgetExhausted(
                f"query budget exhausted for client {client!r}: {asked} asked, {count} more, "
                f"budget {min(budgets)}"
            )
        self.db.execute(
            "INSERT INTO clients (deployment, client, asked, answered, flagged, refused) "
            "VALUES (?, ?, ?, 0, 0, 0) ON CONFLICT DO UPDATE SET asked = asked + excluded.asked",
            (self.deployment, client, count),
        )
        row_id = self.db.execute(
            "INSERT INTO in_flight (deployment, client, count, session, request) "
            "VALUES (?, ?, ?, ?, ?)",
            (self.deployment, client, count, self.session, request),
        ).lastrowid
        return Reservation(client, count, asked, row_id, request, digest)

    def release(self, reservation: Reservation) -> None:
        """Undo a reservation whose answers were never produced (the API itself failed)."""
        if reservation.id is not None:
            with self._transaction():
                self._drop(reservation.id, self.deployment, reservation.client, reservation.count)

    def _drop(self, row_id: int, deployment: str, client: str, count: int) -> None:
        if self.db.execute("DELETE FROM in_flight WHERE id=?", (row_id,)).rowcount:
            self.db.execute(
                "UPDATE clients SET asked = asked - ? WHERE deployment=? AND client=?",
                (count, deployment, client),
            )

    def settle(
        self,
        reservation: Reservation,
        answered: int,
        flagged: int,
        refused: int,
        states: dict[int, dict],
        first_flagged: int | None = None,
        reply: bytes | None = None,
    ) -> None:
        """Add a call's outcome to the books and end its reservation, in one transaction.
        `first_flagged`: the 1-based position, among all the client's asked queries, of this
        call's first flagged query (None: none flagged); kept only if the client had none yet,
        so it is set once and never moves. `reply`: the answers, kept for a retry of the
        reservation's request."""
        client = reservation.client
        with self._transaction():
            if not self.db.execute(
                "DELETE FROM in_flight WHERE id=?", (reservation.id,)
            ).rowcount:  # released meanwhile by a process that judged this one dead
                raise ConfigError(f"ledger {self.path}: reservation {reservation.id} was released")
            self.db.execute(
                "UPDATE clients SET answered = answered + ?, flagged = flagged + ?, "
                "refused = refused + ?, first_flagged = COALESCE(first_flagged, ?) "
                "WHERE deployment=? AND client=?",
                (answered, flagged, refused, first_flagged, self.deployment, client),
            )
            for index, state in states.items():
                self.db.execute(
                    "INSERT OR REPLACE INTO defence_state VALUES (?, ?, ?, ?)",
                    (self.deployment, client, index, _blob(state)),
                )
            if reservation.request is not None and reply is not None:
                self._keep_reply(client, reservation.request, reservation.digest, reply)

    def _keep_reply(self, client: str, request: str, digest: str, reply: bytes) -> None:
        self.db.execute(
            "INSERT INTO replies (deployment, client, request, digest, answers) "
            "VALUES (?, ?, ?, ?, ?)",
            (self.deployment, client, request, digest, reply),
        )
        self.db.execute(
            "DELETE FROM replies WHERE deployment=? AND client=? AND id NOT IN (SELECT id FROM "
            "replies WHERE deployment=? AND client=? ORDER BY id DESC LIMIT ?)",
            (self.deployment, client, self.deployment, client, REPLIES_KEPT),
        )

    def states(self, client: str, count: int) -> dict[int, dict[str, Any]]:
        """Each defence's saved state for `client` (an empty dict when it has none yet)."""
        rows = self.db.execute(
            "SELECT defence, state FROM defence_state WHERE deployment=? AND client=?",
            (self.deployment, client),
        ).fetchall()
        saved = {i: torch.load(io.BytesIO(blob), weights_only=True) for i, blob in rows}
        return {i: saved.get(i, {}) for i in range(count)}

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")  # one writer at a time, across processes too
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")
