"""The shared loading path: decoding quirks, the readability check, listings, splits."""

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from core.errors import ConfigError
from datamodules.images import (
    ImageFiles,
    check_readable,
    decode,
    image_transform,
    list_images,
    readable,
)
from datamodules.on_disk import holdout, share
from tests.datamodules.layouts import add_quirks, truncate, write_image

FORMATS = [
    (".jpg", "RGB"),
    (".jpg", "L"),
    (".jpg", "CMYK"),
    (".png", "L"),
    (".png", "P"),
    (".png", "RGBA"),
    (".ppm", "RGB"),
    (".bmp", "P"),
    (".gif", "P"),
    (".webp", "RGBA"),
]


@pytest.mark.parametrize("suffix, mode", FORMATS)
def test_every_image_decodes_to_three_channel_rgb(tmp_path: Path, suffix: str, mode: str):
    path = tmp_path / f"image{suffix}"
    write_image(path, 0, mode)
    image = decode(str(path))
    assert image.shape == (3, 10, 12) and image.dtype == torch.uint8


def test_cmyk_and_grayscale_match_pil_conversion(tmp_path: Path):
    from PIL import Image

    for mode in ("CMYK", "L"):
        path = tmp_path / f"{mode}.jpg"
        write_image(path, 1, mode)
        expected = np.asarray(Image.open(path).convert("RGB")).transpose(2, 0, 1)
        assert np.array_equal(decode(str(path)).numpy(), expected)


def test_readable_rejects_broken_files_and_accepts_odd_valid_ones(tmp_path: Path):
    good, cut, html, empty, padded = (
        tmp_path / f"{n}.jpg" for n in ("good", "cut", "html", "empty", "padded")
    )
    for path in (good, cut, padded):
        write_image(path, 2, size=(200, 150))
    truncate(cut)
    html.write_text("<html>404 not found</html>")
    empty.write_bytes(b"")
    padded.write_bytes(padded.read_bytes() + b"\x00" * 10_000)  # valid, EOI far from the end
    assert readable(str(good)) and readable(str(padded))
    assert not any(readable(str(p)) for p in (cut, html, empty, tmp_path / "absent.jpg"))
    with pytest.raises(ConfigError, match="unreadable image .*cut.jpg"):
        decode(str(cut))


def test_unreadable_is_an_error_or_one_counting_warning(tmp_path: Path):
    files = []
    for i in range(4):
        files.append(str(tmp_path / f"{i}.jpg"))
        write_image(Path(files[-1]), i)
    truncate(Path(files[1]))
    truncate(Path(files[3]))
    with pytest.raises(
        ConfigError, match=r"unreadable image .*1\.jpg \(2 unreadable in .*skip_unreadable"
    ):
        check_readable(files, skip=False, where="here")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_readable(files, skip=True, where="here") == [True, False, True, False]
    messages = [str(w.message) for w in caught if w.category is UserWarning]
    assert messages == [f"skipped 2 unreadable images in here, e.g. {files[1]}"]


def test_listing_ignores_stray_and_hidden_files(tmp_path: Path):
    add_quirks(tmp_path, 0)
    (tmp_path / ".DS_Store").write_bytes(b"\x00")
    (tmp_path / "sub").mkdir()
    write_image(tmp_path / "sub" / "deep.JPEG", 0)
    names = [Path(p).name for p in list_images(tmp_path)]
    assert names == ["quirk_cmyk.jpg", "quirk_gray.jpg", "quirk_palette.png"]
    assert len(list_images(tmp_path, recursive=True)) == 4


@pytest.mark.parametrize("augment", [False, True])
def test_transform_gives_normalised_float_at_size(tmp_path: Path, augment: bool):
    write_image(tmp_path / "a.jpg", 0, size=(50, 30))
    data = ImageFiles([str(tmp_path / "a.jpg")], [3], image_transform(24, augment))
    image, label = data[0]
    assert image.shape == (3, 24, 24) and image.dtype == torch.float32 and label == 3
    assert image.min() < 0 < image.max()  # normalised with ImageNet statistics


def test_holdout_is_per_class_seeded_and_keeps_groups_whole():
    labels = [0] * 40 + [1] * 20
    groups = [f"g{i // 2}" for i in range(60)]  # pairs, as GTSRB tracks or a patient's eyes
    held = holdout(labels, groups, share(0.1), (0, 1))
    assert held[:40].sum() == 4 and held[40:].sum() == 2
    assert all(held[i] == held[i + 1] for i in range(0, 60, 2))
    assert np.array_equal(held, holdout(labels, groups, share(0.1), (0, 1)))
    assert not np.array_equal(held, holdout(labels, groups, share(0.1), (1, 1)))
    assert holdout([0, 0, 1], ["a", "b", "c"], share(0.1), (0,)).tolist().count(True) == 1
