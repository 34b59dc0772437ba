"""Inner features of a registry network, read by module name (Mahalanobis, frozen-feature detector).

`penultimate` names the input of the network's `fc` head (every registry network ends in one);
any other name is a submodule (`layer3`, `features.6`) whose output is averaged over its spatial
positions, as Lee et al. (2018) do for their multi-layer Mahalanobis detector.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from knockoff_lab.core.errors import ConfigError

PENULTIMATE = "penultimate"


def check_layers(net: nn.Module, names: Sequence[str]) -> None:
    """One-line error for a layer name that is neither `penultimate` nor a submodule of `net`."""
    known = dict(net.named_modules())
    for name in names:
        if name != PENULTIMATE and (not name or name not in known):
            some = ", ".join([PENULTIMATE, *list(known)[1:8]])
            raise ConfigError(f"unknown layer {name!r}; layers are submodule names ({some}, ...)")


@contextmanager
def tapped(net: nn.Module, names: Sequence[str]) -> Iterator[dict[str, torch.Tensor]]:
    """A dict filled with the named features on every forward pass of `net` in the block."""
    found: dict[str, torch.Tensor] = {}

    def keep_input(module: nn.Module, args: tuple) -> None:
        found[PENULTIMATE] = args[0]

    def keep_output(name: str):
        return lambda module, args, output: found.__setitem__(name, output)

    handles = [
        net.fc.register_forward_pre_hook(keep_input)
        if name == PENULTIMATE
        else net.get_submodule(name).register_forward_hook(keep_output(name))
        for name in names
    ]
    try:
        yield found
    finally:
        for handle in handles:
            handle.remove()


def pooled(features: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) feature maps averaged to (N, C); flat features pass unchanged."""
    return features.flatten(2).mean(-1) if features.ndim > 2 else features


def layer_features(
    net: nn.Module, images: torch.Tensor, names: Sequence[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(logits, pooled features by name) of one forward pass."""
    with tapped(net, names) as found:
        logits = net(images)
    return logits, {name: pooled(found[name]) for name in names}
