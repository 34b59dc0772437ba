"""D-DAE (Chen et al., "D-DAE: Defense-Penetrating Model Extraction Attacks", S&P 2023) on the
attacker's side of the API: tell which defence the API runs, then undo it.

The attacker computes everything from models of its own, with no extra query:
- two **shadow** models of its `arch`, each trained on one half of the images it asked, with
  the top class of each answer as label (the label survives every perturbation that keeps it);
- their posteriors on those images (clean answers) and each `candidates` defence applied to
  them locally, as the owner would apply it (answers under each defence);
- a **detector** (a logistic regression on the sorted answer vector) that tells which of
  "none" and the candidates made an answer, trained on shadow 0 and scored on shadow 1 (held
  out); the API's defence is the majority verdict over its real answers;
- a **recovery** network (`EntrywiseRecovery`: from a defended answer to the clean one, KL
  loss) for the
  detected defence, trained on shadow 0 and scored on shadow 1 (L1 to the clean answer before
  and after). Its output on the API's answers is what the surrogate trains on, if it brought
  shadow 1's answers closer to clean; else the answers as given.
`metrics()` (logged as `attack/ddae_<name>` beside the surrogate's test metrics): the held-out
detector accuracy, the detected defence (its index in `names`: none, then the candidates) and
the recovery's held-out L1 to the clean answer, before and after.
"""

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.nn import functional as F

from knockoff_lab.attacks.answers import AnswerReader
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.base import Defence, QueryBatch
from knockoff_lab.nets.networks import build_network


class DDAE(AnswerReader):
    """`candidates`: the defences the attacker considers (class and settings, as the owner would
    write them). `assume`: skip detection and recover this one ("none" or a candidate's class
    name). `arch`: the shadows' network; `max_images`: how many asked images the shadows use
    (drawn with `seed`); `shadow_epochs`, `recovery_epochs`: their training."""

    def __init__(
        self,
        candidates: list[Defence],
        assume: str | None = None,
        arch: str = "digits_cnn",
        max_images: int = 2000,
        shadow_epochs: int = 10,
        recovery_epochs: int = 200,
        seed: int = 0,
    ):
        names = [type(c).__name__ for c in candidates]
        if not candidates or len(set(names)) != len(names):
            raise ConfigError(
                f"data.reader.candidates must name one or more distinct defences, got {names}"
            )
        if assume is not None and assume not in ["none", *names]:
            raise ConfigError(
                f"data.reader.assume {assume!r} has no shadow answers: expected none or one of "
                f"the candidates {names}"
            )
        if max_images < 4:
            raise ConfigError(f"data.reader.max_images must be >= 4, got {max_images}")
        self.candidates, self.names, self.assume = candidates, ["none", *names], assume
        self.arch, self.max_images, self.seed = arch, max_images, seed
        self.shadow_epochs, self.recovery_epochs = shadow_epochs, recovery_epochs
        self.recovery: nn.Module | None = None
        self.report: dict[str, float] = {}

    def fit(self, images: torch.Tensor, answers: torch.Tensor) -> None:
        """Shadows, detector and recovery from the asked `images` and their `answers` (no NaN)."""
        num_classes, self.report = answers.shape[-1], {}
        for candidate in self.candidates:
            candidate.check(num_classes)
        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(len(images), generator=generator)[: self.max_images]
        halves = order[: len(order) // 2], order[len(order) // 2 :]
        labels = answers.argmax(dim=-1)
        shadows = [
            self.shadow(images[half], labels[half], num_classes, self.seed + i)
            for i, half in enumerate(halves)
        ]
        made = [self.answers_under_each(s, images[order]) for s in shadows]  # [shadow][name]
        detector = LogisticRegression(max_iter=2000)
        detector.fit(*features_and_labels(made[0]))
        held_out, truth = features_and_labels(made[1])
        self.report["detector_accuracy"] = float((detector.predict(held_out) == truth).mean())
        if self.assume is None:
            votes = detector.predict(features(answers))
            detected = self.names[int(np.bincount(votes, minlength=len(self.names)).argmax())]
        else:
            detected = self.assume
        self.report["detected"] = float(self.names.index(detected))  # in `names` order
        self.recovery = None
        if detected != "none":
            index = self.names.index(detected)
            self.recovery = train_recovery(made[0][index], made[0][0], self.recovery_epochs)
            with torch.no_grad():
                before = (made[1][index] - made[1][0]).abs().sum(-1).mean()
                after = (self.recovery(made[1][index]) - made[1][0]).abs().sum(-1).mean()
            self.report.update(recovery_l1_before=float(before), recovery_l1_after=float(after))
            if after >= before:  # no help on the held-out shadow: the answers as given
                self.recovery = None

    def metrics(self) -> dict[str, float]:
        return {f"ddae_{name}": value for name, value in self.report.items()}

    def shadow(self, images, labels, num_classes: int, seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = build_network(self.arch, num_classes)
            optimizer = torch.optim.Adam(net.parameters(), lr=1e-3)
            net.train()
            for _ in range(self.shadow_epochs):
                for batch in torch.randperm(len(images)).split(64):
                    optimizer.zero_grad()
                    F.cross_entropy(net(images[batch]), labels[batch]).backward()
                    optimizer.step()
        return net.eval()

    def answers_under_each(self, shadow: nn.Module, images: torch.Tensor) -> list[torch.Tensor]:
        """The shadow's answers (N, C): clean, then under each candidate, applied locally."""
        with torch.no_grad():
            clean = shadow(images).float().softmax(dim=-1).half().float()  # as an API rounds
        made = [clean]
        for candidate in self.candidates:
            batch = QueryBatch.arriving(images, clean, "shadow")
            candidate.apply(batch)
            made.append(batch.answers.float())
        return made

    def read(self, answers: torch.Tensor) -> torch.Tensor:
        if self.recovery is None:
            return answers
        refused = answers.isnan().any(dim=-1, keepdim=True)
        with torch.no_grad():
            recovered = self.recovery(answers.float().nan_to_num(0.0))
        return recovered.masked_fill(refused, float("nan"))


def features(answers: torch.Tensor) -> np.ndarray:
    """What tells defences apart whatever the class: the answer's values, sorted."""
    return answers.float().sort(dim=-1, descending=True).values.numpy()


def features_and_labels(made: list[torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([features(answers) for answers in made])
    y = np.concatenate([np.full(len(answers), i) for i, answers in enumerate(made)])
    return x, y


def train_recovery(defended: torch.Tensor, clean: torch.Tensor, epochs: int) -> nn.Module:
    """An `EntrywiseRecovery` from defended answers to clean ones, trained on the clean ones'
    KL divergence."""
    net = EntrywiseRecovery()
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        optimizer.zero_grad()
        F.kl_div(net(defended).log_softmax(-1), clean, reduction="batchmean").backward()
        optimizer.step()
    return nn.Sequential(net, nn.Softmax(dim=-1)).eval()


class EntrywiseRecovery(nn.Module):
    """Logits of the clean answer, one per class, each from the same small network of that
    class's entry (its value, log value and rank) and the answer's top value. What a class is
    called does not matter, only its value: a defence that maps values monotonically is undone
    without moving the top class, and a thousand shadow answers teach one function, not C."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(4, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, answers: torch.Tensor) -> torch.Tensor:
        classes = answers.shape[-1]
        rank = answers.argsort(dim=-1).argsort(dim=-1).float() / max(classes - 1, 1)
        top = answers.max(dim=-1, keepdim=True).values.expand_as(answers)
        entries = torch.stack([answers, answers.clamp_min(1e-6).log(), rank, top], dim=-1)
        return self.net(entries).squeeze(-1)
