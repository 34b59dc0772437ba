"""Loading the victim F_V from a `VictimClassifier` checkpoint: read once, without unpickling
code, checked to fit its architecture before anything runs."""

from pathlib import Path

import torch
from torch import nn

from knockoff_lab.core.checkpoints import disagreement, net_state, read_checkpoint
from knockoff_lab.core.errors import ConfigError


def read_victim(path: str | Path, mmap: bool = False) -> tuple[str, int, dict[str, torch.Tensor]]:
    """(arch, num_classes, network state) of a VictimClassifier checkpoint, the weights checked
    to fit `arch` (built on the meta device: no cost)."""
    from knockoff_lab.nets.networks import build_network

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


def load_victim(path: str | Path) -> nn.Module:
    """The victim network in eval mode. Built on the meta device and given the checkpoint's
    tensors: no random initialisation to throw away."""
    from knockoff_lab.nets.networks import build_network

    arch, classes, state = read_victim(path)  # not memory-mapped: the file may be rewritten
    with torch.device("meta"):
        net = build_network(arch, classes)
    net.load_state_dict(state, assign=True)
    return net.eval()
