"""OOD baselines: every registered scorer runs under `Trainer.test` with the scores of a direct
computation, saved with their ROC figure; each scorer's sign is pinned on hand-made cases (an
in-distribution-like input scores lower than a flat or far one) and on the trained victim (its
mistakes score higher than its right answers; Mahalanobis also ranks natural crops out); ODIN
and Mahalanobis steps raise the in-distribution score, also inside the inference mode of a
Lightning test loop."""

import importlib
import math
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from torch import nn

from datamodules import DigitsDataModule
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import IMAGENET_STD
from knockoff_lab.evaluation.ood_metrics import read_scores, roc
from knockoff_lab.nets.features import layer_features
from knockoff_lab.nets.victim import load_victim
from knockoff_lab.ood import (
    MSP,
    ODIN,
    OOD_SCORERS,
    ClassGaussians,
    Mahalanobis,
    OODScorer,
    closest_distance,
    list_ood_scorers,
    mahalanobis_inputs,
    max_softmax,
    odin_inputs,
)
from lightning_modules import OODBaseline
from tests.lightning_modules.conftest import check_saved_scores, small_in_out

STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
QUIET = {"logger": False, "enable_progress_bar": False, "enable_model_summary": False}


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    data = DigitsDataModule()
    data.setup()
    return data


# -- every registered scorer, end to end -------------------------------------------------------


def test_registry_lists_the_three_baselines():
    assert list_ood_scorers() == ["mahalanobis", "msp", "odin"]
    assert {OOD_SCORERS[n] for n in list_ood_scorers()} == {MSP, ODIN, Mahalanobis}


@pytest.mark.parametrize("name", list_ood_scorers())
def test_every_scorer_tests_and_ranks_the_victims_mistakes_as_out(victim_ckpt, digits, name):
    scorer = OOD_SCORERS[name]()  # every scorer has defaults that run
    assert isinstance(scorer, OODScorer) and scorer.name == name
    data = small_in_out()
    baseline = OODBaseline(str(victim_ckpt), scorer)
    trainer = Trainer(**QUIET)
    metrics = trainer.test(baseline, data, verbose=False)[0]
    assert set(metrics) == {"test/tpr_at_tnr95/out", "test/tpr_at_tnr95/out_test"}
    check_saved_scores(Path(trainer.log_dir), data, metrics)  # no logger: the working directory
    # the sign on real data: the victim's own mistakes on its test digits score as more
    # out-of-distribution than its right answers (AUROC 0.87-0.96 here; a flipped sign, 0.04-0.13)
    victim = load_victim(victim_ckpt)
    images, labels = digits.split("test").tensors
    with torch.no_grad():
        wrong = victim(images).argmax(dim=-1) != labels
    scores = scorer.score(victim, images)  # fitted by the test, and outside inference mode
    assert roc(scores[~wrong], scores[wrong])[2] > 0.75
    # Only Mahalanobis tells the digits from the natural crops (AUROC 1.0): this victim's logits
    # grow off the digits, so MSP is at chance on the crops and ODIN ranks them in-distribution.
    if name == "mahalanobis":
        saved = read_scores(Path(trainer.log_dir) / "scores.csv")
        assert min(roc(saved["in"], saved[out])[2] for out in ("out", "out_test")) > 0.95
        assert metrics["test/tpr_at_tnr95/out"] > 0.9
    with torch.inference_mode():  # scored inside a test loop as outside it
        in_loop = baseline.score(images[:64].clone())
    assert torch.allclose(scores[:64], in_loop, atol=1e-5)
    # the hyper-parameters name the scorer so that it can be built again
    recorded = baseline.hparams["scorer"]
    module, cls = recorded["class_path"].rsplit(".", 1)
    assert getattr(importlib.import_module(module), cls)(**recorded["init_args"]).settings() == (
        scorer.settings()
    )


def test_multi_layer_mahalanobis_combines_the_layers_on_validation(victim_ckpt):
    scorer = Mahalanobis(layers=["features.2", "penultimate"])
    baseline = OODBaseline(str(victim_ckpt), scorer)
    metrics = Trainer(**QUIET).test(baseline, small_in_out(), verbose=False)[0]
    assert metrics["test/tpr_at_tnr95/out"] > 0.5
    images = next(iter(small_in_out().test_dataloader()))[0]
    distances = scorer.layer_distances(baseline.victim, images)
    weight, bias = scorer._combination
    assert distances.shape == (len(images), 2) and weight.shape == (2,)
    assert torch.allclose(baseline.score(images), distances @ weight + bias)


