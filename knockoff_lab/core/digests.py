"""Content digests: caches are keyed by the bytes that determine what they hold."""

import hashlib

import torch
from torch import nn


def digest(text: str) -> str:
    """A short stable key for a text (16 hex digits of its SHA-256)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def module_digest(net: nn.Module) -> str:
    """SHA-256 over a network's state (names and bytes): its identity. Not a checkpoint file's
    bytes, which also hold where it was saved (Lightning's callbacks keep their folder), so two
    copies of one network in two run folders would key their caches, and a keyed defence's
    choices (DAWN's, by client), differently. The raw bytes, so any dtype hashes (numpy has no
    bfloat16), and float32 weights hash as they always did."""
    sha = hashlib.sha256()
    for name, tensor in sorted(net.state_dict().items()):
        sha.update(name.encode())
        sha.update(
            tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        )
    return sha.hexdigest()
