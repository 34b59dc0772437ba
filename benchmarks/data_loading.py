"""Image loading throughput (images/s per worker) at 224 px against bare decode + resize, same run.

Writes realistic JPEGs itself (crops of the photos shipped with scikit-learn and scikit-image,
at ImageNet's typical 500x375 / 375x500, quality 90, a few grayscale and CMYK) and times, in one
process with one thread, as one DataLoader worker runs:
  bare decode + resize   read, decode, resize the short side to 224: the floor of any pipeline,
                         with torchvision.io and with PIL;
  eval / train pipeline  what the DataModules run per image (`ImageFiles` + `image_transform`:
                         centre crop, or random resized crop + flip; float, normalised), with the
                         torchvision.io decoder the datasets use and with PIL decoding instead;
  readability check      the cheap per-file check done once at setup, against a full decode;
then DataLoaders with `--workers` processes (batch 64) over repeated epochs: bare decode + resize
(the floor of any JPEG pipeline), the train pipeline, and the train pipeline reading the decoded
store (`datamodules/decoded_store.py`: built once, timed apart, then read every epoch); and, with
`--model`, the training speed of that network on the best device, to tell how many workers keep
it fed.

    python benchmarks/data_loading.py [--images 200] [--repeats 5] [--workers 2] [--model resnet34]
"""

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torch.utils.data import DataLoader

from datamodules.decoded_store import TRAIN_MARGIN, StoredCrops, collated, cut_crops, stored
from datamodules.images import ImageFiles, check_readable, decode, image_transform

SIZE = 224


def write_jpegs(folder: Path, count: int) -> list[str]:
    """`count` JPEGs cut from natural photos at ImageNet-like sizes; 5% grayscale, 2% CMYK."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = list(load_sample_images().images)
    photos += [skimage.data.astronaut(), skimage.data.chelsea(), skimage.data.coffee()]
    rng = np.random.default_rng(0)
    files = []
    for i in range(count):
        photo = photos[i % len(photos)]
        h, w = photo.shape[:2]
        ch, cw = int(rng.integers(h // 2, h)), int(rng.integers(w // 2, w))
        y, x = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        image = Image.fromarray(photo[y : y + ch, x : x + cw])
        image = image.resize((500, 375) if i % 3 else (375, 500), Image.Resampling.BICUBIC)
        image = image.convert("L" if i % 20 == 7 else "CMYK" if i % 50 == 11 else "RGB")
        files.append(str(folder / f"{i:04d}.jpg"))
        image.save(files[-1], quality=90)
    return files


def pil_decode(path: str) -> torch.Tensor:
    with Image.open(path) as image:
        return TF.pil_to_tensor(image.convert("RGB"))


def bare(decoder: Callable[[str], torch.Tensor]) -> Callable[[str], torch.Tensor]:
    return lambda path: TF.resize(decoder(path), SIZE, antialias=True)


def rate(step: Callable[[str], object], files: list[str], repeats: int) -> float:
    """Median images/s of `step` over all files, over `repeats` timed passes (after a warm-up)."""
    for path in files[:10]:
        step(path)
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path in files:
            step(path)
        rates.append(len(files) / (time.perf_counter() - start))
    return statistics.median(rates)


class BareDecode(torch.utils.data.Dataset):
    """Decode + resize only (images of several shapes: batches are lists)."""

    def __init__(self, files: list[str]):
        self.files = files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return TF.resize(decode(self.files[index]), SIZE, antialias=True), 0


def loader_rate(data: torch.utils.data.Dataset, workers: int, repeats: int) -> float:
    """Median images/s of whole epochs of a shuffled DataLoader (workers started beforehand)."""
    collate = collated if isinstance(data, (BareDecode, StoredCrops)) else None
    loader = DataLoader(
        data,
        batch_size=64,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        collate_fn=collate,
    )
    next(iter(loader))  # start the workers
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in loader:
            pass
        rates.append(len(data) / (time.perf_counter() - start))
    return statistics.median(rates)


def cut_rate(crops: StoredCrops, repeats: int) -> tuple[float, str]:
    """Images/s of `cut_crops` on batches of 64 on the best device (what a fit adds there)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    (images, boxes), _ = next(iter(DataLoader(crops, batch_size=64, collate_fn=collated)))
    images, boxes = images.to(device), boxes.to(device)
    rates = []
    for _ in range(repeats + 1):
        torch.cuda.synchronize() if device == "cuda" else None
        start = time.perf_counter()
        cut_crops(images, boxes, SIZE)
        torch.cuda.synchronize() if device == "cuda" else None
        rates.append(len(images) / (time.perf_counter() - start))
    return statistics.median(rates[1:]), device


