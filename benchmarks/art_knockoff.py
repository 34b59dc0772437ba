"""Our Knockoff beside ART 1.20.1's KnockoffNets on the same work, in one process, same run.

The work: random sampling, probability answers, `--budget` queries to the embedded digits
victim, `--epochs` epochs of Adam 3e-3 (constant rate: ART's fit takes no scheduler) at batch 64
on the soft answers (ART given the same soft cross-entropy, so it does not reduce them to
labels), the thief digits_cnn starting from the same weights, the same seed. Ours runs as a user
runs it, the in-process `main.py fit` of `configs/surrogate/digits_natural_probs.yaml` with
`val_fraction 0` (ART holds nothing out), no per-epoch analysis and no figure (as `reproduce`
runs a grid cell), a fresh transfer-set cache and no posterior cache (so the victim answers its
queries); ART is given exactly the images ours asked, as its whole `x` with `nb_stolen` = all of
them, so both train on the same images. Timed: ours from the CLI's start to the end of its
test; ART from building its classifiers to its thief's predictions on the same test set.

Four contenders (`CONTENDERS`): the recipe trains channels-last, so ours runs both so and in
NCHW, and ART is given the thief both as built (NCHW) and in channels-last: the ratio at equal
memory format says what is our code's and what is the format's. An untimed run of ours warms
the process for all and gives ART its images; then `--repeats` rounds, each contender going
first in turn, each ours run checked to ask the same images. Reported: median times, ratios,
and test accuracies.

    pip install adversarial-robustness-toolbox==1.20.1   # an optional benchmark dependency
    python benchmarks/art_knockoff.py --victim CKPT [--budget 2000] [--epochs 10] [--repeats 3]
        [--threads 1]
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from knockoff_lab.nets.networks import build_network
from knockoff_lab.pipeline.cli import cli_main

CONFIG = Path(__file__).resolve().parents[1] / "configs/surrogate/digits_natural_probs.yaml"
CALLBACKS = json.dumps(
    [
        {
            "class_path": "lightning_modules.CompleteSetCheckpoint",
            "init_args": {"monitor": None, "filename": "best", "enable_version_counter": False},
        },
        {"class_path": "lightning_modules.AttackRounds"},
        {"class_path": "lightning_modules.TransferHistogram", "init_args": {"figures": False}},
    ]
)


# ours as the recipe runs it (channels-last), ours in NCHW, ART given the thief as it is built
# (NCHW), ART given it in channels-last
CONTENDERS = ["ours", "ours NCHW", "ART", "ART channels-last"]


class SoftCrossEntropy(torch.nn.Module):
    """Our soft-label loss as a module, so ART keeps the probabilities as targets."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return -(targets * F.log_softmax(logits, -1)).sum(-1).mean()


def ours(victim: str, initial: str, budget: int, epochs: int, folder: str, nhwc: bool = True):
    """(seconds, the CLI object) of one fit + test of our Knockoff from the `initial` weights;
    `nhwc`: the recipe's channels-last network, or NCHW."""
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
            "--model.init_args.weights",
            initial,
            "--model.init_args.channels_last",
            str(nhwc).lower(),
            "--model.init_args.lr_scheduler",
            "null",
            "--data.init_args.api.init_args.victim",
            victim,
            "--data.init_args.budget",
            str(budget),
            "--data.init_args.val_fraction",
            "0",
            "--data.init_args.analysis",
            "false",
            "--data.init_args.cache_dir",
            f"{folder}/transfer_sets",
            "--data.init_args.api.init_args.posterior_cache",
            "null",  # the victim answers every query, as ART's does
            "--data.init_args.api.init_args.ledger",
            f"{folder}/ledger.sqlite",
            "--trainer.callbacks",
            CALLBACKS,  # attack.yaml's, with nothing to monitor: the last epoch is kept
        ]
    )
    return time.perf_counter() - start, cli


def asked_images(cli) -> torch.Tensor:
    """The images our run asked (its whole transfer set: nothing held out)."""
    train = cli.datamodule.split("train")
    return next(iter(DataLoader(train, batch_size=len(train))))[0]


