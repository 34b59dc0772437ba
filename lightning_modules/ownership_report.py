"""Ownership verification of a freshly trained model, logged at test time: is this model a copy
of the owner's? Each `knockoff_lab.ownership` verifier asks the model (behind an in-process
`PredictionAPI`, every query counted, as a suspect behind a URL would be asked) and logs
`ownership/<verifier>/{p_value, accused, queries, points, ...}`.

Sits on any fit: a thief's surrogate (`TransferSetDataModule`), or an independent model
trained by the owner's recipe on other data (`VictimClassifier`): the negative controls,
whose share accused is the verifier's measured false-accusation rate.

DAWN's evidence is the accused client's watermarked queries: for a surrogate, its transfer
set's (the API's own DAWN, or, for an API without one, the labels the owner's `watermark` key
would have given); for a model that asked no API, the first `dawn_queries` images of
`dawn_pool` as that key would have marked them.
"""

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch.utils.data import DataLoader, Dataset, Subset

from datamodules.base import ImageDataModule
from knockoff_lab.api.prediction import PredictionAPI
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.watermark import DawnWatermark
from knockoff_lab.nets.victim import load_victim
from knockoff_lab.ownership import Evidence, Suspect, Verdict, Verifier, check_evidence
from lightning_modules.defence_report import api_dawn, marked_queries


def stacked(dataset: Dataset, limit: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """A dataset's (images, labels) as tensors: all of it, or `limit` rows chosen by `seed`."""
    if limit is not None and limit < len(dataset):
        rows = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))
        dataset = Subset(dataset, rows[:limit].tolist())
    if len(dataset) == 0:
        raise ConfigError("an ownership test's data split is empty")
    batch = next(iter(DataLoader(dataset, batch_size=len(dataset))))
    return (batch,) if isinstance(batch, torch.Tensor) else tuple(batch)


def pool_marks(
    watermark: DawnWatermark, owner: torch.nn.Module, pool: ImageDataModule, queries: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `queries` images of `pool` a client would have asked, and the watermark labels
    `watermark`'s key gives the ones it marks (from the owner's own answers)."""
    pool.setup("fit")
    split = pool.split("pool")
    images = stacked(Subset(split, range(min(queries, len(split)))))[0]
    with torch.inference_mode():
        answers = torch.cat([owner(c).softmax(-1) for c in images.split(256)])
    marked, labels = watermark.watermarks(images, answers, "default", applied=False)
    return images[marked], labels[marked]


def build_evidence(
    owner: str,
    owner_data: ImageDataModule,
    points: int,
    marked: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> Evidence:
    """The owner's model (its checkpoint) and `points` of its private (training) and public
    (test) points, chosen with a fixed seed."""
    network = load_victim(owner)
    owner_data.setup("fit")
    private = stacked(owner_data.split("train"), points)
    public = stacked(owner_data.split("test"), points)
    return Evidence(network, owner_data.num_classes, private, public, marked)


def run_verifiers(suspect: Suspect, evidence: Evidence, verifiers: list[Verifier]) -> list[Verdict]:
    """Every verifier's verdict; everything checked before the first query."""
    check_evidence(suspect, evidence, verifiers)
    return [verifier.verify(suspect, evidence) for verifier in verifiers]


class OwnershipReport(Callback):
    """`owner`: the owner's VictimClassifier checkpoint; `owner_data`: its data (private points:
    its train split; public: its test split), `points` of each at most; `verifiers`: the tests
    run; `watermark`: the owner's DAWN key, for models trained on an API without DAWN or on
    none; `dawn_pool` / `dawn_queries`: the queries DAWN tests a model that asked no API on."""

    def __init__(
        self,
        owner: str,
        owner_data: ImageDataModule,
        verifiers: list[Verifier],
        points: int = 500,
        watermark: DawnWatermark | None = None,
        dawn_pool: ImageDataModule | None = None,
        dawn_queries: int = 3000,
    ):
        if not verifiers:
            raise ConfigError("OwnershipReport: verifiers must name at least one verifier")
        self.owner, self.owner_data, self.verifiers = owner, owner_data, verifiers
        self.points, self.watermark = points, watermark
        self.dawn_pool, self.dawn_queries = dawn_pool, dawn_queries

    def marked(self, data, evidence: Evidence) -> tuple[torch.Tensor, torch.Tensor] | None:
        api = getattr(data, "api", None)
        dawn = api_dawn(api)
        if api is not None and (dawn or self.watermark) is not None:
            chunks = list(marked_queries(dawn or self.watermark, data, applied=dawn is not None))
            if not chunks:
                return torch.empty(0), torch.empty(0, dtype=torch.long)
            return torch.cat([c[0] for c in chunks]), torch.cat([c[1] for c in chunks])
        if self.watermark is not None and self.dawn_pool is not None:
            return pool_marks(self.watermark, evidence.owner, self.dawn_pool, self.dawn_queries)
        return None

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        evidence = build_evidence(self.owner, self.owner_data, self.points)
        evidence.marked = self.marked(trainer.datamodule, evidence)
        device = pl_module.device
        api = PredictionAPI.around(
            pl_module, evidence.num_classes, posterior_cache=None, ledger=None
        )
        with torch.inference_mode(False), torch.enable_grad():  # white-box tests need gradients
            verdicts = run_verifiers(Suspect(api.to("cpu")), evidence, self.verifiers)
        pl_module.to(device)
        metrics = {k: v for verdict in verdicts for k, v in verdict.metrics().items()}
        pl_module.log_dict(metrics)
