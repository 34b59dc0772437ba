"""The shared loading path: decoding quirks, the readability check, listings, splits."""

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import datamodules.images as images
from datamodules.images import (
    ImageFiles,
    check_readable,
    decode,
    image_transform,
    list_images,
    problem,
    readable,
)
from datamodules.on_disk import holdout, share
from knockoff_lab.core.errors import ConfigError
from tests.datamodules.layouts import add_quirks, bomb, png_bytes, truncate, write_image

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


def test_16_bit_images_are_scaled_to_8_bits_not_clipped(tmp_path: Path):
    """16-bit gray PNG (torchvision gives uint16), TIFF (PIL's I;16), PGM (PIL's I) and RGB PNG
    give each pixel's top byte, as PIL does for 16-bit RGB; PIL's own L/RGB conversion clips."""
    from PIL import Image

    gray = (np.arange(120).reshape(10, 12) * 500).astype(np.uint16)  # up to 59500
    for suffix in (".png", ".tif", ".pgm"):
        Image.fromarray(gray).save(tmp_path / f"gray{suffix}")
        image = decode(str(tmp_path / f"gray{suffix}"))
        assert image.dtype == torch.uint8 and image.shape == (3, 10, 12), suffix
        assert np.array_equal(image.numpy(), np.broadcast_to(gray >> 8, (3, 10, 12))), suffix
    rgb = (np.arange(4 * 3 * 3).reshape(3, 4, 3) * 1800).astype(">u2")
    rows = b"".join(b"\x00" + row.tobytes() for row in rgb)
    (tmp_path / "rgb.png").write_bytes(png_bytes(4, 3, 16, 2, rows))
    image = decode(str(tmp_path / "rgb.png"))
    assert np.array_equal(image.numpy(), (rgb >> 8).transpose(2, 0, 1))
    assert np.array_equal(
        image.numpy(), np.asarray(Image.open(tmp_path / "rgb.png")).transpose(2, 0, 1)
    )
    floats = tmp_path / "float.tif"
    Image.fromarray(gray.astype(np.float32) / 65535).save(floats)
    assert decode(str(floats))[0].max() == round(59500 / 65535 * 255)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".tif", ".ppm"])
def test_a_decompression_bomb_is_unreadable_and_never_decoded(tmp_path: Path, monkeypatch, suffix):
    path = tmp_path / f"bomb{suffix}"
    bomb(path)
    assert path.stat().st_size < 64_000
    never = lambda *args, **kwargs: pytest.fail("a bomb was decoded")  # noqa: E731
    monkeypatch.setattr(images, "decode_image", never)
    monkeypatch.setattr(images, "pil_rgb", never)
    assert "over the limit of 89,478,485" in problem(str(path))
    with pytest.raises(ConfigError, match=rf"unreadable image {path}: .*over the limit of 89,4"):
        decode(str(path))
    good = tmp_path / "good.jpg"
    write_image(good, 0)
    with pytest.raises(ConfigError, match=rf"unreadable image {path} \(1 unreadable in here\): "):
        check_readable([str(good), str(path)], skip=False, where="here")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert check_readable([str(good), str(path)], skip=True, where="here") == [True, False]
    assert [str(w.message) for w in caught if w.category is UserWarning] == [
        f"skipped 1 unreadable images in here, e.g. {path}"
    ]


def test_a_symlink_loop_in_a_class_folder_is_an_unreadable_image(tmp_path: Path):
    write_image(tmp_path / "good.jpg", 0)
    os.symlink("b.jpg", tmp_path / "a.jpg")
    os.symlink("a.jpg", tmp_path / "b.jpg")
    os.symlink(".", tmp_path / "self")  # a folder loop: not an image, ignored
    files = list_images(tmp_path)
    assert [Path(f).name for f in files] == ["a.jpg", "b.jpg", "good.jpg"]
    assert len(list_images(tmp_path, recursive=True)) == 3
    with pytest.raises(ConfigError, match="a.jpg \\(2 unreadable in here\\): Too many levels"):
        check_readable(files, skip=False, where="here")
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        assert check_readable(files, skip=True, where="here") == [False, False, True]


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
