"""DefenceReport: the attack's flagged queries and queries to detection come from the API's
books, the cost to benign users from the victim's test set sent through the same defences
(computed here directly), DAWN's ownership test from the transfer set's stored queries and
answers; a transfer set read from its cache with no books still gets all but the ledger's."""

import warnings
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer, seed_everything

from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule
from knockoff_lab.api import PredictionAPI
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import DawnWatermark, DetectorFilter, TopK
from knockoff_lab.defences.watermark import binomial_tail
from knockoff_lab.nets.guard import load_detector
from lightning_modules import DefenceReport, Surrogate
from tests.toy_defence import RefuseAfter

QUIET = {
    "logger": False,
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "enable_checkpointing": False,
}


def shifted(detector_ckpt, images: torch.Tensor, path: Path, share: float = 0.5) -> str:
    """The detector with its OOD logit shifted so that `share` of `images` have P(OOD) > 0.5."""
    with torch.no_grad():
        logits = load_detector(detector_ckpt).net(images)
    checkpoint = torch.load(detector_ckpt, weights_only=True)
    checkpoint["state_dict"]["net.fc.bias"][1] -= (logits[:, 1] - logits[:, 0]).quantile(1 - share)
    torch.save(checkpoint, path)
    return str(path)


LEDGER_METRICS = (
    "transfer/queries_flagged",
    "transfer/flagged_rate",
    "transfer/queries_to_detection",
)
BENIGN_METRICS = (
    "transfer/false_refusal_rate",
    "benign/refused_rate",
    "benign/acc",
    "benign/l1_change",
)
WATERMARK_METRICS = ("watermark/queries", "watermark/agreement", "watermark/p_value")


def guarded(
    victim_ckpt, defences, ledger: str | None = "books.sqlite", budget: int = 200, **kwargs
) -> TransferSetDataModule:
    api = PredictionAPI(str(victim_ckpt), defences, posterior_cache="owner", ledger=ledger)
    pool, digits = CropsPoolDataModule(size=300), DigitsDataModule()
    data = TransferSetDataModule(
        api=api, pool=pool, victim_data=digits, budget=budget, cache_dir="cache", **kwargs
    )
    data.setup()
    data.grow_to(0)
    return data


def report(model, data: TransferSetDataModule, callback: DefenceReport | None = None) -> dict:
    trainer = Trainer(callbacks=[callback or DefenceReport()], **QUIET)
    return trainer.test(model, data, verbose=False)[0]


