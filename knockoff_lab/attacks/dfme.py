"""DFME, data-free model extraction (Truong et al., CVPR 2021), with every probe a paid query.

The attacker has no images. A generator G maps noise to images on which the student (the
surrogate) and the victim disagree; the student learns the victim on G's images. The victim's
gradient is unknown, so G's is estimated by forward differences: for each of B images x, m random
unit directions u, d (L(x + eps u) - L(x)) / eps u averaged over the m, where L is the student's
L1 distance to the victim's logits (recovered from the API's probabilities as log p minus its
mean). One iteration is rounds of a step-round attack (`round_unit` "step"):

  a probe round      B (m + 1) queries: x and x + eps u; answered and paid for, not trained on
  n_s student rounds B queries each from G after its update; one optimiser step on each

so an iteration costs B (m + 1) + n_s B queries (B = `batch`, m = `directions`, n_s =
`student_steps`), and the ledger counts exactly that. The last queries of a budget that is not
a whole number of iterations go to a last probe round and fewer (or smaller) student rounds, or
to student rounds alone when a probe round no longer fits: the budget is spent exactly. The
surrogate should train with `loss: l1_logits` (DFME's student loss; the YAML sets it).

G's state is saved with the round that changed it (`GeneratorAttack`; about 3 x G's size per
iteration on disk, with Adam). Left out: the learning-rate schedule of G (its optimiser's rate
is fixed), DFME's n_G > 1.
"""

from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from knockoff_lab.attacks.base import Queries, Seen, register_attack
from knockoff_lab.attacks.generator import GeneratorAttack
from knockoff_lab.core.errors import ConfigError


def victim_logits(answers: torch.Tensor) -> torch.Tensor:
    """DFME's logit recovery: log-probabilities minus their mean over classes."""
    log_probs = answers.float().clamp_min(1e-8).log()
    return log_probs - log_probs.mean(dim=-1, keepdim=True)


def one_hot_rows(answers: torch.Tensor) -> bool:
    """Whether every answer is a label (a single 1, zeros elsewhere)."""
    return bool(
        len(answers) and ((answers == 0) | (answers == 1)).all() and (answers.sum(-1) == 1).all()
    )


