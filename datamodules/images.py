"""Images on disk (or in arrays) as normalised RGB tensors: the one loading path of real datasets.

Decoding goes through `torchvision.io` (libjpeg-turbo straight into a uint8 tensor, resized as a
tensor) for JPEG, PNG, WebP and GIF: 1.2-1.7x faster than PIL decoding in the full pipelines at
224 px (`benchmarks/data_loading.py`). Other formats (GTSRB's PPM, BMP, TIFF) go through PIL.
Both paths give 3-channel uint8 RGB whatever the file holds: grayscale, CMYK, palette and RGBA
images are converted, and 16-bit (and 32-bit integer) images are scaled to 8 bits (their top
byte), not clipped. EXIF orientation is ignored, as in torchvision. An image whose header claims
more than `MAX_PIXELS` pixels (a decompression bomb: a few KB of PNG that decode to 20000 x
20000) is unreadable and never decoded.
"""

import io
import os
import struct
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2
from torchvision.transforms.v2.functional import pil_to_tensor

try:  # deprecated since torchvision 0.29 (for TorchCodec) yet still the fastest path measured
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # a torchvision without it: PIL decodes every format
    decode_image = None

from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import IMAGENET_MEAN, IMAGENET_STD

IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
)
TORCHVISION_MAGIC = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF")  # RIFF: WebP
# A complete file ends with its format's end marker (JPEG EOI, PNG IEND) in its last bytes.
END_MARKERS = {b"\xff\xd8\xff": b"\xff\xd9", b"\x89PNG": b"IEND"}
TAIL_BYTES = 4096
HEAD_BYTES = 65536  # where a JPEG's frame header (its size) sits, after EXIF and ICC segments
MAX_PIXELS = 89_478_485  # PIL's default limit (Image.MAX_IMAGE_PIXELS), about 9459 x 9459
JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # SOFn markers
DECODE_ERRORS = (OSError, RuntimeError, ValueError, EOFError, SyntaxError, struct.error)

Transform = Callable[[torch.Tensor], torch.Tensor]


