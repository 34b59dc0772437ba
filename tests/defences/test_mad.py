"""MAD: every answer stays on the simplex within the L1 budget, and the gradient the proxy's
loss takes from it (computed here by autograd, not by the defence's closed form) is turned
further from the true answer's gradient than a random answer of the same L1 distance turns it."""

import pytest
import torch

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.defences import MAD, QueryBatch


def served(defence: MAD, posteriors: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    batch = QueryBatch.arriving(images, posteriors, "c")
    defence.apply(batch)
    return batch.answers


def queries(n: int = 48, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 32, 32, generator=g)
    return (4 * torch.randn(n, classes, generator=g)).softmax(-1), images


def last_layer_gradient(proxy: torch.nn.Module, image: torch.Tensor, y: torch.Tensor):
    """d/d(fc.weight, fc.bias) of the soft cross-entropy -sum y log F(x), flattened."""
    head = proxy.fc if hasattr(proxy, "fc") else proxy[-1]
    proxy.zero_grad()
    loss = -(y * proxy(image[None]).log_softmax(-1)[0]).sum()
    weight, bias = torch.autograd.grad(loss, [head.weight, head.bias])
    return torch.cat([weight.flatten(), bias])


def angles(proxy, images, y, other) -> torch.Tensor:
    """The angle (radians) between the gradients for answers `y` and `other`, per query."""
    cosines = torch.stack(
        [
            torch.nn.functional.cosine_similarity(
                last_layer_gradient(proxy, x, a), last_layer_gradient(proxy, x, b), dim=0
            )
            for x, a, b in zip(images, y, other, strict=True)
        ]
    )
    return cosines.clamp(-1, 1).acos()


def same_distance_at_random(y: torch.Tensor, distance: torch.Tensor, seed: int) -> torch.Tensor:
    """y moved toward a random point of the simplex until its L1 distance is `distance`."""
    g = torch.Generator().manual_seed(seed)
    z = torch._standard_gamma(torch.ones(y.shape), generator=g)
    z = z / z.sum(-1, keepdim=True)
    step = (distance / (z - y).abs().sum(-1)).clamp(max=1)
    return y + step[:, None] * (z - y)


@pytest.mark.parametrize("epsilon", [0.1, 0.5, 1.5])
@pytest.mark.parametrize("arch", ["digits_cnn", "linear"])
def test_within_budget_on_the_simplex_and_the_gradient_turned_most(arch, epsilon):
    y, images = queries()
    defence = MAD(epsilon=epsilon, arch=arch, seed=3)
    defence.check(10)
    got = served(defence, y, images)
    change = (got - y).abs().sum(-1)
    assert (change <= epsilon + 1e-5).all() and (change > 0.5 * min(epsilon, 1.0)).all()
    assert (got >= 0).all() and torch.allclose(got.sum(-1), torch.ones(len(y)), atol=1e-5)
    proxy = defence.proxy(images, 10)
    mad = angles(proxy, images, y, got)
    assert (mad > 0.5 * epsilon).all()  # turned away from the unperturbed answer's gradient
    for seed in range(3):
        random = angles(proxy, images, y, same_distance_at_random(y, change, seed))
        assert mad.mean() > random.mean() + 0.05
        if epsilon <= 0.5:  # small budgets: on every query (a large one reaches far anyway)
            assert (mad > 1.1 * random).all()


def test_argmax_keeps_the_top1_label_and_the_same_proxy_for_the_same_seed():
    y, images = queries()
    got = served(MAD(epsilon=1.0, arch="digits_cnn", argmax=True), y, images)
    assert torch.equal(got.argmax(-1), y.argmax(-1))
    assert ((got - y).abs().sum(-1) <= 1.0 + 1e-5).all()
    free = served(MAD(epsilon=1.0, arch="digits_cnn"), y, images)
    assert (free.argmax(-1) != y.argmax(-1)).any()  # what the argmax variant prevents
    assert torch.equal(free, served(MAD(epsilon=1.0, arch="digits_cnn"), y, images))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"epsilon": 0.0}, r"epsilon must be in \(0, 2\]"),
        ({"epsilon": 2.5}, "epsilon must be"),
        ({"arch": "nope"}, "unknown proxy arch 'nope'"),
        ({"checkpoint": "/no/such.ckpt"}, "proxy checkpoint /no/such.ckpt does not exist"),
    ],
)
def test_bad_options(options, message):
    with pytest.raises(ConfigError, match=message):
        MAD(**options).check(10)
