"""The ledger's queries to detection: the 1-based position, among all of a client's asked
queries, of its first flagged one, set once in the books and never moved; a ledger file made
before the column existed gains it and keeps working. A call killed mid-way is released when
the books next open, a live one never; a named request is answered once; a client's own cap is
enforced in the ledger's transaction."""

import signal
import sqlite3
import subprocess
import sys

import pytest
import torch
from torch import nn

from knockoff_lab.api import Ledger, PredictionAPI
from knockoff_lab.api.ledger import BudgetExhausted, RequestInFlight
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import Defence, QueryBatch
from tests.conftest import REPO
from tests.toy_defence import KillOnMark

OLD_SCHEMA = """
CREATE TABLE clients (
    deployment TEXT, client TEXT, asked INTEGER, answered INTEGER, flagged INTEGER,
    refused INTEGER, PRIMARY KEY (deployment, client));
CREATE TABLE defence_state (
    deployment TEXT, client TEXT, defence INTEGER, state BLOB,
    PRIMARY KEY (deployment, client, defence));
"""


class FlagMarked(Defence):
    """Flags (and answers) every query whose first pixel is marked (> 100); not registered."""

    def apply(self, batch: QueryBatch) -> None:
        batch.flagged |= batch.images.flatten(1)[:, 0] > 100


def queries(n: int, marked: tuple[int, ...] = ()) -> torch.Tensor:
    x = torch.rand(n, 3, 2, 2)
    x[list(marked), 0, 0, 0] = 1000.0
    return x


def api_with_flags(**kwargs) -> PredictionAPI:
    torch.manual_seed(0)  # the same victim, so the same deployment in the books
    victim = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    defences = [FlagMarked(), KillOnMark()]
    return PredictionAPI.around(victim, 4, defences=defences, batch_size=3, **kwargs)


def test_first_flagged_counts_all_the_clients_queries_and_never_moves():
    api = api_with_flags()
    api.answer(queries(5), "alice")
    assert api.record("alice").first_flagged is None  # nothing flagged yet
    api.answer(queries(7, marked=(4, 5)), "alice")  # in the call's second API batch of 3
    assert api.record("alice").first_flagged == 5 + 4 + 1
    api.answer(queries(2, marked=(0,)), "alice")
    record = api.record("alice")
    assert (record.asked, record.flagged, record.first_flagged) == (14, 3, 10)  # set once
    api.answer(queries(3, marked=(0,)), "bob")
    assert api.record("bob").first_flagged == 1  # per client
    assert [(r.client, r.first_flagged) for r in api.ledger.records()] == [
        ("alice", 10),
        ("bob", 1),
    ]
    assert api.record("carol").first_flagged is None  # no books at all


def test_first_flagged_is_kept_in_the_file_across_api_objects(tmp_path):
    books = tmp_path / "books.sqlite"
    api_with_flags(ledger=books).answer(queries(6, marked=(3,)), "alice")
    again = api_with_flags(ledger=books)
    again.answer(queries(2, marked=(0, 1)), "alice")
    assert again.record("alice").first_flagged == 4


def test_reserve_returns_what_the_client_had_asked_before():
    ledger = Ledger(None, "deployment")
    assert ledger.reserve("alice", 3).before == 0
    assert ledger.reserve("alice", 5).before == 3
    assert ledger.record("alice").asked == 8
    assert ledger.in_flight("alice") == 8  # counted, not yet settled


KILLED_MID_CALL = """
import torch
from tests.api.test_ledger import api_with_flags, queries
api = api_with_flags(ledger={books!r})
api.answer(queries(5), "alice")
x = queries(4)
x[2, 0, 0, 0] = -1000.0  # KillOnMark: SIGKILL inside the call, after the ledger counted it
api.answer(x, "alice")
"""


def test_a_call_killed_mid_way_is_released_when_the_books_next_open(tmp_path):
    books = tmp_path / "books.sqlite"
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_MID_CALL.format(books=str(books))],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    with sqlite3.connect(books) as raw:  # as the kill left them: the 4 queries are in flight
        asked, answered, refused = raw.execute(
            "SELECT asked, answered, refused FROM clients"
        ).fetchone()
        (in_flight,) = raw.execute("SELECT SUM(count) FROM in_flight").fetchone()
    raw.close()
    assert (asked, answered, refused, in_flight) == (9, 5, 0, 4)  # they balance even now
    api = api_with_flags(ledger=books)
    record = api.record("alice")  # opening the books releases what the dead process held
    assert (record.asked, record.answered, record.refused) == (5, 5, 0)
    assert api.ledger.in_flight() == 0
    api.answer(queries(4), "alice")
    assert api.record("alice").asked == 9


