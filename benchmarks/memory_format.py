"""The embedded surrogate stage trained in NCHW against channels-last (NHWC), in one process:
`art_knockoff.ours` (the recipe `configs/surrogate/digits_natural_probs.yaml` as a user runs
it, `--budget` queries, `--epochs` epochs, from one initial network) with
`model.init_args.channels_last` false and true, each first in turn after an untimed warm-up.
Reported: median wall times, their ratio, and both test accuracies (the same network and
images; the convolutions sum in another order, so the numbers part in the last bits and drift).

Channels-last is the lever of the compute-bound embedded presets on CPU; the recipe uses it.
ART is not needed here.

    python benchmarks/memory_format.py --victim CKPT [--budget 2000] [--epochs 10] [--repeats 3]
"""

import statistics
import tempfile

from art_knockoff import (  # a sibling: run as python benchmarks/memory_format.py
    initial_weights,
    ours,
    stage_arguments,
)


def main() -> None:
    args = stage_arguments(__doc__)
    times: dict[bool, list[float]] = {False: [], True: []}
    accuracy: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder:
        initial = initial_weights(folder)
        ours(args.victim, initial, args.budget, 1, f"{folder}/warm")  # imports, the pool
        for repeat in range(args.repeats):
            for nhwc in (False, True) if repeat % 2 == 0 else (True, False):
                where = f"{folder}/{repeat}-{nhwc}"
                seconds, cli = ours(args.victim, initial, args.budget, args.epochs, where, nhwc)
                times[nhwc].append(seconds)
                accuracy[nhwc].append(float(cli.trainer.callback_metrics["test/acc"]))
    work = f"{args.budget} queries, {args.epochs} epochs, median of {args.repeats}"
    print(f"embedded surrogate stage, {work}:")
    for nhwc, name in ((False, "NCHW"), (True, "channels-last")):
        print(
            f"  {name:13s} {statistics.median(times[nhwc]):6.1f} s   test accuracy "
            f"{statistics.median(accuracy[nhwc]):.3f}"
        )
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"  channels-last / NCHW time x{ratio:.2f}")


if __name__ == "__main__":
    main()
