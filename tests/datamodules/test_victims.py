"""The five victim DataModules against their datasets in the real layouts (tests/.../layouts.py)."""

import pickle
import shutil
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from datamodules import (
    Caltech256DataModule,
    CIFAR10DataModule,
    CUBS200DataModule,
    Diabetic5DataModule,
    GTSRBDataModule,
)
from datamodules.base import ImagesOnly
from datamodules.on_disk import VictimDataModule
from datamodules.overlap import overlapping
from knockoff_lab.core.errors import ConfigError
from tests.datamodules.layouts import DIABETIC5, truncate

Layout = Callable[[str], Path]
pytestmark = pytest.mark.filterwarnings("ignore:dropped 1 Diabetic5 images")


@dataclass(frozen=True)
class Case:
    name: str
    cls: type[VictimDataModule]
    num_classes: int
    sizes: dict[str, int]  # split sizes of the fixture
    kwargs: dict = field(default_factory=dict)

    def make(self, root: Path, **kwargs) -> VictimDataModule:
        dm = self.cls(root=str(root), image_size=16, **{**self.kwargs, **kwargs})
        dm.setup()
        return dm


CASES = [
    # 3 images per class + 3 quirk images in one class; Knockoff's test count set to 1
    Case(
        "caltech256",
        Caltech256DataModule,
        256,
        {"train": 259, "val": 256, "test": 256},
        {"test_per_class": 1},
    ),
    # official split: 2 train + 1 test per species
    Case("cubs200", CUBS200DataModule, 200, {"train": 200, "val": 200, "test": 200}),
    # 4 patients x 2 eyes per level, one black photo dropped; 1 patient per level to test and
    # to val; train gets EyeNet's copies (x2 level 0, x6 levels 1-4)
    Case(
        "diabetic5",
        Diabetic5DataModule,
        5,
        {"train": 104, "val": 10, "test": 10},
        {"test_per_class": 2},
    ),
    # 2 tracks of 2 frames per class: one whole track to val; one test image per class
    Case("gtsrb", GTSRBDataModule, 43, {"train": 86, "val": 86, "test": 43}),
    # 5 batches of 20 (2 per class), test batch of 20
    Case("cifar10", CIFAR10DataModule, 10, {"train": 90, "val": 10, "test": 20}),
]


