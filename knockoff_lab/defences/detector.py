"""The paper's own defence (4.1): an out-of-distribution detector as a filter in front of the
prediction API. A query whose P(OOD) exceeds `threshold` is flagged and then refused (no answer)
or answered with a decoy, the uniform vector, which later defences treat like any answer."""

from typing import Literal

import torch

from knockoff_lab.core.digests import module_digest
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.base import Defence, QueryBatch, register_defence

OnFlag = Literal["refuse", "decoy"]


def check_threshold(threshold: float, key: str = "threshold") -> None:
    """Raise a one-line ConfigError for a detector threshold that is not a probability."""
    if not 0 <= threshold <= 1:
        raise ConfigError(f"{key} must be in [0, 1] (a P(OOD)), got {threshold}")


@register_defence
class DetectorFilter(Defence):
    """`detector`: the checkpoint of a `Detector` or `FrozenFeaturesDetector` (its `last.ckpt`),
    or, in Python, any module giving P(OOD) per image."""

    stateless = False  # reads the images

    def __init__(self, detector: str, threshold: float = 0.5, on_flag: OnFlag = "refuse"):
        from knockoff_lab.nets.guard import load_detector  # the detector is a LightningModule's

        check_threshold(threshold)
        if on_flag not in ("refuse", "decoy"):
            raise ConfigError(f"on_flag must be refuse or decoy, got {on_flag!r}")
        self.detector, self.threshold, self.on_flag = detector, threshold, on_flag
        self._path = detector if isinstance(detector, str) else type(detector).__name__
        if isinstance(detector, torch.nn.Module):
            self._guard = detector.eval()
        else:
            self._guard = load_detector(detector)
            self.detector = module_digest(self._guard)  # the weights, not the path, decide

    def check_data(self, data_name: str) -> None:
        trained = getattr(self._guard, "trained_on", {}).get("in_data", data_name)
        if trained != data_name:
            raise ConfigError(f"detector {self._path} was trained for {trained}, not {data_name}")

    def apply(self, batch: QueryBatch) -> None:
        self._guard.to(batch.images.device)
        shape = getattr(self._guard, "image_shape", None)
        if shape is not None and tuple(batch.images.shape[1:]) != tuple(shape):
            raise ConfigError(
                f"the detector was trained on {'x'.join(map(str, shape))} images, "
                f"queries are {'x'.join(map(str, batch.images.shape[1:]))}"
            )
        with torch.inference_mode():
            p_ood = self._guard(batch.images)
        if p_ood.shape != batch.flagged.shape:
            raise ConfigError(
                f"detector {self._path} must give one P(OOD) per image, gave shape "
                f"{tuple(p_ood.shape)} for {len(batch.flagged)} images"
            )
        flagged = p_ood > self.threshold
        batch.flagged |= flagged
        if self.on_flag == "refuse":
            batch.refused |= flagged
        else:
            batch.answers = batch.answers.masked_fill(flagged[:, None], 1 / batch.answers.shape[-1])