@register_attack
class DFME(GeneratorAttack):
    """Data-free extraction: `batch` B images per generator batch, `directions` m >= 1,
    `epsilon` the forward-difference step (in normalised pixels), `student_steps` n_s student
    rounds per generator update; `generator`, `latent`, `generator_optimizer`: G (DFME: Adam,
    1e-4 on CIFAR-10)."""

    def __init__(
        self,
        batch: int = 64,
        directions: int = 1,
        epsilon: float = 1e-3,
        student_steps: int = 5,
        generator: str = "dfme_small",
        latent: int = 64,
        generator_optimizer: OptimizerCallable = torch.optim.Adam,
    ):
        super().__init__(batch, student_steps, generator, latent, generator_optimizer)
        if directions < 1:
            raise ConfigError(f"attack directions must be >= 1, got {directions}")
        if not epsilon > 0:
            raise ConfigError(f"attack epsilon must be > 0, got {epsilon}")
        self.directions, self.epsilon = directions, epsilon
        self._probe_rounds: set[int] = set()
        self._pending: int | None = None  # a probe round whose answers are not used yet

    @property
    def probes(self) -> int:
        """Queries of one probe round: B (m + 1)."""
        return self.batch * (self.directions + 1)

    def queries_per_iteration(self) -> int:
        return self.probes + self.student_steps * self.batch

    def round_sizes(self, budget: int) -> list[int]:
        if budget <= self.probes:
            raise ConfigError(
                f"data.budget {budget} does not pay for one {type(self).__name__} iteration: its "
                f"probe round alone is batch x (directions + 1) = {self.probes} queries, and the "
                f"student needs more (one iteration: {self.queries_per_iteration()})"
            )
        sizes, left = [], budget
        while left:
            if left > self.probes:
                self._probe_rounds.add(len(sizes))
                sizes.append(self.probes)
                left -= self.probes
            for _ in range(self.student_steps):
                if left:
                    sizes.append(min(self.batch, left))
                    left -= sizes[-1]
        return sizes

    def trains_on(self, r: int) -> bool:
        return r not in self._probe_rounds

    def check_api(self, api: Any) -> None:
        if getattr(api, "answers_probabilities", True) is False:
            raise ConfigError(
                f"data.attack: {type(self).__name__} measures the disagreement on "
                "probabilities, but this API answers labels (data.api.init_args.defences); use a "
                "hard-label attack"
            )

    def propose(self, seen: Seen, count: int) -> Queries:
        net, r = self.build(seen), seen.round
        self._changed = False
        if self._pending is not None and seen.surrogate is not None:
            self.update(seen, net)
        probing = r in self._probe_rounds
        images = self.generate(net, self.noise(seen, r, self.batch if probing else count), r)
        if not probing:
            return Queries(images=images.cpu())
        shape = (len(images), self.directions, *images.shape[1:])
        u = torch.randn(shape, generator=self.random(seen, r, stream=1)).to(images.device)
        u = u / u.flatten(2).norm(dim=-1).view(*shape[:2], *[1] * (len(shape) - 2))
        probes = (images.unsqueeze(1) + self.epsilon * u).flatten(0, 1)
        self._pending = r
        return Queries(images=torch.cat([images, probes]).cpu())

    def disagreement(self, logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        """(N,) what G climbs: the student's mean L1 distance to the victim's logits."""
        return (logits - victim_logits(answers)).abs().mean(-1)

    def update(self, seen: Seen, net: nn.Module) -> None:
        """One step of G from the pending probe round's answers (its queries are the last
        asked): ascend the student-victim disagreement along the estimated gradient."""
        images = seen.images[-self.probes :].to(seen.device)
        answers = seen.answers[-self.probes :]
        if one_hot_rows(answers[~answers.isnan().any(-1)]):
            raise ConfigError(
                f"data.attack: {type(self).__name__} got labels from the API, not "
                "probabilities, to measure the disagreement on; use a hard-label attack"
            )
        with torch.no_grad():
            losses = self.disagreement(seen.surrogate(images).float(), answers.to(seen.device))
        losses = losses.nan_to_num(nan=0.0)  # a refused probe: no difference, no direction
        b, m = self.batch, self.directions
        x, perturbed = images[:b], images[b:].view(b, m, *images.shape[1:])
        differences = (losses[b:].view(b, m) - losses[:b, None]) / self.epsilon
        u = (perturbed - x[:, None]) / self.epsilon
        dimension = x[0].numel()
        gradient = dimension / m * (differences.view(b, m, *[1] * (x.ndim - 1)) * u).sum(1)
        self._disagreement = float(losses[:b].mean())
        with torch.enable_grad():
            regenerated = net(self.noise(seen, self._pending, b))
            # descend -L along the estimate: ascend the disagreement
            self.step_generator(net, -(regenerated * gradient).sum() / b)
        self._pending = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "pending": self._pending}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A round read back: also the probe round whose answers G has not used yet."""
        super().load_state_dict(state)
        self._pending = state.get("pending")


@register_attack
class MAZE(DFME):
    """MAZE (Kariyappa et al., CVPR 2021): DFME's loop with the KL divergence from the victim's
    answer to the student's softmax as what G climbs (and the student's own loss: the
    surrogate's default soft cross-entropy, whose gradient is the KL's), `directions` 10 as
    the paper's ndirs, and experience replay: each student step also trains on `replay`
    earlier answered student queries drawn at random, seeded by the round (MAZE's separate
    replay steps folded into the student's steps; no query is paid for them). Queries per
    iteration: B (m + 1) + n_s B, as DFME's."""

    def __init__(
        self,
        batch: int = 64,
        directions: int = 10,
        epsilon: float = 1e-3,
        student_steps: int = 5,
        replay: int = 64,
        generator: str = "dfme_small",
        latent: int = 64,
        generator_optimizer: OptimizerCallable = torch.optim.Adam,
    ):
        super().__init__(
            batch, directions, epsilon, student_steps, generator, latent, generator_optimizer
        )
        if replay < 0:
            raise ConfigError(f"attack replay must be >= 0 earlier queries, got {replay}")
        self.replay = replay

    def disagreement(self, logits: torch.Tensor, answers: torch.Tensor) -> torch.Tensor:
        p = answers.float()
        return (p * (p.clamp_min(1e-8).log() - logits.log_softmax(-1))).sum(-1)
