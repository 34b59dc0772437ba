"""The embedded default: real digits, seeded disjoint splits, normalised RGB tensors."""

import pytest
import torch

from datamodules import DigitsDataModule
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.core.normalization import IMAGENET_MEAN, IMAGENET_STD


def _splits(**kwargs):
    dm = DigitsDataModule(**kwargs)
    dm.setup()
    return dm.splits


def test_split_sizes_cover_all_digits_disjointly():
    splits = _splits()
    sizes = {name: len(ds) for name, ds in splits.items()}
    assert sizes == {"test": 359, "pool": 359, "val": 180, "train": 899}
    assert sum(sizes.values()) == 1797
    seen = set()
    for name in ("train", "val", "test"):
        images = splits[name].tensors[0]
        keys = {hash(img.numpy().tobytes()) for img in images}
        assert not keys & seen
        seen |= keys
    pool_keys = {hash(splits["pool"][i].numpy().tobytes()) for i in range(len(splits["pool"]))}
    # digits holds a few exact duplicate images; the split itself is by index
    assert len(pool_keys & seen) <= 5


def test_split_is_deterministic_and_seeded():
    a, b, c = _splits(seed=0), _splits(seed=0), _splits(seed=1)
    assert torch.equal(a["train"].tensors[1], b["train"].tensors[1])
    assert not torch.equal(a["train"].tensors[1], c["train"].tensors[1])


def test_images_are_normalised_rgb_at_configured_size():
    splits = _splits(image_size=24)
    x, y = splits["train"][0]
    assert x.shape == (3, 24, 24) and x.dtype == torch.float32 and y.dtype == torch.long
    background = -torch.tensor(IMAGENET_MEAN) / torch.tensor(IMAGENET_STD)
    assert torch.allclose(x[:, 0, 0], background, atol=1e-5)  # black corner, normalised


def test_pool_yields_images_without_labels():
    pool = _splits()["pool"]
    assert isinstance(pool[0], torch.Tensor) and pool[0].shape == (3, 16, 16)
    assert len(pool.labelled[0]) == 2  # labels kept for analysis only


def test_every_class_in_every_split():
    for name, ds in _splits().items():
        labels = ds.labelled.tensors[1] if name == "pool" else ds.tensors[1]
        assert set(labels.tolist()) == set(range(10))


def test_bad_fraction_is_a_clear_error():
    import pytest

    from knockoff_lab.core.errors import ConfigError

    with pytest.raises(ConfigError, match="data.val_fraction must be in"):
        DigitsDataModule(val_fraction=1.5)


def test_a_small_private_set_and_an_independent_models_data_are_disjoint():
    """`train_size` keeps a stratified part of the training split; `train_from: pool` trains
    on the pool split, which shares no image with the victim's training split (dataset
    inference's negative controls), while the test split stays the same."""
    owner, independent = _splits(train_size=100), _splits(train_from="pool", train_size=100)
    full = _splits()
    keys = lambda ds: {img.numpy().tobytes() for img in ds.tensors[0]}  # noqa: E731
    assert len(owner["train"]) == len(independent["train"]) == 100
    assert keys(owner["train"]) <= keys(full["train"])
    assert not keys(independent["train"]) & keys(full["train"])
    assert torch.equal(owner["test"].tensors[0], independent["test"].tensors[0])
    assert set(owner["train"].tensors[1].tolist()) == set(range(10))
    with pytest.raises(ConfigError, match="train_size 1000 exceeds the 359 images of the pool"):
        _splits(train_from="pool", train_size=1000)
