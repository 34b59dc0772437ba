"""The attacker's query pools on disk: ImageNet subset, OpenImages, Bing (fixtures: layouts.py)."""

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from datamodules import BingDataModule, ImageNetSubsetDataModule, OpenImagesDataModule
from datamodules.base import ImagesOnly
from datamodules.on_disk import PoolDataModule
from knockoff_lab.core.errors import ConfigError
from tests.datamodules.layouts import truncate

Layout = Callable[[str], Path]


@dataclass(frozen=True)
class Case:
    name: str
    cls: type[PoolDataModule]
    pool_size: int
    kwargs: dict = field(default_factory=dict)

    def make(self, root: Path, **kwargs) -> PoolDataModule:
        dm = self.cls(root=str(root), image_size=16, **{**self.kwargs, **kwargs})
        dm.setup()
        return dm


CASES = [
    # 4 classes of 10 images (+3 quirk images in one): 10 per class
    Case("imagenet_subset", ImageNetSubsetDataModule, 40, {"per_class": 10}),
    # 30 images (+3 quirk images) in three folders: 20 of them
    Case("openimages", OpenImagesDataModule, 20, {"size": 20}),
    # 4 category folders of 6 images (+3 quirk images in one): 4 per category
    Case("bing", BingDataModule, 16, {"per_class": 4}),
]


@pytest.fixture(params=CASES, ids=[case.name for case in CASES])
def case(request: pytest.FixtureRequest) -> Case:
    return request.param


class TestEveryPool:
    def test_pool_yields_rgb_images_without_labels(self, case: Case, layout: Layout):
        dm = case.make(layout(case.name))
        pool = dm.splits["pool"]
        assert isinstance(pool, ImagesOnly) and len(pool) == case.pool_size and dm.num_classes == 0
        image = pool[0]
        assert isinstance(image, torch.Tensor) and image.shape == (3, 16, 16)
        assert image.dtype == torch.float32
        assert len(pool.labelled[0]) == 2  # labels kept for analysis only
        batch = next(iter(dm.predict_dataloader()))
        assert batch.shape == (case.pool_size, 3, 16, 16)

    def test_sample_is_seeded_and_deterministic(self, case: Case, layout: Layout):
        files = [
            case.make(layout(case.name), seed=s).splits["pool"].labelled.files for s in (0, 0, 1)
        ]
        assert files[0] == files[1] != files[2]

    def test_missing_data_names_layout_and_source(self, case: Case, tmp_path: Path):
        with pytest.raises(
            ConfigError,
            match=f"{case.cls.__name__}: .* not found under "
            "data.root=.*nowhere; looked at .*nowhere/.*; expected <root>/.*; get it from ",
        ):
            case.make(tmp_path / "nowhere")

    def test_asking_for_more_than_there_is_takes_all_with_a_warning(self, case, layout):
        more = {key: 1000 for key in case.kwargs}
        with pytest.warns(UserWarning, match="fewer than|fewer than data.size"):
            dm = case.make(layout(case.name), **more)
        assert len(dm.splits["pool"]) > case.pool_size

    def test_truncated_image_is_an_error_or_skipped(self, case: Case, fresh_layout: Layout):
        root = fresh_layout(case.name)
        everything = {key: 1000 for key in case.kwargs}
        first = sorted(
            p
            for p in root.rglob("*.*")
            if "quirk" not in p.name and p.is_file() and p.suffix.lower() in (".jpg", ".jpeg")
        )[0]
        truncate(first)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pytest.raises(ConfigError, match=f"unreadable image {first}"):
                case.make(root, **everything)
            dm = case.make(root, skip_unreadable=True, **everything)
        assert str(first) not in dm.splits["pool"].labelled.files


def test_imagenet_subset_splits_its_sample_for_the_detectors(layout: Layout):
    dm = CASES[0].make(layout("imagenet_subset"))
    train, test = dm.splits["train"], dm.splits["test"]
    assert (len(train), len(test)) == (36, 4)  # 90% / 10% of each class, as 90,000 / 10,000
    assert not set(train.files) & set(test.files)
    assert set(train.files) | set(test.files) == set(dm.splits["pool"].labelled.files)
    assert set(test.labels) == set(range(4))
    image, label = test[0]
    assert image.shape == (3, 16, 16) and label in range(4)


@pytest.mark.filterwarnings("ignore:3 of 4 class folders")
def test_imagenet_quirks_are_sampled_and_decoded(layout: Layout):
    pool = CASES[0].make(layout("imagenet_subset"), per_class=13).splits["pool"]
    quirks = [i for i, f in enumerate(pool.labelled.files) if "quirk" in f]
    assert len(quirks) == 3 and all(pool[i].shape == (3, 16, 16) for i in quirks)
    assert not any("Thumbs" in f or f.endswith(".txt") for f in pool.labelled.files)


def test_openimages_samples_the_whole_tree_without_labels(layout: Layout):
    pool = CASES[1].make(layout("openimages")).splits["pool"].labelled
    assert {Path(f).parent.name for f in pool.files} == {"train_0", "train_1", "train_2"}
    assert set(pool.labels) == {-1}


def test_bing_labels_are_category_folders(layout: Layout):
    pool = CASES[2].make(layout("bing")).splits["pool"].labelled
    assert [pool.labels.count(c) for c in range(4)] == [4, 4, 4, 4]
    assert Path(pool.files[0]).parent.name == "001.ak47"
