"""Lightning training of the victim vs a plain PyTorch loop: same network, data, batch size.

Both train `VictimClassifier`'s network on the embedded digits for the same number of epochs;
the Lightning run has logging, metrics and the fit loop, with checkpointing and progress bars
off. Target: throughput ratio >= 0.95 on CPU.

    python benchmarks/lightning_overhead.py [--arch digits_cnn] [--epochs 3] [--repeats 5]
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from lightning.pytorch import Trainer, seed_everything

from datamodules import DigitsDataModule
from lightning_modules import VictimClassifier


def plain_loop(model: VictimClassifier, loader, epochs: int) -> float:
    optimizer = model.configure_optimizers()
    model.train()
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(x)
    return seen / (time.perf_counter() - start)


def lightning_fit(model: VictimClassifier, loader, epochs: int) -> float:
    trainer = Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    trainer.fit(model, train_dataloaders=loader)
    return epochs * len(loader.dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="digits_cnn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    data = DigitsDataModule(batch_size=args.batch_size)
    data.setup()
    loader = data.train_dataloader()
    plain, ours = [], []
    for repeat in range(args.repeats):  # interleaved, so drift hits both alike
        seed_everything(repeat, verbose=False)
        plain.append(plain_loop(VictimClassifier(args.arch, 10), loader, args.epochs))
        seed_everything(repeat, verbose=False)
        ours.append(lightning_fit(VictimClassifier(args.arch, 10), loader, args.epochs))
    p, o = statistics.median(plain), statistics.median(ours)
    print(
        f"arch={args.arch} batch={args.batch_size} epochs={args.epochs} "
        f"threads={torch.get_num_threads()} repeats={args.repeats}"
    )
    print(f"plain PyTorch loop: {p:9.1f} images/s (median)")
    print(f"Lightning fit:      {o:9.1f} images/s (median)")
    print(f"ratio Lightning/plain: {o / p:6.3f}  (target >= 0.95)")


if __name__ == "__main__":
    main()
