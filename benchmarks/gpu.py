"""GPU throughput of a Table 2 row's parts, for when a GPU is lent (no dataset needed, < 8 min).

ResNet34 at 224 px: training images/s in fp32 vs bf16-mixed + channels-last on synthetic
tensors, query (inference) throughput, and the data side on the decoded store
(`datamodules/decoded_store.py`, built here from `--images` JPEGs written by
`benchmarks/data_loading.py`): DataLoader images/s with `--workers` processes, the crops cut on
the GPU, and a training step fed from that loader. The extrapolated time of one Table 2 row
(100,000 queries + 200 surrogate epochs over them) is taken at the slower of the model and the
loader, beside the paper's "3 days" (4.3). Figures go to stdout and to --out (JSON).

    python benchmarks/gpu.py --out gpu_benchmark.json
    python benchmarks/gpu.py --device cpu --arch resnet18 --size 32 --steps 3 --images 64 \
        --batch 16 --workers 2 --out /tmp/gpu_smoke.json   # smoke (tests/test_benchmarks.py)
"""

import argparse
import json
import statistics
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
from data_loading import write_jpegs  # a sibling: run as python benchmarks/gpu.py
from torch.utils.data import DataLoader

from datamodules.decoded_store import StoredCrops, collated, cut_crops, stored
from datamodules.images import ImageFiles
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


def store_rates(
    arch: str, size: int, batch: int, images: int, workers: int, device: torch.device
) -> tuple[float, float]:
    """(DataLoader images/s of the decoded store's training crops with `workers` processes,
    images/s of bf16 training steps fed by that loader, crops cut on the device)."""
    with tempfile.TemporaryDirectory() as tmp:
        files = write_jpegs(Path(tmp), images)
        kept = stored(ImageFiles(files, [0] * len(files)), round(size * 8 / 7), Path(tmp), workers)
        crops = StoredCrops(kept.files, kept.labels, None, kept.store)
        loader = DataLoader(
            crops,
            batch_size=batch,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=device.type == "cuda",
            collate_fn=collated,
            drop_last=True,
        )
        next(iter(loader))
        start, count = time.perf_counter(), 0
        for _ in range(2):
            for _, labels in loader:
                count += len(labels)
        loading = count / (time.perf_counter() - start)
        net = build_network(arch, 256).to(device, memory_format=torch.channels_last).train()
        opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
        sync(device)
        start, count = time.perf_counter(), 0
        for (pixels, boxes), labels in loader:
            x = cut_crops(pixels.to(device, non_blocking=True), boxes.to(device), size)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = F.cross_entropy(
                    net(x.contiguous(memory_format=torch.channels_last)), labels.to(device) % 256
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            count += len(labels)
        sync(device)
        return loading, count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--images", type=int, default=4096, help="JPEGs for the store's loader")
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("gpu_benchmark.json"))
    args = parser.parse_args()
    if args.images < args.batch:  # the store's loader drops the last partial batch
        parser.error(f"--images {args.images} holds no whole batch of --batch {args.batch}")
    device = torch.device(args.device)
    torch.backends.cudnn.benchmark = True
    fp32 = train_rate(args.arch, args.size, args.batch, args.steps, device, fast=False)
    fast = train_rate(args.arch, args.size, args.batch, args.steps, device, fast=True)
    queries = query_rate(args.arch, args.size, 2 * args.batch, args.steps, device)
    loading, fed = store_rates(args.arch, args.size, args.batch, args.images, args.workers, device)
    row_hours = (100_000 / queries + 200 * 100_000 / min(fast, loading)) / 3600
    figures = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "arch": args.arch,
        "size": args.size,
        "batch": args.batch,
        "train_images_per_s_fp32": round(fp32, 1),
        "train_images_per_s_bf16_channels_last": round(fast, 1),
        "speedup_bf16_channels_last": round(fast / fp32, 3),
        "queries_per_s_bf16": round(queries, 1),
        "store_loader_images_per_s": round(loading, 1),
        "store_loader_workers": args.workers,
        "train_images_per_s_fed_by_store_loader": round(fed, 1),
        "bottleneck": "loader" if loading < fast else "model",
        "table2_row_hours_extrapolated": round(row_hours, 2),
        "paper_hours": 72,
    }
    args.out.write_text(json.dumps(figures, indent=1))
    for key, value in figures.items():
        print(f"{key:40s} {value}")


if __name__ == "__main__":
    main()
