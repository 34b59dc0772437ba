"""DefenceReport: the attack's flagged queries come from the API's books, the cost to benign
users from the victim's test set sent through the same defences (computed here directly)."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from api import PredictionAPI
from core.errors import ConfigError
from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule
from defences import DetectorFilter, TopK
from lightning_modules import DefenceReport, Surrogate
from lightning_modules.guard import load_detector

QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False,
         "enable_checkpointing": False}  # fmt: skip


def shifted(detector_ckpt, images: torch.Tensor, path: Path) -> str:
    """The detector with its OOD logit shifted so that half of `images` have P(OOD) > 0.5."""
    with torch.no_grad():
        logits = load_detector(detector_ckpt).net(images)
    checkpoint = torch.load(detector_ckpt, weights_only=True)
    checkpoint["state_dict"]["net.fc.bias"][1] -= (logits[:, 1] - logits[:, 0]).median()
    torch.save(checkpoint, path)
    return str(path)


def guarded(victim_ckpt, defences, ledger: str | None = "books.sqlite") -> TransferSetDataModule:
    api = PredictionAPI(str(victim_ckpt), defences, posterior_cache="owner", ledger=ledger)
    pool, digits = CropsPoolDataModule(size=300), DigitsDataModule()
    data = TransferSetDataModule(
        api=api, pool=pool, victim_data=digits, budget=200, cache_dir="cache"
    )
    data.setup()
    return data


def fit_and_test(data: TransferSetDataModule) -> dict[str, float]:
    trainer = Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=1,
                      callbacks=[DefenceReport()], **QUIET)  # fmt: skip
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


def test_report_without_an_api_or_books_is_a_clear_error(victim_ckpt):
    data = guarded(victim_ckpt, [TopK(2)])
    trainer = Trainer(callbacks=[DefenceReport()], **QUIET)
    model = Surrogate(num_classes=10)
    repeat = guarded(victim_ckpt, [TopK(2)], ledger=None)  # answered from the attacker's cache
    with pytest.raises(ConfigError, match="ledger has no record of client"):
        trainer.test(model, repeat, verbose=False)
    data.api = None
    with pytest.raises(ConfigError, match="DefenceReport needs data: datamodules.Transfer"):
        trainer.test(model, data, verbose=False)
