"""OOD baselines: ODIN and Mahalanobis steps raise the in-distribution score, also inside the
inference mode of a Lightning test loop; scores under `Trainer.test` equal a direct computation
and are saved with their ROC figure."""

from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from core.errors import ConfigError
from core.normalization import IMAGENET_STD
from datamodules import DigitsDataModule
from lightning_modules.api import load_victim
from lightning_modules.features import layer_features
from lightning_modules.ood import (
    ClassGaussians,
    OODBaseline,
    closest_distance,
    mahalanobis_inputs,
    max_softmax,
    odin_inputs,
)
from tests.lightning_modules.conftest import check_saved_scores, small_in_out

STD = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def digits() -> DigitsDataModule:
    data = DigitsDataModule()
    data.setup()
    return data


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


@pytest.mark.parametrize(
    "method, layers",
    [("msp", None), ("odin", None), ("mahalanobis", ["features.2", "penultimate"])],
)
def test_trainer_test_scores_equal_a_direct_computation(victim_ckpt, method, layers):
    data = small_in_out()
    baseline = OODBaseline(str(victim_ckpt), method, layers=layers)
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.test(baseline, data, verbose=False)[0]
    assert set(metrics) == {"test/tpr_at_tnr95/out", "test/tpr_at_tnr95/out_test"}
    assert 0.0 <= metrics["test/tpr_at_tnr95/out"] <= 1.0
    check_saved_scores(Path(trainer.log_dir), data, metrics)  # no logger: the working directory
    images = next(iter(data.test_dataloader()))[0]
    direct = baseline.score(images)  # outside inference mode
    with torch.inference_mode():
        in_loop = baseline.score(images.clone())
    assert torch.allclose(direct, in_loop, atol=1e-5)


def test_reports_tpr_at_our_detectors_tnr(victim_ckpt, detector_ckpt):
    baseline = OODBaseline(str(victim_ckpt), "msp", detector=str(detector_ckpt))
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    metrics = trainer.test(baseline, small_in_out(), verbose=False)[0]
    expected = {"test/ours/tnr", "test/ours/tpr/out", "test/ours/tpr/out_test",
                "test/tpr_at_tnr_ours/out", "test/tpr_at_tnr_ours/out_test"}  # fmt: skip
    assert expected <= set(metrics)
    assert metrics["test/ours/tnr"] > 0.9


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"method": "energy"}, "method must be one of msp, odin, mahalanobis"),
        ({"layers": ["layer9"]}, "unknown layer 'layer9'; layers are submodule names"),
        ({"temperature": 0.0}, "need temperature > 0"),
        ({"num_classes": 10}, "OOD baselines test on an InOutDataModule"),
        ({"detector": "none.ckpt"}, "detector checkpoint none.ckpt does not exist"),
    ],
)
def test_bad_settings(victim_ckpt, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        OODBaseline(str(victim_ckpt), **kwargs)


def test_multi_layer_needs_out_of_distribution_validation_images(victim_ckpt):
    baseline = OODBaseline(str(victim_ckpt), "mahalanobis", layers=["features.2", "penultimate"])
    trainer = Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(ConfigError, match="needs out-of-distribution validation images"):
        trainer.test(baseline, small_in_out(out_val_fraction=0.0), verbose=False)