def report_warnings(model, data, callback: DefenceReport, times: int = 1):
    """(the metrics of the last of `times` tests, the DefenceReport warnings they raised)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(times):
            metrics = report(model, data, callback)
    return metrics, [str(w.message) for w in caught if "DefenceReport" in str(w.message)]


def fit_and_test(data: TransferSetDataModule) -> dict[str, float]:
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        callbacks=[DefenceReport()],
        **QUIET,
    )
    model = Surrogate(num_classes=10)
    trainer.fit(model, data)
    return trainer.test(model, data, verbose=False)[0]


def test_report_counts_the_attacks_flags_and_the_benign_cost(victim_ckpt, detector_ckpt, tmp_path):
    test = DigitsDataModule().split("test")
    images = torch.stack([test[i][0] for i in range(len(test))])
    labels = torch.tensor([test[i][1] for i in range(len(test))])
    strict = shifted(detector_ckpt, images, tmp_path / "strict.ckpt")  # flags half the benign
    with torch.no_grad():
        benign_flags = load_detector(strict)(images) > 0.5
    assert 0.3 < float(benign_flags.float().mean()) < 0.7
    data = guarded(victim_ckpt, [DetectorFilter(strict, 0.5, "decoy")])
    metrics = fit_and_test(data)
    decoys = int((data.answers == torch.tensor(0.1, dtype=data.answers.dtype)).all(-1).sum())
    assert metrics["transfer/queries_flagged"] == decoys > 0
    assert metrics["transfer/flagged_rate"] == pytest.approx(decoys / 200)
    is_decoy = (data.answers == torch.tensor(0.1, dtype=data.answers.dtype)).all(-1)
    first = int(is_decoy.nonzero()[0]) + 1  # the transfer set is in query order, 1-based
    assert metrics["transfer/queries_to_detection"] == first
    assert metrics["transfer/false_refusal_rate"] == pytest.approx(
        float(benign_flags.float().mean())
    )
    assert metrics["benign/refused_rate"] == 0  # decoys are answers
    victim = PredictionAPI(str(victim_ckpt), posterior_cache=None, ledger=None)
    posteriors = victim.evaluate(images).posteriors
    answers = torch.where(benign_flags[:, None], torch.full_like(posteriors, 0.1), posteriors)
    assert metrics["benign/acc"] == pytest.approx(
        float((answers.argmax(-1) == labels).float().mean())
    )
    l1 = (answers - posteriors).abs().sum(-1).mean()
    assert metrics["benign/l1_change"] == pytest.approx(float(l1), abs=1e-5)


def test_sybil_accounts_are_reported_as_one_attack(victim_ckpt, detector_ckpt, tmp_path):
    pool = CropsPoolDataModule(size=300).split("pool")  # a few of the attack's queries flagged
    strict = shifted(
        detector_ckpt,
        torch.stack([pool[i] for i in range(300)]),
        tmp_path / "strict.ckpt",
        share=0.05,
    )
    one = report(
        Surrogate(num_classes=10),
        guarded(victim_ckpt, [DetectorFilter(strict, 0.5, "decoy")], client="one"),
    )
    data = guarded(victim_ckpt, [DetectorFilter(strict, 0.5, "decoy")], client="many", sybils=7)
    many = report(Surrogate(num_classes=10), data)
    assert many["transfer/queries_flagged"] == one["transfer/queries_flagged"] > 0
    assert many["transfer/queries_to_detection"] == one["transfer/queries_to_detection"] > 1
    flagged = [data.api.record(c).flagged > 0 for c in data.clients]
    assert many["transfer/clients_flagged"] == pytest.approx(sum(flagged) / 7)
    assert one["transfer/clients_flagged"] == 1.0


def test_nothing_flagged_leaves_no_queries_to_detection(victim_ckpt):
    metrics = report(Surrogate(num_classes=10), guarded(victim_ckpt, [TopK(2)]))
    assert metrics["transfer/queries_flagged"] == 0 == metrics["transfer/flagged_rate"]
    assert "transfer/queries_to_detection" not in metrics  # absent, not 0 or the budget
    assert not any(name in metrics for name in WATERMARK_METRICS)  # no DAWN in the stack


def test_a_cached_transfer_set_without_books_gets_the_benign_cost_and_one_warning(victim_ckpt):
    model = Surrogate(num_classes=10)
    first = report(model, guarded(victim_ckpt, [TopK(2)]))
    repeat = guarded(victim_ckpt, [TopK(2)], ledger=None)  # answered from the attacker's cache
    assert repeat.api.record(repeat.client).asked == 0
    metrics, said = report_warnings(model, repeat, DefenceReport(), times=2)
    assert len(said) == 1  # once, however often it is tested
    assert "no record of client" in said[0] and "api.init_args.ledger set to a file" in said[0]
    assert not any(name in metrics for name in LEDGER_METRICS)
    assert {name: metrics[name] for name in BENIGN_METRICS} == pytest.approx(
        {name: first[name] for name in BENIGN_METRICS}
    )
    with pytest.raises(ConfigError, match="DefenceReport needs data: datamodules.Transfer"):
        repeat.api = None
        report(model, repeat)


def test_books_of_part_of_the_transfer_set_are_logged_with_a_warning(victim_ckpt):
    guarded(victim_ckpt, [TopK(2)], ledger=None, budget=100)  # cached, books lost
    larger = guarded(victim_ckpt, [TopK(2)], budget=200)  # asks only the 100 new queries
    metrics, said = report_warnings(Surrogate(num_classes=10), larger, DefenceReport())
    assert len(said) == 1 and "holds 100 of the transfer set's 200 queries" in said[0]
    assert metrics["transfer/queries_flagged"] == 0


def trained(data: TransferSetDataModule, epochs: int = 60) -> Surrogate:
    """A surrogate fitted long enough on 300 answers to learn most of their odd labels."""
    seed_everything(0)
    trainer = Trainer(max_epochs=epochs, limit_val_batches=0, **QUIET)
    model = Surrogate(num_classes=10, optimizer=partial(torch.optim.Adam, lr=3e-3))
    trainer.fit(model, data)
    return model


def test_dawn_identifies_the_surrogate_of_its_answers_and_clears_another(victim_ckpt):
    """A quarter of the answers watermarked, so 300 queries hold ~75 watermarks."""
    data = guarded(
        victim_ckpt, [DawnWatermark(0.25, key="k")], budget=300, batch_size=16, client="c"
    )
    clean = guarded(victim_ckpt, [], budget=300, batch_size=16, client="c")  # no DAWN
    assert np.array_equal(data.indices, clean.indices)
    # the truth, without the report's recovery: DAWN moved the top class where it watermarked
    marked = data.answers.float().argmax(-1) != clean.answers.float().argmax(-1)
    assert 50 < int(marked.sum()) < 110
    thief = trained(data)
    metrics = report(thief, data)
    assert metrics["watermark/queries"] == int(marked.sum())
    pool = data.pool.split("pool")
    images = torch.stack([pool[int(i)] for i in data.indices[marked.numpy()]])
    with torch.no_grad():
        predicted = thief.eval()(images).argmax(-1)
    learnt = float((predicted == data.answers[marked].float().argmax(-1)).float().mean())
    assert metrics["watermark/agreement"] == pytest.approx(learnt) and learnt > 0.5
    hits, n = int((predicted == data.answers[marked].float().argmax(-1)).sum()), len(predicted)
    assert metrics["watermark/p_value"] == pytest.approx(
        binomial_tail(hits, n, 1 / 9), rel=1e-5, abs=0
    )
    assert metrics["watermark/p_value"] < 0.01  # identified
    innocent = trained(clean)  # the same recipe on the clean API's answers
    cleared = report(innocent, data)  # ... tested against the watermarks of the DAWN client
    assert cleared["watermark/queries"] == metrics["watermark/queries"]
    assert cleared["watermark/agreement"] < 0.2 and cleared["watermark/p_value"] > 0.05
    # the owner's key on the clean API's transfer set: the labels it would have given are
    # DAWN's, so the thief is still caught and the innocent model, trained there, cleared
    owner = DefenceReport(watermark=DawnWatermark(0.25, key="k"))
    assert report(thief, clean, owner) == pytest.approx(
        metrics
        | {name: v for name, v in report(thief, clean).items() if name not in WATERMARK_METRICS}
    )
    assert report(innocent, clean, owner)["watermark/p_value"] > 0.05
    with pytest.raises(ConfigError, match="watermark is for an API without DAWN"):
        report(thief, data, DefenceReport(watermark=DawnWatermark(0.25, key="k")))
    # a cache hit with the books in memory: no ledger metrics, the same ownership test
    repeat = guarded(
        victim_ckpt, [DawnWatermark(0.25, key="k")], None, 300, batch_size=16, client="c"
    )
    again, said = report_warnings(thief, repeat, DefenceReport())
    assert len(said) == 1 and "transfer/queries_flagged" not in again
    assert {name: again[name] for name in WATERMARK_METRICS} == pytest.approx(
        {name: metrics[name] for name in WATERMARK_METRICS}
    )


def test_dawn_leaves_out_the_queries_that_got_no_answer(victim_ckpt):
    """DAWN, then a defence refusing all but the first 150 answers: a refused watermarked query
    taught the attacker nothing and is not counted."""
    data = guarded(victim_ckpt, [DawnWatermark(0.25, key="k"), RefuseAfter(150)], budget=300)
    clean = guarded(victim_ckpt, [], budget=300)
    answered = ~data.answers.isnan().any(-1)
    assert int(answered.sum()) == 150
    marked = answered & (data.answers.float().argmax(-1) != clean.answers.float().argmax(-1))
    metrics = report(Surrogate(num_classes=10), data)
    assert metrics["watermark/queries"] == int(marked.sum()) > 20


def test_dawn_recovers_the_watermarks_of_each_sybil_account(victim_ckpt):
    """DAWN keys on the client: through 4 accounts other queries are watermarked than through
    one, and the report recovers exactly those."""
    data = guarded(victim_ckpt, [DawnWatermark(0.25, key="k")], client="a", sybils=4)
    clean = guarded(victim_ckpt, [], client="b")
    single = guarded(victim_ckpt, [DawnWatermark(0.25, key="k")], client="a")
    marked = data.answers.float().argmax(-1) != clean.answers.float().argmax(-1)
    other = single.answers.float().argmax(-1) != clean.answers.float().argmax(-1)
    assert not torch.equal(marked, other)
    assert report(Surrogate(num_classes=10), data)["watermark/queries"] == int(marked.sum()) > 20
