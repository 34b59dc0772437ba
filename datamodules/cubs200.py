"""CUB-200-2011 (Wah et al. 2011), victim data of the paper: 200 bird species, official split.

The split is the dataset's own `train_test_split.txt` (5,994 train / 5,794 test, as Knockoff
Nets and Table 1); `val_fraction` of each species' training images is held out as `val`.
"""

from pathlib import Path

from datamodules.images import LabelledImages
from datamodules.on_disk import VictimDataModule
from knockoff_lab.core.errors import ConfigError

TABLES = ("images", "image_class_labels", "train_test_split", "classes")


def read_table(path: Path) -> dict[str, str]:
    """`<id> <value>` lines of one of the dataset's text files, by id."""
    rows = (line.split(maxsplit=1) for line in path.read_text().splitlines() if line.strip())
    return {row[0]: row[1].strip() for row in rows}


class CUBS200DataModule(VictimDataModule):
    """CUB-200-2011 in its official layout."""

    catalog = "cubs200"
    folders = ("CUB_200_2011",)  # as CUB_200_2011.tgz unpacks
    required = ("images", *(f"{name}.txt" for name in TABLES))
    contents = "images/, images.txt, image_class_labels.txt, train_test_split.txt and classes.txt"
    source = "https://www.vision.caltech.edu/datasets/cub_200_2011/ (CUB_200_2011.tgz)"

    def load(self) -> dict[str, LabelledImages]:
        base = self.dataset_dir()
        images, labels, is_train, classes = (read_table(base / f"{t}.txt") for t in TABLES)
        if [classes[key] for key in sorted(classes, key=int)] != self.classes:
            raise ConfigError(f"{base / 'classes.txt'} does not list CUB-200-2011's 200 species")
        files = [str(base / "images" / images[key]) for key in images]
        for key, file in zip(images, files, strict=True):
            if key not in labels or key not in is_train:
                raise ConfigError(f"image id {key} of {base / 'images.txt'} has no class or split")
            if not Path(file).is_file():
                raise ConfigError(f"{file}, listed in {base / 'images.txt'}, does not exist")
        data = self.image_files(files, [int(labels[key]) - 1 for key in images], base / "images")
        train = {files[i] for i, key in enumerate(images) if is_train[key] == "1"}
        in_train = [file in train for file in data.files]
        return {
            "train": data.select([i for i, t in enumerate(in_train) if t]),
            "test": data.select([i for i, t in enumerate(in_train) if not t]),
        }
