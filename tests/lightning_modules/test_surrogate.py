"""The surrogate: one loss for soft and hard labels; selection never on the victim's test set;
trained on the victim's answers, it learns the victim's task."""

from functools import partial

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule
from knockoff_lab.api import PredictionAPI
from knockoff_lab.core.errors import ConfigError
from lightning_modules import AttackRounds, CompleteSetCheckpoint, Surrogate
from lightning_modules.surrogate import soft_cross_entropy


def test_soft_cross_entropy_on_one_hot_is_hard_cross_entropy():
    logits, labels = torch.randn(5, 4), torch.tensor([0, 3, 1, 1, 2])
    one_hot = F.one_hot(labels, 4).float()
    assert torch.allclose(soft_cross_entropy(logits, one_hot), F.cross_entropy(logits, labels))


def test_soft_cross_entropy_normalises_and_skips_empty_answers():
    logits = torch.randn(3, 4)
    answers = torch.tensor([[0.5, 0.3, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [0.0, 0.2, 0.0, 0.6]])
    targets = torch.tensor([[5 / 8, 3 / 8, 0, 0], [0.25, 0.25, 0.25, 0.25], [0, 0.25, 0, 0.75]])
    expected = -(targets * logits.log_softmax(-1)).sum(-1)[[0, 2]].mean()
    assert torch.allclose(soft_cross_entropy(logits, answers), expected)


def transfer_data(victim_ckpt, tmp_path, **kwargs) -> TransferSetDataModule:
    api = PredictionAPI(str(victim_ckpt), posterior_cache=None, ledger=None)
    return TransferSetDataModule(
        api=api,
        pool=CropsPoolDataModule(size=200),
        victim_data=DigitsDataModule(),
        budget=120,
        cache_dir=str(tmp_path / "cache"),
        **kwargs,
    )


@pytest.mark.parametrize("monitor", ["analysis/test_acc", "test/acc"])
@pytest.mark.parametrize("callback", [ModelCheckpoint, EarlyStopping])
def test_selection_on_the_victims_test_set_is_refused(victim_ckpt, tmp_path, monitor, callback):
    trainer = Trainer(
        max_epochs=1,
        logger=False,
        callbacks=[callback(monitor=monitor), AttackRounds()],
        enable_progress_bar=False,
    )
    with pytest.raises(ConfigError, match="the victim's test set"):
        trainer.fit(Surrogate(num_classes=10), transfer_data(victim_ckpt, tmp_path))


def test_validation_is_the_transfer_set_and_test_set_is_analysis_only(victim_ckpt, tmp_path):
    data = transfer_data(victim_ckpt, tmp_path)
    data.prepare_data()
    data.setup()
    data.grow_to(0)
    selection, analysis = data.val_dataloader()
    x, answers = next(iter(selection))  # pool images with API answers: no victim test data
    assert answers.shape[-1] == 10 and len(data.split("val")) == 12
    assert len(next(iter(analysis))) == 3  # image, label, victim label
    trainer = Trainer(
        max_epochs=2,
        logger=False,
        enable_progress_bar=False,
        callbacks=[ModelCheckpoint(monitor="val/acc", mode="max")],
    )
    model = Surrogate(num_classes=10)
    trainer.fit(model, data)
    assert {"val/acc", "val/loss", "analysis/test_acc"} <= set(trainer.callback_metrics)
    metrics = trainer.test(model, data, ckpt_path="best")[0]
    assert metrics["test/recovery"] == pytest.approx(
        metrics["test/acc"] / metrics["test/acc_victim"]
    )
    assert metrics["test/acc_victim"] > 0.85


def test_a_surrogate_trained_on_the_victims_answers_beats_chance(victim_ckpt, tmp_path):
    """Knockoff works end to end: 359 queries of the attacker's own digits (the in-distribution
    pool of 5.2.2), answered by the victim, train a surrogate that agrees with the victim on
    most of its test set, far above the 10% of chance (about 0.8 here; under 0.2 if the answers
    are shuffled across the queries)."""
    seed_everything(0)
    api = PredictionAPI(str(victim_ckpt), posterior_cache=None, ledger=None)
    data = TransferSetDataModule(
        api=api,
        pool=DigitsDataModule(),
        victim_data=DigitsDataModule(),
        budget=359,
        batch_size=32,
        cache_dir=str(tmp_path / "cache"),
    )
    trainer = Trainer(
        max_epochs=6,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(monitor="val/acc", mode="max"), AttackRounds()],
    )
    model = Surrogate(num_classes=10, optimizer=partial(torch.optim.Adam, lr=3e-3))
    trainer.fit(model, data)
    metrics = trainer.test(model, data, ckpt_path="best", verbose=False)[0]
    assert metrics["test/acc"] > 0.6 and metrics["test/fidelity"] > 0.6, metrics


def test_a_several_round_attack_is_selected_only_among_epochs_on_its_whole_transfer_set(
    victim_ckpt, tmp_path
):
    """Five rounds of two epochs: the last round is asked after epoch 7, so only epochs 8 and 9
    trained and validated on every round; a ModelCheckpoint that would compare the others (on
    a smaller validation set) is refused before any query."""
    from knockoff_lab.attacks import ActiveThief

    def fit(checkpoint) -> None:
        data = TransferSetDataModule(
            api=PredictionAPI(str(victim_ckpt), posterior_cache=None, ledger=None),
            pool=CropsPoolDataModule(size=300),
            victim_data=DigitsDataModule(),
            budget=150,
            attack=ActiveThief(rounds=5, selection="entropy", seed_fraction=0.2),
            epochs_per_round=2,
            val_fraction=0.2,
            cache_dir=str(tmp_path / "cache"),
        )
        trainer = Trainer(
            max_epochs=10,
            limit_val_batches=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[checkpoint, AttackRounds()],
        )
        trainer.fit(Surrogate(num_classes=10), data)

    every_epoch = CompleteSetCheckpoint(
        dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max", save_top_k=-1, filename="{epoch}"
    )
    fit(every_epoch)
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["epoch=8.ckpt", "epoch=9.ckpt"]
    with pytest.raises(ConfigError, match="grows with the attack's 5 rounds"):
        fit(ModelCheckpoint(monitor="val/acc", mode="max"))