def test_a_live_processs_call_in_flight_is_never_released(tmp_path):
    books = tmp_path / "books.sqlite"
    mine = Ledger(books, "deployment")
    booked = mine.reserve("alice", 3)
    other = Ledger(books, "deployment")  # another process opening the books: recovers
    assert other.record("alice").asked == 3 and other.in_flight() == 3
    assert [r.asked for r in other.records()] == [3]  # records() recovers too
    mine.settle(booked, 3, 0, 0, {})
    assert (other.record("alice").answered, other.in_flight()) == (3, 0)


def test_a_named_request_is_answered_once_and_only_for_its_own_images():
    api = api_with_flags()
    x = queries(5, marked=(1,))
    first = api.answer(x, "alice", request="round-0:0")
    again = api.answer(x.clone(), "alice", request="round-0:0")
    assert torch.equal(again, first) and again.shape == (5, 4)
    record = api.record("alice")
    assert (record.asked, record.answered, record.flagged) == (5, 5, 1)  # charged once
    api.answer(x, "bob", request="round-0:0")  # requests are per client
    assert api.record("bob").asked == 5
    with pytest.raises(ConfigError, match="'round-0:0' of client 'alice' was answered for other"):
        api.answer(queries(5), "alice", request="round-0:0")
    api.answer(x, "alice")  # unnamed: a new call, charged
    assert api.record("alice").asked == 10


def test_a_named_request_in_flight_is_refused_until_it_settles():
    ledger = Ledger(None, "deployment")
    booked = ledger.reserve("alice", 2, request="r", digest="d")
    with pytest.raises(RequestInFlight, match="'r' of client 'alice' is in flight"):
        ledger.reserve("alice", 2, request="r", digest="d")
    ledger.settle(booked, 2, 0, 0, {}, reply=b"answers")
    assert ledger.reserve("alice", 2, request="r", digest="d").reply == b"answers"
    assert ledger.record("alice").asked == 2


def test_a_clients_own_cap_holds_across_processes_sharing_the_books(tmp_path):
    """Two server processes on one ledger: the other's call lands between this one's look at
    the books and its reservation; the cap still holds, decided inside the transaction."""
    books = tmp_path / "books.sqlite"
    first, second = api_with_flags(ledger=books), api_with_flags(ledger=books)
    reserve = first.ledger.reserve

    def interleaved(*args, **kwargs):
        second.answer(queries(6), "alice", client_budget=10)
        return reserve(*args, **kwargs)

    first.ledger.reserve = interleaved
    with pytest.raises(BudgetExhausted, match="6 asked, 6 more, budget 10"):
        first.answer(queries(6), "alice", client_budget=10)
    assert second.record("alice").asked == 6


def test_a_ledger_file_from_before_first_flagged_gains_the_column(tmp_path):
    books = tmp_path / "old.sqlite"
    api = api_with_flags(ledger=books)  # the books open on first use, not here
    with sqlite3.connect(books) as old:
        old.executescript(OLD_SCHEMA)
        old.execute("INSERT INTO clients VALUES (?, 'alice', 4, 4, 0, 0)", (api.ledger.deployment,))
    old.close()
    record = api.record("alice")
    assert (record.asked, record.answered, record.first_flagged) == (4, 4, None)
    api.answer(queries(3, marked=(1,)), "alice")
    api.answer(queries(1), "bob")  # a new client's row in the migrated table
    assert (api.record("alice").asked, api.record("alice").first_flagged) == (7, 6)
    assert (api.record("bob").asked, api.record("bob").first_flagged) == (1, None)
    second = Ledger(books, api.ledger.deployment)  # another process opening the same file
    assert second.record("alice").first_flagged == 6
    with sqlite3.connect(books) as check:
        columns = [row[1] for row in check.execute("PRAGMA table_info(clients)")]
    check.close()
    assert columns.count("first_flagged") == 1


def test_the_books_and_the_posterior_cache_are_readable_by_the_owner_only(tmp_path):
    """They hold other clients' data (their counts, a stateful defence's query images, the
    victim's answers to their queries), like the keys file: no bit for group or others."""
    api = api_with_flags(ledger=tmp_path / "api/books.sqlite", posterior_cache=str(tmp_path / "p"))
    api.answer(queries(6), "alice")
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".npy" for p in written) and any(p.suffix == ".sqlite" for p in written)
    for path in [*written, *(p for p in (tmp_path / "p").rglob("*") if p.is_dir())]:
        assert path.stat().st_mode & 0o077 == 0, path