def header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's frame header within `head`, a file's first
    bytes; None for other formats, or if the header lies beyond `head`."""
    if head.startswith(b"\x89PNG") and head[12:16] == b"IHDR" and len(head) >= 24:
        width, height = struct.unpack(">II", head[16:24])
        return width, height
    if not head.startswith(b"\xff\xd8"):
        return None
    i = 2
    while i + 9 <= len(head) and head[i] == 0xFF:
        marker = head[i + 1]
        if marker in JPEG_FRAMES:
            height, width = struct.unpack(">HH", head[i + 5 : i + 9])
            return width, height
        if marker == 0xFF:  # fill byte
            i += 1
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            i += 2
        else:
            i += 2 + struct.unpack(">H", head[i + 2 : i + 4])[0]
    return None


class Unreadable(Exception):
    """Why a file is not an image that can be used (internal: `decode` raises `ConfigError`)."""


def check_pixels(size: tuple[int, int]) -> None:
    """`Unreadable` if an image of `size` (width, height) is over `MAX_PIXELS`."""
    width, height = size
    if width * height > MAX_PIXELS:
        raise Unreadable(
            f"{width}x{height} pixels, over the limit of {MAX_PIXELS:,} "
            "(datamodules.images.MAX_PIXELS): a decompression bomb or a corrupt header"
        )


def to_uint8(image: torch.Tensor) -> torch.Tensor:
    """A 16-bit decoded image (torchvision gives PNGs of 16 bits as uint16) as uint8, by its
    top byte, as PIL and `torchvision.transforms.v2.ToDtype(scale=True)` do."""
    if image.dtype == torch.uint8:
        return image
    return (image.to(torch.int32) >> 8).clamp_(0, 255).to(torch.uint8)


def pil_rgb(image: Image.Image) -> torch.Tensor:
    """A PIL image as uint8 RGB (3, H, W). PIL's own conversion clips 16-bit grayscale (I;16,
    and I, as which PIL opens a 16-bit PGM) at 255; these are scaled by their top byte, and
    floating-point images (F, as TIFF stores them) are taken as [0, 1]."""
    if image.mode.startswith("I"):  # I;16, I;16B, I;16L, I: 16 bits of gray
        gray = (np.asarray(image).astype(np.int64).clip(0, 65535) >> 8).astype(np.uint8)
    elif image.mode == "F":
        gray = (np.asarray(image, np.float64).clip(0, 1) * 255).round().astype(np.uint8)
    else:
        return pil_to_tensor(image.convert("RGB"))
    return torch.from_numpy(np.ascontiguousarray(gray)).expand(3, *gray.shape).clone()


def decode(path: str) -> torch.Tensor:
    """The image at `path` as a uint8 RGB tensor (3, H, W); a `ConfigError` names a bad file
    (one over `MAX_PIXELS` is refused from its header, never decoded)."""
    try:
        return decode_file(path)
    except Unreadable as err:
        raise ConfigError(f"unreadable image {path}: {err}") from None


def decode_file(path: str) -> torch.Tensor:
    """`decode`, raising `Unreadable` with the reason."""
    try:
        with open(path, "rb") as file:
            data = file.read()
        if (size := header_size(data[:HEAD_BYTES])) is not None:
            check_pixels(size)
        if decode_image is not None and data.startswith(TORCHVISION_MAGIC):
            if size is None:  # GIF, WebP: PIL reads the size from the header
                with Image.open(io.BytesIO(data)) as image:
                    check_pixels(image.size)
            image = decode_image(
                torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB
            )
            return to_uint8(image[0] if image.ndim == 4 else image)  # animated GIF: first frame
        with Image.open(io.BytesIO(data)) as image:
            check_pixels(image.size)
            return pil_rgb(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise Unreadable(
            f"over the limit of {MAX_PIXELS:,} pixels (datamodules.images.MAX_PIXELS): "
            f"{' '.join(str(err).split())}"
        ) from None
    except DECODE_ERRORS as err:
        raise Unreadable(" ".join(str(err).split()) or type(err).__name__) from None


def problem(path: str) -> str | None:
    """Why `path` is not a complete image (None if it is); a cheap check, done once in the main
    process at setup.

    JPEG and PNG files (nearly all of them) are judged by their first and last bytes: a download
    cut short lacks the end marker, an HTML error page saved as .jpg lacks the magic number, and
    the header gives the size checked against `MAX_PIXELS`. About 30 us per file, against 2-10
    ms for a full decode; only files that fail it, and files of other formats, are decoded in
    full, so an odd but valid file is never rejected.
    """
    try:
        with open(path, "rb") as file:
            head = file.read(HEAD_BYTES)
            file.seek(max(0, os.fstat(file.fileno()).st_size - TAIL_BYTES))
            tail = file.read()
    except OSError as err:
        return err.strerror or str(err)
    size = header_size(head)
    try:
        for magic, end in END_MARKERS.items():
            if head.startswith(magic) and end in tail and size is not None:
                check_pixels(size)
                return None
        decode_file(path)
    except Unreadable as err:
        return str(err)
    return None


def readable(path: str) -> bool:
    """Whether `path` is a complete image of at most `MAX_PIXELS` pixels (see `problem`)."""
    return problem(path) is None


def check_readable(files: Sequence[str], skip: bool, where: str) -> list[bool]:
    """Which `files` are readable; an unreadable one is an error unless `skip` (then one warning).

    Threads overlap the file reads, which dominate on network file systems.
    """
    with ThreadPoolExecutor(min(32, 4 * (os.cpu_count() or 1))) as pool:
        problems = list(pool.map(problem, files))
    ok = [reason is None for reason in problems]
    bad = [file for file, good in zip(files, ok, strict=True) if not good]
    if bad and not skip:
        reason = next(reason for reason in problems if reason is not None)
        raise ConfigError(
            f"unreadable image {bad[0]} ({len(bad)} unreadable in {where}): {reason}; "
            "set data.skip_unreadable: true to skip such files"
        )
    if bad:
        warnings.warn(
            f"skipped {len(bad)} unreadable images in {where}, e.g. {bad[0]}", stacklevel=2
        )
    return ok


def is_image_name(name: str) -> bool:
    """Image files by suffix; hidden files (.DS_Store), Thumbs.db, .txt and the like are not."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def list_images(folder: Path, recursive: bool = False) -> list[str]:
    """Image files in `folder` (and below, if `recursive`), sorted; other files are ignored."""
    if recursive:
        return sorted(
            os.path.join(top, name)
            for top, _, names in os.walk(folder)
            for name in names
            if is_image_name(name)
        )
    with os.scandir(folder) as entries:
        return sorted(
            entry.path for entry in entries if is_image_name(entry.name) and is_file(entry)
        )


