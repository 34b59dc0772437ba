"""The trust policy: which class paths a config may instantiate.

A config is code: a `class_path` may name any callable (`os.system` included) and it runs. Only
these packages are instantiated unless the user widens the list for this run, outside any
config file (a config cannot vouch for itself): KNOCKOFF_TRUSTED_MODULES=pkg1,pkg2.
"""

import importlib
import os
from collections.abc import Iterator
from typing import Any

from knockoff_lab.core.errors import ConfigError

TRUSTED_MODULES = (
    *("torch", "torchvision", "torchmetrics", "lightning", "sklearn"),
    *("knockoff_lab", "datamodules", "lightning_modules"),
)


def trusted_modules() -> tuple[str, ...]:
    extra = os.environ.get("KNOCKOFF_TRUSTED_MODULES", "")
    return TRUSTED_MODULES + tuple(m.strip() for m in extra.split(",") if m.strip())


def class_paths(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, class path) of every `class_path` in a parsed config."""
    if isinstance(node, dict):
        for name, value in node.items():
            if name == "class_path" and isinstance(value, str):
                yield key, value
            else:
                yield from class_paths(value, f"{key}.{name}" if key else name)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from class_paths(value, f"{key}.{i}")


def check_trusted(config: dict) -> None:
    """A one-line ConfigError for a class path outside the trusted packages, before anything
    named in the config is instantiated."""
    trusted = trusted_modules()
    for key, path in class_paths(config):
        if path.split(".")[0] not in trusted:
            raise ConfigError(
                f"{key}.class_path: {path!r} is outside the trusted packages "
                f"({', '.join(trusted)}); if you trust it, run with "
                f"KNOCKOFF_TRUSTED_MODULES={path.split('.')[0]}"
            )


def class_of(class_path: Any) -> type | None:
    """The class a YAML's `class_path` names, imported only from the trusted packages (a config
    is code: `pipeline.trust`); None for any other, or one that does not import (the CLI names
    that itself)."""
    if not isinstance(class_path, str) or class_path.split(".")[0] not in trusted_modules():
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None
