"""The trust policy: which import paths a config may name.

A config is code: a `class_path` (or a callable given as a dotted path) is imported and called.
An import path is accepted only if it names a **class defined in a trusted package**, found by
importing its module (never by walking attributes: `torch.os.system` names no module) and
checked before anything is imported or parsed, so a function under a trusted package (a shell
through a torch utility, an inline C++ extension, an unpickling loader, a writer of files) is
refused as surely as a module of the working directory (a local `hubconf.py`). The trusted
packages are the ones below unless the user widens the list for this run, outside any config
file (a config cannot vouch for itself): KNOCKOFF_TRUSTED_MODULES=pkg1,pkg2.
"""

import importlib
import importlib.util
import inspect
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.fragments import read_config

TRUSTED_MODULES = (
    *("torch", "torchvision", "torchmetrics", "lightning", "sklearn"),
    *("knockoff_lab", "datamodules", "lightning_modules"),
)


def trusted_modules() -> tuple[str, ...]:
    extra = os.environ.get("KNOCKOFF_TRUSTED_MODULES", "")
    return TRUSTED_MODULES + tuple(m.strip() for m in extra.split(",") if m.strip())


def trusted_module(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in trusted_modules())


DOTTED = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+")


def import_paths(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(dotted key, import path) of every `class_path` in a config, and of every other string
    that names something importable (a callable argument given as `package.function`): what
    the CLI would import. A string whose first name is no installed module (`best.ckpt`) is
    data."""
    if isinstance(node, dict):
        for name, value in node.items():
            where = f"{key}.{name}" if key else str(name)
            if name in ("class_path", "_class_path") and isinstance(value, str):
                yield where, value
            else:
                yield from import_paths(value, where)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from import_paths(value, f"{key}.{i}")
    elif isinstance(node, str) and DOTTED.fullmatch(node) and is_module(node.split(".")[0]):
        yield key, node


def is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def trusted_class(path: str) -> type:
    """The class `path` names, or a one-line ConfigError saying why it may not be built: outside
    the trusted packages (checked before importing anything), not a module path, or not a
    class defined in a trusted package."""
    module, _, name = path.rpartition(".")
    if not trusted_module(module):
        raise ConfigError(
            f"{path!r} is outside the trusted packages ({', '.join(trusted_modules())}); if "
            f"you trust it, run with KNOCKOFF_TRUSTED_MODULES={path.split('.')[0]}"
        )
    try:
        found = getattr(importlib.import_module(module), name)
    except ImportError:
        raise ConfigError(
            f"{path!r}: {module!r} is not a module (import paths are never "
            "walked attribute by attribute)"
        ) from None
    except AttributeError:
        raise ConfigError(f"{path!r}: module {module} has no {name!r}") from None
    if not inspect.isclass(found):
        raise ConfigError(
            f"{path!r} is a {type(found).__name__}, not a class: a config builds only classes"
        )
    if not trusted_module(found.__module__):
        raise ConfigError(
            f"{path!r} is defined in {found.__module__}, outside the trusted packages"
        )
    return found


def check_trusted(config: dict, where: str = "") -> None:
    """A one-line ConfigError for the first import path of `config` (a parsed or raw config, a
    checkpoint's hyperparameters) that is not a trusted class (`trusted_class`), naming its
    key, before anything named in it is imported or built."""
    for key, path in import_paths(config):
        try:
            trusted_class(path)
        except ConfigError as err:
            raise ConfigError(f"{where}{key}: {err}") from None


def class_of(class_path: Any) -> type | None:
    """The trusted class a YAML's `class_path` names, or None for any other (the CLI names
    what is wrong with it)."""
    try:
        return trusted_class(class_path) if isinstance(class_path, str) else None
    except ConfigError:
        return None


def check_arguments(args: list[str]) -> None:
    """`check_trusted` on a command line as given, before the parser imports anything it names:
    every `--config` file (its fragments inlined) and every other argument's value, read as
    YAML (`--trainer.callbacks+=pkg.Class`, `--model.init_args.optimizer '{class_path: ...}'`)."""
    args = list(args)
    for i, arg in enumerate(args):
        name, given, value = arg.partition("=")
        if not name.startswith("--"):
            continue
        if not given:
            if i + 1 >= len(args) or args[i + 1].startswith("--"):
                continue
            value = args[i + 1]
        if name == "--config" and Path(value).is_file():
            check_trusted(read_config(value) or {}, f"{value}: ")
        else:
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = value
            check_trusted({name.removeprefix("--"): parsed})
