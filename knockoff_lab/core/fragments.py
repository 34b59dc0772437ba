"""Config fragments: a YAML value that is a path ending in `.yaml` stands for that file's content,
resolved relative to the file that names it. LightningCLI (jsonargparse) reads a file path in
place of any class (`pool: ../data/imagenet_subset.yaml`, a callback in `callbacks`, an
`optimizer`), so an experiment says only what makes it different and a dataset, optimiser or
checkpoint recipe is written once. `read_config` inlines the fragments the same way for code
that reads a YAML itself (the reproduce pipeline, which then applies its dotted `set` keys).
"""

from pathlib import Path
from typing import Any

import yaml

from knockoff_lab.core.errors import ConfigError

SUFFIXES = (".yaml", ".yml")


def read_config(path: str | Path) -> Any:
    """The YAML at `path` with every fragment reference replaced by the fragment's content."""
    path = Path(path)
    try:
        node = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        why = " ".join(str(err).split())
        raise ConfigError(f"config {path} is not readable YAML: {why}") from err
    return inline(node, path, ())


def inline_value(value: Any, key: str) -> Any:
    """A setting given outside any file (a reproduce preset's `set`) with its fragment
    references read, resolved relative to the working directory like the preset's `config`
    paths: `data: configs/data/cifar10.yaml` sets the data block to that file's content."""
    return inline(value, Path.cwd() / "set", (), key)


def inline(node: Any, source: Path, chain: tuple[Path, ...], key: str = "") -> Any:
    """`node` (read from `source`) with its fragment references read, recursively; `chain` is
    the files being read, to refuse a fragment that includes itself."""
    if isinstance(node, dict):
        return {
            k: inline(v, source, chain, f"{key}.{k}" if key else str(k)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [inline(v, source, chain, f"{key}.{i}") for i, v in enumerate(node)]
    if not (isinstance(node, str) and node.endswith(SUFFIXES)):
        return node
    fragment = (source.parent / node).resolve()
    if not fragment.is_file():
        raise ConfigError(f"{source}: {key}: fragment {node} not found (looked at {fragment})")
    if fragment in chain:
        raise ConfigError(f"{source}: {key}: fragment {node} includes itself")
    try:
        content = yaml.safe_load(fragment.read_text())
    except (UnicodeDecodeError, yaml.YAMLError) as err:
        why = " ".join(str(err).split())
        raise ConfigError(f"fragment {fragment} is not readable YAML: {why}") from err
    return inline(content, fragment, (*chain, fragment), key)
