"""What the API's defences did, logged when the surrogate is tested: to the attack (from the
API's books for the transfer set's client) and to benign users (the victim's own test set sent
through the same defences by the owner, uncounted).

  transfer/queries_flagged, transfer/flagged_rate   attack queries flagged, and their share;
  transfer/false_refusal_rate                       share of benign queries flagged;
  benign/refused_rate                               share of benign queries given no answer;
  benign/acc                                        the victim's test accuracy through the
                                                    defences (a refused query counts as wrong);
  benign/l1_change                                  mean L1 distance of an answered benign
                                                    query's answer from the victim's posterior.
"""

from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader

from core.errors import ConfigError


class DefenceReport(Callback):
    """Needs `data: TransferSetDataModule` (its `api` and `client`)."""

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        data = trainer.datamodule
        api = getattr(data, "api", None)
        if api is None:
            raise ConfigError("DefenceReport needs data: datamodules.TransferSetDataModule")
        record = api.record(data.client)
        if record.asked == 0:
            raise ConfigError(
                f"the API's ledger has no record of client {data.client!r} (the transfer set came "
                "from its cache and the ledger was kept in memory): set "
                "data.init_args.api.init_args.ledger to a file"
            )
        flagged, refused, correct, l1, answered = 0, 0, 0, 0.0, 0
        loader = DataLoader(data.victim_data.split("test"), batch_size=data.query_batch_size)
        for images, labels in loader:
            batch = api.evaluate(images)
            flagged += int(batch.flagged.sum())
            refused += int(batch.refused.sum())
            ok = ~batch.refused
            correct += int((batch.answers[ok].argmax(-1) == labels[ok]).sum())
            l1 += float((batch.answers[ok] - batch.posteriors[ok]).abs().sum())
            answered += int(ok.sum())
        total = len(loader.dataset)
        pl_module.log_dict({
            "transfer/queries_flagged": float(record.flagged),
            "transfer/flagged_rate": record.flagged / record.asked,
            "transfer/false_refusal_rate": flagged / total,
            "benign/refused_rate": refused / total,
            "benign/acc": correct / total,
            "benign/l1_change": l1 / max(answered, 1),
        })  # fmt: skip
