"""Detectors: the exported logistic head equals scikit-learn's, embeddings are computed once and
cached, the frozen backbone stays untouched, the checkpoint reloads with identical scores, and the
frozen detector shares the scratch one's base, not its training loop."""

from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from sklearn.linear_model import LogisticRegressionCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.nets.guard import load_detector
from lightning_modules import Detector, FrozenFeaturesDetector
from lightning_modules.binary_detector import BinaryDetector
from lightning_modules.detector import fit_logistic_head
from lightning_modules.victim import VictimClassifier
from tests.datamodules import layouts
from tests.lightning_modules.conftest import check_saved_scores, small_in_out


def test_exported_head_gives_the_regressions_probabilities():
    gen = np.random.default_rng(0)
    labels = np.r_[np.zeros(60, int), np.ones(90, int)]
    features = gen.normal(size=(150, 8)) * [1, 5, 0.1, 1, 1, 2, 1, 1] + labels[:, None] * 0.8
    weight, bias, cv_score, c = fit_logistic_head(features, labels, folds=5, Cs=4)
    scaler = StandardScaler().fit(features)
    reference = LogisticRegressionCV(
        Cs=4,
        l1_ratios=(0.0,),
        cv=StratifiedKFold(5, shuffle=True, random_state=0),
        scoring="accuracy",
        max_iter=1000,
        use_legacy_attributes=False,
    ).fit(scaler.transform(features), labels)
    head = torch.nn.Linear(8, 2)
    head.weight.data, head.bias.data = weight, bias
    p_ood = head(torch.from_numpy(features).float()).softmax(-1)[:, 1]
    expected = reference.predict_proba(scaler.transform(features))[:, 1]
    assert np.allclose(p_ood.detach().numpy(), expected, atol=1e-5)
    assert c == reference.C_ and 0.5 < cv_score <= 1.0


def fit_frozen(
    victim_ckpt: Path, cache: Path, folds: int = 3
) -> tuple[FrozenFeaturesDetector, Trainer]:
    model = FrozenFeaturesDetector(
        "digits_cnn", weights=str(victim_ckpt), folds=folds, Cs=3, cache_dir=str(cache)
    )
    trainer = Trainer(
        max_epochs=1,
        limit_val_batches=2,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(cache.parent),
    )
    trainer.fit(model, small_in_out())
    return model, trainer


def test_embeddings_are_computed_once_and_reused(victim_ckpt, tmp_path, monkeypatch):
    calls = {"images": 0}
    embed = FrozenFeaturesDetector.embed

    def counted(self, images):
        calls["images"] += len(images)
        return embed(self, images)

    monkeypatch.setattr(FrozenFeaturesDetector, "embed", counted)
    first, trainer = fit_frozen(victim_ckpt, tmp_path / "cache")
    train_size = len(small_in_out().split("train"))
    assert calls["images"] == train_size
    (folder,) = (tmp_path / "cache").iterdir()
    features = np.load(folder / "train_features.npy", allow_pickle=False)
    assert features.shape == (train_size, 128) and not list(folder.glob(".*.tmp"))
    assert {"train/cv_score", "train/C", "val/acc"} <= set(trainer.callback_metrics)
    assert trainer.global_step == 0 and trainer.num_training_batches == 1  # nothing optimised
    second, _ = fit_frozen(victim_ckpt, tmp_path / "cache")
    assert calls["images"] == train_size  # the second fit read the cache
    assert torch.equal(first.net.fc.weight, second.net.fc.weight)
    with pytest.raises(ConfigError, match="500-fold cross-validation needs 500 training images"):
        fit_frozen(victim_ckpt, tmp_path / "cache", folds=500)
    assert calls["images"] == train_size


def rewrite(folder: Path, name: str, array: np.ndarray) -> None:
    """Replace a cached array and its record too: only the content checks can tell."""
    import json

    from lightning_modules.detector import RECORD, describe_array

    np.save(folder / name, array)
    record = json.loads((folder / RECORD).read_text())
    record["arrays"][name] = describe_array(array)
    (folder / RECORD).write_text(json.dumps(record))


def flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


