"""The decoded-once store: the same tensors as the JPEG path, built once, resumed after a kill."""

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torchvision.transforms import RandomResizedCrop

import datamodules.decoded_store as decoded_store
from datamodules import BingDataModule, GTSRBDataModule
from datamodules.decoded_store import DecodedStore, cut_crops
from datamodules.images import ToNormalisedFloat
from knockoff_lab.core.errors import ConfigError
from lightning_modules import VictimClassifier
from tests.datamodules.layouts import truncate

Layout = Callable[[str], Path]


def images(dataset) -> torch.Tensor:
    return torch.stack(
        [dataset[i] if torch.is_tensor(dataset[i]) else dataset[i][0] for i in range(len(dataset))]
    )


def bing(root: Path, store: Path | None, **kwargs) -> BingDataModule:
    dm = BingDataModule(
        root=str(root), image_size=16, per_class=6, store_dir=store and str(store), **kwargs
    )
    dm.setup()
    return dm


def test_pool_from_the_store_is_the_jpeg_pool(layout: Layout, tmp_path: Path):
    plain, kept = bing(layout("bing"), None), bing(layout("bing"), tmp_path)
    assert torch.equal(images(kept.split("pool")), images(plain.split("pool")))
    (folder,) = tmp_path.iterdir()
    assert sorted(p.name for p in folder.iterdir()) == ["images.u8", "meta.json"]


def test_victim_splits_from_the_store(layout: Layout, tmp_path: Path):
    plain = GTSRBDataModule(root=str(layout("gtsrb")), image_size=16, augment=True)
    kept = GTSRBDataModule(
        root=str(layout("gtsrb")), image_size=16, augment=True, store_dir=str(tmp_path)
    )
    plain.setup(), kept.setup()
    for split in ("val", "test"):
        assert torch.equal(images(kept.split(split)), images(plain.split(split)))
    train = kept.split("train")
    assert train.store.size == 18  # stored larger, random resized crops cut from it
    assert images(train).shape[1:] == (3, 16, 16)
    assert [train[i][1] for i in range(len(train))] == plain.split("train").labels


def test_a_killed_build_resumes_and_only_a_complete_store_is_read(
    fresh_layout: Layout, tmp_path: Path, monkeypatch
):
    root, store = fresh_layout("bing"), tmp_path / "store"
    monkeypatch.setattr(decoded_store, "CHUNK", 4)
    written = []
    real = decoded_store.write_chunk

    def dies_on_third(*args):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(args[3])
        return real(*args)

    monkeypatch.setattr(decoded_store, "write_chunk", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        bing(root, store)
    (folder,) = store.iterdir()
    assert not (folder / "meta.json").exists()  # never mistaken for complete
    assert (folder / "done.txt").read_text().split() == ["0", "4"]
    monkeypatch.setattr(
        decoded_store, "write_chunk", lambda *args: written.append(args[3]) or real(*args)
    )
    kept = bing(root, store)
    assert written[:2] == [0, 4] and 0 not in written[2:] and 4 not in written[2:]
    assert len(written) == -(-24 // 4)  # every chunk once in all
    assert torch.equal(images(kept.split("pool")), images(bing(root, None).split("pool")))
    bing(root, store)
    assert len(written) == 6  # complete: read, not built


def test_a_changed_file_gets_a_new_store(fresh_layout: Layout, tmp_path: Path):
    root, store = fresh_layout("bing"), tmp_path / "store"
    first = bing(root, store).split("pool").labelled.store.folder
    some = bing(root, None).split("pool").labelled.files[0]
    os.utime(some, ns=(0, 0))
    assert bing(root, store).split("pool").labelled.store.folder != first


def test_a_file_that_fails_to_decode_names_itself_and_leaves_no_complete_store(
    fresh_layout: Layout, tmp_path: Path
):
    files = bing(fresh_layout("bing"), None).split("pool").labelled.files
    truncate(Path(files[3]))
    with pytest.raises(ConfigError, match=files[3]):
        DecodedStore.open(files, 16, tmp_path / "store", workers=0)
    assert not list((tmp_path / "store").glob("*/meta.json"))


def test_worker_processes_write_the_same_bytes(layout: Layout, tmp_path: Path, monkeypatch):
    monkeypatch.setattr(decoded_store, "CHUNK", 5)
    files = bing(layout("bing"), None).split("pool").labelled.files
    one = DecodedStore.open(files, 16, tmp_path / "one", workers=0)
    two = DecodedStore.open(files, 16, tmp_path / "two", workers=2)
    assert np.array_equal(
        np.fromfile(one.data_path, np.uint8), np.fromfile(two.data_path, np.uint8)
    )


def test_crops_cut_on_the_device_match_the_box(tmp_path: Path):
    image = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    normalised = ToNormalisedFloat()(image[0])[None]
    whole = torch.tensor([[0.0, 0.0, 16.0, 16.0, 0.0]])
    assert torch.allclose(cut_crops(image, whole, 16), normalised, atol=1e-5)
    flipped = torch.tensor([[0.0, 0.0, 16.0, 16.0, 1.0]])
    assert torch.allclose(cut_crops(image, flipped, 16), normalised.flip(-1), atol=1e-5)
    corner = torch.tensor([[8.0, 0.0, 16.0, 8.0, 0.0]])  # x1, y1, x2, y2
    assert torch.allclose(cut_crops(image, corner, 8), normalised[..., :8, 8:], atol=1e-5)


def test_a_fit_from_the_store_cuts_crops_in_the_batch_hook(layout: Layout, tmp_path: Path):
    dm = GTSRBDataModule(
        root=str(layout("gtsrb")),
        image_size=16,
        augment=True,
        store_dir=str(tmp_path),
        batch_size=4,
    )
    (images, boxes), labels = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape[1:] == (3, 18, 18)
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:4] <= 18).all()
    assert (boxes[:, 2:4] > boxes[:, :2]).all() and set(boxes[:, 4].tolist()) <= {0.0, 1.0}
    crops = dm.train_dataloader().dataset
    torch.manual_seed(0)
    (image, box), _ = crops[0]
    torch.manual_seed(0)
    top, left, height, width = RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3])
    assert box[:4].tolist() == [left, top, left + width, top + height]  # roi_align's x1 y1 x2 y2
    torch.manual_seed(1)
    items = [crops[i] for i in (3, 1)]
    torch.manual_seed(1)
    (batch_images, batch_boxes), batch_labels = crops.__getitems__([3, 1])  # a whole batch
    assert torch.equal(batch_images, torch.stack([image for (image, _), _ in items]))
    assert torch.equal(batch_boxes, torch.stack([box for (_, box), _ in items]))
    assert batch_labels.tolist() == [label for _, label in items]
    seen = []

    class Probe(VictimClassifier):
        def training_step(self, batch, batch_idx):
            seen.append(batch[0])
            return super().training_step(batch, batch_idx)

    trainer = Trainer(fast_dev_run=1, accelerator="cpu", logger=False, enable_progress_bar=False)
    trainer.fit(Probe("digits_cnn", dm.num_classes), datamodule=dm)
    assert seen[0].dtype == torch.float32 and seen[0].shape == (4, 3, 16, 16)
