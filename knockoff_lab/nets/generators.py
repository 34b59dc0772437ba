"""Generators of the data-free attacks (DFME, MAZE): latent noise in, a batch of images out, as
the API takes them (RGB in [0, 1], normalised with ImageNet statistics like every dataset here).

A registry of its own beside the classifiers' (`nets.networks`): a generator has no class head.
Add one with `@register_generator("name")` on a `(latent, image_size, channels) -> nn.Module`
factory and name it in a YAML (`data.init_args.attack.init_args.generator`).
"""

from collections.abc import Callable

import torch
from torch import nn

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import IMAGENET_MEAN, IMAGENET_STD

GENERATORS: dict[str, Callable[[int, int, int], nn.Module]] = {}


def register_generator(name: str):
    def add(build: Callable[[int, int, int], nn.Module]) -> Callable[[int, int, int], nn.Module]:
        GENERATORS[name] = build
        return build

    return add


def build_generator(name: str, latent: int, image_size: int, channels: int = 3) -> nn.Module:
    if name not in GENERATORS:
        raise ConfigError(f"unknown generator {name!r}; known: {', '.join(sorted(GENERATORS))}")
    if image_size % 4:
        raise ConfigError(f"a generator upsamples twice: image size {image_size} must be 4k")
    return GENERATORS[name](latent, image_size, channels)


class UpsamplingGenerator(nn.Module):
    """The generator of DFAD/DFME (a linear map to a (2w, s/4, s/4) map, two nearest-neighbour
    upsamplings with 3x3 convolutions, batch norm and LeakyReLU, a tanh image), with width `w`.
    DFME ends in a batch norm without affine weights, whose outputs no image has; here the tanh
    is read as pixels in [0, 1] and normalised, so every query is an image the API accepts (that
    variant, tried on the digits, collapsed as this one does). `grayscale`: one channel, copied
    to every channel, for a victim of grey images (an API's documentation says which it takes):
    on the digits, colour noise is answered with one class whatever G does, and the student
    learns nothing else (DFME at 10,000 queries: 0.10 with colour, 0.33 with grey; 1 seed)."""

    def __init__(
        self,
        latent: int,
        image_size: int,
        channels: int = 3,
        width: int = 64,
        grayscale: bool = False,
    ):
        super().__init__()
        self.channels = channels
        self.start = image_size // 4
        self.project = nn.Linear(latent, 2 * width * self.start**2)
        self.body = nn.Sequential(
            nn.BatchNorm2d(2 * width),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),
            nn.Conv2d(2 * width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.LeakyReLU(0.2),
            nn.Conv2d(width, 1 if grayscale else channels, 3, padding=1),
            nn.Tanh(),
        )
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN[: self.channels]).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD[: self.channels]).view(1, -1, 1, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        x = self.project(z).view(len(z), -1, self.start, self.start)
        pixels = ((self.body(x) + 1) / 2).expand(-1, self.channels, -1, -1)
        return (pixels - self.mean) / self.std


@register_generator("dfme")
def dfme_generator(latent: int, image_size: int, channels: int) -> nn.Module:
    """DFME's CIFAR-10 generator (width 64)."""
    return UpsamplingGenerator(latent, image_size, channels, width=64)


@register_generator("dfme_small")
def dfme_small_generator(latent: int, image_size: int, channels: int) -> nn.Module:
    """A quarter of DFME's width, for 16-px digits on a CPU."""
    return UpsamplingGenerator(latent, image_size, channels, width=16)


@register_generator("dfme_small_gray")
def dfme_small_gray(latent: int, image_size: int, channels: int) -> nn.Module:
    """`dfme_small` making grey images: the embedded default's digits."""
    return UpsamplingGenerator(latent, image_size, channels, width=16, grayscale=True)
