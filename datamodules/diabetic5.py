"""Diabetic5 (Kaggle "Diabetic Retinopathy Detection", 2015), victim data: 5 retinopathy levels.

Images are preprocessed once by EyeNet's recipe into a cache (`datamodules/eyenet.py`). The
test split follows Knockoff Nets, 200 images of each level, but is drawn by patient: Kaggle holds
both eyes of each patient, and a patient's other eye in train would leak into the test score, so
it goes to test as well (the test split is therefore a little over 1,000 images). `val` is held
out of train by patient too. Only the remaining training images get EyeNet's rotated and mirrored
copies; val, test and the `as_pool` pool (5.1.3) are never augmented.
"""

import csv
import warnings
from pathlib import Path

from datamodules.eyenet import UNREADABLE, VARIANTS, build_cache, variant_path
from datamodules.images import ImageFiles, LabelledImages, list_images
from datamodules.on_disk import VictimDataModule
from knockoff_lab.core.errors import ConfigError


class Diabetic5DataModule(VictimDataModule):
    """Kaggle's training set (35,126 images) with its labels.

    Args:
        test_per_class: Knockoff's test count per level (drawn by patient).
        cache_dir: where the preprocessed images go; by default beside the photos, in the
            dataset's folder: <root>/diabetic-retinopathy-detection/eyenet_<cache_size>.
        cache_size: side of the cached images, at least `image_size`.
    """

    catalog = "diabetic5"
    folders = ("diabetic-retinopathy-detection",)  # the Kaggle competition's archive name
    required = ("trainLabels.csv", "train")
    contents = (
        "trainLabels.csv and train/<image>.jpeg (Kaggle's trainLabels.csv.zip and "
        "train.zip.001-005 unpacked)"
    )
    source = "https://www.kaggle.com/c/diabetic-retinopathy-detection/data"

    def __init__(
        self,
        root: str,
        test_per_class: int = 200,
        cache_dir: str | None = None,
        cache_size: int = 256,
        **kwargs,
    ):
        super().__init__(root, **kwargs)
        if cache_size < self.image_size:
            raise ConfigError(f"data.cache_size={cache_size} is below data.image_size")
        self.test_per_class, self.cache_size = test_per_class, cache_size
        default = self.root / self.folders[0] / f"eyenet_{cache_size}"
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else default

    def prepare_data(self) -> None:
        self.cached_levels()

    def cached_levels(self) -> dict[str, int]:
        """Level of every usable image by name, preprocessing into the cache on first use."""
        base = self.dataset_dir()
        table, folder = base / "trainLabels.csv", base / "train"
        with open(table, newline="") as file:
            try:
                levels = {row["image"]: int(row["level"]) for row in csv.DictReader(file)}
            except (KeyError, ValueError):
                raise ConfigError(f"{table} must have the columns image,level") from None
        if bad := [name for name, level in levels.items() if level not in VARIANTS]:
            raise ConfigError(f"{table}: image {bad[0]} has a level outside 0-4")
        photos = {Path(path).stem: path for path in list_images(folder)}
        if missing := [name for name in levels if name not in photos]:
            raise ConfigError(f"{folder / missing[0]}.jpeg, listed in {table}, does not exist")
        jobs = {name: (photos[name], level) for name, level in levels.items()}
        dropped = build_cache(
            jobs, self.cache_dir, self.cache_size, self.num_workers, self.skip_unreadable
        )
        unreadable = [name for name, why in dropped.items() if why.startswith(UNREADABLE)]
        if unreadable and not self.skip_unreadable:
            raise ConfigError(
                f"unreadable image {photos[unreadable[0]]} ({len(unreadable)} "
                f"unreadable in {folder}); set data.skip_unreadable: true to skip "
                "such files"
            )
        if dropped:
            warnings.warn(
                f"dropped {len(dropped)} Diabetic5 images: {len(unreadable)} unreadable,"
                f" {len(dropped) - len(unreadable)} without a visible retina (as EyeNet)",
                stacklevel=2,
            )
        return {name: level for name, level in levels.items() if name not in dropped}

    def group_of(self, name: str) -> str:
        """The patient: Kaggle names images <patient>_left and <patient>_right."""
        return Path(name).name.split("_")[0]

    def load(self) -> dict[str, LabelledImages]:
        levels = self.cached_levels()
        files = [str(self.cache_dir / f"{name}.jpeg") for name in levels]
        return self.split_test(ImageFiles(files, list(levels.values())), self.test_per_class)

    def expand_train(self, train: LabelledImages) -> LabelledImages:
        """Add EyeNet's cached copies (labels are levels: Diabetic5 overlaps nothing)."""
        files, labels = [], []
        for file, level in zip(train.files, train.labels, strict=True):
            copies = [file] + [variant_path(file, name) for name in VARIANTS[level]]
            files += copies
            labels += [level] * len(copies)
        return ImageFiles(files, labels)
