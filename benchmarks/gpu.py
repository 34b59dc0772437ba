"""GPU throughput on synthetic tensors, for when a GPU is lent (no dataset needed, < 8 minutes).

ResNet34 at 224 px: training images/s in fp32 vs bf16-mixed + channels-last, query (inference)
throughput, and the extrapolated time of one Table 2 row (100,000 queries + 200 surrogate epochs
over them) beside the paper's "3 days" (4.3). Figures go to stdout and to --out (JSON).

    python benchmarks/gpu.py --out gpu_benchmark.json
    python benchmarks/gpu.py --device cpu --arch resnet18 --size 32 --steps 3   # smoke test
"""

import argparse
import json
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

from knockoff_lab.nets.networks import build_network


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(
    arch: str, size: int, batch: int, steps: int, device: torch.device, fast: bool
) -> float:
    """Training images/s; `fast` = bf16 autocast + channels-last."""
    fmt = torch.channels_last if fast else torch.contiguous_format
    net = build_network(arch, 256).to(device, memory_format=fmt).train()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
    y = torch.randint(256, (batch,), device=device)
    cast = torch.autocast(device.type, dtype=torch.bfloat16) if fast else nullcontext()
    rates = []
    for step in range(steps + 2):  # two warm-up steps
        sync(device)
        start = time.perf_counter()
        with cast:
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync(device)
        if step >= 2:
            rates.append(batch / (time.perf_counter() - start))
    return statistics.median(rates)


def query_rate(arch: str, size: int, batch: int, steps: int, device: torch.device) -> float:
    net = build_network(arch, 256).to(device, memory_format=torch.channels_last).eval()
    x = torch.randn(batch, 3, size, size, device=device).contiguous(
        memory_format=torch.channels_last
    )
    rates = []
    with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
        for step in range(steps + 2):
            sync(device)
            start = time.perf_counter()
            net(x).float().softmax(-1)
            sync(device)
            if step >= 2:
                rates.append(batch / (time.perf_counter() - start))
    return statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=Path("gpu_benchmark.json"))
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    fp32 = train_rate(args.arch, args.size, args.batch, args.steps, device, fast=False)
    fast = train_rate(args.arch, args.size, args.batch, args.steps, device, fast=True)
    queries = query_rate(args.arch, args.size, 2 * args.batch, args.steps, device)
    row_hours = (100_000 / queries + 200 * 100_000 / fast) / 3600
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "arch": args.arch,
        "size": args.size,
        "batch": args.batch,
        "train_images_per_s_fp32": round(fp32, 1),
        "train_images_per_s_bf16_channels_last": round(fast, 1),
        "speedup_bf16_channels_last": round(fast / fp32, 3),
        "queries_per_s_bf16": round(queries, 1),
        "table2_row_hours_extrapolated": round(row_hours, 2),
        "paper_hours": 72,
    }
    args.out.write_text(json.dumps(figures, indent=1))
    for key, value in figures.items():
        print(f"{key:40s} {value}")


if __name__ == "__main__":
    main()
