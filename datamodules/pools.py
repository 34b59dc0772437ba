"""Embedded query pools: random crops of the photos shipped inside scikit-learn and scikit-image.

They stand in for the attacker's data of the paper with no download:
  natural  diverse crops of 11 photos: the ImageNet-subset stand-in (D_A of 3.1, 4.2.1);
  other    crops of 8 other photos: the OpenImages stand-in (second out-of-distribution set);
  narrow   crops of one retina photo: the low-diversity Diabetic5 stand-in of 5.1.3.
The photos of the three pools are disjoint. Each crop keeps the index of its photo as a label,
for analysis only: the attacker sees images alone.

`style: digitlike` gives the crops the look of the victim's inputs, as the paper's attacker
knows its API's input format (3.1): grey, reduced to the digits' own 8x8 resolution, contrast
stretched and darkened (gamma 2, so strokes stand out from a dark ground, as in the digits).
Photo crops as they are share little with 8x8 digits, and Knockoff barely recovers the victim
from them (`python benchmarks/embedded_regime.py`, issue 16).
"""

from functools import cache, lru_cache
from typing import Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, TensorDataset

from datamodules.base import ImageDataModule, ImagesOnly
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import denormalize, normalize

PHOTOS: dict[str, tuple[str, ...]] = {
    "natural": (
        "sklearn:china.jpg",
        "astronaut",
        "chelsea",
        "coffee",
        "rocket",
        "camera",
        "coins",
        "brick",
        "grass",
        "moon",
        "text",
    ),
    "other": (
        "sklearn:flower.jpg",
        "stereo_motorcycle",
        "hubble_deep_field",
        "immunohistochemistry",
        "clock",
        "gravel",
        "page",
        "cell",
    ),
    "narrow": ("retina",),
}


@cache
def load_photo(name: str) -> torch.Tensor:
    """One shipped photo as a float RGB tensor (3, H, W) in [0, 1], short side at most 400 px
    (crops end at 32 px anyway; this keeps generating thousands of crops fast)."""
    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        array = load_sample_image(name.removeprefix("sklearn:"))
    else:
        import skimage.data

        array = getattr(skimage.data, name)()
        array = array[0] if isinstance(array, tuple) else array  # stereo pairs: left image
    array = np.asarray(array, dtype=np.float32)
    array = array / 255.0 if array.max() > 1 else array
    image = torch.from_numpy(array)
    image = image.unsqueeze(-1).expand(-1, -1, 3) if image.ndim == 2 else image[..., :3]
    image = image.permute(2, 0, 1)
    scale = 400 / min(image.shape[1:])
    if scale < 1:
        image = F.interpolate(image[None], scale_factor=scale, mode="area")[0]
    return image.contiguous()


