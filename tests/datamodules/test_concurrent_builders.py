"""Two processes building one transfer set (two sweep agents of one config, one cache_dir) both
finish with the same answers, and the API's books show every query asked once."""

import multiprocessing
import queue
import signal
import sqlite3
import time
from pathlib import Path

import numpy as np

from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule
from knockoff_lab.api import PredictionAPI

BUDGET, BATCH = 100, 25
_answer = PredictionAPI.answer


def slow_answer(self, images, *args):
    """A slow API: a builder planning while the other is still asking would ask again."""
    time.sleep(0.3)
    return _answer(self, images, *args)


def builder(victim: str, root: str) -> TransferSetDataModule:
    api = PredictionAPI(victim, posterior_cache=f"{root}/owner", ledger=f"{root}/books.sqlite")
    return TransferSetDataModule(
        api=api,
        pool=CropsPoolDataModule(size=150),
        victim_data=DigitsDataModule(),
        budget=BUDGET,
        cache_dir=f"{root}/cache",
        query_batch_size=BATCH,
    )


def build_in_child(victim: str, root: str, barrier, results) -> None:
    PredictionAPI.answer = slow_answer
    try:
        dm = builder(victim, root)
        barrier.wait(timeout=120)  # both start building together
        dm.setup()
        dm.grow_to(0)
        results.put((dm.answers.float().numpy(), dm.indices, None))
    except BaseException as err:  # noqa: B036 (reported to the test, which fails on it)
        results.put((None, None, repr(err)))


def test_two_builders_of_one_transfer_set_ask_each_query_once(victim_ckpt, tmp_path, monkeypatch):
    """This process is one builder, a spawned one the other (one import of torch, not two)."""
    monkeypatch.setattr(PredictionAPI, "answer", slow_answer)
    spawn = multiprocessing.get_context("spawn")
    barrier, results = spawn.Barrier(2), spawn.Queue()
    child = spawn.Process(
        target=build_in_child, args=(str(victim_ckpt), str(tmp_path), barrier, results)
    )
    child.start()

    def hung(*_):
        raise TimeoutError("a builder hung")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(180)  # also interrupts a wait for the lock
    try:
        dm = builder(str(victim_ckpt), str(tmp_path))
        barrier.wait(timeout=120)
        dm.setup()
        dm.grow_to(0)
        other = results.get(timeout=60)
    except queue.Empty:
        other = (None, None, "the spawned builder sent nothing")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        child.join(timeout=10)
        if child.is_alive():
            child.kill()
    answers, indices, error = other
    assert error is None
    assert np.array_equal(indices, dm.indices)
    assert np.array_equal(answers, dm.answers.float().numpy(), equal_nan=True)  # bitwise
    with sqlite3.connect(tmp_path / "books.sqlite") as books:
        [(asked, answered)] = books.execute("SELECT asked, answered FROM clients").fetchall()
    assert (asked, answered) == (BUDGET, BUDGET)  # not twice the budget
    assert not list(Path(tmp_path / "cache").rglob(".*.tmp"))
