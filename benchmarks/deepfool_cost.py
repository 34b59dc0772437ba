"""DFAL's DeepFool over a pool, as it ran before against as it runs now, same run.

Before: every step took the Jacobian of every still-active image for all C classes (C backward
passes), and only then dropped the images that had flipped, so an image's last step paid a whole
Jacobian for nothing. Now (`attacks.active_thief.deepfool_distance`) a forward pass finds the
flipped images first, and the gradients of f_k - f_label are taken directly, C - 1 backward
passes. The two are checked to give the same distances (to float rounding) and the same
`--picks` nearest images, then timed alternately on `--images` crops of the embedded 16 px pool,
scored by a trained digits network (`--network`, a checkpoint: the budgets victim will do).
Reported: median seconds, their ratio, and the Jacobian rows each computed.

    python benchmarks/deepfool_cost.py --network <best.ckpt> [--images 2048] [--threads 1]
"""

import argparse
import statistics
import time

import torch

from datamodules import CropsPoolDataModule
from knockoff_lab.attacks import active_thief
from knockoff_lab.attacks.pool_views import pool_images
from knockoff_lab.nets.victim import load_victim


def jacobian_before(network, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, d logit_c / dx for every class c): C backward passes."""
    x = x.requires_grad_(True)
    with torch.enable_grad():
        out = network(x).float()
        rows = [
            torch.autograd.grad(out[:, c].sum(), x, retain_graph=c + 1 < out.shape[1])[0]
            for c in range(out.shape[1])
        ]
    return out.detach(), torch.stack(rows, 1)


def deepfool_before(network, images: torch.Tensor, counted: list[int]) -> torch.Tensor:
    """The DeepFool distance as computed before, in chunks of 256 images."""
    out = []
    for chunk in images.split(256):
        label, total = None, torch.zeros_like(chunk)
        active = torch.ones(len(chunk), dtype=torch.bool)
        for _ in range(10):
            x = chunk[active] + 1.02 * total[active]
            if not len(x):
                break
            f, grads = jacobian_before(network, x)
            counted.append(len(x))
            label = f.argmax(-1) if label is None else label
            mine = label[active]
            still = f.argmax(-1) == mine
            active[active.nonzero().squeeze(1)[~still]] = False
            x, grads, f, mine = x[still], grads[still], f[still], mine[still]
            rows = torch.arange(len(x))
            w = (grads - grads[rows, mine][:, None]).flatten(2)
            gap = (f - f[rows, mine][:, None]).abs()
            norm = w.norm(dim=-1).clamp_min(1e-8)
            ratio = gap / norm
            ratio[rows, mine] = float("inf")
            nearest = ratio.argmin(-1)
            step = ((gap[rows, nearest] + 1e-4) / norm[rows, nearest] ** 2)[:, None]
            total[active] += (step * w[rows, nearest]).view_as(x)
        out.append((1.02 * total).flatten(1).norm(dim=-1))
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", required=True, help="a digits network's checkpoint")
    parser.add_argument("--images", type=int, default=2048)
    parser.add_argument("--picks", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    network = load_victim(args.network).eval()
    pool = CropsPoolDataModule(size=args.images, image_size=16, style="digitlike")
    images = pool_images(pool.split("pool")).float()
    before_rows: list[int] = []
    before = deepfool_before(network, images, before_rows)
    now_rows: list[int] = []
    taken = active_thief.boundary_gradients

    def counted(net, x: torch.Tensor, *rest):
        now_rows.append(len(x))
        return taken(net, x, *rest)

    active_thief.boundary_gradients = counted
    try:
        now = active_thief.deepfool_distance(network, images, "cpu")
    finally:
        active_thief.boundary_gradients = taken
    assert torch.allclose(before, now, rtol=1e-3, atol=1e-5), "the distances differ"
    order = [d.argsort(stable=True)[: args.picks] for d in (before, now)]
    print(f"same {args.picks} nearest images, in the same order: {torch.equal(*order)}")
    times: dict[str, list[float]] = {"before": [], "now": []}
    for _ in range(args.repeats):  # alternating, so a slow moment hits both
        start = time.perf_counter()
        deepfool_before(network, images, [])
        times["before"].append(time.perf_counter() - start)
        start = time.perf_counter()
        active_thief.deepfool_distance(network, images, "cpu")
        times["now"].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        print(f"{name:>6}: median {medians[name]:.2f} s  ({', '.join(f'{v:.2f}' for v in values)})")
    print(f"now / before: x{medians['now'] / medians['before']:.2f}")
    print(
        f"Jacobian rows for {len(images)} images: before {sum(before_rows)} (C backward passes "
        f"each), now {sum(now_rows)} (C - 1 each)"
    )


if __name__ == "__main__":
    main()
