"""A data-free attack on an API that answers labels only, the realistic API of the paper (5.1.2).

DFME's gradient probes are useless here: a label is piecewise constant, so its forward
differences are zero almost everywhere. What G climbs is then taken through the student alone,
the victim's labels held fixed, as in DFMS-HL (Sanyal et al., CVPR 2022) without its proxy data
and discriminator: the student's cross-entropy to the labels the victim gave G's last images
(images the student gets wrong), plus DFMS's class-diversity term (the entropy of the student's
mean prediction over the batch, so G does not settle on one class), weighted by `diversity`.

Every round is B = `batch` queries from G, answered and trained on (one optimiser step: the
surrogate's soft cross-entropy, which on a one-hot answer is cross-entropy); after every
`student_steps` rounds G takes one step on the last round's images and labels. No probe: B queries
per round, n_s B per generator step, the budget spent exactly (the last round the remainder).
It runs on probabilities too, reading only their top class.
"""

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import OptimizerCallable

from knockoff_lab.attacks.base import Queries, Seen, register_attack
from knockoff_lab.attacks.generator import GeneratorAttack
from knockoff_lab.core.errors import ConfigError


@register_attack
class HardLabelDataFree(GeneratorAttack):
    """`batch` B queries per round, `student_steps` rounds per step of G, `diversity` the
    weight of the class-diversity term; `generator`, `latent`, `generator_optimizer`: G."""

    def __init__(
        self,
        batch: int = 64,
        student_steps: int = 5,
        diversity: float = 1.0,
        generator: str = "dfme_small",
        latent: int = 64,
        generator_optimizer: OptimizerCallable = torch.optim.Adam,
    ):
        super().__init__(batch, student_steps, generator, latent, generator_optimizer)
        if diversity < 0:
            raise ConfigError(f"attack diversity must be >= 0, got {diversity}")
        self.diversity = diversity

    def round_sizes(self, budget: int) -> list[int]:
        full, rest = divmod(budget, self.batch)
        return [self.batch] * full + ([rest] if rest else [])

    def propose(self, seen: Seen, count: int) -> Queries:
        net, r = self.build(seen), seen.round
        self._changed = False
        if r and r % self.student_steps == 0 and seen.surrogate is not None:
            self.update(seen, net, r - 1)
        return Queries(images=self.generate(net, self.noise(seen, r, count), r).cpu())

    def update(self, seen: Seen, net, last: int) -> None:
        """One step of G on round `last`'s noise and the victim's labels for its images."""
        answers = seen.answers[-self.batch :]
        answered = ~answers.isnan().any(-1)
        labels = answers.nan_to_num(0.0).argmax(-1).to(seen.device)
        with torch.enable_grad():
            images = net(self.noise(seen, last, len(answers)))
            logits = seen.surrogate(images).float()
            wrong = F.cross_entropy(logits, labels, reduction="none")[answered.to(seen.device)]
            mean = logits.softmax(-1).mean(0)
            entropy = -(mean * mean.clamp_min(1e-12).log()).sum()
            self._disagreement = float(wrong.mean()) if len(wrong) else None
            self.step_generator(
                net, -(wrong.mean() if len(wrong) else 0) - self.diversity * entropy
            )
        seen.surrogate.zero_grad(set_to_none=True)  # G's step went through it: leave it clean
