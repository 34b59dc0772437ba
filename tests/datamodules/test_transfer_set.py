"""The transfer set: it holds exactly what the API returned, the API enforces the budget, the
victim is computed once per image for every granularity, budgets share prefixes, a killed build
resumes without asking twice, rounds are stored and read back, DDP shards the API batches."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule
from datamodules.rounds import Round
from knockoff_lab.api import PredictionAPI
from knockoff_lab.attacks import RandomSampling
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import DetectorFilter, LabelOnly, Rounded, TopK


@pytest.fixture
def counted(monkeypatch):
    """Counts the images the victim computes (owner side) and can kill the attack after
    `fail_after` queries were asked through the door."""
    calls = {"victim": 0, "asked": 0, "fail_after": None}
    run_victim, answer = PredictionAPI._run_victim, PredictionAPI.answer

    def counting_victim(self, images):
        calls["victim"] += len(images)
        return run_victim(self, images)

    def killable_answer(self, images, *args):
        if calls["fail_after"] is not None and calls["asked"] >= calls["fail_after"]:
            raise KeyboardInterrupt("killed")
        answers = answer(self, images, *args)
        calls["asked"] += len(images)  # counted once the API has answered
        return answers

    monkeypatch.setattr(PredictionAPI, "_run_victim", counting_victim)
    monkeypatch.setattr(PredictionAPI, "answer", killable_answer)
    return calls


class FlagAll(torch.nn.Module):
    """A detector giving P(OOD) = 1 to every image."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return torch.ones(len(images))


def api(victim_ckpt, defences=(), **kwargs) -> PredictionAPI:
    kwargs = {"posterior_cache": "owner", "ledger": "books.sqlite", **kwargs}
    return PredictionAPI(str(victim_ckpt), list(defences), **kwargs)


def transfer(victim_ckpt, budget=100, defences=(), pool_seed=0, api_options=None, **kwargs):
    kwargs = {"cache_dir": "cache", **kwargs}
    dm = TransferSetDataModule(
        api=api(victim_ckpt, defences, **(api_options or {})),
        pool=CropsPoolDataModule(size=300, seed=pool_seed),
        victim_data=DigitsDataModule(),
        budget=budget,
        query_batch_size=32,
        **kwargs,
    )
    dm.setup()
    dm.grow_to(0)
    return dm


def pool_images(dm) -> torch.Tensor:
    pool = dm.pool.split("pool")
    return torch.stack([pool[int(i)] for i in dm.indices])


STACKS = {
    "probs": [],
    "label": [LabelOnly()],
    "top2": [TopK(2)],
    "rounded": [Rounded(1)],
    "guarded-top2": [DetectorFilter(FlagAll(), 0.5, "decoy"), TopK(2)],
}


@pytest.mark.parametrize("stack", STACKS)
def test_transfer_set_holds_exactly_what_the_api_answered(victim_ckpt, stack):
    dm = transfer(victim_ckpt, defences=STACKS[stack])
    assert len(dm.indices) == 100 and len(set(dm.indices.tolist())) == 100
    fresh = api(victim_ckpt, STACKS[stack], posterior_cache=None, ledger=None)
    expected = torch.cat([fresh.answer(chunk) for chunk in pool_images(dm).split(32)])
    assert torch.equal(dm.answers.float(), expected)  # bitwise, stored as returned
    train, val = dm.split("train"), dm.split("val")
    assert len(train) + len(val) == 100
    rows = torch.cat([train.rows, val.rows])
    assert torch.equal(torch.cat([train.answers, val.answers]), expected[rows])
    image, answer = train[0]
    assert torch.equal(image, pool_images(dm)[train.rows[0]]) and torch.equal(
        answer, expected[train.rows[0]]
    )


