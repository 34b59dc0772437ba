"""Tiny datasets in the real on-disk layouts, with the quirks of real data.

`root` is a data root, as on a real disk: every writer puts its dataset in the dataset's own
folder under it, named as the publisher's archive (or torchvision's downloader) names it, and a
few 12x10 px images per class exactly where that archive puts them, plus: a grayscale JPEG, a
CMYK JPEG (Caltech-256, CUB and ImageNet hold both), a palette PNG, and stray non-image files
(Thumbs.db, a .txt, Caltech's RENAME2). The folder names are written out here, not read from
the DataModules, so the tests hold the DataModules to the real names.
"""

import csv
import pickle
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.overlap import catalog

SIZE = (12, 10)


def write_image(path: Path, seed: int, mode: str = "RGB", size: tuple[int, int] = SIZE) -> None:
    """A random image in `mode`, saved in the format of the suffix."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).convert(mode).save(path)


def add_quirks(folder: Path, seed: int) -> None:
    """Grayscale and CMYK JPEGs, a palette PNG and stray files next to a class's images."""
    write_image(folder / "quirk_gray.jpg", seed, "L")
    write_image(folder / "quirk_cmyk.jpg", seed + 1, "CMYK")
    write_image(folder / "quirk_palette.png", seed + 2, "P")
    (folder / "Thumbs.db").write_bytes(b"\x00" * 64)
    (folder / "notes.txt").write_text("not an image")


def truncate(path: Path) -> None:
    """Cut a file in half, as an interrupted download does."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def png_bytes(width: int, height: int, depth: int, colour: int, rows: bytes | None = None) -> bytes:
    """A PNG written by hand (PIL writes no 16-bit RGB): `rows` are the raw scanlines, each
    led by its filter byte; None: all-zero rows, compressed as a stream (a 20000 x 20000 1-bit
    image, a decompression bomb, takes 48 KB)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    if rows is None:
        compressor = zlib.compressobj(9)
        row = bytes(1 + (width * depth + 7) // 8)
        data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    else:
        data = zlib.compress(rows, 9)
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")
    )


def bomb(path: Path) -> None:
    """A few KB that claim 20000 x 20000 pixels, in the format of the suffix: a real PNG, or the
    header of a PPM, TIFF or JPEG rewritten (PIL refuses those from the header alone)."""
    side = 20000
    suffix = path.suffix.lower()
    if suffix == ".png":
        path.write_bytes(png_bytes(side, side, 1, 0))
    elif suffix == ".ppm":
        path.write_bytes(f"P6\n{side} {side}\n255\n".encode() + bytes(4096))
    elif suffix in (".tif", ".tiff"):
        Image.new("L", (3, 2)).save(path)
        data = bytearray(path.read_bytes())  # little-endian IFD at 8; tags 256, 257 come first
        assert data[:4] == b"II*\x00" and struct.unpack("<HH", data[10:14]) == (256, 4)
        struct.pack_into("<I", data, 18, side)
        struct.pack_into("<I", data, 30, side)
        path.write_bytes(bytes(data))
    else:  # JPEG: rewrite the frame header's height and width
        write_image(path, 0)
        data = bytearray(path.read_bytes())
        frame = data.index(b"\xff\xc0")
        struct.pack_into(">HH", data, frame + 5, side, side)
        path.write_bytes(bytes(data))


def caltech256(root: Path, per_class: int = 3) -> Path:
    """Where torchvision's Caltech256 puts it: caltech256/256_ObjectCategories/NNN.name/."""
    base = root / "caltech256" / "256_ObjectCategories"
    for c, name in enumerate([*catalog("caltech256")["classes"], "257.clutter"]):
        for i in range(per_class):
            write_image(base / name / f"{name[:3]}_{i + 1:04d}.jpg", 1000 * c + i)
    add_quirks(base / "001.ak47", 7)
    (base / "198.spider" / "RENAME2").write_text("stray file shipped in the archive")
    return root


