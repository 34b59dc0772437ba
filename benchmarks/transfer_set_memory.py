"""Peak memory of building and serving a transfer set of 100,000 queries x 256 classes, against
the size of the stored answers (float16 on disk). The victim is a tiny 256-class network on 8x8
inputs, so the victim's own outputs are real but cheap.

    python benchmarks/transfer_set_memory.py [--queries 100000] [--classes 256]
"""

import argparse
import resource
import shutil
import tempfile
from pathlib import Path

import torch
from torch.utils.data import Dataset, TensorDataset

from datamodules import DigitsDataModule, ImageDataModule, TransferSetDataModule
from datamodules.base import ImagesOnly
from knockoff_lab.api import PredictionAPI
from knockoff_lab.nets.networks import build_network


class RandomPool(ImageDataModule):
    """`size` random 8x8 images, generated once."""

    num_classes = 0

    def __init__(self, size: int = 1000, batch_size: int = 64, num_workers: int = 0, seed: int = 0):
        super().__init__(batch_size, num_workers, seed)
        self.size = size

    def build_splits(self) -> dict[str, Dataset]:
        images = torch.randn(self.size, 3, 8, 8, generator=torch.Generator().manual_seed(self.seed))
        return {"pool": ImagesOnly(TensorDataset(images, torch.zeros(self.size)))}


class Victim256(DigitsDataModule):
    """Digits at 8x8 standing in for a victim dataset of `classes` classes (labels unused)."""

    def __init__(self, classes: int = 256):
        super().__init__(image_size=8)
        self.num_classes = classes


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--classes", type=int, default=256)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp())
    try:
        net = build_network("digits_cnn", args.classes)
        victim = folder / "victim.ckpt"
        torch.save(
            {
                "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "hyper_parameters": {"arch": "digits_cnn", "num_classes": args.classes},
            },
            victim,
        )
        pool = RandomPool(size=args.queries)
        api = PredictionAPI(str(victim), posterior_cache=None, ledger=None)
        data = TransferSetDataModule(
            api=api,
            pool=pool,
            victim_data=Victim256(args.classes),
            budget=args.queries,
            cache_dir=str(folder / "cache"),
            query_batch_size=1024,
        )
        pool.setup()
        data.victim_data.setup()
        _ = data.victim_labels  # the owner's evaluation labels, before the baseline
        baseline = peak_mib()
        data.setup()
        data.grow_to(len(data.sizes) - 1)  # asks every round, then reads the answers back
        building = peak_mib()
        stored = sum(p.stat().st_size for p in data.folder.rglob("a*.npy")) / 2**20
        if not stored:
            raise SystemExit(f"no answers stored under {data.folder}: nothing was measured")
    finally:
        shutil.rmtree(folder)
    print(f"queries={args.queries} classes={args.classes}")
    print(f"stored answers (float16 files):      {stored:8.1f} MiB")
    print(
        f"peak RSS increase, querying + served: {building - baseline:8.1f} MiB "
        f"(ratio {(building - baseline) / stored:.2f} of stored)"
    )


if __name__ == "__main__":
    main()