def test_the_victim_runs_once_per_image_for_every_granularity(victim_ckpt, counted):
    probs = transfer(victim_ckpt)
    label = transfer(victim_ckpt, defences=[LabelOnly()])
    top2 = transfer(victim_ckpt, defences=[TopK(2)])
    assert counted["victim"] == 100  # the owner's cache served label and top-2
    assert counted["asked"] == 300  # but each attack asked the API for its answers
    assert label.folder != probs.folder != top2.folder  # the attacker stores answers only
    p = probs.answers.float()
    assert torch.equal(label.answers.float(), torch.nn.functional.one_hot(p.argmax(-1), 10).float())


def test_the_api_enforces_the_budget_and_a_rerun_asks_only_what_is_missing(victim_ckpt, counted):
    with pytest.raises(ConfigError, match="budget exhausted for client 'transfer-.*': 32 asked"):
        transfer(victim_ckpt, budget=100, api_options={"budget": 50})
    assert counted["asked"] == 32  # the second API batch of 32 would have exceeded 50
    dm = transfer(victim_ckpt, budget=100, api_options={"budget": 100})
    assert counted["asked"] == 100  # 32 stored before, 68 after: none asked twice
    record = dm.api.record(dm.client)
    assert (record.asked, record.answered, record.budget_left) == (100, 100, 0)


def test_budget_prefixes_never_requery(victim_ckpt, counted):
    big = transfer(victim_ckpt, budget=100)
    small = transfer(victim_ckpt, budget=40)
    assert counted["asked"] == 100 and small.folder == big.folder
    assert torch.equal(small.answers, big.answers[:40])
    assert np.array_equal(small.indices, big.indices[:40])
    transfer(victim_ckpt, budget=150)
    assert counted["asked"] == 150  # only the 50 new queries were asked


def test_killed_build_resumes_without_requerying(victim_ckpt, counted, tmp_path):
    counted["fail_after"] = 64  # killed after two API batches of 32
    with pytest.raises(KeyboardInterrupt):
        transfer(victim_ckpt, budget=100)
    counted["fail_after"] = None
    resumed = transfer(victim_ckpt, budget=100)
    assert counted["asked"] == 100  # 64 before the kill + 36 after: none asked twice
    clean = transfer(
        victim_ckpt,
        budget=100,
        cache_dir=str(tmp_path / "clean"),
        api_options={"posterior_cache": None, "ledger": None},
    )
    assert torch.equal(resumed.answers, clean.answers)  # bitwise identical


def test_cache_key_is_api_pool_attack_and_seed_not_budget(victim_ckpt, tmp_path):
    base = transfer(victim_ckpt).folder
    assert transfer(victim_ckpt, budget=50).folder == base
    assert transfer(victim_ckpt, pool_seed=1).folder != base
    assert transfer(victim_ckpt, seed=1).folder != base
    assert transfer(victim_ckpt, attack=RandomSampling(rounds=2)).folder != base
    assert transfer(victim_ckpt, client="alice").folder != base
    other = tmp_path / "other.ckpt"
    other.write_bytes(victim_ckpt.read_bytes())
    assert transfer(other).folder == base  # same bytes, same answers
    checkpoint = torch.load(victim_ckpt, weights_only=True)
    checkpoint["state_dict"]["net.fc.bias"] += 1
    torch.save(checkpoint, other)
    assert transfer(other).folder != base


def test_answers_stored_losslessly_without_pickle(victim_ckpt):
    for defences, dtype in (
        ([], np.float16),
        ([LabelOnly()], np.float16),
        ([Rounded(1)], np.float32),
    ):
        folder = transfer(victim_ckpt, defences=defences).folder
        chunks = sorted(folder.glob("round-000/a*.npy"))
        assert len(chunks) == 4 and all(
            np.load(c, allow_pickle=False).dtype == dtype for c in chunks
        )
        assert not list(folder.rglob(".*.tmp"))


