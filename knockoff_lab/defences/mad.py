"""Prediction poisoning, MAD (Orekondy et al. 2020, "Prediction poisoning: towards defenses
against DNN model stealing attacks"): answer y~ instead of the posterior y, within an L1 budget
(||y~ - y||_1 <= epsilon, y~ on the simplex), chosen so that the gradient an attacker's
surrogate takes from it points as far as possible from the one y would give. The attacker's
model is unknown, so a proxy F stands in for it: G = d log F(x) / d w (C x D), the Jacobian of
the proxy's log-softmax w.r.t. its last layer's parameters; training on answer y moves w along
G^T y. MAD maximises the angular deviation || G^T y~ / ||G^T y~|| - G^T y / ||G^T y|| ||^2.

Why no autograd: for a last layer z = W h + b, d log F_i / d(W, b) = (e_i - p) (x) [h, 1] (p the
proxy's softmax), so G^T y = (y - p) (x) [h, 1] for any y on the simplex. The feature factor
[h, 1] is common to every candidate answer, so the angle between G^T y~ and G^T y is the angle
between y~ - p and y - p in R^C: exact, batched, a (N, C, C) computation after one forward pass.

The paper's solver: the objective is maximised at a vertex y_k (one-hot on k) of the simplex;
take the best k, then move from y toward y_k as far as epsilon allows. Here each k is ranked
at the point the budget reaches toward it, y + a_k (y_k - y) with a_k = min(1, eps / ||y_k -
y||_1) (the same ranking when the budget reaches the vertices; never worse on the constrained
objective, since the paper's pick is one of these candidates). The angle grows monotonically
along the segment, so going as far as the budget allows is right. `argmax` (the paper's
MAD-argmax) caps each a_k so the victim's top class stays on top: benign accuracy is kept.

The proxy: `arch` randomly initialised with `seed` (the paper finds a random proxy works), or a
`VictimClassifier` checkpoint (`checkpoint`, e.g. an owner-trained surrogate). The default
`linear` proxy (softmax regression on the flattened image) fits queries of any size; for the
digits victim, `digits_cnn` is the victim's own architecture. It reads the images, so not
stateless (it keeps no per-client history).
"""

from pathlib import Path

import torch
from torch import nn

from knockoff_lab.core.digests import module_digest
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences.base import Defence, QueryBatch, register_defence


def mad_perturb(
    y: torch.Tensor, p: torch.Tensor, epsilon: float, argmax: bool = False
) -> torch.Tensor:
    """The MAD answers (N, C) for posteriors `y` and proxy softmax `p`, in float64."""
    y, p = y.double(), p.double()
    vertices = torch.eye(y.shape[-1], dtype=y.dtype, device=y.device)  # row k: y_k
    toward = vertices[None] - y[:, None, :]  # (N, K, C): y_k - y
    distance = toward.abs().sum(-1)  # ||y_k - y||_1
    step = (epsilon / distance.clamp_min(1e-12)).clamp(max=1.0)
    if argmax:  # (1 - a) y_c >= (1 - a) y_k + a: the top class c keeps its place
        c = y.argmax(-1, keepdim=True)
        gap = (y.gather(-1, c) - y).clamp_min(0)
        cap = (gap / (1 + gap) * (1 - 1e-6)).scatter(-1, c, 1.0)  # toward y_c: no cap
        step = torch.minimum(step, cap)
    candidates = y[:, None, :] + step[..., None] * toward  # (N, K, C)
    base = nn.functional.normalize(y - p, dim=-1)
    cosine = (nn.functional.normalize(candidates - p[:, None, :], dim=-1) * base[:, None]).sum(-1)
    best = cosine.argmin(-1)  # the largest angle
    return candidates[torch.arange(len(y), device=y.device), best]


@register_defence
class MAD(Defence):
    """`epsilon`: the L1 budget in (0, 2] (2 is the simplex's diameter); `arch`: `linear` or a
    registered network, initialised with `seed`; `checkpoint`: a VictimClassifier checkpoint
    to use as the proxy instead; `argmax`: keep the top-1 label (MAD-argmax)."""

    stateless = False  # reads the images (through the proxy)

    def __init__(
        self,
        epsilon: float = 0.5,
        arch: str = "linear",
        checkpoint: str | None = None,
        seed: int = 0,
        argmax: bool = False,
    ):
        self.epsilon, self.arch, self.seed, self.argmax = epsilon, arch, seed, argmax
        self.checkpoint = checkpoint
        self._proxy: nn.Module | None = None
        if checkpoint is not None:
            from knockoff_lab.nets.victim import load_victim

            if not Path(checkpoint).is_file():
                raise ConfigError(f"MAD: proxy checkpoint {checkpoint} does not exist")
            self._proxy = load_victim(checkpoint)
            self.checkpoint = module_digest(self._proxy)  # the weights, not the path, decide

    def check(self, num_classes: int) -> None:
        from knockoff_lab.nets.networks import list_networks

        if not 0 < self.epsilon <= 2:
            raise ConfigError(f"MAD: epsilon must be in (0, 2] (an L1 budget), got {self.epsilon}")
        if self._proxy is not None:
            classes = self._proxy.fc.out_features
            if classes != num_classes:
                raise ConfigError(f"MAD: the proxy has {classes} classes, the victim {num_classes}")
        elif self.arch != "linear" and self.arch not in list_networks():
            raise ConfigError(
                f"MAD: unknown proxy arch {self.arch!r}; known: linear, "
                f"{', '.join(list_networks())}"
            )

    def proxy(self, images: torch.Tensor, num_classes: int) -> nn.Module:
        """The proxy, built on first use (a linear one needs the image size), seeded."""
        if self._proxy is None:
            from knockoff_lab.nets.networks import build_network

            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                if self.arch == "linear":
                    self._proxy = nn.Sequential(
                        nn.Flatten(), nn.Linear(images[0].numel(), num_classes)
                    )
                else:
                    self._proxy = build_network(self.arch, num_classes)
            self._proxy.eval()
        linear = self._proxy[1] if isinstance(self._proxy, nn.Sequential) else None
        if linear is not None and linear.in_features != images[0].numel():
            raise ConfigError(
                f"MAD: the linear proxy was built for {linear.in_features} values "
                f"per image, queries have {images[0].numel()}"
            )
        return self._proxy.to(images.device)

    def apply(self, batch: QueryBatch) -> None:
        proxy = self.proxy(batch.images, batch.answers.shape[-1])
        with torch.inference_mode():
            p = proxy(batch.images).float().softmax(-1)
        answers = mad_perturb(batch.answers, p, self.epsilon, self.argmax)
        batch.answers = answers.to(batch.answers.dtype)
