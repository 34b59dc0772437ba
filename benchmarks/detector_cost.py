"""The cost of the paper's defence on CPU (4.3): embed once, then fit the logistic head in minutes.

Two measurements through the code the detector runs:
  embedding throughput  images/s of a frozen ResNet's penultimate features
                        (`features.layer_features`), per batch, median over timed batches;
  head fit              `detector.fit_logistic_head` (LogisticRegressionCV: L-BFGS, L2, 10 C
                        values x 10 folds, refitted) on synthetic N x 2,048 features shaped like
                        ResNet embeddings (non-negative, 10% in-distribution), on `--jobs` cores.
Then the ratio that matters: the head fit against one embedding pass over the same N images.

    python benchmarks/detector_cost.py [--samples 100000] [--jobs 2] [--batches 5]
"""

import argparse
import statistics
import time

import numpy as np
import torch

from knockoff_lab.nets.features import PENULTIMATE, layer_features
from knockoff_lab.nets.networks import build_network
from lightning_modules.detector import fit_logistic_head


def embedding_rate(arch: str, size: int, batch: int, batches: int) -> float:
    """Median images/s of the frozen backbone's penultimate features over `batches` batches."""
    net = build_network(arch, 2).eval().requires_grad_(False)
    images = torch.randn(batch, 3, size, size)
    rates = []
    with torch.inference_mode():
        layer_features(net, images, [PENULTIMATE])  # warm-up
        for _ in range(batches):
            start = time.perf_counter()
            layer_features(net, images, [PENULTIMATE])
            rates.append(batch / (time.perf_counter() - start))
    return statistics.median(rates)


def synthetic_embeddings(samples: int, dims: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """ReLU features whose means differ between the classes in a fifth of the dimensions."""
    gen = np.random.default_rng(seed)
    labels = (gen.random(samples) < 0.9).astype(np.int64)  # 1 = out-of-distribution
    shift = np.zeros(dims, dtype=np.float32)
    shift[gen.choice(dims, dims // 5, replace=False)] = 0.1
    features = gen.standard_normal((samples, dims), dtype=np.float32)
    features += labels[:, None].astype(np.float32) * shift
    return np.maximum(features, 0, out=features), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100_000)
    parser.add_argument("--dims", type=int, default=2048)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.jobs)

    print(f"threads={torch.get_num_threads()} batch={args.batch_size} batches={args.batches}")
    rates = {}
    for arch, size in (("resnet18", 64), ("resnet18", 224), ("resnet101", 224)):
        rates[arch, size] = embedding_rate(arch, size, args.batch_size, args.batches)
        print(f"embedding {arch:9s} at {size:3d} px: {rates[arch, size]:8.1f} images/s (median)")

    features, labels = synthetic_embeddings(args.samples, args.dims)
    start = time.perf_counter()
    _, _, cv_score, c = fit_logistic_head(features, labels, n_jobs=args.jobs)
    fit = time.perf_counter() - start
    print(
        f"head fit {args.samples} x {args.dims}, 10 C x 10 folds, {args.jobs} jobs: "
        f"{fit:8.1f} s (one run; cv accuracy {cv_score:.3f}, C {c:.3g})"
    )
    for (arch, size), rate in rates.items():
        embed = args.samples / rate
        print(
            f"one {arch} {size} px embedding pass over {args.samples}: {embed:9.0f} s; "
            f"head fit / embedding pass: {fit / embed:.3f}"
        )


if __name__ == "__main__":
    main()
