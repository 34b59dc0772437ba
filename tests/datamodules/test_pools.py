"""Embedded query pools: shipped photos only, seeded, disjoint photo sets, images without labels."""

import numpy as np
import pytest
import torch

from datamodules.pools import PHOTOS, CropsPoolDataModule, PhotoCropsDataModule, load_photo
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import denormalize


def test_photo_sets_are_disjoint_and_load_offline():
    names = [name for photos in PHOTOS.values() for name in photos]
    assert len(names) == len(set(names))
    for name in names:
        photo = load_photo(name)
        assert photo.shape[0] == 3 and 0 <= photo.min() and photo.max() <= 1


def test_pool_is_seeded_and_yields_images_only():
    a, b, c = (CropsPoolDataModule("natural", size=40, seed=s) for s in (0, 0, 1))
    for dm in (a, b, c):
        dm.setup()
    assert torch.equal(a.splits["pool"][7], b.splits["pool"][7])
    assert not torch.equal(a.splits["pool"][7], c.splits["pool"][7])
    image = a.splits["pool"][0]
    assert isinstance(image, torch.Tensor) and image.shape == (3, 16, 16)


def test_narrow_pool_is_less_diverse_than_natural():
    spread = {}
    for source in ("natural", "narrow"):
        dm = CropsPoolDataModule(source, size=300)
        dm.setup()
        images = dm.splits["pool"].labelled.tensors[0]
        spread[source] = images.mean(dim=(2, 3)).std(dim=0).mean()  # colour spread over crops
    assert spread["narrow"] < spread["natural"]


def pool_images(**options) -> torch.Tensor:
    dm = CropsPoolDataModule("natural", size=60, image_size=16, **options)
    dm.setup()
    return dm.splits["pool"].labelled.tensors[0]


def test_digitlike_crops_are_grey_stretched_and_dark():
    """What makes them look like the digits: one grey channel, each crop's full range, a dark
    ground (gamma 2 puts the median below a linear stretch's)."""
    images = denormalize(pool_images(style="digitlike"))
    assert torch.allclose(images[:, 0], images[:, 1], atol=1e-5)
    assert torch.allclose(images[:, 0], images[:, 2], atol=1e-5)
    flat = images[:, 0].flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(60), atol=1e-3)
    assert torch.allclose(flat.max(1).values, torch.ones(60), atol=1e-2)
    assert flat.median() < 0.3  # a linear stretch of photo crops sits near 0.5


def test_an_unknown_style_is_refused_naming_the_key():
    with pytest.raises(ConfigError, match="data.style must be one of photo, digitlike"):
        CropsPoolDataModule(style="sketch")


def test_photo_crops_are_labelled_by_their_photo_in_three_splits():
    dm = PhotoCropsDataModule("natural", size=100, seed=1)
    dm.setup()
    assert dm.num_classes == len(PHOTOS["natural"])
    assert {name: len(split) for name, split in dm.splits.items()} == {
        "train": 80,
        "val": 10,
        "test": 10,
    }
    pool = CropsPoolDataModule("natural", size=100, seed=1)
    pool.setup()
    images, photos = pool.splits["pool"].labelled.tensors
    assert torch.equal(dm.splits["train"].tensors[0], images[:80])  # the same crops, labelled
    assert torch.equal(dm.splits["test"].tensors[1], photos[90:])
    with pytest.raises(ConfigError, match="'narrow' has one photo"):
        PhotoCropsDataModule("narrow")


def test_a_pool_its_caller_changed_leaves_the_next_one_whole():
    """Crops are built once per process (`styled_crops`); each data module gets its own copy."""
    first = CropsPoolDataModule("natural", size=30, seed=5)
    first.setup()
    expected = first.splits["pool"].labelled.tensors[0].clone()
    first.splits["pool"].labelled.tensors[0].zero_()
    second = CropsPoolDataModule("natural", size=30, seed=5)
    second.setup()
    assert torch.equal(second.splits["pool"].labelled.tensors[0], expected)


def test_a_mixed_pool_is_its_parts_and_its_owner_knows_the_relevant_share():
    """The broad pool's images, then the relevant pool's; the owner's share of relevant
    queries; a pool of other parts describes (so caches) differently."""
    from datamodules import DigitsDataModule, MixedPoolDataModule
    from datamodules.base import describe

    broad = CropsPoolDataModule(size=100, image_size=16, style="digitlike")
    mixed = MixedPoolDataModule(broad, DigitsDataModule(image_size=16))
    pool = mixed.split("pool")
    assert len(pool) == 100 + 359
    assert torch.equal(pool[0], broad.split("pool")[0])
    assert torch.equal(pool[100], DigitsDataModule(image_size=16).split("pool")[0])
    assert mixed.query_analysis(np.array([0, 5, 100, 458, -1])) == {"relevant_share": 0.5}
    other = MixedPoolDataModule(CropsPoolDataModule(size=200, image_size=16), DigitsDataModule())
    assert describe(other) != describe(mixed)
    with pytest.raises(ConfigError, match="give both the same image_size"):
        MixedPoolDataModule(broad, DigitsDataModule(image_size=8)).split("pool")