# -- signs, on hand-made cases ----------------------------------------------------------------


class TinyLinear(nn.Module):
    """A victim as small as it gets: (N, 3, 1, 1) images, flattened (`features`, also the
    penultimate layer), then a bias-free linear head."""

    def __init__(self, weight: list[list[float]]):
        super().__init__()
        self.features = nn.Flatten()
        self.fc = nn.Linear(3, len(weight), bias=False)
        self.fc.weight.data = torch.tensor(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def pixels(*rows: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(rows).view(-1, 3, 1, 1)


# logits (3, -3): confident, as on the victim's own data; logits (0, 0): flat
TWO_CLASSES = TinyLinear([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0]])
CONFIDENT_AND_FLAT = pixels((3.0, 0.0, 0.0), (0.0, 0.5, 0.0))


def test_msp_scores_a_confident_input_lower_than_a_flat_one():
    scores = MSP().score(TWO_CLASSES, CONFIDENT_AND_FLAT)
    sigmoid6 = 1 / (1 + math.exp(-6.0))  # softmax of (3, -3)
    assert scores.tolist() == pytest.approx([-sigmoid6, -0.5])
    assert scores[0] < scores[1]


def test_odin_scores_a_confident_input_lower_than_a_flat_one():
    scores = ODIN(temperature=1000.0, epsilon=0.0014).score(TWO_CLASSES, CONFIDENT_AND_FLAT)
    # the step moves the first pixel by +0.0014 / std towards the predicted class 0
    moved = 3.0 + 0.0014 / IMAGENET_STD[0]
    expected = 1 / (1 + math.exp(-2 * moved / 1000.0))
    assert scores[0].item() == pytest.approx(-expected, abs=5e-7)
    assert scores[0] < scores[1] < -0.5  # the flat input is nudged off 0.5 too, barely


def clusters(n: int = 40, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two classes of hand-made training 'images': around (0, 0, 0) and (10, 0, 0)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    centres = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]])[labels]
    return (centres + torch.randn(n, 3, generator=gen)).view(n, 3, 1, 1), labels


def test_mahalanobis_scores_a_class_mean_lower_than_a_far_point():
    images, labels = clusters()
    scorer = Mahalanobis(epsilon=0.0014)
    scorer.fit_statistics(TWO_CLASSES, [(images, labels)])
    means = scorer._gaussians[0].means
    assert torch.allclose(means, torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0]]), atol=0.6)
    scores = scorer.score(TWO_CLASSES, torch.cat([means.view(2, 3, 1, 1), pixels((5, 30, -30))]))
    assert scores[0] < 0.1 and scores[1] < 0.1  # a class mean: (nearly) no distance
    assert scores[2] > 100 * scores[:2].max() + 100


def test_multi_layer_combination_scores_far_points_higher():
    images, labels = clusters()
    scorer = Mahalanobis(layers=["features", "penultimate"])
    scorer.fit_statistics(TWO_CLASSES, [(images, labels)])
    near, _ = clusters(seed=1)  # in-distribution validation images, label 0
    far = near + pixels((0.0, 12.0, -12.0))  # out-of-distribution ones, label 1
    validation = [(torch.cat([near, far]), torch.cat([torch.zeros(40), torch.ones(40)]).long())]
    scorer.fit_combination(TWO_CLASSES, validation)
    weight, _ = scorer._combination
    assert (weight > 0).all()  # a larger distance means more out-of-distribution
    tests_near, _ = clusters(seed=2)
    scores = scorer.score(TWO_CLASSES, torch.cat([tests_near, tests_near + pixels((0, 12, -12))]))
    assert scores[:40].max() < scores[40:].min()


# -- the input steps on the trained victim ------------------------------------------------------


