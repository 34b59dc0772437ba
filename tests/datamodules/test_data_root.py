"""One data-root rule for every on-disk DataModule: `data.root` holds each dataset in its own
publisher-named folder, so one root serves every experiment; a dataset absent from it is one
line naming where it was looked for (datamodules/on_disk.py)."""

import inspect
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torchvision.datasets

import datamodules
from datamodules.on_disk import OnDiskDataModule, check_present
from knockoff_lab.core.errors import ConfigError
from tests.datamodules import layouts

pytestmark = pytest.mark.filterwarnings("ignore:dropped 1 Diabetic5 images")


@dataclass(frozen=True)
class Rule:
    folders: tuple[str, ...]  # where under the data root the dataset must be looked for
    top: str  # its top-level folder under the root
    writer: str  # its writer in layouts.py
    kwargs: dict = field(default_factory=dict)  # settings that fit the tiny fixtures
    flat: str = ""  # the folder whose contents, unpacked into the root itself, must not be read


# written out, not read from the classes: the names a user of each dataset knows
RULES = {
    datamodules.Caltech256DataModule: Rule(
        ("256_ObjectCategories", "caltech256/256_ObjectCategories"),
        "caltech256",
        "caltech256",
        {"test_per_class": 1},
        flat="caltech256/256_ObjectCategories",
    ),
    datamodules.CUBS200DataModule: Rule(("CUB_200_2011",), "CUB_200_2011", "cubs200"),
    datamodules.CIFAR10DataModule: Rule(("cifar-10-batches-py",), "cifar-10-batches-py", "cifar10"),
    datamodules.GTSRBDataModule: Rule(("gtsrb",), "gtsrb", "gtsrb"),
    datamodules.Diabetic5DataModule: Rule(
        ("diabetic-retinopathy-detection",),
        "diabetic-retinopathy-detection",
        "diabetic5",
        {"test_per_class": 2},
    ),
    datamodules.ImageNetSubsetDataModule: Rule(
        ("imagenet/train", "imagenet/ILSVRC/Data/CLS-LOC/train"),
        "imagenet",
        "imagenet_subset",
        {"per_class": 10},
    ),
    datamodules.OpenImagesDataModule: Rule(
        ("openimages",), "openimages", "openimages", {"size": 20}
    ),
    datamodules.BingDataModule: Rule(("bing",), "bing", "bing", {"per_class": 4}),
}


def on_disk_classes() -> set[type]:
    """Every concrete OnDiskDataModule the package defines."""
    found, todo = set(), [OnDiskDataModule]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if not inspect.isabstract(sub) and sub.__module__.startswith("datamodules."):
                found.add(sub)
    return found


def make(cls: type, root: Path, **kwargs) -> OnDiskDataModule:
    return cls(root=str(root), image_size=16, **{**RULES[cls].kwargs, **kwargs})


def files_of(dm: OnDiskDataModule) -> list[str]:
    """Every file behind every split (the labelled view of a pool)."""
    files = []
    for split in dm.splits.values():
        data = getattr(split, "labelled", split)
        files += getattr(data, "files", [])
    return files


def test_every_on_disk_datamodule_follows_the_rule():
    assert on_disk_classes() == set(RULES), "a new on-disk DataModule needs a rule (and a layout)"
    for cls, rule in RULES.items():
        assert cls.folders == rule.folders, cls.__name__


@pytest.mark.parametrize("cls", RULES, ids=lambda c: c.__name__)
def test_one_root_holding_every_dataset_serves_each(cls: type, data_root: Path):
    """The shared root holds all eight datasets: each DataModule finds its own and reads only
    inside its own folder."""
    dm = make(cls, data_root)
    dm.setup()
    assert all(len(split) for split in dm.splits.values())
    home = [data_root / folder for folder in RULES[cls].folders]
    assert dm.dataset_dir() in home
    outside = [f for f in files_of(dm) if not any(Path(f).is_relative_to(h) for h in home)]
    assert not outside, f"{cls.__name__} read {outside[0]}, outside {home}"
    assert files_of(dm) or cls is datamodules.CIFAR10DataModule  # arrays, read from home


