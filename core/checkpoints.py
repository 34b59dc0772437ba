"""Reading checkpoints and state dicts without unpickling code, with one-line errors naming the
file, and checking that a state dict fits a network."""

from pathlib import Path

import torch
from torch import nn

from core.errors import ConfigError, first_line


def read_checkpoint(path: str | Path, what: str, mmap: bool = False) -> dict:
    """A Lightning checkpoint, unpickling no code, or a one-line error naming `what` and `path`.
    `mmap` reads only what is used (cheap checks of large files)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} {path} {'is not a file' if path.exists() else 'does not exist'}")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        reason = first_line(err)
        raise ConfigError(f"{what} {path} is not a readable checkpoint: {reason}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise ConfigError(f"{what} {path} is not a Lightning checkpoint: it has no state_dict")
    return checkpoint


def net_state(checkpoint: dict) -> dict[str, torch.Tensor]:
    """The network part (`net.*`) of a LightningModule checkpoint, keyed as the bare network's."""
    return {k[4:]: v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict without unpickling code; a Lightning checkpoint gives its `net.` part."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or unsafe files
        raise ConfigError(f"cannot load weights file {path}: {first_line(err)}") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = net_state(state)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"weights file {path} does not hold a state dict of tensors")
    return state


def disagreement(net: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """How `state` fails to fit `net`: missing, unexpected, mis-shaped tensors ("" if it fits)."""
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    parts = [
        f"{label}: {', '.join(items[:4])}{' ...' if len(items) > 4 else ''}"
        for label, items in (("missing", missing), ("unexpected", unexpected), ("shape", shapes))
        if items
    ]
    return "; ".join(parts)
