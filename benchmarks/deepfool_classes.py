"""DFAL's DeepFool at paper scale toward every class against toward the 10 likeliest (ActiveThief's
`dfal_classes`, ART's `nb_grads`, Foolbox's `candidates`), same run, order alternating.

A ResNet-18 with `--classes` outputs (256: Caltech256) scores `--images` random images at
`--size` px (random weights and images: the cost of a step does not depend on them, only how many
steps an image takes does, which is reported). Printed: median seconds of each, their ratio, the
backward passes each took, and how many of the `--picks` nearest images the two choose alike.

    python benchmarks/deepfool_classes.py [--images 32] [--size 64] [--classes 256] [--repeats 3]
"""

import argparse
import statistics
import time

import torch
from torchvision.models import resnet18

from knockoff_lab.attacks import active_thief


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--classes", type=int, default=256)
    parser.add_argument("--picks", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    network = resnet18(num_classes=args.classes).eval()
    images = torch.randn(args.images, 3, args.size, args.size)
    passes = {args.classes: 0, 10: 0}
    taken = active_thief.boundary_gradients

    def counted(net, x, label, others, *rest):
        passes[current] += others.shape[1] * -(-len(x) // rest[-1])  # columns x chunks
        return taken(net, x, label, others, *rest)

    seconds: dict[int, list[float]] = {args.classes: [], 10: []}
    distances = {}
    active_thief.boundary_gradients = counted
    try:
        for repeat in range(args.repeats):
            for current in (args.classes, 10) if repeat % 2 == 0 else (10, args.classes):
                passes[current] = 0
                start = time.perf_counter()
                distances[current] = active_thief.deepfool_distance(
                    network, images, "cpu", classes=current
                )
                seconds[current].append(time.perf_counter() - start)
    finally:
        active_thief.boundary_gradients = taken
    every, ten = (statistics.median(seconds[c]) for c in (args.classes, 10))
    print(f"{args.images} images at {args.size} px, ResNet-18, {args.classes} classes, 1 process")
    print(
        f"toward all {args.classes}: median {every:.2f} s, {passes[args.classes]} backward passes"
    )
    print(f"toward the likeliest 10: median {ten:.2f} s, {passes[10]} backward passes")
    print(f"10 / all: x{ten / every:.3f}")
    nearest = [set(distances[c].argsort()[: args.picks].tolist()) for c in (args.classes, 10)]
    print(f"the {args.picks} nearest images alike: {len(nearest[0] & nearest[1])}")


if __name__ == "__main__":
    main()