def art_knockoff(cli, pool_images: np.ndarray, initial: str, epochs: int, nhwc: bool = False):
    """(seconds, test accuracy) of ART's KnockoffNets on `pool_images`, against the victim of
    our run `cli`; `nhwc`: its thief network given in channels-last."""
    from art.attacks.extraction import KnockoffNets
    from art.estimators.classification import PyTorchClassifier

    data = cli.datamodule
    test = data.victim_data.split("test")
    test_images, test_labels = next(iter(DataLoader(test, batch_size=len(test))))
    victim_net = torch.nn.Sequential(data.api.victim, torch.nn.Softmax(-1))  # ART: probabilities
    shape, classes = tuple(pool_images.shape[1:]), data.num_classes
    np.random.seed(0)  # ART samples with numpy's global generator
    start = time.perf_counter()
    victim = PyTorchClassifier(
        victim_net, torch.nn.CrossEntropyLoss(), shape, classes, device_type="cpu"
    )
    thief_net = build_network("digits_cnn", classes, initial)
    thief_net.to(memory_format=torch.channels_last if nhwc else torch.contiguous_format)
    thief = PyTorchClassifier(
        thief_net,
        SoftCrossEntropy(),
        shape,
        classes,
        optimizer=torch.optim.Adam(thief_net.parameters(), 3e-3),
        device_type="cpu",
    )
    attack = KnockoffNets(
        victim,
        batch_size_fit=data.batch_size,
        batch_size_query=data.query_batch_size,
        nb_epochs=epochs,
        nb_stolen=len(pool_images),
        sampling_strategy="random",
        use_probability=True,
        verbose=False,
    )
    stolen = attack.extract(pool_images, thieved_classifier=thief)
    predicted = stolen.predict(test_images.numpy(), batch_size=256).argmax(-1)
    seconds = time.perf_counter() - start
    return seconds, float((torch.from_numpy(predicted) == test_labels).float().mean())


def stage_arguments(doc: str) -> argparse.Namespace:
    """--victim (checked to exist), --budget, --epochs, --repeats, --threads (torch's, for every
    contender; the embedded presets run stages on 1): this benchmark's and memory_format.py's
    command line."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--victim", default="runs/victim/digits_cnn/checkpoints/best.ckpt")
    parser.add_argument("--budget", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not Path(args.victim).is_file():
        train = "python main.py fit --config configs/victim/digits_cnn.yaml"
        raise SystemExit(f"victim checkpoint {args.victim} does not exist: train it ({train})")
    return args


def initial_weights(folder: str) -> str:
    """The thief's first weights (seed 0), written to `folder`: every contender starts there."""
    path = f"{folder}/initial.pt"
    torch.manual_seed(0)
    torch.save(build_network("digits_cnn", 10).state_dict(), path)
    return path


def main() -> None:
    args = stage_arguments(__doc__)
    try:
        import art
    except ImportError:
        raise SystemExit("pip install adversarial-robustness-toolbox==1.20.1") from None
    times: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    accuracy: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    with tempfile.TemporaryDirectory() as folder:
        initial = initial_weights(folder)
        _, warm = ours(args.victim, initial, args.budget, args.epochs, f"{folder}/warm")
        images = asked_images(warm)
        for repeat in range(args.repeats):
            for name in CONTENDERS[repeat:] + CONTENDERS[:repeat]:  # each goes first in turn
                nhwc = name in ("ours", "ART channels-last")
                if name.startswith("ART"):
                    seconds, acc = art_knockoff(warm, images.numpy(), initial, args.epochs, nhwc)
                else:
                    where = f"{folder}/{repeat}-{nhwc}"
                    seconds, cli = ours(args.victim, initial, args.budget, args.epochs, where, nhwc)
                    assert torch.equal(asked_images(cli), images), "ours asked other images"
                    acc = float(cli.trainer.callback_metrics["test/acc"])
                times[name].append(seconds)
                accuracy[name].append(acc)
    print(
        f"Knockoff, random, probabilities, {args.budget} queries, {args.epochs} epochs, "
        f"{torch.get_num_threads()} threads, ART {art.__version__}, median of {args.repeats}:"
    )
    median = {name: statistics.median(times[name]) for name in CONTENDERS}
    for name in CONTENDERS:
        print(
            f"  {name:17s} {median[name]:6.1f} s   test accuracy "
            f"{statistics.median(accuracy[name]):.3f}"
        )
    print(f"  ours / ART time x{median['ours'] / median['ART']:.2f} (each as a user runs it)")
    for mine, theirs in (("ours NCHW", "ART"), ("ours", "ART channels-last")):
        print(f"  {mine} / {theirs} time x{median[mine] / median[theirs]:.2f}")


if __name__ == "__main__":
    main()
