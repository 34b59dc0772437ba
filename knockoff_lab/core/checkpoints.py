"""Reading checkpoints and state dicts without unpickling code, with one-line errors naming the
file, checking that a state dict fits a network, and writing checkpoints atomically."""

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from knockoff_lab.core.atomic import atomic_file
from knockoff_lab.core.errors import ConfigError, first_line


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer, complete or absent on a local disk: the checkpoint goes to a
    temporary file beside its final name, is fsynced and renamed (`core.atomic`), so a kill or a
    full disk while `last.ckpt` is written leaves the previous `last.ckpt` whole (Lightning's own
    writer copies a temporary file from /tmp into the final name). A full disk is a one-line
    error ("no space left on device for checkpoint ..."). Remote paths keep Lightning's writer."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path, "wb", "checkpoint") as file:
            torch.save(checkpoint, file)


def atomic_checkpoints(trainer) -> None:
    """Make `trainer` write checkpoints with `AtomicCheckpointIO`, unless a config chose its own
    checkpoint plugin. Called by every LightningModule's `on_fit_start`, before any save."""
    strategy = getattr(trainer, "strategy", None)
    if strategy is not None and type(strategy.checkpoint_io) is TorchCheckpointIO:
        strategy.checkpoint_io = AtomicCheckpointIO()


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