def is_file(entry: os.DirEntry) -> bool:
    """A file, or what cannot be told (a symbolic link loop named like an image): the readability
    check then names it, or skips and counts it with `skip_unreadable`."""
    try:
        return entry.is_file()
    except OSError:
        return True


class ToNormalisedFloat:
    """uint8 RGB -> float normalised with ImageNet mean/std (paper 3.2.1) in one pass, several
    times faster than v2.ToDtype + v2.Normalize; made contiguous first, since the resize of a
    decoded (channels-last) image returns channels-last strides that slow the arithmetic down."""

    def __init__(self):
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1) * 255
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1) * 255

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.contiguous().float().sub_(self.mean).div_(self.std)


def image_transform(size: int, augment: bool) -> Transform:
    """uint8 RGB -> normalised float (3, size, size).

    Training augmentation is Knockoff's ImageNet recipe (random resized crop, horizontal flip).
    Otherwise the short side is resized to `size` and the centre cropped: square images (CIFAR at
    32 px) pass unchanged and nothing is distorted.
    """
    if augment:
        geometry = [v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()]
    else:
        geometry = [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    return v2.Compose([*geometry, ToNormalisedFloat()])


class ImageFiles(Dataset):
    """Labelled image files, decoded on access; without a transform it yields uint8 RGB."""

    def __init__(
        self, files: Sequence[str], labels: Sequence[int], transform: Transform | None = None
    ):
        if len(files) != len(labels):
            raise ValueError(f"{len(files)} files but {len(labels)} labels")
        self.files, self.labels, self.transform = list(files), list(labels), transform

    @property
    def names(self) -> list[str]:
        """One name per image, from which a DataModule derives split groups."""
        return self.files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = decode(self.files[index])
        return (self.transform(image) if self.transform else image), self.labels[index]

    def select(
        self, indices: Sequence[int] | None = None, transform: Transform | None = None
    ) -> "ImageFiles":
        """The images at `indices` (all of them if None) with `transform`."""
        if indices is None:
            return ImageFiles(self.files, self.labels, transform)
        files, labels = [self.files[i] for i in indices], [self.labels[i] for i in indices]
        return ImageFiles(files, labels, transform)


class ImageArrays(Dataset):
    """Labelled images held in a uint8 (N, H, W, 3) array (CIFAR ships them so)."""

    def __init__(
        self, images: np.ndarray, labels: Sequence[int], transform: Transform | None = None
    ):
        if images.ndim != 4 or images.shape[-1] != 3 or len(images) != len(labels):
            raise ValueError(f"images {images.shape} do not match {len(labels)} labels")
        self.images, self.labels, self.transform = images, list(labels), transform

    @property
    def names(self) -> list[str]:
        return [str(i) for i in range(len(self.labels))]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.from_numpy(self.images[index]).permute(2, 0, 1)
        return (self.transform(image) if self.transform else image), self.labels[index]

    def select(
        self, indices: Sequence[int] | None = None, transform: Transform | None = None
    ) -> "ImageArrays":
        """The images at `indices` (all of them, sharing the array, if None) with `transform`."""
        if indices is None:
            return ImageArrays(self.images, self.labels, transform)
        indices = np.asarray(indices, dtype=np.int64)
        return ImageArrays(self.images[indices], [self.labels[i] for i in indices], transform)


LabelledImages = ImageFiles | ImageArrays