def random_crops(
    photos: list[torch.Tensor], count: int, image_size: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`count` seeded crops, 10-60% of a photo's short side, mirrored half the time, resized."""
    gen = torch.Generator().manual_seed(seed)
    crops, sources = [], torch.randint(len(photos), (count,), generator=gen)
    for source in sources.tolist():
        photo = photos[source]
        _, height, width = photo.shape
        side = int(min(height, width) * (0.1 + 0.5 * torch.rand((), generator=gen)))
        top = int(torch.randint(height - side + 1, (), generator=gen))
        left = int(torch.randint(width - side + 1, (), generator=gen))
        crop = photo[None, :, top : top + side, left : left + side]
        resized = F.interpolate(crop, size=image_size, mode="bilinear", antialias=True)[0]
        if torch.rand((), generator=gen) < 0.5:  # mirrored once small: the same, and cheap
            resized = resized.flip(-1)
        crops.append(resized.clamp(0, 1))
    return normalize(torch.stack(crops)), sources


def digitlike(crops: torch.Tensor, resolution: int = 8, gamma: float = 2.0) -> torch.Tensor:
    """Normalised crops made grey, reduced to `resolution` px (area), brought back to their
    size, stretched to the full [0, 1] range per image, raised to `gamma`; normalised again."""
    rgb = denormalize(crops)
    grey = ((rgb[:, 0] + rgb[:, 1] + rgb[:, 2]) / 3)[:, None]
    small = F.interpolate(grey, size=resolution, mode="area")
    grey = F.interpolate(small, size=crops.shape[-2:], mode="bilinear")
    low = grey.amin((1, 2, 3), keepdim=True)
    high = grey.amax((1, 2, 3), keepdim=True)
    grey = ((grey - low) / (high - low + 1e-6)).clamp(0, 1) ** gamma
    return normalize(grey.expand(-1, 3, -1, -1).contiguous())


Style = Literal["photo", "digitlike"]
STYLES = get_args(Style)


@lru_cache(maxsize=8)
def styled_crops(
    source: str, size: int, image_size: int, seed: int, style: Style
) -> tuple[torch.Tensor, torch.Tensor]:
    """`random_crops` of the `source` photos in `style`, cached: building 6,000 crops takes
    1.7 s, paid once by a preset's 30 stages instead of by each. Callers must not change them."""
    photos = [load_photo(name) for name in PHOTOS[source]]
    crops, sources = random_crops(photos, size, image_size, seed)
    return (digitlike(crops) if style == "digitlike" else crops), sources


class CropsPoolDataModule(ImageDataModule):
    """A query pool of `size` crops from one photo set; one split, `pool`, images only.
    `style`: `photo` (the crops as they are) or `digitlike` (see the module docstring)."""

    num_classes = 0  # a pool has no task of its own

    def __init__(
        self,
        source: Literal["natural", "other", "narrow"] = "natural",
        size: int = 3000,
        image_size: int = 16,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        style: Style = "photo",
    ):
        super().__init__(batch_size, num_workers, seed)
        if style not in STYLES:
            raise ConfigError(f"data.style must be one of {', '.join(STYLES)}, got {style!r}")
        if source not in PHOTOS:
            raise ConfigError(f"data.source must be one of {', '.join(PHOTOS)}, got {source!r}")
        if size < 1:
            raise ConfigError(f"data.size must be >= 1, got {size}")
        self.source, self.size, self.image_size, self.style = source, size, image_size, style

    def labelled_crops(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The crops in their style, and the index of the photo each comes from: copies of the
        ones built once per process (every attack stage of a preset queries the same pool)."""
        crops, sources = styled_crops(
            self.source, self.size, self.image_size, self.seed, self.style
        )
        return crops.clone(), sources.clone()

    def build_splits(self) -> dict[str, Dataset]:
        return {"pool": ImagesOnly(TensorDataset(*self.labelled_crops()))}


class PhotoCropsDataModule(CropsPoolDataModule):
    """The public labelled task of the embedded default, ImageNet's role in the paper: which of
    the `source` photos a crop comes from. A victim's owner fine-tunes the network trained on it,
    as the paper's owners fine-tune ImageNet ResNets, and Knockoff's attacker starts from the same
    public network (3.1); `victim/digits_5l.yaml` is the task-specific victim trained without it.

    `size` crops (seeded; use another seed than the attacker's pool for crops it never queries)
    split 80 / 10 / 10 into `train`, `val` and `test`, labelled by their photo.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.num_classes = len(PHOTOS[self.source])
        if self.num_classes < 2:
            raise ConfigError(f"data.source {self.source!r} has one photo: nothing to classify")
        if self.size < 10:
            raise ConfigError(f"data.size must be >= 10 for three splits, got {self.size}")

    def build_splits(self) -> dict[str, Dataset]:
        crops, photos = self.labelled_crops()
        val, test = int(0.8 * self.size), int(0.9 * self.size)
        return {
            "train": TensorDataset(crops[:val], photos[:val]),
            "val": TensorDataset(crops[val:test], photos[val:test]),
            "test": TensorDataset(crops[test:], photos[test:]),
        }
