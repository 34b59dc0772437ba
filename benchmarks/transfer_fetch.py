"""A transfer set's training epoch read one item at a time against a batch at once, same run.

The DataLoader reads a `TransferDataset` batch through its `__getitems__` (one gather from a
tensor pool, one conversion of the stored answers); with it switched off, the loader calls
`__getitem__` once per query, as before. Both loaders are checked to give equal batches, then
timed over whole shuffled epochs of the embedded pool (crops of `--image_size` px) with
`--queries` answered queries of 10 classes, stored in half precision. Reported: median
milliseconds per epoch and their ratio.

    python benchmarks/transfer_fetch.py [--queries 2000] [--image_size 16] [--repeats 7]
"""

import argparse
import statistics
import time

import numpy as np
import torch
from torch.utils.data import DataLoader

from datamodules import CropsPoolDataModule
from datamodules.base import EpochShuffle
from datamodules.transfer_datasets import TransferDataset


class OneByOne(TransferDataset):
    """The same dataset with the batched read switched off (the DataLoader tests it for None)."""

    __getitems__ = None


def epoch_ms(loader: DataLoader) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    return (time.perf_counter() - start) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--image_size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    pool = CropsPoolDataModule(size=6000, image_size=args.image_size, style="digitlike")
    indices = np.random.default_rng(0).permutation(6000)[: args.queries]
    answers = torch.rand(args.queries, 10).softmax(-1).half()
    rows = np.arange(args.queries)
    loaders = {
        name: DataLoader(
            kind(pool.split("pool"), indices, None, answers, rows),
            batch_size=64,
            sampler=EpochShuffle(args.queries, 0),
        )
        for name, kind in (("one by one", OneByOne), ("batch at once", TransferDataset))
    }
    for one, batch in zip(*loaders.values(), strict=True):
        assert all(torch.equal(a, b) for a, b in zip(one, batch, strict=True)), "batches differ"
    times: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(args.repeats):  # alternating, so a slow moment hits both
        for name, loader in loaders.items():
            times[name].append(epoch_ms(loader))
    print(f"{args.queries} queries, {args.image_size} px, batch 64, median of {args.repeats}:")
    median = {name: statistics.median(t) for name, t in times.items()}
    for name, ms in median.items():
        print(f"  {name:13s} {ms:7.1f} ms per epoch")
    print(f"  batch at once / one by one x{median['batch at once'] / median['one by one']:.2f}")


if __name__ == "__main__":
    main()
