"""Where one attack stage's time goes: the embedded Knockoff stage (`configs/surrogate/
digits_natural_probs.yaml`, as `reproduce` runs it) under Lightning's SimpleProfiler, its
phases against a bare PyTorch loop that trains the same network on the same transfer set for
the same epochs, measured in the same run.

Phases: process startup (importing torch and Lightning, in a fresh interpreter), the data
module's setup (the pool of crops, the API's answers: from the transfer-set cache after the
first run, so run it twice to see both), training steps, validation (the transfer set's val
split and the per-epoch analysis of the victim's test set), testing, and the rest (callbacks,
checkpoints, logging, the loops themselves).

    python main.py fit --config configs/victim/digits_cnn.yaml   # the victim, once
    python benchmarks/stage_time.py [--budget 3000] [--epochs 8] [--victim CKPT]
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from knockoff_lab.nets.networks import build_network
from knockoff_lab.pipeline.cli import cli_main

CONFIG = Path(__file__).resolve().parents[1] / "configs/surrogate/digits_natural_probs.yaml"
PHASES = {  # SimpleProfiler actions, by the phase they belong to
    "setup": ("[LightningDataModule]TransferSetDataModule.setup",),
    "training steps": (
        "[Strategy]SingleDeviceStrategy.training_step",
        "optimizer_step",
        "[Strategy]SingleDeviceStrategy.backward",
    ),
    "validation": ("[Strategy]SingleDeviceStrategy.validation_step",),
    "testing": ("[Strategy]SingleDeviceStrategy.test_step",),
}


def bare_loop(images: torch.Tensor, targets: torch.Tensor, epochs: int, batch: int) -> float:
    """Seconds to train digits_cnn (Adam) on soft targets: no Lightning, no validation."""
    torch.manual_seed(0)
    net = build_network("digits_cnn", targets.shape[1])
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    start = time.perf_counter()
    for _ in range(epochs):
        for rows in torch.randperm(len(images)).split(batch):
            loss = -(targets[rows] * F.log_softmax(net(images[rows]), -1)).sum(-1).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--victim", default="runs/victim/digits_cnn/checkpoints/best.ckpt")
    parser.add_argument("--budget", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    if not Path(args.victim).is_file():
        train = "python main.py fit --config configs/victim/digits_cnn.yaml"
        raise SystemExit(f"victim checkpoint {args.victim} does not exist: train it ({train})")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import torch, lightning"], check=True)
    startup = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        cli = cli_main(
            [
                "fit",
                "--config",
                str(CONFIG),
                "--trainer.profiler",
                "lightning.pytorch.profilers.SimpleProfiler",
                "--trainer.profiler.dirpath",
                tmp,
                "--trainer.profiler.filename",
                "profile",
                "--trainer.default_root_dir",
                tmp,
                "--trainer.enable_progress_bar",
                "false",
                "--data.init_args.api.init_args.victim",
                args.victim,
                "--data.init_args.budget",
                str(args.budget),
                "--trainer.max_epochs",
                str(args.epochs),
                "--model.init_args.lr_scheduler.init_args.T_max",
                str(args.epochs),
            ]
        )
        stage = time.perf_counter() - start
    durations = cli.trainer.profiler.recorded_durations
    phases = {
        name: sum(sum(v) for k, v in durations.items() if any(k.startswith(a) for a in actions))
        for name, actions in PHASES.items()
    }
    phases["rest"] = stage - sum(phases.values())
    train = cli.datamodule.split("train")
    images = torch.stack([train[i][0] for i in range(len(train))])
    targets = torch.stack([train[i][1] for i in range(len(train))]).float()
    bare = bare_loop(images, targets, args.epochs, cli.datamodule.batch_size)
    print(
        f"stage: {stage:.1f} s in process (+ {startup:.1f} s startup), {args.budget} queries, "
        f"{args.epochs} epochs, {torch.get_num_threads()} threads"
    )
    for name, seconds in phases.items():
        print(f"  {name:15s} {seconds:6.1f} s  {100 * seconds / stage:5.1f}%")
    print(f"bare loop, same epochs and data: {bare:.1f} s; stage / bare x{stage / bare:.2f}")


if __name__ == "__main__":
    main()
