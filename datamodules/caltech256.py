"""Caltech-256 (Griffin et al. 2007), victim data of the paper: 256 object classes.

The clutter class (257) is excluded and the test split follows Knockoff Nets: a seeded 25
images of every class (6,400), the rest (23,380) train, of which `val_fraction` is held out.
"""

from datamodules.images import LabelledImages
from datamodules.on_disk import VictimDataModule, class_folders


class Caltech256DataModule(VictimDataModule):
    """Caltech-256 as published (or as torchvision writes it).

    `test_per_class`: Knockoff's fixed test count."""

    catalog = "caltech256"
    # the tar unpacked, or where torchvision's Caltech256(root, download=True) puts it
    folders = ("256_ObjectCategories", "caltech256/256_ObjectCategories")
    contents = "one folder per class, 001.ak47/*.jpg ... 257.clutter/"
    source = "https://data.caltech.edu/records/nyy15-4j048 (256_ObjectCategories.tar)"

    def __init__(self, root: str, test_per_class: int = 25, **kwargs):
        super().__init__(root, **kwargs)
        self.test_per_class = test_per_class

    def load(self) -> dict[str, LabelledImages]:
        folder = self.dataset_dir()
        found = {path.name: path for path in class_folders(folder)}
        if missing := [name for name in self.classes if name not in found]:
            raise self.missing(f"{len(missing)} class folders such as {missing[0]}", [folder])
        files, labels = [], []
        for label, name in enumerate(self.classes):
            images = self.folder_images(found[name])
            files += images
            labels += [label] * len(images)
        return self.split_test(self.image_files(files, labels, folder), self.test_per_class)
