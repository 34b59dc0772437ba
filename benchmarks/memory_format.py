"""The embedded surrogate's training in NCHW (the default) against channels-last (NHWC), in one
process: the same stage (`configs/surrogate/digits_natural_probs.yaml`, `--budget` queries,
`--epochs` epochs, as `reproduce` runs a grid cell: no per-epoch analysis, no figure) with
`model.init_args.channels_last` false and true, alternating which goes first. Reported: median
wall times, their ratio, and both test accuracies (the same network, the same images; the
convolutions sum in another order, so the numbers differ in the last bits and then drift).

Channels-last is the lever for the compute-bound presets (budgets, matrix) on CPU; switching the
embedded configs to it changes every number they report, so it waits for a rerun of the presets
that checks their findings.

    python benchmarks/memory_format.py --victim CKPT [--budget 2000] [--epochs 10] [--repeats 3]
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from knockoff_lab.pipeline.cli import cli_main

CONFIG = Path(__file__).resolve().parents[1] / "configs/surrogate/digits_natural_probs.yaml"


def stage(victim: str, budget: int, epochs: int, channels_last: bool, folder: str):
    """(seconds, test accuracy) of one fit + test of the stage."""
    start = time.perf_counter()
    cli = cli_main(
        [
            "fit",
            "--config",
            str(CONFIG),
            "--trainer.default_root_dir",
            folder,
            "--trainer.enable_progress_bar",
            "false",
            "--trainer.max_epochs",
            str(epochs),
            "--model.init_args.lr_scheduler.init_args.T_max",
            str(epochs),
            "--model.init_args.channels_last",
            str(channels_last).lower(),
            "--data.init_args.api.init_args.victim",
            victim,
            "--data.init_args.api.init_args.ledger",
            "null",
            "--data.init_args.budget",
            str(budget),
            "--data.init_args.analysis",
            "false",
            "--data.init_args.cache_dir",
            f"{folder}/transfer_sets",
        ]
    )
    return time.perf_counter() - start, float(cli.trainer.callback_metrics["test/acc"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", default="runs/victim/digits_cnn/checkpoints/best.ckpt")
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if not Path(args.victim).is_file():
        train = "python main.py fit --config configs/victim/digits_cnn.yaml"
        raise SystemExit(f"victim checkpoint {args.victim} does not exist: train it ({train})")
    times: dict[bool, list[float]] = {False: [], True: []}
    accuracy: dict[bool, list[float]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as folder:
        stage(args.victim, args.budget, 1, False, f"{folder}/warm")  # imports, the pool
        for repeat in range(args.repeats):
            for nhwc in (False, True) if repeat % 2 == 0 else (True, False):
                where = f"{folder}/{repeat}-{nhwc}"
                seconds, acc = stage(args.victim, args.budget, args.epochs, nhwc, where)
                times[nhwc].append(seconds)
                accuracy[nhwc].append(acc)
    work = f"{args.budget} queries, {args.epochs} epochs, median of {args.repeats}"
    print(f"embedded surrogate, {work}:")
    for nhwc, name in ((False, "NCHW"), (True, "channels-last")):
        print(
            f"  {name:13s} {statistics.median(times[nhwc]):6.1f} s   test accuracy "
            f"{statistics.median(accuracy[nhwc]):.3f}"
        )
    ratio = statistics.median(times[True]) / statistics.median(times[False])
    print(f"  channels-last / NCHW time x{ratio:.2f}")


if __name__ == "__main__":
    main()
