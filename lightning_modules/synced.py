"""Logging values that every process already holds whole under DDP."""

from collections.abc import Mapping

import torch
from lightning.pytorch import LightningModule


def log_synced(module: LightningModule, metrics: Mapping[str, torch.Tensor | float]) -> None:
    """Log epoch-level values that are the same on every process: a torchmetrics `compute()`
    (already reduced over processes) or a metric of scores gathered from all of them. Lightning
    cannot tell them from one shard's value and warns, per value, that they should be synced;
    they are, so the all-reduce by max it is told to do returns each one unchanged."""
    module.log_dict(dict(metrics), sync_dist=True, reduce_fx="max")