@pytest.fixture
def root_without(data_root: Path, tmp_path: Path):
    """A data root holding every dataset of the shared one but the given one (links)."""

    def make_root(cls: type) -> Path:
        root = tmp_path / "data"
        root.mkdir()
        for entry in data_root.iterdir():
            if entry.name != RULES[cls].top:
                (root / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        return root

    return make_root


@pytest.mark.parametrize("cls", RULES, ids=lambda c: c.__name__)
def test_a_dataset_missing_from_the_root_is_one_line_naming_where_it_looked(cls, root_without):
    root = root_without(cls)
    dm = make(cls, root)
    for attempt in (check_present, lambda dm: dm.setup()):  # the CLI's early check, then setup
        with pytest.raises(ConfigError) as caught:
            attempt(dm)
        message = str(caught.value)
        assert "\n" not in message
        assert message.startswith(missing_message(cls, root)), message
        assert message.endswith(f"; get it from {cls.source}")


def missing_message(cls: type, root: Path) -> str:
    """The start of the one-line missing-data error of `cls` under `root`."""
    looked = ", ".join(str(root / folder) for folder in RULES[cls].folders)
    return (
        f"{cls.__name__}: the dataset's folder not found under data.root={root}; "
        f"looked at {looked}; expected <root>/{RULES[cls].folders[0]}/"
    )


@pytest.mark.parametrize("cls", RULES, ids=lambda c: c.__name__)
def test_a_dataset_unpacked_into_the_root_itself_is_not_read(cls: type, tmp_path: Path):
    """The root is never the dataset's own folder (the old layouts of Diabetic5, ImageNet,
    OpenImages, Bing, CUBS): unpacked there, the dataset is reported missing."""
    root = layouts.WRITERS[RULES[cls].writer](tmp_path / "data")
    flat = root / (RULES[cls].flat or RULES[cls].top)
    for entry in list(flat.iterdir()):
        entry.rename(root / entry.name)
    while flat != root:
        if not any(flat.iterdir()):
            flat.rmdir()
        flat = flat.parent
    with pytest.raises(ConfigError) as caught:
        make(cls, root).setup()
    assert str(caught.value).startswith(missing_message(cls, root)), caught.value


def test_nested_datasets_are_checked_before_any_is_read(data_root: Path, root_without):
    """A detector's in/out data: the absent one is named before the present one is read."""
    present = make(datamodules.CUBS200DataModule, data_root)
    absent = make(datamodules.OpenImagesDataModule, root_without(datamodules.OpenImagesDataModule))
    data = datamodules.InOutDataModule(present, make(datamodules.BingDataModule, data_root), absent)
    with pytest.raises(ConfigError, match="^OpenImagesDataModule: the dataset's folder not found"):
        check_present(data)
    assert not present.splits  # nothing built


@pytest.mark.parametrize(
    "cls", [datamodules.CIFAR10DataModule, datamodules.GTSRBDataModule], ids=lambda c: c.__name__
)
def test_download_writes_where_the_reader_looks(cls: type, tmp_path: Path, monkeypatch):
    """`download: true` hands torchvision the data root itself; torchvision writes the dataset
    in the folder the DataModule then reads (the fixture writes torchvision's layout)."""
    writer = layouts.cifar10 if cls is datamodules.CIFAR10DataModule else layouts.gtsrb
    calls = []

    def torchvision_download(root, **kwargs):
        assert kwargs["download"] is True
        calls.append(Path(root))
        if not any(Path(root).iterdir()):
            writer(Path(root))

    target = (
        "datamodules.cifar10.CIFAR10" if writer is layouts.cifar10 else "datamodules.gtsrb.GTSRB"
    )
    monkeypatch.setattr(target, torchvision_download)
    root = tmp_path / "data"
    root.mkdir()
    dm = make(cls, root, download=True)
    check_present(dm)  # nothing to check before the download
    dm.setup()
    assert calls and set(calls) == {root} and len(dm.splits["train"])
    cls(root=str(tmp_path / "other")).prepare_data()  # without download: torchvision not asked
    assert set(calls) == {root}


def test_the_fixtures_are_torchvisions_layouts(tmp_path: Path):
    """What the tests write is where torchvision reads (and downloads): GTSRB and Caltech256
    read the fixtures; CIFAR10's folder is torchvision's base_folder."""
    root = tmp_path / "data"
    layouts.gtsrb(root)
    layouts.caltech256(root)
    assert len(torchvision.datasets.GTSRB(str(root), split="train")) == 43 * 4
    assert len(torchvision.datasets.GTSRB(str(root), split="test")) == 43
    assert len(torchvision.datasets.Caltech256(str(root))) > 0
    assert torchvision.datasets.CIFAR10.base_folder == "cifar-10-batches-py"


def test_diabetic_cache_sits_beside_its_dataset(tmp_path: Path):
    dm = datamodules.Diabetic5DataModule(root=str(tmp_path))
    assert dm.cache_dir == tmp_path / "diabetic-retinopathy-detection" / "eyenet_256"
    assert datamodules.Diabetic5DataModule(str(tmp_path), cache_dir="~/c").cache_dir == Path(
        os.path.expanduser("~/c")
    )
