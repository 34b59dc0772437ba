"""Transfer-set building throughput (queries/s) against a bare `model(x)` loop, same run.

The transfer-set path adds what a real attack needs on top of the forward pass: reading pool
images by index through a DataLoader, the prediction API's door (input checks, the books of an
in-memory ledger, softmax, float16 conversion) and one atomic, fsynced file per API batch. The
owner's posterior cache is off, so every repeat runs the victim. Target: ratio >= 0.9 on CPU.

    python benchmarks/transfer_set_throughput.py [--arch resnet18] [--queries 2048] [--repeats 5]
"""

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from datamodules import CropsPoolDataModule, DigitsDataModule, TransferSetDataModule
from knockoff_lab.api import PredictionAPI
from knockoff_lab.nets.networks import build_network


def save_victim(arch: str, folder: Path) -> Path:
    """A randomly initialised victim in the checkpoint format the API reads."""
    net = build_network(arch, 10)
    path = folder / "victim.ckpt"
    state = {f"net.{k}": v for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"arch": arch, "num_classes": 10}}, path)
    return path


def bare_loop(net: torch.nn.Module, images: torch.Tensor, batch_size: int) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for chunk in images.split(batch_size):
            net(chunk)
    return len(images) / (time.perf_counter() - start)


def transfer_set_build(victim: Path, pool: CropsPoolDataModule, cache: Path, batch: int) -> float:
    """Queries/s of building the transfer set from nothing, through a fresh API."""
    shutil.rmtree(cache, ignore_errors=True)
    api = PredictionAPI(str(victim), posterior_cache=None, ledger=None)
    data = TransferSetDataModule(
        api=api,
        pool=pool,
        victim_data=DigitsDataModule(),
        budget=len(pool.split("pool")),
        cache_dir=str(cache),
        query_batch_size=batch,
    )
    _ = data.victim_labels  # the owner's evaluation labels: not part of the attack, not timed
    start = time.perf_counter()
    data.setup()
    data.grow_to(0)
    return data.budget / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--queries", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp())
    try:
        victim = save_victim(args.arch, folder)
        pool = CropsPoolDataModule(size=args.queries)
        transfer_set_build(victim, pool, folder / "cache", args.batch_size)  # warm-up
        images = pool.split("pool").labelled.tensors[0]
        net = build_network(args.arch, 10).eval()
        bare, ours = [], []
        for _ in range(args.repeats):  # interleaved, so drift hits both alike
            bare.append(bare_loop(net, images, args.batch_size))
            ours.append(transfer_set_build(victim, pool, folder / "cache", args.batch_size))
    finally:
        shutil.rmtree(folder)
    b, o = statistics.median(bare), statistics.median(ours)
    print(
        f"arch={args.arch} queries={args.queries} batch={args.batch_size} "
        f"threads={torch.get_num_threads()} repeats={args.repeats}"
    )
    print(f"bare model(x) loop:      {b:9.1f} queries/s (median)")
    print(f"transfer-set building:   {o:9.1f} queries/s (median)")
    print(f"ratio transfer/bare:     {o / b:9.3f}  (target >= 0.9)")


if __name__ == "__main__":
    main()