def test_rounds_of_random_sampling_ask_the_same_queries_in_the_same_order(victim_ckpt):
    one = transfer(victim_ckpt, budget=90)
    three = transfer(victim_ckpt, budget=90, attack=RandomSampling(rounds=3))
    assert three.rounds_done == 1 and len(three.indices) == 30  # later rounds wait for training
    three.grow_to(2)
    assert sorted(p.name for p in three.folder.glob("round-*")) == [
        "round-000",
        "round-001",
        "round-002",
    ]
    assert np.array_equal(three.indices, one.indices)
    assert torch.equal(three.answers, one.answers)
    assert len(three.split("train")) + len(three.split("val")) == 90


def test_splits_histogram_and_balance(victim_ckpt):
    dm = transfer(victim_ckpt, val_fraction=0.2)
    assert len(dm.split("train")) == 80 and len(dm.split("val")) == 20
    assert set(dm.split("train").rows.tolist()).isdisjoint(dm.split("val").rows.tolist())
    histogram = dm.class_histogram()
    assert torch.equal(histogram, torch.bincount(dm.answers.float().argmax(-1), minlength=10))
    balanced = transfer(victim_ckpt, balance=True)
    labels = torch.cat([answers.argmax(-1) for _, answers in balanced.train_dataloader()])
    assert len(labels) == len(balanced.split("train"))
    counts = torch.bincount(labels, minlength=10)
    natural = torch.bincount(balanced.split("train").answers.argmax(-1), minlength=10)
    assert counts.float().std() < natural.float().std()  # rarer classes drawn more often


