"""Detection metrics of section 4: out-of-distribution (an attack query) is the positive class.

TPR = share of out-of-distribution queries flagged; TNR = share of in-distribution (benign)
queries passed. Every score is "higher = more out-of-distribution", and a query is flagged when
its score is strictly above the threshold, so a detector's P(OOD) at threshold 0.5 flags exactly
the queries its binary argmax calls "out".

Fixed-TNR operating points (Table 4: TPR at TNR = 95% and at the TNR our detector achieved) are
exact: the threshold is read off the sorted in-distribution scores, not interpolated on a ROC
curve, and not passed through a sigmoid (torchmetrics' ROC family would squash raw scores).

Under DDP every process scores its shard; `ScoresBySet.pop` gathers them, so the metrics and the
saved `scores.csv` (`write_scores`, read back by the report's ROC figures) cover the whole test
set (DistributedSampler repeats up to world_size - 1 images to even out the shards).
"""

import csv
import math
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from sklearn.metrics import roc_auc_score, roc_curve

from knockoff_lab.core.atomic import atomic_file
from knockoff_lab.core.errors import ConfigError

# The test sets of an in/out DataModule: the victim's test set, the held-out share of the
# attacker's pool (ImageNet in the paper) and a second out-of-distribution set (OpenImages).
# Test batches carry the index of their set here; metric names end with it: `test/tpr/out_test`.
TEST_SETS: tuple[str, ...] = ("in", "out", "out_test")


def tpr_tnr_at_threshold(
    scores_in: torch.Tensor, scores_out: torch.Tensor, threshold: float
) -> tuple[float, float]:
    """(TPR, TNR) when every score above `threshold` is flagged."""
    _check(scores_in, scores_out)
    tpr = (scores_out > threshold).double().mean().item()
    tnr = (scores_in <= threshold).double().mean().item()
    return tpr, tnr


def threshold_at_tnr(scores_in: torch.Tensor, tnr: float) -> float:
    """The lowest threshold that passes at least a `tnr` share of the in-distribution scores:
    the ceil(tnr * n)-th smallest of them (-inf for tnr = 0: everything is flagged). The TNR
    reached exceeds `tnr` only where scores tie."""
    if not 0 <= tnr <= 1:
        raise ConfigError(f"a target TNR must be in [0, 1], got {tnr}")
    if scores_in.numel() == 0:
        raise ConfigError("the in-distribution test set is empty")
    passed = math.ceil(tnr * scores_in.numel() - 1e-9)  # 1e-9: 0.07 * 100 = 7.000000000000001
    return scores_in.double().sort().values[passed - 1].item() if passed else -math.inf


def tpr_at_tnr(
    scores_in: torch.Tensor, scores_out: torch.Tensor, tnr: float
) -> tuple[float, float, float]:
    """(TPR, TNR reached, threshold) at the lowest threshold whose TNR is at least `tnr`."""
    threshold = threshold_at_tnr(scores_in, tnr)
    tpr, reached = tpr_tnr_at_threshold(scores_in, scores_out, threshold)
    return tpr, reached, threshold


def _check(scores_in: torch.Tensor, scores_out: torch.Tensor) -> None:
    if scores_in.numel() == 0:
        raise ConfigError("the in-distribution test set is empty")
    if scores_out.numel() == 0:
        raise ConfigError("an out-of-distribution test set is empty")
    if scores_in.isnan().any() or scores_out.isnan().any():
        raise ValueError("detection scores contain NaN")


class ScoresBySet:
    """Scores collected batch by batch during a test epoch, per test set of `TEST_SETS`."""

    def __init__(self):
        self.parts: dict[str, list[torch.Tensor]] = {}

    def add(self, test_sets: torch.Tensor, scores: torch.Tensor) -> None:
        """`scores` of a batch whose images come from the sets `test_sets` (indices)."""
        scores, test_sets = scores.detach().cpu(), test_sets.cpu()
        for index in test_sets.unique().tolist():
            self.parts.setdefault(TEST_SETS[index], []).append(scores[test_sets == index])

    def pop(self) -> dict[str, torch.Tensor]:
        """All scores by set name, of every DDP process, and start afresh; the
        in-distribution set must be there. Every process gets the same, whole result."""
        parts, self.parts = self.parts, {}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            shards: list[dict | None] = [None] * dist.get_world_size()
            dist.all_gather_object(shards, parts)
            parts = {
                name: [t for shard in shards for t in shard.get(name, [])] for name in TEST_SETS
            }
        scores = {name: torch.cat(parts[name]) for name in TEST_SETS if parts.get(name)}
        if "in" not in scores or len(scores) < 2:
            raise ConfigError(
                "detection needs the in-distribution test set and at least one "
                f"out-of-distribution test set (got: {', '.join(scores) or 'none'})"
            )
        return scores


def write_scores(path: Path, scores: dict[str, torch.Tensor]) -> None:
    """`set,label,score` rows (label 1 = out-of-distribution), for ROC curves drawn later
    without rerunning the model; atomic, so the report of a resumed pipeline never reads half a
    file."""
    with atomic_file(path) as f:
        writer = csv.writer(f)
        writer.writerow(["set", "label", "score"])
        for name, values in scores.items():
            label = int(name != "in")
            writer.writerows([name, label, f"{v:.9g}"] for v in values.double().tolist())


def read_scores(path: Path) -> dict[str, torch.Tensor]:
    """The scores of `write_scores`, by set name (float32, as they were computed)."""
    parts: dict[str, list[float]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            parts.setdefault(row["set"], []).append(float(row["score"]))
    return {name: torch.tensor(values, dtype=torch.float32) for name, values in parts.items()}


def roc(scores_in: torch.Tensor, scores_out: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """(FPR, TPR, AUROC) over every threshold, out-of-distribution = positive."""
    _check(scores_in, scores_out)
    labels = np.r_[np.zeros(scores_in.numel()), np.ones(scores_out.numel())]
    scores = torch.cat([scores_in, scores_out]).double().numpy()
    fpr, tpr, _ = roc_curve(labels, scores)
    return fpr, tpr, float(roc_auc_score(labels, scores))
