"""What the API's defences did, logged when the surrogate is tested: to the attack (from the
API's books for the transfer set's client), to benign users (the victim's own test set sent
through the same defences by the owner, uncounted) and, when the stack holds a
`knockoff_lab.defences.DawnWatermark`, whether the owner can prove this surrogate was derived
from the API.

From the API's books (the ledger) for the transfer set's clients (one, or its Sybil accounts):
  transfer/queries_flagged      the attack's queries a defence flagged;
  transfer/flagged_rate         their share of the attack's asked queries;
  transfer/queries_to_detection the position (1-based, in the order asked) of the attack's first
                                flagged query: how many queries it took to catch the attack.
                                Absent when no query was flagged.
  transfer/clients_flagged      the share of the attack's accounts with a flagged query.
From the victim's test set, sent through the same defences as a fresh client (no ledger):
  transfer/false_refusal_rate   share of benign queries flagged;
  benign/refused_rate           share of benign queries given no answer;
  benign/acc                    the victim's test accuracy through the defences (a refused query
                                counts as wrong);
  benign/l1_change              mean L1 distance of an answered benign query's answer from the
                                victim's posterior.
With a DawnWatermark in the API's defences (the first one, if several), or the callback's own
`watermark` for an API without one, from the transfer set's queries and the answers the
attacker received (no ledger, so a cached transfer set works too):
  watermark/queries             how many of the client's answered queries carry a watermark;
  watermark/agreement           the share of them on which the tested surrogate predicts the
                                watermark label;
  watermark/p_value             the probability that a model built without the API's answers
                                agrees at least as often (`defences.ownership_test`): tiny for a
                                surrogate trained on the answers. Both absent with no watermarked
                                query.

A transfer set read from its cache while the API's ledger is kept in memory leaves the books
empty: the ledger metrics are then absent, with one warning, and the others are still logged,
so the callback can sit in every surrogate config.
"""

from collections.abc import Iterator

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from datamodules.transfer_datasets import TransferDataset
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.watermark import DawnWatermark, false_claim_p, watermark_hits

NO_BOOKS = (
    "DefenceReport: the API's ledger has no record of client {client!r} (the transfer set came "
    "from its cache and the ledger was kept in memory); transfer/queries_flagged, flagged_rate "
    "and queries_to_detection need data.init_args.api.init_args.ledger set to a file"
)
PART_BOOKS = (
    "DefenceReport: the API's ledger holds {asked} of the transfer set's {total} queries of "
    "client {client!r} (the rest came from the cache); transfer/queries_flagged, flagged_rate "
    "and queries_to_detection cover only those"
)


class DefenceReport(Callback):
    """Needs `data: TransferSetDataModule` (its `api`, `client` and stored queries).
    `watermark`: the owner's DAWN, to test a suspect trained on an API that did not watermark
    (an innocent model: the false-claim check, on the labels this key would have given); None
    with a DawnWatermark in the API's stack, which is then the one tested."""

    def __init__(self, watermark: DawnWatermark | None = None):
        self.warned, self.watermark = False, watermark

    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        self.check_data(trainer.datamodule)

    def check_data(self, data) -> None:
        """A second watermark beside the API's is an error (the CLI calls this before any
        query is asked)."""
        api = getattr(data, "api", None)
        if self.watermark is not None and api_dawn(api) is not None:
            raise ConfigError(
                "DefenceReport: watermark is for an API without DAWN; this one has a "
                "DawnWatermark, which is tested: set watermark to null"
            )

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        data = trainer.datamodule
        api = getattr(data, "api", None)
        if api is None:
            raise ConfigError("DefenceReport needs data: datamodules.TransferSetDataModule")
        metrics = {**benign_metrics(api, data), **self.ledger_metrics(api, data)}
        dawn = api_dawn(api)
        if dawn is not None or self.watermark is not None:
            metrics.update(
                watermark_metrics(dawn or self.watermark, data, pl_module, applied=dawn is not None)
            )
        pl_module.log_dict(metrics)

    def ledger_metrics(self, api, data) -> dict[str, float]:
        clients = data.clients
        records = [api.record(client) for client in clients]
        asked, flagged = sum(r.asked for r in records), sum(r.flagged for r in records)
        total = 0 if data.answers is None else len(data.answers)
        if asked < total:
            template = NO_BOOKS if asked == 0 else PART_BOOKS
            self.warn_once(template.format(client=data.client, asked=asked, total=total))
        if asked == 0:
            return {}
        metrics = {
            "transfer/queries_flagged": float(flagged),
            "transfer/flagged_rate": flagged / asked,
            "transfer/clients_flagged": sum(r.flagged > 0 for r in records) / len(records),
        }
        # account k's j-th query (1-based) is the attack's query (j - 1) * N + k + 1
        firsts = [
            (r.first_flagged - 1) * len(clients) + k + 1
            for k, r in enumerate(records)
            if r.first_flagged is not None
        ]
        if firsts:
            metrics["transfer/queries_to_detection"] = float(min(firsts))
        return metrics

    def warn_once(self, message: str) -> None:
        if not self.warned:
            self.warned = True
            rank_zero_warn(message)


def api_dawn(api) -> DawnWatermark | None:
    """The first DawnWatermark among `api`'s defences (None for none, or for no API)."""
    return next((d for d in getattr(api, "defences", []) if isinstance(d, DawnWatermark)), None)


def benign_metrics(api, data) -> dict[str, float]:
    """The cost to benign users: the victim's test set through the defences, uncounted."""
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
    return {
        "transfer/false_refusal_rate": flagged / total,
        "benign/refused_rate": refused / total,
        "benign/acc": correct / total,
        "benign/l1_change": l1 / max(answered, 1),
    }


def watermark_metrics(
    dawn: DawnWatermark, data, suspect: LightningModule, applied: bool = True
) -> dict[str, float]:
    """DAWN's ownership test of `suspect` on the attack's watermarked queries
    (`marked_queries`): hits summed over chunks and tested once, as `ownership_test` would
    test them all."""
    hits, marked_total = 0, 0
    for images, labels in marked_queries(dawn, data, applied):
        hits += watermark_hits(suspect, images.to(suspect.device), labels)
        marked_total += len(images)
    metrics = {"watermark/queries": float(marked_total)}
    if marked_total:
        metrics["watermark/agreement"] = hits / marked_total
        metrics["watermark/p_value"] = false_claim_p(hits, marked_total, data.num_classes)
    return metrics


def marked_queries(
    dawn: DawnWatermark, data, applied: bool = True
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The transfer set's watermarked queries and their watermark labels, chunk by chunk of
    `query_batch_size` (only one chunk of images in memory), recovered owner-side
    (`DawnWatermark.watermarks`) from its queries (pool images by index, synthetic ones as
    stored) and the answers the attacker received; `applied` False: the labels `dawn`'s key
    would have given (an API that did not watermark). A refused or all-zero answer taught
    nothing and is left out."""
    answers = data.answers
    if answers is None or len(answers) == 0:
        return
    informative = ~answers.isnan().any(-1) & (answers.float().nan_to_num(0).amax(-1) > 0)
    rows, clients = np.flatnonzero(informative.numpy()), data.clients
    for k, client in enumerate(clients):  # query p was asked by account p % N
        mine = rows[rows % len(clients) == k]
        queries = TransferDataset(data.pool.split("pool"), data.indices, data.images, answers, mine)
        for images, received in DataLoader(
            queries, batch_size=data.query_batch_size, num_workers=data.num_workers
        ):
            marked, labels = dawn.watermarks(images, received, client, applied)
            if marked.any():
                yield images[marked], labels[marked]