def test_odin_step_raises_the_tempered_softmax_even_in_inference_mode(victim_ckpt, digits):
    victim = load_victim(victim_ckpt)
    images = digits.split("test").tensors[0][:64]
    with torch.inference_mode():  # what Lightning's test loop does around test_step
        images = images.clone()  # an inference tensor, like a test batch
        moved = odin_inputs(victim, images, temperature=1000.0, epsilon=0.0014, std=STD)
        before = max_softmax(victim, images, 1000.0)
        after = max_softmax(victim, moved, 1000.0)
    assert not torch.equal(moved, images)  # a silent no-gradient run would not move them
    step = (moved - images).abs() * STD
    assert torch.allclose(step, torch.full_like(step, 0.0014), atol=1e-6)  # epsilon in pixels
    assert (after > before).float().mean() > 0.9


def test_mahalanobis_step_brings_features_closer_to_the_closest_class(victim_ckpt, digits):
    victim = load_victim(victim_ckpt)
    train_x, train_y = digits.split("train").tensors
    with torch.no_grad():
        features = layer_features(victim, train_x, ["features.6"])[1]["features.6"]
    gaussians = ClassGaussians(features, train_y)
    images = digits.split("test").tensors[0][:64]
    with torch.inference_mode():
        moved = mahalanobis_inputs(victim, images.clone(), "features.6", gaussians, 0.0014, STD)
        before = closest_distance(victim, images, "features.6", gaussians)
        after = closest_distance(victim, moved, "features.6", gaussians)
    assert (after < before).float().mean() > 0.9  # the Mahalanobis confidence rises


def test_shared_covariance_and_distances_by_hand():
    features = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 1.0], [12.0, -1.0]])
    gaussians = ClassGaussians(features, torch.tensor([0, 0, 1, 1]))
    assert torch.allclose(gaussians.means, torch.tensor([[1.0, 0.0], [11.0, 0.0]]))
    # centred: (-1,0), (1,0), (-1,1), (1,-1); covariance = their outer products / 4
    covariance = torch.tensor([[1.0, -0.5], [-0.5, 0.5]])
    assert torch.allclose(gaussians.precision, torch.linalg.inv(covariance), atol=1e-5)
    point = torch.tensor([[1.0, 1.0]])  # diff (0, 1) to class 0: 1^2 * precision[1, 1]
    assert gaussians.distances(point)[0, 0] == pytest.approx(torch.linalg.inv(covariance)[1, 1])


# -- with our detector, and settings that cannot work -------------------------------------------


def test_reports_tpr_at_our_detectors_tnr(victim_ckpt, detector_ckpt):
    baseline = OODBaseline(str(victim_ckpt), MSP(), detector=str(detector_ckpt))
    metrics = Trainer(**QUIET).test(baseline, small_in_out(), verbose=False)[0]
    expected = {
        "test/ours/tnr",
        "test/ours/tpr/out",
        "test/ours/tpr/out_test",
        "test/tpr_at_tnr_ours/out",
        "test/tpr_at_tnr_ours/out_test",
    }
    assert expected <= set(metrics)
    assert metrics["test/ours/tnr"] > 0.9


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: ODIN(temperature=0.0), "need temperature > 0"),
        (lambda: ODIN(epsilon=-0.1), "need epsilon >= 0"),
        (lambda: Mahalanobis(epsilon=-0.1), "need epsilon >= 0"),
        (lambda: Mahalanobis().score(TWO_CLASSES, CONFIDENT_AND_FLAT), "call fit first"),
    ],
)
def test_bad_scorer_settings(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"scorer": "msp"}, "scorer must be an OODScorer"),
        ({"scorer": Mahalanobis(["layer9"])}, "unknown layer 'layer9'; layers are submodule"),
        ({"num_classes": 10}, "OOD baselines test on an InOutDataModule"),
        ({"detector": "none.ckpt"}, "detector checkpoint none.ckpt does not exist"),
        ({"detector_threshold": 2.0}, r"detector_threshold must be in \[0, 1\]"),
    ],
)
def test_bad_baseline_settings(victim_ckpt, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        OODBaseline(str(victim_ckpt), **{"scorer": MSP(), **kwargs})


def test_multi_layer_needs_out_of_distribution_validation_images(victim_ckpt):
    baseline = OODBaseline(str(victim_ckpt), Mahalanobis(layers=["features.2", "penultimate"]))
    with pytest.raises(ConfigError, match="needs out-of-distribution validation images"):
        Trainer(**QUIET).test(baseline, small_in_out(out_val_fraction=0.0), verbose=False)
