"""Per-client accounting of a prediction API, in SQLite: queries asked, answered, flagged and
refused, the budget left, the position of the client's first flagged query (queries to
detection), and each stateful defence's per-client state. A file survives restarts and is
shared by the processes of one deployment (DDP ranks, a served API's workers); `None` keeps the
books in memory for one process. A file from before `first_flagged` gains the column on opening.

Books are kept per deployment, the victim's bytes with its defences: another defence stack is
another service with books of its own.
"""

import io
import os
import sqlite3
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
"""


class BudgetExhausted(ConfigError):
    """A client asked for more queries than its budget leaves (a served API answers 429)."""


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


def _blob(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class Ledger:
    def __init__(self, path: str | Path | None, deployment: str, budget: int | None = None):
        if budget is not None and budget < 1:
            raise ConfigError(f"budget must be >= 1 query, got {budget}")
        self.path, self.deployment, self.budget = path, deployment, budget
        self._db: sqlite3.Connection | None = None

    @property
    def db(self) -> sqlite3.Connection:
        if self._db is None:  # opened on first use: an API object may be built and never used
            if self.path is not None:  # other clients' books (and queries): the owner's only
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))  # journals copy it
            target = ":memory:" if self.path is None else str(self.path)
            self._db = sqlite3.connect(target, timeout=120, isolation_level=None)
            self._db.executescript(SCHEMA)
            self._migrate()
        return self._db

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
        """Every client's books in this deployment, by client name (a Sybil split shows here)."""
        rows = self.db.execute(
            "SELECT client, asked, answered, flagged, refused, first_flagged FROM clients "
            "WHERE deployment=? ORDER BY client",
            (self.deployment,),
        ).fetchall()
        return [ClientRecord(*row[:5], budget=self.budget, first_flagged=row[5]) for row in rows]

    def reserve(self, client: str, count: int) -> int:
        """Count `count` queries as asked, or refuse them all if they exceed the budget; return
        how many the client had asked before them (read in the same transaction, so exact when
        several processes serve one client)."""
        with self._transaction():
            asked = self.record(client).asked
            if self.budget is not None and asked + count > self.budget:
                raise BudgetExhausted(
                    f"query budget exhausted for client {client!r}: {asked} asked, {count} more, "
                    f"budget {self.budget}"
                )
            self.db.execute(
                "INSERT INTO clients (deployment, client, asked, answered, flagged, refused) "
                "VALUES (?, ?, ?, 0, 0, 0) ON CONFLICT DO UPDATE SET "
                "asked = asked + excluded.asked",
                (self.deployment, client, count),
            )
        return asked

    def release(self, client: str, count: int) -> None:
        """Undo a reservation whose answers were never produced (the API itself failed)."""
        self.db.execute(
            "UPDATE clients SET asked = asked - ? WHERE deployment=? AND client=?",
            (count, self.deployment, client),
        )

    def settle(
        self,
        client: str,
        answered: int,
        flagged: int,
        refused: int,
        states: dict[int, dict],
        first_flagged: int | None = None,
    ) -> None:
        """Add a call's outcome to the books. `first_flagged`: the 1-based position, among all
        the client's asked queries, of this call's first flagged query (None: none flagged);
        kept only if the client had none yet, so it is set once and never moves."""
        with self._transaction():
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
