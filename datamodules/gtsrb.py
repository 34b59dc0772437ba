"""GTSRB (Stallkamp et al. 2012), victim data of the paper: 43 traffic-sign classes.

The official split: 39,209 training images (per-class folders) and 12,630 test images (labels
in GT-final_test.csv). Training images come in tracks of 30 frames of one physical sign, so the
`val` split holds out whole tracks: frames of one sign in train and val would make validation
accuracy (and the checkpoint chosen on it) over-optimistic.
"""

import csv
from pathlib import Path

from torchvision.datasets import GTSRB

from datamodules.images import LabelledImages, list_images
from datamodules.on_disk import VictimDataModule, class_folders
from knockoff_lab.core.errors import ConfigError


class GTSRBDataModule(VictimDataModule):
    """GTSRB as torchvision downloads it. `download`: fetch it with torchvision when missing."""

    catalog = "gtsrb"
    folders = ("gtsrb",)  # where torchvision's GTSRB(root, download=True) puts it
    required = ("GTSRB/Training", "GT-final_test.csv", "GTSRB/Final_Test/Images")
    contents = (
        "GTSRB/Training/000NN/*.ppm, GTSRB/Final_Test/Images/*.ppm and GT-final_test.csv "
        "(torchvision's GTSRB layout)"
    )
    source = "data.download: true, or https://benchmark.ini.rub.de/gtsrb_dataset.html"

    def __init__(self, root: str, download: bool = False, **kwargs):
        super().__init__(root, **kwargs)
        self.download = download

    def prepare_data(self) -> None:
        if self.download:
            for split in ("train", "test"):
                GTSRB(self.root, split=split, download=True)  # writes root/gtsrb

    def group_of(self, name: str) -> str:
        """The track: training files are named <track>_<frame>.ppm inside their class folder."""
        path = Path(name)
        return f"{path.parent.name}/{path.stem.split('_')[0]}"

    def load(self) -> dict[str, LabelledImages]:
        self.prepare_data()
        base = self.dataset_dir()
        training = base / "GTSRB/Training"
        found = class_folders(training)
        if [folder.name for folder in found] != [f"{c:05d}" for c in range(len(self.classes))]:
            raise self.missing(f"the 43 class folders 00000..00042 in {training}", [training])
        files, labels = [], []
        for label, folder in enumerate(found):
            images = self.folder_images(folder)
            files += images
            labels += [label] * len(images)
        table, test_dir = base / "GT-final_test.csv", base / "GTSRB/Final_Test/Images"
        with open(table, newline="") as file:
            rows = list(csv.DictReader(file, delimiter=";", skipinitialspace=True))
        test_files = [str(test_dir / row["Filename"]) for row in rows]
        present = set(list_images(test_dir))
        if missing := [f for f in test_files if f not in present]:
            raise ConfigError(f"{missing[0]}, listed in {table}, does not exist")
        return {
            "train": self.image_files(files, labels, training),
            "test": self.image_files(test_files, [int(r["ClassId"]) for r in rows], test_dir),
        }