def test_refused_queries_are_not_trained_on(victim_ckpt):
    class FlagOdd(torch.nn.Module):
        def forward(self, x):
            return (torch.arange(len(x)) % 2).float()

    dm = transfer(victim_ckpt, defences=[DetectorFilter(FlagOdd())])
    refused = dm.answers.isnan().any(-1)
    assert int(refused.sum()) == 50
    rows = torch.cat([dm.split("train").rows, dm.split("val").rows])
    assert len(rows) == 50 and not refused[rows].any()
    assert int(dm.class_histogram().sum()) == 50
    with pytest.raises(ConfigError, match="the API refused 100 of 100 queries"):
        transfer(victim_ckpt, defences=[DetectorFilter(FlagAll(), 0.5)], seed=3)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"budget": 0}, "data.budget must be >= 1"),
        ({"budget": 301}, "data.budget 301 exceeds the pool's 300 images"),
        ({"val_fraction": 1.0}, r"data.val_fraction must be in \[0, 1\)"),
        ({"epochs_per_round": 0}, "data.epochs_per_round must be >= 1"),
        ({"sybils": 0}, "data.sybils must be >= 1 client, got 0"),
        (
            {"val_fraction": 0.001},
            "data.val_fraction 0.001 of data.budget 100 leaves the first "
            "round's 100 queries no validation query: expected val_fraction >= 1/100",
        ),
        (
            {"val_fraction": 0.05, "attack": RandomSampling(rounds=10)},  # 5 of 100, 0 of round 0
            "data.val_fraction 0.05 of data.budget 100 leaves the first round's 10 queries",
        ),
    ],
)
def test_bad_settings_fail_before_any_query(victim_ckpt, counted, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        transfer(victim_ckpt, **kwargs)
    assert counted["asked"] == 0


def test_sybil_accounts_ask_every_nth_query_and_get_the_same_answers(victim_ckpt):
    one = transfer(victim_ckpt, budget=100, client="one")
    split = transfer(victim_ckpt, budget=100, client="many", sybils=3)
    assert split.clients == ["many/sybil-0", "many/sybil-1", "many/sybil-2"]
    assert np.array_equal(split.indices, one.indices)  # the same queries, the same order ...
    assert torch.equal(split.answers, one.answers)  # ... and answers: stateless defences
    assert [split.api.record(c).asked for c in split.clients] == [34, 33, 33]
    assert split.api.record("many").asked == 0


def test_victim_errors(victim_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="victim checkpoint missing.ckpt does not exist"):
        transfer("missing.ckpt")
    checkpoint = torch.load(victim_ckpt, weights_only=True)
    checkpoint["hyper_parameters"]["num_classes"] = 43
    checkpoint["state_dict"]["net.fc.weight"] = torch.zeros(43, 128)
    checkpoint["state_dict"]["net.fc.bias"] = torch.zeros(43)
    torch.save(checkpoint, tmp_path / "gtsrb.ckpt")
    with pytest.raises(ConfigError, match="has num_classes=43 but data.victim_data has 10"):
        transfer(tmp_path / "gtsrb.ckpt")


def test_missing_pieces_fill_gaps_in_api_batches(tmp_path):
    current = Round(tmp_path, 10)
    assert current.missing(70, 32) == [(0, 32), (32, 64), (64, 70)]
    current.write(32, np.zeros((32, 10), np.float32))
    current.write(100, np.zeros((20, 10), np.float32))  # beyond the budget: irrelevant
    assert current.missing(90, 32) == [(0, 32), (64, 90)]
    with pytest.raises(ConfigError, match="holds 0 of 90 answers"):
        current.read(90)


def test_sharded_querying_answers_each_query_once_and_matches_one_process(
    victim_ckpt, counted, tmp_path
):
    """What DDP ranks do: rank 0 proposes, every rank plans from the same cache state, then
    rank r sends API batches r, r + world, ... The union is bitwise the single-process set."""
    sharded = TransferSetDataModule(
        api=api(victim_ckpt),
        pool=CropsPoolDataModule(size=300),
        victim_data=DigitsDataModule(),
        budget=100,
        cache_dir=str(tmp_path / "sharded"),
        query_batch_size=32,
    )
    queries = sharded._propose(0)
    plan = sharded.round(0).missing(100, 32)
    assert plan == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert sharded.ask(0, queries, plan[1::2]) == 32 + 4
    assert [c[:2] for c in sharded.round(0).chunks()] == [(32, 64), (96, 100)]
    assert sharded.ask(0, queries, plan[0::2]) == 64
    assert sharded.round(0).missing(100, 32) == []
    assert counted["asked"] == 100
    sharded.read_stored()  # complete: read back, nothing asked
    assert counted["asked"] == 100
    single = transfer(victim_ckpt, budget=100)
    assert torch.equal(sharded.answers, single.answers)


def test_through_the_cli_budgets_share_one_cache_and_granularities_one_victim_pass(
    victim_ckpt, counted
):
    """`main.py fit` records the pool with only its own settings: a smaller or larger budget
    reuses the transfer set (asking only new queries), another pool does not; another
    granularity is a new attack (its answers are asked afresh) but the owner's cache spares the
    victim a second pass."""
    from knockoff_lab.pipeline.cli import cli_main
    from tests.conftest import CONFIGS

    def fit(overlay: str | None, budget: int) -> TransferSetDataModule:
        overlays = ["--config", str(CONFIGS / overlay)] if overlay else []
        cli = cli_main(
            [
                "fit",
                "--config",
                str(CONFIGS / "surrogate/digits_natural_probs.yaml"),
                *overlays,
                "--data.init_args.api.init_args.victim",
                str(victim_ckpt),
                "--data.init_args.budget",
                str(budget),
                "--data.init_args.pool.init_args.size",
                "300",
                "--trainer.max_epochs",
                "1",
                "--trainer.limit_train_batches",
                "1",
                "--trainer.limit_val_batches",
                "1",
                "--test_after_fit",
                "false",
            ]
        )
        return cli.datamodule

    folders = {fit(None, budget).folder for budget in (100, 60, 150)}
    assert len(folders) == 1 and counted["asked"] == 150 == counted["victim"]
    label = fit("defences/label_only.yaml", 150)
    assert label.folder not in folders and counted["asked"] == 300
    assert counted["victim"] == 150  # every posterior came from the owner's cache
    narrow = fit("attacks/narrow_pool.yaml", 100)  # another pool, same settings otherwise
    assert narrow.folder not in folders | {label.folder}
    images = torch.stack([narrow.pool.split("pool")[int(i)] for i in narrow.indices])
    direct = PredictionAPI(str(victim_ckpt), posterior_cache=None, ledger=None).evaluate(images)
    assert torch.equal(narrow.answers.float(), direct.answers)  # its own images' answers


@pytest.mark.parametrize(
    "damage, problem",
    [
        (lambda p: p.write_bytes(p.read_bytes()[:100]), "unreadable"),
        (lambda p: p.write_bytes(b""), "unreadable"),
        (
            lambda p: np.save(p, np.zeros((32, 3), np.float16)),
            r"shape \(32, 3\), expected \(32, 10\)",
        ),
        (lambda p: np.save(p, np.zeros((32, 10), np.int64)), "dtype int64"),
    ],
)
def test_a_damaged_answer_file_is_named_and_asked_again(victim_ckpt, counted, damage, problem):
    clean = transfer(victim_ckpt, budget=100)
    [second] = [p for p in clean.round(0).folder.glob("a*.npy") if p.name.startswith("a000000032")]
    damage(second)
    with pytest.warns(UserWarning, match=f"ignoring transfer-set answers {second}: {problem}"):
        again = transfer(victim_ckpt, budget=100)
    assert counted["asked"] == 100 + 32  # that batch only, asked again
    assert torch.equal(again.answers, clean.answers)


def test_a_damaged_proposal_is_a_one_line_error_naming_it(victim_ckpt):
    folder = transfer(victim_ckpt, budget=100).round(0).folder
    (folder / "queries.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(ConfigError, match=f"transfer-set round {folder} has an unreadable"):
        transfer(victim_ckpt, budget=100)
    np.save(folder / "queries.npy", np.zeros(100, np.float32))
    with pytest.raises(ConfigError, match=r"holds float32 \(100,\), not pool indices"):
        transfer(victim_ckpt, budget=100)


def _snapshot(folder):
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


def test_a_complete_cache_is_read_without_writing_to_it(victim_ckpt, counted):
    """Metadata is written once: rebuilding from a complete cache rewrites and adds no file
    (checked by inode and mtime, so it holds even for root, whom permissions do not stop)."""
    first = transfer(victim_ckpt, budget=100)
    before = _snapshot(first.folder)
    again = transfer(victim_ckpt, budget=60)  # a prefix, too
    assert _snapshot(first.folder) == before and counted["asked"] == 100
    assert torch.equal(again.answers, first.answers[:60])


def _permissions_ignored() -> bool:
    """Root (os.geteuid() == 0, with CAP_DAC_OVERRIDE) writes to read-only files: the test
    would prove nothing. Probed, so root with that capability dropped runs it too."""
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder, "probe")
        probe.touch()
        probe.chmod(0o444)
        try:
            probe.open("a").close()
        except PermissionError:
            return False
        return True


@pytest.mark.skipif(_permissions_ignored(), reason="running as root: permissions are ignored")
@pytest.mark.parametrize("lock_file", ["kept", "absent (a cache from before locks)"])
def test_a_complete_cache_on_a_read_only_disk_is_usable(victim_ckpt, counted, lock_file):
    first = transfer(victim_ckpt, budget=100)
    if lock_file != "kept":
        (first.folder / ".lock").unlink()
    cache = first.folder.parent
    paths = [cache, *cache.rglob("*")]
    try:
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        again = transfer(victim_ckpt, budget=100)
        assert torch.equal(again.answers, first.answers) and counted["asked"] == 100
    finally:
        for path in paths:
            path.chmod(0o755 if path.is_dir() else 0o644)  # so tmp_path can be cleaned up