@pytest.fixture(params=CASES, ids=[case.name for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


def fingerprint(dm: VictimDataModule, split: str) -> list:
    data = dm.splits[split]
    return data.files if hasattr(data, "files") else data.images.tobytes()


class TestEveryVictimDataModule:
    def test_classes_and_split_sizes(self, case: Case, layout: Layout):
        dm = case.make(layout(case.name))
        assert dm.num_classes == case.num_classes
        assert {name: len(split) for name, split in dm.splits.items()} == case.sizes
        labels = set(dm.splits["test"].labels) | set(dm.splits["train"].labels)
        assert labels == set(range(case.num_classes))

    def test_splits_are_seeded_and_deterministic(self, case: Case, layout: Layout):
        a, b = case.make(layout(case.name)), case.make(layout(case.name))
        c = case.make(layout(case.name), seed=1)
        for split in ("train", "val", "test"):
            assert fingerprint(a, split) == fingerprint(b, split)
        if case.name in ("caltech256", "diabetic5", "cifar10"):  # seed-drawn test or val
            assert any(fingerprint(a, s) != fingerprint(c, s) for s in ("val", "test"))

    def test_images_are_normalised_rgb_at_configured_size(self, case: Case, layout: Layout):
        dm = case.make(layout(case.name))
        for split in ("train", "val", "test"):
            image, label = dm.splits[split][0]
            assert image.shape == (3, 16, 16) and image.dtype == torch.float32
            assert 0 <= label < case.num_classes
        batch, labels = next(iter(dm.train_dataloader()))
        assert (
            batch.shape == (min(64, case.sizes["train"]), 3, 16, 16) and labels.dtype == torch.long
        )

    def test_missing_data_names_layout_and_source(self, case: Case, tmp_path: Path):
        dm = case.cls(root=str(tmp_path / "nowhere"), **case.kwargs)
        with pytest.raises(
            ConfigError,
            match=f"{case.cls.__name__}: .* not found under "
            "data.root=.*nowhere; looked at .*nowhere/.*; expected <root>/.*; get it from ",
        ):
            dm.setup()

    def test_as_pool_offers_train_images_without_labels(self, case: Case, layout: Layout):
        dm = case.make(layout(case.name), as_pool=True)
        pool = dm.splits["pool"]
        assert isinstance(pool, ImagesOnly) and pool[0].shape == (3, 16, 16)
        assert len(pool) == len(dm.splits["train"]) or case.name == "diabetic5"


def test_caltech_quirks_decode_and_stray_files_are_ignored(layout: Layout):
    dm = CASES[0].make(layout("caltech256"))
    quirks = [
        (split, i)
        for split in ("train", "val", "test")
        for i, file in enumerate(dm.splits[split].files)
        if "quirk" in file
    ]
    assert len(quirks) == 3  # grayscale JPEG, CMYK JPEG, palette PNG
    for split, i in quirks:
        assert dm.splits[split][i][0].shape == (3, 16, 16)
    files = [f for split in ("train", "val", "test") for f in dm.splits[split].files]
    assert not any("clutter" in f or "RENAME2" in f or "Thumbs" in f for f in files)


def test_empty_class_folder_is_an_error(fresh_layout: Layout):
    root = fresh_layout("caltech256")
    folder = root / "caltech256/256_ObjectCategories/010.beer-mug"
    for image in folder.iterdir():
        image.unlink()
    (folder / "Thumbs.db").write_bytes(b"\x00")
    with pytest.raises(ConfigError, match="class folder .*010.beer-mug holds no images"):
        CASES[0].make(root)


def test_missing_class_folder_is_a_missing_data_error(fresh_layout: Layout):
    root = fresh_layout("caltech256")
    shutil.rmtree(root / "caltech256/256_ObjectCategories/256.toad")
    with pytest.raises(ConfigError, match="1 class folders such as .*256.toad not found"):
        CASES[0].make(root)


def test_truncated_jpeg_is_an_error_or_skipped_with_one_warning(fresh_layout: Layout):
    root = fresh_layout("caltech256")
    bad = root / "caltech256/256_ObjectCategories/002.american-flag/002_0002.jpg"
    truncate(bad)
    with pytest.raises(ConfigError, match=f"unreadable image {bad} \\(1 unreadable"):
        CASES[0].make(root)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dm = CASES[0].make(root, skip_unreadable=True)
    assert [str(w.message)[:29] for w in caught if w.category is UserWarning] == [
        "skipped 1 unreadable images i"
    ]
    assert sum(len(dm.splits[s]) for s in ("train", "val", "test")) == 770


def test_exclude_overlap_drops_and_relabels_classes(layout: Layout):
    dm = CASES[0].make(layout("caltech256"), exclude_overlap=True)
    assert dm.num_classes == 256 - len(overlapping("caltech256")) == 161
    labels = set(dm.splits["train"].labels) | set(dm.splits["test"].labels)
    assert labels == set(range(161))
    assert not any("001.ak47" in f or "250.zebra" in f for f in dm.splits["test"].files)


def test_cubs_uses_the_official_split(layout: Layout):
    dm = CASES[1].make(layout("cubs200"))
    test_names = {Path(f).name for f in dm.splits["test"].files}
    assert all(name.split("_")[-2] == "0002" for name in test_names)  # i == 2 is is_train 0


@pytest.mark.parametrize(
    "victim, remove",
    [
        (
            "cubs200",
            "CUB_200_2011/images/001.Black_footed_Albatross/Black_footed_Albatross_0001_0.jpg",
        ),
        ("gtsrb", "gtsrb/GTSRB/Final_Test/Images/00007.ppm"),
        ("diabetic5", f"{DIABETIC5}/train/102_left.jpeg"),
    ],
)
def test_label_file_naming_a_missing_image_is_an_error(
    fresh_layout: Layout, victim: str, remove: str
):
    root = fresh_layout(victim)
    (root / remove).unlink()
    case = next(c for c in CASES if c.name == victim)
    with pytest.raises(ConfigError, match=f"{Path(remove).stem}.*, listed in .*, does not exist"):
        case.make(root)


def test_gtsrb_val_holds_out_whole_tracks(layout: Layout):
    dm = CASES[3].make(layout("gtsrb"))
    tracks = {split: {dm.group_of(f) for f in dm.splits[split].files} for split in ("train", "val")}
    assert not tracks["train"] & tracks["val"] and len(tracks["val"]) == 43


def test_diabetic_splits_by_patient_and_augments_train_only(layout: Layout):
    dm = CASES[2].make(layout("diabetic5"))
    patients = {s: {dm.group_of(f) for f in dm.splits[s].files} for s in ("train", "val", "test")}
    assert not patients["train"] & patients["test"] and not patients["val"] & patients["test"]
    assert not patients["train"] & patients["val"]
    assert sum(".rot" in f or ".mirror" in f for f in dm.splits["train"].files) == 104 - 20
    assert not any(".rot" in f or ".mirror" in f for f in dm.splits["test"].files)
    assert "999" not in patients["train"] | patients["val"] | patients["test"]  # black photo


def test_diabetic_cache_is_built_once_atomically(fresh_layout: Layout, monkeypatch):
    root = fresh_layout("diabetic5")
    CASES[2].make(root)
    cache = root / DIABETIC5 / "eyenet_256"  # beside the photos
    assert (cache / "manifest.json").exists() and not list(cache.glob("*.tmp"))
    assert len(list(cache.glob("*.jpeg"))) == 8 * 2 + 32 * 6  # every photo and its copies
    monkeypatch.setattr("datamodules.eyenet.crop_retina", lambda *a: pytest.fail("rebuilt"))
    CASES[2].make(root)


def test_diabetic_unreadable_photo_is_an_error_until_skipped(fresh_layout: Layout):
    root = fresh_layout("diabetic5")
    truncate(root / DIABETIC5 / "train/301_right.jpeg")
    with pytest.raises(ConfigError, match="unreadable image .*301_right.jpeg \\(1 unreadable"):
        CASES[2].make(root)
    assert not (root / DIABETIC5 / "eyenet_256/manifest.json").exists()
    with pytest.warns(UserWarning, match="dropped 2 Diabetic5 images: 1 unreadable, 1 without"):
        CASES[2].make(root, skip_unreadable=True)


@pytest.mark.parametrize("victim", ["gtsrb", "cifar10"])
def test_download_is_passed_to_torchvision(victim: str, tmp_path: Path, monkeypatch):
    calls = []
    target = "datamodules.gtsrb.GTSRB" if victim == "gtsrb" else "datamodules.cifar10.CIFAR10"
    monkeypatch.setattr(target, lambda root, **kw: calls.append((root, kw)))
    case = next(c for c in CASES if c.name == victim)
    case.cls(root=str(tmp_path), download=True).prepare_data()
    case.cls(root=str(tmp_path)).prepare_data()
    assert calls and all(kw["download"] is True for _, kw in calls)


def test_cifar_batches_cannot_run_code(fresh_layout: Layout):
    root = fresh_layout("cifar10")
    (root / "cifar-10-batches-py/test_batch").write_bytes(pickle.dumps(print))
    with pytest.raises(ConfigError, match="test_batch: builtins.print is not allowed"):
        CASES[4].make(root)
