"""`OODBaseline`: the Table 4 baselines as a LightningModule (`main.py test`), scoring an
`InOutDataModule`'s test sets with one `OODScorer` of the victim checkpoint."""

import torch
from lightning.pytorch import LightningModule

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.detector import check_threshold
from knockoff_lab.evaluation.ood_metrics import ScoresBySet, tpr_at_tnr, tpr_tnr_at_threshold
from knockoff_lab.nets.guard import load_detector
from knockoff_lab.nets.victim import load_victim
from knockoff_lab.ood.scorers import OODScorer, list_ood_scorers
from lightning_modules.binary_detector import save_test_scores
from lightning_modules.synced import log_synced


class OODBaseline(LightningModule):
    """Scores an `InOutDataModule`'s test sets with `scorer` (MSP, ODIN, Mahalanobis, ...) run on
    the victim checkpoint `victim`.

    Logs `test/tpr_at_tnr95/<set>` and saves the baseline's scores (`scores.csv`, `roc.png` in
    the run's log folder, as the detectors do); with `detector` (one of our exported
    detectors), also its TNR and TPRs on the same images (`test/ours/tnr`,
    `test/ours/tpr/<set>`) and the baseline's TPR at the TNR ours achieved
    (`test/tpr_at_tnr_ours/<set>`), the two columns of Table 4.
    `num_classes` is the in/out data's 2, linked from the data like every model's.
    """

    def __init__(
        self,
        victim: str,
        scorer: OODScorer,
        num_classes: int = 2,
        detector: str | None = None,
        detector_threshold: float = 0.5,
    ):
        super().__init__()
        if not isinstance(scorer, OODScorer):
            known = ", ".join(list_ood_scorers())
            raise ConfigError(f"scorer must be an OODScorer ({known}), got {scorer!r}")
        self.save_hyperparameters(ignore=["scorer"])
        cls = type(scorer)
        self.hparams["scorer"] = {
            "class_path": f"{cls.__module__}.{cls.__qualname__}",
            "init_args": scorer.settings(),
        }
        if num_classes != 2:
            raise ConfigError(f"OOD baselines test on an InOutDataModule, got {num_classes=}")
        check_threshold(detector_threshold, "detector_threshold")
        self.victim = load_victim(victim).requires_grad_(False)
        scorer.check(self.victim)
        self.scorer = scorer
        self.guard = load_detector(detector) if detector else None
        self.scores, self.ours = ScoresBySet(), ScoresBySet()

    def on_test_start(self) -> None:
        data = self.trainer.datamodule
        if not hasattr(data, "in_data"):
            raise ConfigError("OOD baselines test on data: datamodules.InOutDataModule")
        self.scorer.fit(self.victim, data)

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """Out-of-distribution score of each image (higher = more OOD)."""
        return self.scorer.score(self.victim, images)

    def test_step(self, batch, batch_idx: int) -> None:
        images, _, test_sets = batch
        self.scores.add(test_sets, self.score(images))
        if self.guard is not None:
            with torch.no_grad():
                self.ours.add(test_sets, self.guard(images))

    def on_test_epoch_end(self) -> None:
        scores = self.scores.pop()
        outs = [name for name in scores if name != "in"]
        metrics = {
            f"test/tpr_at_tnr95/{name}": tpr_at_tnr(scores["in"], scores[name], 0.95)[0]
            for name in outs
        }
        if self.guard is not None:
            ours, threshold = self.ours.pop(), self.hparams.detector_threshold
            for name in outs:
                tpr, tnr = tpr_tnr_at_threshold(ours["in"], ours[name], threshold)
                metrics.update({"test/ours/tnr": tnr, f"test/ours/tpr/{name}": tpr})
                metrics[f"test/tpr_at_tnr_ours/{name}"] = tpr_at_tnr(
                    scores["in"], scores[name], tnr
                )[0]
        log_synced(self, metrics)
        save_test_scores(self.trainer, scores, self.scorer.title())