CORRUPTIONS = {  # what is wrong: (how, the warning's gist)
    "labels out of range": (
        lambda f: rewrite(f, "train_labels.npy", np.load(f / "train_labels.npy") + 2),
        "train_labels.npy holds labels 2..3, expected 0..1",
    ),
    "one image short": (
        lambda f: (
            rewrite(f, "train_features.npy", np.load(f / "train_features.npy")[:-1]),
            rewrite(f, "train_labels.npy", np.load(f / "train_labels.npy")[:-1]),
        ),
        "train_features.npy is float32 (1222, 128), expected float32 (1223, D)",
    ),
    "float64 features": (
        lambda f: rewrite(
            f, "train_features.npy", np.load(f / "train_features.npy").astype(np.float64)
        ),
        "train_features.npy is float64 (1223, 128), expected float32",
    ),
    "truncated features": (
        lambda f: layouts.truncate(f / "train_features.npy"),
        "unreadable (ValueError",
    ),
    "a changed byte": (
        lambda f: flip_last_byte(f / "train_features.npy"),
        "train_features.npy differs from its record in embeddings.json",
    ),
    "no record": (
        lambda f: (f / "embeddings.json").unlink(),
        "no embeddings.json (an older or unfinished cache)",
    ),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_a_bad_embeddings_cache_is_ignored_with_one_warning_and_recomputed(
    victim_ckpt, tmp_path, monkeypatch, corruption
):
    calls = {"images": 0}
    embed = FrozenFeaturesDetector.embed
    monkeypatch.setattr(
        FrozenFeaturesDetector,
        "embed",
        lambda self, images: (
            calls.update(images=calls["images"] + len(images)) or embed(self, images)
        ),
    )
    first, _ = fit_frozen(victim_ckpt, tmp_path / "cache")
    computed = calls["images"]
    (folder,) = (tmp_path / "cache").iterdir()
    how, gist = CORRUPTIONS[corruption]
    how(folder)
    with pytest.warns(UserWarning, match="ignoring cached embeddings") as caught:
        second, trainer = fit_frozen(victim_ckpt, tmp_path / "cache")
    [message] = [str(w.message) for w in caught if "cached embeddings" in str(w.message)]
    assert message.startswith(f"ignoring cached embeddings {folder}: ") and gist in message
    assert message.endswith("; computing them again")
    assert calls["images"] == 2 * computed  # computed again, not read
    assert torch.equal(first.net.fc.weight, second.net.fc.weight)
    third, _ = fit_frozen(victim_ckpt, tmp_path / "cache")  # the rewritten cache is read
    assert calls["images"] == 2 * computed


def test_backbone_is_frozen_in_eval_mode(victim_ckpt, tmp_path):
    pretrained = FrozenFeaturesDetector("digits_cnn", weights=str(victim_ckpt)).net.state_dict()
    model, _ = fit_frozen(victim_ckpt, tmp_path / "cache")
    fitted = model.net.state_dict()
    assert not model.net.training
    assert all(torch.equal(v, fitted[k]) for k, v in pretrained.items() if not k.startswith("fc."))


def test_checkpoint_reloads_as_a_guard_with_identical_scores(cv_run, detector_ckpt):
    cli, _ = cv_run
    data = cli.datamodule
    images = next(iter(data.test_dataloader()))[0]
    guard = load_detector(detector_ckpt)
    model = cli.model.eval()
    with torch.no_grad():
        expected = model(images).softmax(-1)[:, 1]
        assert torch.equal(guard(images), expected)
    assert guard.trained_on["in_data"] == "DigitsDataModule"
    assert guard.image_shape == (3, 16, 16)
    metrics = cli.trainer.callback_metrics
    assert metrics["test/tnr"] > 0.9 and metrics["test/tpr/out"] > 0.9
    # a single `main.py fit` run leaves its scores and ROC figure in its log folder
    log_dir = detector_ckpt.parents[4] / cli.trainer.log_dir  # relative to the run's directory
    assert log_dir.is_relative_to(detector_ckpt.parents[1])  # runs/detector/digits_cv
    check_saved_scores(log_dir, data, {k: float(v) for k, v in metrics.items()})


def test_scratch_detector_trains_and_records_its_data(tmp_path):
    model = Detector("digits_cnn")
    trainer = Trainer(
        max_epochs=1,
        limit_train_batches=3,
        limit_val_batches=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp_path),
    )
    data = small_in_out()
    trainer.fit(model, data)
    metrics = trainer.test(model, data, verbose=False)[0]
    assert {"test/tnr", "test/tpr/out", "test/tpr/out_test", "test/tpr_at_tnr95/out"} <= set(
        metrics
    )
    check_saved_scores(tmp_path, data, metrics)  # no logger: default_root_dir
    trainer.save_checkpoint(tmp_path / "scratch.ckpt")
    assert load_detector(tmp_path / "scratch.ckpt").trained_on == data.training_record()


def test_both_detectors_are_binary_detectors_and_only_one_trains(victim_ckpt):
    scratch = Detector("digits_cnn")
    frozen = FrozenFeaturesDetector("digits_cnn", weights=str(victim_ckpt))
    assert isinstance(scratch, BinaryDetector) and isinstance(frozen, BinaryDetector)
    assert not isinstance(frozen, Detector | VictimClassifier)
    assert not isinstance(scratch, VictimClassifier)
    assert scratch.automatic_optimization and not frozen.automatic_optimization
    assert hasattr(scratch, "optimizer") and not hasattr(frozen, "optimizer")
    assert "train_acc" not in dict(frozen.named_children())
    for model in (scratch, frozen):  # what guard.load_detector reads from a checkpoint
        assert model.hparams.arch == "digits_cnn" and model.hparams.num_classes == 2
        assert all(name.startswith("net.") for name in model.state_dict())


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: Detector(num_classes=10), "a detector is a binary in/out classifier"),
        (lambda: Detector(threshold=1.5), r"threshold must be in \[0, 1\]"),
        (
            lambda: FrozenFeaturesDetector("digits_cnn", weights=None, threshold=-0.1),
            r"threshold must be in \[0, 1\]",
        ),
    ],
)
def test_bad_settings(build, message):
    with pytest.raises(ConfigError, match=message):
        build()


def test_frozen_fit_needs_one_epoch(tmp_path):
    model = FrozenFeaturesDetector("digits_cnn", weights=None, cache_dir=str(tmp_path))
    trainer = Trainer(max_epochs=2, logger=False, enable_progress_bar=False)
    with pytest.raises(ConfigError, match="trainer.max_epochs: 1"):
        trainer.fit(model, small_in_out())


def test_a_victim_checkpoint_is_not_a_detector(victim_ckpt):
    with pytest.raises(ConfigError, match="is not a detector checkpoint"):
        load_detector(victim_ckpt)
