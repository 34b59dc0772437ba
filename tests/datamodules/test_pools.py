"""Embedded query pools: shipped photos only, seeded, disjoint photo sets, images without labels."""

import torch

from datamodules.pools import PHOTOS, CropsPoolDataModule, load_photo


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
    assert isinstance(image, torch.Tensor) and image.shape == (3, 32, 32)


def test_narrow_pool_is_less_diverse_than_natural():
    spread = {}
    for source in ("natural", "narrow"):
        dm = CropsPoolDataModule(source, size=300)
        dm.setup()
        images = dm.splits["pool"].labelled.tensors[0]
        spread[source] = images.mean(dim=(2, 3)).std(dim=0).mean()  # colour spread over crops
    assert spread["narrow"] < spread["natural"]
