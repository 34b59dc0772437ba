"""What the data-free attacks share: a generator G (`nets.generators`) whose images are the
queries, its seeded noise, and its weights and optimiser state saved with the round that changed
them (as tensors beside the round's strategy.json), so a killed attack resumes where it stopped
without asking anything twice. Rounds are training steps (`round_unit` "step")."""

from typing import Any

import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from knockoff_lab.attacks.base import QueryStrategy, Seen
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.nets.generators import build_generator


class GeneratorAttack(QueryStrategy):
    """Base of the generator-based attacks: `batch` B images per generator batch,
    `student_steps` student rounds per step of G, `generator` a name of `nets.generators`,
    `latent` its noise size, `generator_optimizer` its optimiser.
    Subclasses propose G's images and call `changed()` after a step of G."""

    synthetic = True
    round_unit = "step"

    def __init__(
        self,
        batch: int = 64,
        student_steps: int = 5,
        generator: str = "dfme_small",
        latent: int = 64,
        generator_optimizer: OptimizerCallable = torch.optim.Adam,
    ):
        super().__init__(rounds=1)
        for name, value in (("batch", batch), ("student_steps", student_steps)):
            if value < 1:
                raise ConfigError(f"attack {name} must be >= 1, got {value}")
        self.batch, self.student_steps = batch, student_steps
        self.generator, self.latent = generator, latent
        self._optimizer_factory = generator_optimizer
        self._net: nn.Module | None = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._changed = False  # G changed while proposing this round: save it with the round
        self._restore: dict[str, Any] | None = None  # G's stored state, read before G is built
        self._disagreement: float | None = None

    def settings(self) -> dict[str, Any]:
        settings = super().settings()
        optimizer = self._optimizer_factory(nn.Linear(1, 1).parameters())
        settings["generator_optimizer"] = [type(optimizer).__name__, optimizer.defaults]
        return settings

    @staticmethod
    def random(seen: Seen, r: int, stream: int = 0) -> torch.Generator:
        """Round `r`'s seeded random stream `stream` (0: G's noise): the same again on resume."""
        return torch.Generator().manual_seed(seen.seed * 1_000_003 + r + stream * 500_000)

    def noise(self, seen: Seen, r: int, count: int) -> torch.Tensor:
        """Round `r`'s latent noise."""
        return torch.randn(count, self.latent, generator=self.random(seen, r)).to(seen.device)

    def build(self, seen: Seen) -> nn.Module:
        """G, initialised from the attack's seed, and its optimiser, on the surrogate's device."""
        if self._net is None:
            channels, size = seen.pool[0].shape[0], seen.pool[0].shape[-1]
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seen.seed)
                self._net = build_generator(self.generator, self.latent, size, channels)
            self._optimizer = self._optimizer_factory(self._net.parameters())
            if self._restore is not None:
                self.restore(self._restore)
        return self._net.to(seen.device).train()

    def generate(self, net: nn.Module, z: torch.Tensor, r: int) -> torch.Tensor:
        """G's images for noise `z`, checked finite before any is asked."""
        with torch.no_grad():
            images = net(z)
        if not torch.isfinite(images).all():
            raise ConfigError(
                f"data.attack: {type(self).__name__}'s generator made non-finite images for "
                f"round {r} (diverged): lower data.attack.init_args.generator_optimizer's lr"
            )
        return images

    def step_generator(self, net: nn.Module, loss: torch.Tensor) -> None:
        self._optimizer.zero_grad()
        loss.backward()
        self._optimizer.step()
        self._changed = True

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {}
        if self._changed and self._net is not None:
            state |= {f"g.{k}": v.detach().cpu() for k, v in self._net.state_dict().items()}
            optimizer = self._optimizer.state_dict()
            for index, entries in optimizer["state"].items():
                for key, value in entries.items():
                    state[f"opt.{index}.{key}"] = torch.as_tensor(value).cpu()
            state["opt_groups"] = optimizer["param_groups"]
        if self._disagreement is not None:
            state["disagreement"] = self._disagreement
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """A round read back: G as that round left it if the round changed it (else G stays as
        the last such round left it: rounds load in order)."""
        self._changed = False
        self._disagreement = state.get("disagreement", self._disagreement)
        if any(key.startswith("g.") for key in state):
            self._restore = state if self._net is None else self.restore(state)

    def restore(self, state: dict[str, Any]) -> None:
        """G and its optimiser as a stored round left them."""
        self._net.load_state_dict({k[2:]: v for k, v in state.items() if k.startswith("g.")})
        entries: dict[int, dict[str, torch.Tensor]] = {}
        for key, value in state.items():
            if key.startswith("opt."):
                _, index, name = key.split(".", 2)
                entries.setdefault(int(index), {})[name] = value
        self._optimizer.load_state_dict({"state": entries, "param_groups": state["opt_groups"]})

    def metrics(self) -> dict[str, float]:
        """`disagreement`: what G climbs and the student lowers, on G's last images."""
        return {} if self._disagreement is None else {"disagreement": self._disagreement}