def cubs200(root: Path, per_class: int = 3) -> Path:
    """CUB_200_2011/, as the tgz unpacks: two training images and one test image of each
    species (official files list them)."""
    base = root / "CUB_200_2011"
    images, labels, split = [], [], []
    for c, name in enumerate(catalog("cubs200")["classes"]):
        for i in range(per_class):
            relative = f"{name}/{name[4:]}_{i:04d}_{c}.jpg"
            mode = "L" if (c, i) == (0, 0) else "CMYK" if (c, i) == (1, 0) else "RGB"
            write_image(base / "images" / relative, 1000 * c + i, mode)
            images.append(relative)
            labels.append(c + 1)
            split.append(int(i < per_class - 1))
    (base / "images" / "Thumbs.db").write_bytes(b"\x00" * 64)
    ids = range(1, len(images) + 1)
    for table, values in (
        ("images", images),
        ("image_class_labels", labels),
        ("train_test_split", split),
    ):
        (base / f"{table}.txt").write_text(
            "".join(f"{i} {v}\n" for i, v in zip(ids, values, strict=True))
        )
    classes = catalog("cubs200")["classes"]
    (base / "classes.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(classes)))
    return root


def write_retina(path: Path, seed: int, visible: bool = True) -> None:
    """A fundus-like photo: a smooth reddish disc on a black, wider-than-high frame."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:36, :48]
    disc = ((yy - 18) ** 2 + (xx - 24) ** 2 < 15**2) & visible
    colour = rng.integers(90, 200, 3) + rng.integers(-8, 9, (36, 48, 3))
    Image.fromarray(np.where(disc[..., None], colour, 0).astype(np.uint8)).save(path, quality=95)


DIABETIC5 = "diabetic-retinopathy-detection"  # Kaggle's competition archive


def diabetic5(root: Path, patients_per_level: int = 4) -> Path:
    """Both eyes of `patients_per_level` patients per level, and one all-black photo, in
    Kaggle's archive unpacked: diabetic-retinopathy-detection/{trainLabels.csv,train/}."""
    base = root / DIABETIC5
    (base / "train").mkdir(parents=True)
    rows = []
    for level in range(5):
        for p in range(patients_per_level):
            for eye in ("left", "right"):
                name = f"{100 * level + p}_{eye}"
                write_retina(base / "train" / f"{name}.jpeg", len(rows))
                rows.append((name, level))
    write_retina(base / "train" / "999_left.jpeg", 0, visible=False)
    rows.append(("999_left", 0))
    (base / "train" / "Thumbs.db").write_bytes(b"\x00" * 64)
    with open(base / "trainLabels.csv", "w", newline="") as file:
        csv.writer(file).writerows([("image", "level"), *rows])
    return root


def gtsrb(root: Path, tracks: int = 2, frames: int = 2) -> Path:
    """torchvision's layout (gtsrb/GTSRB/...): `tracks` tracks of `frames` PPM frames per
    class, one test image per class listed in GT-final_test.csv."""
    base = root / "gtsrb"
    test_rows = []
    for c in range(43):
        folder = base / "GTSRB" / "Training" / f"{c:05d}"
        for t in range(tracks):
            for f in range(frames):
                write_image(folder / f"{t:05d}_{f:05d}.ppm", 100 * c + 10 * t + f)
        (folder / f"GT-{c:05d}.csv").write_text("Filename;Width;Height;ClassId\n")
        write_image(base / "GTSRB" / "Final_Test" / "Images" / f"{c:05d}.ppm", 9000 + c)
        test_rows.append(f"{c:05d}.ppm;12;10;0;0;11;9;{c}\n")
    header = "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n"
    (base / "GT-final_test.csv").write_text(header + "".join(test_rows))
    return root


def cifar10(root: Path, per_batch: int = 20) -> Path:
    """The python batches in cifar-10-batches-py/ (pickled dicts with bytes keys, as shipped):
    5 x `per_batch` train."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            b"labels": [i % 10 for i in range(per_batch)],
        }
        (base / name).write_bytes(pickle.dumps(batch, protocol=2))
    (base / "batches.meta").write_bytes(pickle.dumps({b"label_names": []}, protocol=2))
    return root


def imagenet(root: Path, classes: int = 4, per_class: int = 10) -> Path:
    """torchvision's ImageNet layout under imagenet/: imagenet/train/<wnid>/*.JPEG."""
    train = root / "imagenet" / "train"
    for c in range(classes):
        for i in range(per_class):
            write_image(train / f"n{c:08d}" / f"n{c:08d}_{i}.JPEG", 100 * c + i)
    add_quirks(train / "n00000000", 5)
    return root


def openimages(root: Path, count: int = 30) -> Path:
    """A tree of images under openimages/, in OpenImages' train_N/ folders."""
    base = root / "openimages"
    for i in range(count):
        write_image(base / f"train_{i % 3}" / f"{i:016x}.jpg", i)
    add_quirks(base / "train_0", 3)
    return root


def bing(root: Path, classes: int = 4, per_class: int = 6) -> Path:
    """One folder per Caltech-256 category under bing/."""
    base = root / "bing"
    for name in catalog("caltech256")["classes"][:classes]:
        for i in range(per_class):
            write_image(base / name / f"{i:06d}.jpg", i)
    add_quirks(base / "001.ak47", 11)
    return root


def all_datasets(root: Path) -> Path:
    """Every dataset above under one data root, each in its own folder."""
    for write in WRITERS.values():
        write(root)
    return root


WRITERS = {
    "caltech256": caltech256,
    "cubs200": cubs200,
    "diabetic5": diabetic5,
    "gtsrb": gtsrb,
    "cifar10": cifar10,
    "imagenet_subset": imagenet,
    "openimages": openimages,
    "bing": bing,
}
