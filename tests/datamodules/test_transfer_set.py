"""The transfer set: one querying pass for every granularity, budget prefixes, resume, cache key."""

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule
from datamodules.transfer_set import PosteriorCache
from lightning_modules.api import PredictionAPI


@pytest.fixture
def counted(monkeypatch):
    """Counts every query the victim answers, across all PredictionAPI instances."""
    calls = {"queries": 0, "fail_after": None}
    original = PredictionAPI.posteriors

    def posteriors(self, images):
        if calls["fail_after"] is not None and calls["queries"] >= calls["fail_after"]:
            raise KeyboardInterrupt("killed")
        calls["queries"] += len(images)
        return original(self, images)

    monkeypatch.setattr(PredictionAPI, "posteriors", posteriors)
    return calls


def transfer(victim_ckpt, budget=100, pool_seed=0, **kwargs) -> TransferSetDataModule:
    dm = TransferSetDataModule(
        victim=str(victim_ckpt), pool=CropsPoolDataModule(size=300, seed=pool_seed),
        victim_data=DigitsDataModule(), budget=budget, cache_dir="cache", query_batch_size=32,
        **kwargs,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup()
    return dm


def test_every_granularity_from_one_querying_pass(victim_ckpt, counted):
    probs = transfer(victim_ckpt, granularity="probs")
    assert counted["queries"] == 100
    label = transfer(victim_ckpt, granularity="label")
    top2 = transfer(victim_ckpt, granularity="top_k", top_k=2)
    assert counted["queries"] == 100  # A_c and top-k re-used A_p's answers
    p, c = probs.split("train").answers, label.split("train").answers
    assert torch.equal(c, torch.nn.functional.one_hot(p.argmax(-1), 10).float())
    assert (top2.split("train").answers > 0).sum(-1).max() <= 2


def test_budget_prefixes_never_requery(victim_ckpt, counted):
    big = transfer(victim_ckpt, budget=100)
    small = transfer(victim_ckpt, budget=40)
    assert counted["queries"] == 100
    assert torch.equal(small.posteriors, big.posteriors[:40])
    transfer(victim_ckpt, budget=150)
    assert counted["queries"] == 150  # only the 50 new queries were asked


def test_killed_build_resumes_without_requerying(victim_ckpt, counted, tmp_path):
    counted["fail_after"] = 64  # killed after two batches of 32
    with pytest.raises(KeyboardInterrupt):
        transfer(victim_ckpt, budget=100)
    counted["fail_after"] = None
    resumed = transfer(victim_ckpt, budget=100)
    assert counted["queries"] == 100  # 64 before the kill + 36 after: none asked twice
    clean = TransferSetDataModule(
        victim=str(victim_ckpt), pool=CropsPoolDataModule(size=300), victim_data=DigitsDataModule(),
        budget=100, cache_dir=str(tmp_path / "clean"), query_batch_size=32,
    )  # fmt: skip
    clean.prepare_data()
    clean.setup()
    assert torch.equal(resumed.posteriors, clean.posteriors)  # bitwise identical


def test_cache_key_is_victim_pool_and_seed_not_budget_or_granularity(victim_ckpt, tmp_path):
    base = transfer(victim_ckpt).folder
    assert transfer(victim_ckpt, budget=50, granularity="label").folder == base
    assert transfer(victim_ckpt, pool_seed=1).folder != base
    assert transfer(victim_ckpt, seed=1).folder != base
    other = tmp_path / "other.ckpt"
    other.write_bytes(victim_ckpt.read_bytes())
    assert transfer(other).folder == base  # same bytes, same answers
    checkpoint = torch.load(victim_ckpt, weights_only=True)
    checkpoint["state_dict"]["net.fc.bias"] += 1
    torch.save(checkpoint, other)
    assert transfer(other).folder != base


def test_answers_stored_compactly_as_float16_without_pickle(victim_ckpt):
    folder = transfer(victim_ckpt).folder
    chunks = sorted(folder.glob("q*.npy"))
    assert chunks and all(np.load(c, allow_pickle=False).dtype == np.float16 for c in chunks)
    assert not list(folder.glob(".*.tmp"))


def test_splits_histogram_and_balance(victim_ckpt):
    dm = transfer(victim_ckpt, val_fraction=0.2)
    assert len(dm.split("train")) == 80 and len(dm.split("val")) == 20
    assert int(dm.class_histogram().sum()) == 100
    balanced = transfer(victim_ckpt, balance=True)
    labels = torch.cat([answers.argmax(-1) for _, answers in balanced.train_dataloader()])
    assert len(labels) == len(balanced.split("train"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"budget": 0}, "data.budget must be >= 1"),
        ({"budget": 301}, "data.budget 301 exceeds the pool's 300 images"),
        ({"granularity": "top_k", "top_k": 11}, "top_k must be in 1..10"),
        ({"granularity": "rounded", "decimals": -2}, "decimals must be an integer >= 0"),
    ],
)
def test_bad_settings_fail_before_any_query(victim_ckpt, counted, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        transfer(victim_ckpt, **kwargs)
    assert counted["queries"] == 0


def test_victim_checkpoint_errors(victim_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="victim checkpoint missing.ckpt does not exist"):
        transfer("missing.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"\0" * 100)
    with pytest.raises(ConfigError, match="corrupt.ckpt is not a readable checkpoint"):
        transfer(tmp_path / "corrupt.ckpt")
    checkpoint = torch.load(victim_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["num_classes"] = 43
    torch.save(checkpoint, tmp_path / "gtsrb.ckpt")
    with pytest.raises(ConfigError, match="has num_classes=43 but data.victim_data has 10"):
        transfer(tmp_path / "gtsrb.ckpt")


def test_missing_pieces_fill_gaps_in_api_batches(tmp_path):
    cache = PosteriorCache(tmp_path)
    assert cache.missing(70, 32) == [(0, 32), (32, 64), (64, 70)]
    cache.write(32, np.zeros((32, 10), np.float16))
    cache.write(100, np.zeros((20, 10), np.float16))  # beyond the budget: irrelevant
    assert cache.missing(90, 32) == [(0, 32), (64, 90)]
    with pytest.raises(ConfigError, match="holds 0 of 90 answers"):
        cache.read(90)


def test_sharded_querying_answers_each_query_once_and_matches_one_process(
    victim_ckpt, counted, tmp_path
):
    """What DDP ranks do in `setup`: every rank plans from the same cache state, then rank r
    sends API batches r, r + world, ... The union is bitwise the single-process transfer set,
    and no query is asked twice."""
    sharded = TransferSetDataModule(
        victim=str(victim_ckpt), pool=CropsPoolDataModule(size=300), victim_data=DigitsDataModule(),
        budget=100, cache_dir=str(tmp_path / "sharded"), query_batch_size=32,
    )  # fmt: skip
    plan = sharded.unanswered()
    assert plan == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert sharded.answer(plan[1::2]) == 32 + 4
    assert [c[:2] for c in PosteriorCache(sharded.folder).chunks()] == [(32, 64), (96, 100)]
    assert sharded.answer(plan[0::2]) == 64
    assert sharded.unanswered() == []
    assert counted["queries"] == 100
    sharded.setup()
    single = transfer(victim_ckpt, budget=100)
    assert torch.equal(sharded.posteriors, single.posteriors)