def model_rate(arch: str) -> tuple[float, str]:
    """Training images/s of `arch` at 224 px: SGD steps, bf16 autocast on a GPU (a few small
    steps on a CPU, where it only shows that the loaders are not the bottleneck)."""
    from knockoff_lab.nets.networks import build_network

    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps, batch = (20, 128) if device == "cuda" else (2, 8)
    net = build_network(arch, 256).to(device).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(batch, 3, SIZE, SIZE, device=device).to(memory_format=torch.channels_last)
    y = torch.randint(256, (batch,), device=device)
    for i in range(steps + 3):
        if i == 3:
            torch.cuda.synchronize() if device == "cuda" else None
            start = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
            loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.cuda.synchronize() if device == "cuda" else None
    return steps * batch / (time.perf_counter() - start), device


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--model", default=None, help="also time training this network")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as inside one DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        files = write_jpegs(Path(tmp), args.images)
        ours = {
            augment: ImageFiles(files, [0] * len(files), image_transform(SIZE, augment))
            for augment in (False, True)
        }
        index = {path: i for i, path in enumerate(files)}
        r = {
            "bare decode + resize, torchvision.io": rate(bare(decode), files, args.repeats),
            "bare decode + resize, PIL": rate(bare(pil_decode), files, args.repeats),
            "eval pipeline (datasets' path)": rate(
                lambda p: ours[False][index[p]], files, args.repeats
            ),
            "train pipeline (datasets' path)": rate(
                lambda p: ours[True][index[p]], files, args.repeats
            ),
            "eval pipeline, PIL decoding": rate(
                lambda p: ours[False].transform(pil_decode(p)), files, args.repeats
            ),
            "train pipeline, PIL decoding": rate(
                lambda p: ours[True].transform(pil_decode(p)), files, args.repeats
            ),
        }
        start = time.perf_counter()
        check_readable(files, skip=False, where=tmp)
        checks = len(files) / (time.perf_counter() - start)
        train = ours[True]
        start = time.perf_counter()
        kept = stored(train, round(SIZE * TRAIN_MARGIN), Path(tmp) / "store", args.workers)
        build = len(files) / (time.perf_counter() - start)
        crops = StoredCrops(kept.files, kept.labels, None, kept.store)
        loaders = {
            "bare decode + resize": loader_rate(BareDecode(files), args.workers, args.repeats),
            "train pipeline, JPEG files": loader_rate(train, args.workers, args.repeats),
            "store, crops cut in the workers": loader_rate(kept, args.workers, args.repeats),
            "store, crops cut on the device (a fit)": loader_rate(
                crops, args.workers, args.repeats
            ),
        }
        device_cut, device = cut_rate(crops, args.repeats)
    floor = r["bare decode + resize, torchvision.io"]
    print(f"images/s per worker, 224 px, {args.images} JPEGs, median of {args.repeats}:")
    for name, value in r.items():
        print(f"  {name:<40}{value:8.0f}   ratio to bare torchvision.io {value / floor:5.2f}")
    for kind in ("eval", "train"):
        tv, pil = r[f"{kind} pipeline (datasets' path)"], r[f"{kind} pipeline, PIL decoding"]
        print(f"  {kind}: torchvision.io decoding is {tv / pil:.2f}x PIL decoding")
    print(f"  readability check at setup: {checks:.0f} files/s (threads) vs decode {floor:.0f}/s")
    print(f"DataLoader, {args.workers} workers, batch 64, images/s over repeated epochs:")
    bare_loader = loaders["bare decode + resize"]
    for name, value in loaders.items():
        print(
            f"  {name:<40}{value:8.0f}   ratio to bare decode + resize {value / bare_loader:5.2f}"
        )
    print(f"  (the store was built once at {build:.0f} images/s, {args.workers} processes)")
    print(f"  cutting a batch's crops on {device}: {device_cut:.0f} images/s (main process)")
    if args.model:
        speed, device = model_rate(args.model)
        need = speed / r["train pipeline (datasets' path)"]
        print(
            f"{args.model} trains at {speed:.0f} images/s on {device}: about {need:.1f} "
            "workers keep it fed"
        )
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread per timing process")


if __name__ == "__main__":
    main()
