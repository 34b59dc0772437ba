"""Which embedded setting puts Knockoff in the paper's regime (issue 16)? A digits CNN victim at
`--size` px, then surrogates trained on its answers to natural crops processed several ways:

  base      the crops as the embedded pool makes them
  digitlike grey, reduced to 8x8 (the digits' own resolution), contrast-stretched, gamma 2
            (`CropsPoolDataModule(style="digitlike")`)

Prints surrogate accuracy and recovery (surrogate / victim accuracy) for probabilities and
label-only answers at each budget. One seed; a search, not a finding.

    python benchmarks/embedded_regime.py --size 16 --queries 1500 3000
"""

import argparse
import time

import torch
import torch.nn.functional as F

from datamodules import DigitsDataModule
from datamodules.pools import PHOTOS, digitlike, load_photo, random_crops
from knockoff_lab.nets.networks import build_network


def stacked(data: DigitsDataModule, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    items = data.split(split)
    images = torch.stack([items[i][0] for i in range(len(items))])
    return images, torch.tensor([items[i][1] for i in range(len(items))])


def train(images: torch.Tensor, targets: torch.Tensor, epochs: int) -> torch.nn.Module:
    """digits_cnn, Adam 3e-3, cosine; `targets` are labels or probability vectors."""
    torch.manual_seed(0)
    net = build_network("digits_cnn", 10)
    optimizer = torch.optim.Adam(net.parameters(), 3e-3)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    for _ in range(epochs):
        net.train()
        for batch in torch.randperm(len(images)).split(64):
            log_p = F.log_softmax(net(images[batch]), -1)
            target = targets[batch]
            loss = (
                -(target * log_p).sum(-1).mean() if target.ndim == 2 else F.nll_loss(log_p, target)
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        schedule.step()
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--queries", type=int, nargs="+", default=[1500, 3000])
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args()
    torch.set_num_threads(2)
    data = DigitsDataModule(image_size=args.size)
    data.setup("fit")
    start = time.time()
    victim = train(*stacked(data, "train"), epochs=12)
    test_images, test_labels = stacked(data, "test")
    with torch.no_grad():
        victim_acc = (victim(test_images).argmax(-1) == test_labels).float().mean().item()
    print(f"victim: acc {victim_acc:.3f} ({time.time() - start:.0f} s)")
    photos = [load_photo(name) for name in PHOTOS["natural"]]
    crops, _ = random_crops(photos, max(args.queries), args.size, 0)
    for name, pool in (("base", crops), ("digitlike", digitlike(crops))):
        for count in args.queries:
            with torch.no_grad():
                probs = victim(pool[:count]).softmax(-1)
            for answers, targets in (("probs", probs), ("label", probs.argmax(-1))):
                start = time.time()
                surrogate = train(pool[:count], targets, args.epochs)
                with torch.no_grad():
                    acc = (surrogate(test_images).argmax(-1) == test_labels).float().mean().item()
                print(
                    f"{name:9s} {count:5d} queries {answers:5s}: acc {acc:.3f} "
                    f"recovery {acc / victim_acc:.2f} ({time.time() - start:.0f} s)"
                )


if __name__ == "__main__":
    main()
