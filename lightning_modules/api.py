"""The prediction API: the only door an attacker has to the victim (paper 2.2, 5.1.2).

The victim's full posterior is computed once per query; what the client receives is derived
from it by `degrade`, a pure function. The transfer set stores the posterior and applies
`degrade` offline, so every granularity (A_p and A_c of Table 6) comes from one querying pass.

An optional detector (paper 4.1: "a filter placed in front of the prediction API") sees each
query first; a query whose P(out-of-distribution) exceeds `threshold` is flagged, counted, and
never reaches the victim. It is refused (its answer row is all NaN: no answer) or answered with
a decoy, the uniform vector, which then goes through the granularity like any posterior.
"""

from pathlib import Path
from typing import Literal

import torch
from torch import nn

from core.errors import ConfigError

Granularity = Literal["probs", "top_k", "rounded", "label"]
GRANULARITIES: tuple[str, ...] = ("probs", "top_k", "rounded", "label")
OnFlag = Literal["refuse", "decoy"]


def check_granularity(
    granularity: str, num_classes: int, top_k: int | None, decimals: int | None
) -> None:
    """Raise a one-line ConfigError for an unknown granularity or an out-of-range option."""
    if granularity not in GRANULARITIES:
        known = ", ".join(GRANULARITIES)
        raise ConfigError(f"granularity must be one of {known}, got {granularity!r}")
    if granularity == "top_k" and (top_k is None or not 1 <= top_k <= num_classes):
        raise ConfigError(f"top_k must be in 1..{num_classes} (num_classes), got {top_k}")
    if granularity == "rounded" and (decimals is None or decimals < 0):
        raise ConfigError(f"decimals must be an integer >= 0 for rounded answers, got {decimals}")


def check_threshold(threshold: float, key: str = "threshold") -> None:
    """Raise a one-line ConfigError for a detector threshold that is not a probability."""
    if not 0 <= threshold <= 1:
        raise ConfigError(f"{key} must be in [0, 1] (a P(OOD)), got {threshold}")


def check_guard(threshold: float, on_flag: str) -> None:
    """Raise a one-line ConfigError for a detector threshold or policy out of range."""
    check_threshold(threshold)
    if on_flag not in ("refuse", "decoy"):
        raise ConfigError(f"on_flag must be refuse or decoy, got {on_flag!r}")


def flagged_answers(
    posteriors: torch.Tensor, flagged: torch.Tensor, on_flag: OnFlag
) -> torch.Tensor:
    """`posteriors` with the flagged rows refused (NaN) or replaced by the uniform decoy."""
    fill = float("nan") if on_flag == "refuse" else 1.0 / posteriors.shape[-1]
    return posteriors.masked_fill(flagged[:, None], fill)


def degrade(
    posteriors: torch.Tensor,
    granularity: Granularity,
    top_k: int | None = None,
    decimals: int | None = None,
) -> torch.Tensor:
    """What the API returns for full posteriors (N, C), as an (N, C) tensor:

    probs    the posterior itself;
    top_k    the k highest probabilities, every other entry zero (not renormalised);
    rounded  every probability rounded to `decimals` decimals;
    label    the one-hot vector of the predicted class.
    """
    if granularity == "probs":
        return posteriors
    if granularity == "top_k":
        values, indices = posteriors.topk(top_k, dim=-1)
        return torch.zeros_like(posteriors).scatter_(-1, indices, values)
    if granularity == "rounded":
        scale = 10.0**decimals
        return torch.round(posteriors.double() * scale).div(scale).to(posteriors.dtype)
    if granularity == "label":
        labels = posteriors.argmax(dim=-1)
        return nn.functional.one_hot(labels, posteriors.shape[-1]).to(posteriors.dtype)
    raise ConfigError(f"unknown granularity {granularity!r}")


def read_victim(path: str | Path, mmap: bool = False) -> tuple[str, int, dict[str, torch.Tensor]]:
    """(arch, num_classes, network state) of a VictimClassifier checkpoint, read once without
    unpickling code, the weights checked to fit `arch` (built on the meta device: no cost)."""
    from core.checkpoints import disagreement, net_state, read_checkpoint
    from lightning_modules.networks import build_network

    checkpoint = read_checkpoint(path, "victim checkpoint", mmap=mmap)
    hparams = checkpoint.get("hyper_parameters") or {}
    if not {"arch", "num_classes"} <= set(hparams):
        raise ConfigError(
            f"victim checkpoint {path} is not a VictimClassifier checkpoint: expected "
            "hyper_parameters arch and num_classes and a state_dict"
        )
    arch, classes = str(hparams["arch"]), int(hparams["num_classes"])
    state = net_state(checkpoint)
    head = state["fc.weight"].shape[0] if "fc.weight" in state else classes
    try:
        with torch.device("meta"):
            problem = disagreement(build_network(arch, head), state)
    except ConfigError as err:
        raise ConfigError(f"victim checkpoint {path}: {err}") from None
    if problem:
        raise ConfigError(f"victim checkpoint {path} does not fit its arch {arch} ({problem})")
    return arch, classes, state


