"""What `reproduce` changes in every stage's config beyond the preset's settings: the data root
(`--data_root`), the caches (under the preset's output folder, not the working directory), a
smoke run's small sizes (`--smoke`) and, in a stage whose figures the report does not show,
the work done only for figures (`unshown`). Each walks the classes the config names (its
`class_path` mappings), so it reaches a dataset however deep it sits: a surrogate's pool, its
victim's data, a detector's out-of-distribution test set.
"""

import inspect
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from datamodules.on_disk import OnDiskDataModule
from knockoff_lab.pipeline.trust import class_of

# a class parameter that names a cache: a relative path moves under the cache root
CACHES = ("cache_dir", "posterior_cache", "ledger")
# a smoke run: every stage for a step or two, on CPU, in full precision (no sanity check: the
# epoch's own validation runs the same steps a moment later)
SMOKE_TRAINER = {
    "accelerator": "cpu",
    "devices": 1,
    "num_nodes": 1,
    "strategy": "auto",
    "precision": "32-true",
    "max_epochs": 1,
    "limit_train_batches": 2,
    "limit_val_batches": 2,
    "num_sanity_val_steps": 0,
}
# ... with these at most (wherever a class takes them): small images, few queries, no workers,
# a frozen-features detector's regression cross-validated over 2 folds and 2 strengths
SMOKE_CAPS = {"image_size": 32, "budget": 16, "batch_size": 64, "num_workers": 0}
SMOKE_CAPS |= {"folds": 2, "Cs": 2, "max_iter": 100}
# ... and at most these of each on-disk dataset (a few images per class, every class kept, so
# each test metric exists); the test sets stay whole
SMOKE_DATASET_CAPS = {"per_class": 10, "test_per_class": 1, "size": 16}
# a torchvision weights name (`IMAGENET1K_V1`, `DEFAULT`): a download, which a smoke run skips
WEIGHTS_NAME = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z][A-Z0-9_]*)?")


def defaults(cls: type) -> dict[str, Any]:
    """The default of every keyword argument of `cls(...)`, following `**kwargs` up the MRO."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        if (init := klass.__dict__.get("__init__")) is None or klass is object:
            continue
        params = list(inspect.signature(init).parameters.values())[1:]
        for p in params:
            if p.default is not inspect.Parameter.empty:
                found.setdefault(p.name, p.default)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return found


def classes(node: Any) -> Iterator[tuple[type, dict[str, Any], dict[str, Any]]]:
    """(class, its `init_args` (added if absent), its defaults) of every `class_path` mapping in
    `node` whose class imports from the trusted packages, outermost first."""
    if isinstance(node, dict):
        if (cls := class_of(node.get("class_path"))) is not None:
            yield cls, node.setdefault("init_args", {}), defaults(cls)
        for value in node.values():
            yield from classes(value)
    elif isinstance(node, list):
        for value in node:
            yield from classes(value)


def point_at_data(config: dict, data_root: str) -> None:
    """Every on-disk dataset reads `data_root` (each in its own folder under it)."""
    for cls, args, _ in classes(config):
        if issubclass(cls, OnDiskDataModule):
            args["root"] = data_root


def caches_under(config: dict, root: Path) -> None:
    """Every cache a class keeps at a relative path (`runs/transfer_sets`, the API's ledger, ...)
    kept under `root` instead (`runs/` dropped); absolute paths and None (no cache) stay."""
    for _, args, given in classes(config):
        for name in CACHES:
            path = args.get(name, given.get(name))
            if isinstance(path, str) and not Path(path).is_absolute():
                args[name] = str(root / Path(path.removeprefix("runs/")))


def smoke(config: dict) -> None:
    """The config as a smoke run trains it: for a step or two (`SMOKE_TRAINER`), small
    (`SMOKE_CAPS`, `SMOKE_DATASET_CAPS`), with no pretrained weights to download (a checkpoint
    of an earlier stage stays)."""
    config.setdefault("trainer", {}).update(SMOKE_TRAINER)
    for cls, args, given in classes(config):
        caps = {**SMOKE_CAPS, **(SMOKE_DATASET_CAPS if issubclass(cls, OnDiskDataModule) else {})}
        for name, cap in caps.items():
            value = args.get(name, given.get(name))
            if isinstance(value, int) and not isinstance(value, bool) and value > cap:
                args[name] = cap
        weights = args.get("weights", given.get("weights"))
        if isinstance(weights, str) and WEIGHTS_NAME.fullmatch(weights):
            args["weights"] = None


def unshown(config: dict, curves: bool) -> None:
    """A stage whose figures the report does not show (a grid cell, a seed after the first)
    draws none (`figures: false`) and, unless a row of its reads a curve (`curves`), scores no
    victim test set each epoch (`analysis: false`): neither changes what it learns or logs."""
    for _, args, given in classes(config):
        if "figures" in given:
            args["figures"] = False
        if "analysis" in given and not curves:
            args["analysis"] = False
