"""Peak memory of Knockoff's adaptive strategy reading its pool (k-means on average-pooled
pixels, `attacks.knockoff_adaptive.cluster_pool`) on a synthetic pool of 224-px images: streamed
in chunks (`attacks.pool_views.pool_chunks`, as the strategies read a pool now) against the whole
pool stacked into one tensor first (as they did before), each in its own process (ru_maxrss).
The stacked read is measured at a size that fits in memory; it grows with the pool (4 bytes x
3 x 224 x 224 per image: 60 GB at 100,000), the streamed one does not.

    python benchmarks/pool_memory.py [--sizes 5000 100000] [--stacked_size 5000]
"""

import argparse
import resource
import subprocess
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset


class SyntheticPool(Dataset):
    """`size` random 224-px images, each made from its own seed when read (nothing is held)."""

    def __init__(self, size: int, side: int = 224):
        self.size, self.side = size, side

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(index)
        return torch.rand(3, self.side, self.side, generator=generator)


def measure(mode: str, size: int) -> None:
    """Run one read in this process and print its peak resident memory (MiB)."""
    from knockoff_lab.attacks.knockoff_adaptive import cluster_pool
    from knockoff_lab.attacks.pool_views import pool_images

    pool = SyntheticPool(size)
    if mode == "streamed":
        labels, _ = cluster_pool(pool, arms=10, groups=1, feature_size=4, seed=0)
    else:  # the read before: the pool as one tensor, then its features
        features = F.adaptive_avg_pool2d(pool_images(pool).float(), 4).flatten(1).numpy()
        assert np.isfinite(features).all()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def peak(mode: str, size: int) -> float:
    command = [sys.executable, __file__, "--measure", mode, "--sizes", str(size)]
    return float(subprocess.run(command, capture_output=True, text=True, check=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5_000, 100_000])
    parser.add_argument("--stacked_size", type=int, default=5_000)
    parser.add_argument("--measure", choices=["streamed", "stacked"])
    args = parser.parse_args()
    if args.measure:
        return measure(args.measure, args.sizes[0])
    stacked = peak("stacked", args.stacked_size)
    print(f"stacked  {args.stacked_size:>7} images: peak {stacked:8.0f} MiB")
    for size in args.sizes:
        streamed = peak("streamed", size)
        print(
            f"streamed {size:>7} images: peak {streamed:8.0f} MiB "
            f"({streamed / stacked:.2f}x the stacked read of {args.stacked_size})"
        )


if __name__ == "__main__":
    main()