def victim_architecture(path: str | Path) -> tuple[str, int]:
    """(arch, num_classes) of a checked VictimClassifier checkpoint, memory-mapped: cheap."""
    return read_victim(path, mmap=True)[:2]


def load_victim(path: str | Path) -> nn.Module:
    """The victim network from a VictimClassifier checkpoint, in eval mode. Built on the meta
    device and given the checkpoint's tensors: no random initialisation to throw away."""
    from lightning_modules.networks import build_network

    arch, classes, state = read_victim(path)  # not memory-mapped: the file may be rewritten
    with torch.device("meta"):
        net = build_network(arch, classes)
    net.load_state_dict(state, assign=True)
    return net.eval()


class PredictionAPI:
    """Answers batches of images with the victim's output at one granularity.

    Counts every query answered and refuses to exceed `budget`. The victim runs in eval mode
    under `torch.inference_mode` on `device`, in batches of `batch_size`.

    With a `detector` (an `nn.Module` giving P(OOD) per image, e.g. `guard.load_detector`),
    `queries_flagged` counts the flagged queries; they count against the budget too (they were
    asked) and are refused or decoyed per `on_flag`. A detector that records the image shape it
    was trained on rejects queries of another shape before anything is answered.
    """

    def __init__(
        self,
        victim: nn.Module,
        num_classes: int,
        granularity: Granularity = "probs",
        top_k: int | None = None,
        decimals: int | None = None,
        budget: int | None = None,
        batch_size: int = 256,
        device: torch.device | str = "cpu",
        detector: nn.Module | None = None,
        threshold: float = 0.5,
        on_flag: OnFlag = "refuse",
    ):
        check_granularity(granularity, num_classes, top_k, decimals)
        check_guard(threshold, on_flag)
        if budget is not None and budget < 1:
            raise ConfigError(f"budget must be >= 1 query, got {budget}")
        self.victim = victim.eval().to(device)
        self.num_classes = num_classes
        self.granularity, self.top_k, self.decimals = granularity, top_k, decimals
        self.budget, self.batch_size, self.device = budget, batch_size, torch.device(device)
        self.queries_answered = 0
        self.detector = None if detector is None else detector.eval().to(device)
        self.threshold, self.on_flag, self.queries_flagged = threshold, on_flag, 0

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs) -> "PredictionAPI":
        victim = load_victim(path)
        return cls(victim, num_classes=victim.fc.out_features, **kwargs)

    def posteriors(self, images: torch.Tensor) -> torch.Tensor:
        """Full victim posteriors (N, C) on the CPU, counted against the budget; behind a
        detector, flagged rows are refused (NaN) or decoys."""
        shape = getattr(self.detector, "image_shape", None)
        if shape is not None and tuple(images.shape[1:]) != tuple(shape):
            raise ConfigError(
                f"the detector was trained on {'x'.join(map(str, shape))} images, "
                f"queries are {'x'.join(map(str, images.shape[1:]))}"
            )
        if self.budget is not None and self.queries_answered + len(images) > self.budget:
            raise ConfigError(
                f"query budget exhausted: {self.queries_answered} answered, {len(images)} more "
                f"asked, budget {self.budget}"
            )
        outputs = []
        with torch.inference_mode():
            for chunk in images.split(self.batch_size):
                chunk = chunk.to(self.device, non_blocking=True)
                if self.detector is None:
                    outputs.append(self.victim(chunk).float().softmax(dim=-1).cpu())
                    continue
                flagged = self.detector(chunk) > self.threshold
                answers = torch.zeros(len(chunk), self.num_classes, device=self.device)
                if not flagged.all():
                    answers[~flagged] = self.victim(chunk[~flagged]).float().softmax(dim=-1)
                outputs.append(flagged_answers(answers, flagged, self.on_flag).cpu())
                self.queries_flagged += int(flagged.sum())
        self.queries_answered += len(images)
        return torch.cat(outputs)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The client's answer: posteriors degraded to this API's granularity (a refused
        query's row stays all NaN)."""
        posteriors = self.posteriors(images)
        answers = degrade(posteriors, self.granularity, self.top_k, self.decimals)
        return answers.masked_fill(posteriors.isnan().any(dim=-1, keepdim=True), float("nan"))
