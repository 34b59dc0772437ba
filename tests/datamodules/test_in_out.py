"""In/out data: labels (0 in, 1 out), the pool's train/test shares, test sets, starred data."""

import pytest
import torch

from datamodules import CropsPoolDataModule, DigitsDataModule, InOutDataModule
from datamodules.in_out import labels_of
from knockoff_lab.core.errors import ConfigError
from knockoff_lab.evaluation.ood_metrics import TEST_SETS


def in_out(in_data=None, out_data=None, out_test_data=None, **kwargs) -> InOutDataModule:
    data = InOutDataModule(
        in_data or DigitsDataModule(),
        out_data or CropsPoolDataModule(size=200, seed=1),
        out_test_data,
        **kwargs,
    )
    data.setup()
    return data


def labels(dataset) -> torch.Tensor:
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


def test_splits_labels_and_the_pools_shares():
    digits = DigitsDataModule()
    data = in_out(digits, out_test_data=CropsPoolDataModule("other", size=50))
    n = {name: len(digits.split(name)) for name in ("train", "val", "test")}
    # the pool of 200: 20 test, 180 train of which 18 validate
    assert labels(data.split("train")).bincount().tolist() == [n["train"], 162]
    assert labels(data.split("val")).bincount().tolist() == [n["val"], 18]
    assert (data.count("train", 1), data.count("val", 0)) == (162, n["val"])
    test = data.split("test")
    sets = torch.tensor([test[i][2] for i in range(len(test))])
    assert sets.bincount().tolist() == [n["test"], 20, 50]  # in, out, out_test
    assert torch.equal(labels(test), (sets > 0).long())  # out-of-distribution is label 1
    assert TEST_SETS == ("in", "out", "out_test")
    x, y, s = next(iter(data.test_dataloader()))  # seeded order: one batch samples every set
    assert x.shape[1:] == (3, 16, 16) and y.dtype == s.dtype == torch.long
    assert s.unique().tolist() == [0, 1, 2]


def test_pool_shares_are_disjoint_and_seeded():
    data = in_out()
    out_train = data.split("train").datasets[1].images  # Subset of the pool's training share
    out_test = data.split("test").dataset.datasets[1].images
    train_ids = set(out_train.dataset.indices[i] for i in out_train.indices)
    assert not train_ids & set(out_test.indices)
    assert out_test.indices == in_out().split("test").dataset.datasets[1].images.indices
    assert out_test.indices != in_out(seed=1).split("test").dataset.datasets[1].images.indices


def test_own_train_and_test_splits_of_the_out_data_are_used():
    other = DigitsDataModule(seed=1)  # a DataModule with train/test splits, like ImageNetSubset
    data = in_out(out_data=other, out_val_fraction=0.0)
    assert len(data.split("train").datasets[1]) == len(other.split("train"))
    assert len(data.split("test").dataset.datasets[1]) == len(other.split("test"))


def test_exclude_classes_drops_them_from_every_in_split():
    digits = DigitsDataModule()
    data = in_out(digits, exclude_classes=[3, 7])
    for name in ("train", "val", "test"):
        split = data.split(name)
        kept = labels_of((split.dataset if name == "test" else split).datasets[0].images)
        every = labels_of(digits.split(name))
        assert not {3, 7} & set(kept.tolist())
        assert len(kept) == (~torch.isin(torch.from_numpy(every), torch.tensor([3, 7]))).sum()
    assert data.training_record()["exclude_classes"] == [3, 7]


def test_record_and_cache_description():
    data = in_out()
    record = data.training_record()
    assert record["in_data"] == "DigitsDataModule" and record["image_shape"] == [3, 16, 16]
    assert data.description() == in_out().description()
    assert data.description() != in_out(out_test_fraction=0.2).description()
    assert data.description() != in_out(out_data=CropsPoolDataModule(size=200)).description()
    assert data.num_classes == 2


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"out_test_fraction": 0.0}, "the 'out' test set of the in/out data is empty"),
        ({"out_test_fraction": 1.0}, r"data.out_test_fraction must be in \[0, 1\)"),
        ({"exclude_classes": [10]}, r"data.exclude_classes \[10\] are not all classes"),
        ({"in_data": DigitsDataModule(image_size=48)}, "in/out images differ in shape"),
    ],
)
def test_bad_settings_are_one_line_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        in_out(**kwargs)
