"""Class catalogs of the victim datasets and their curated overlap with ImageNet-1k (paper 3.2.1).

One versioned JSON file per dataset, `<dataset>.json`, holds:
  classes   the dataset's class names in label order (the DataModules check the data against it);
  overlap   class -> {"imagenet": category, "relation": "same" | "narrower"}: an ImageNet-1k
            class would label this class's images: the same concept (synonyms included), or the
            class is a kind of that category and no other class of the dataset is;
  related   class -> {"imagenet": [...], "relation": ..., "why": ...}: kept apart, not counted:
            "broader" (the class is a family of ImageNet classes, CIFAR10's "macro classes" of
            4.2.2, e.g. Caltech's dog vs 118 breeds), "narrower" where several classes fall in one
            category (GTSRB's 43 signs in "street sign", CUBS' albatrosses), or near misses;
  rejected  class -> categories that the name matcher proposed and a person judged unrelated.

How a list is made: `name_candidates` proposes pairs whose names match (whole name or head
noun, plurals folded); a person sorts every proposal into overlap, related or rejected, and adds
synonyms the matcher cannot see (ak47 -> assault rifle). `python -m datamodules.overlap` prints
the fractions and any proposal not yet sorted; a test keeps the lists complete and valid.
ImageNet-1k names are torchvision's (`ResNet18_Weights.IMAGENET1K_V1.meta["categories"]`).
"""

import json
import re
from functools import cache
from pathlib import Path

HERE = Path(__file__).parent
DATASETS = tuple(sorted(path.stem for path in HERE.glob("*.json")))  # one list per victim dataset


@cache
def catalog(dataset: str) -> dict:
    """The parsed `<dataset>.json`."""
    return json.loads((HERE / f"{dataset}.json").read_text())


def overlapping(dataset: str) -> set[str]:
    """Names of the classes of `dataset` that overlap ImageNet-1k (what exclude_overlap drops)."""
    return set(catalog(dataset)["overlap"])


@cache
def imagenet_categories() -> tuple[str, ...]:
    """ImageNet-1k class names in index order, shipped inside torchvision (no download)."""
    from torchvision.models import ResNet18_Weights

    return tuple(ResNet18_Weights.IMAGENET1K_V1.meta["categories"])


def words(name: str) -> list[str]:
    """Lower-case words of a class name without numbering or suffixes: '015.bonsai-101' ->
    ['bonsai'], 'Speed limit (20km/h)' -> ['speed', 'limit', '20km', 'h'], plurals folded."""
    name = re.sub(r"^\d+\.|-101$", "", name).lower()
    return [re.sub(r"(?<=[a-z]{3})s$", "", w) for w in re.split(r"[^a-z0-9']+", name) if w]


def name_candidates(classes: list[str], categories: tuple[str, ...]) -> dict[str, list[str]]:
    """Proposed (class, category) pairs: equal names or equal head nouns (last words)."""
    proposals: dict[str, list[str]] = {}
    for name in classes:
        own = words(name)
        hits = [
            c
            for c in categories
            if (theirs := words(c)) and own and (theirs == own or theirs[-1] == own[-1])
        ]
        if hits:
            proposals[name] = hits
    return proposals


def unsorted_proposals(dataset: str) -> dict[str, list[str]]:
    """Name-matcher proposals for `dataset` that its JSON does not sort anywhere yet."""
    entry, unsorted = catalog(dataset), {}
    for cls, hits in name_candidates(entry["classes"], imagenet_categories()).items():
        decided = set(entry["rejected"].get(cls, []))
        decided |= set(entry["related"].get(cls, {}).get("imagenet", []))
        if cls in entry["overlap"]:
            decided.add(entry["overlap"][cls]["imagenet"])
        if rest := [hit for hit in hits if hit not in decided]:
            unsorted[cls] = rest
    return unsorted


def fractions(dataset: str) -> tuple[float, float]:
    """Share of classes overlapping ImageNet-1k; and counting related broader/narrower too."""
    entry = catalog(dataset)
    wider = [c for c, r in entry["related"].items() if r["relation"] != "near"]
    total = len(entry["classes"])
    return len(entry["overlap"]) / total, (len(entry["overlap"]) + len(wider)) / total
