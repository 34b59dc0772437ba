"""A WandbLogger that works with no network: offline unless the user has logged in to W&B."""

import netrc
import os
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

# Lightning's console loggers: the CLI sends their info lines to stdout, `reproduce` to a log file
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")


def wandb_logged_in() -> bool:
    """True when W&B has credentials: `WANDB_API_KEY` or a `wandb login` entry in ~/.netrc."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def wandb_offline() -> bool:
    """Offline when `WANDB_MODE` is unset and the user is not logged in: never a login prompt."""
    return os.environ.get("WANDB_MODE") is None and not wandb_logged_in()


class AutoWandbLogger(WandbLogger):
    """`offline=None` (the default) means: offline when not logged in and `WANDB_MODE` is unset,
    so a laptop or an air-gapped node never blocks on a login prompt; `wandb sync` uploads later."""

    def __init__(self, offline: bool | None = None, save_dir: str = ".", **kwargs):
        if offline is None:
            offline = wandb_offline()
        # absolute: W&B's service process, started once per process, resolves a relative
        # path in its own working directory, which need not be this run's
        save_dir = str(Path(save_dir).resolve())
        super().__init__(offline=offline, save_dir=save_dir, **kwargs)
