"""EyeNet preprocessing of Diabetic5: border crop, square resize, rotated and mirrored copies."""

from pathlib import Path

import numpy as np
from PIL import Image

from datamodules.eyenet import VARIANTS, cache_image, crop_retina, variant_path
from tests.datamodules.layouts import write_retina


def test_crop_keeps_the_retina_without_the_black_border(tmp_path: Path):
    photo = tmp_path / "1_left.jpeg"
    write_retina(photo, 0)
    image = np.asarray(crop_retina(str(photo), 32))
    assert image.shape == (32, 32, 3)
    centre, corner = image[12:20, 12:20].mean(), image[:3, :3].mean()
    assert centre > 60 and corner < 20  # the disc fills the square, corners stay black
    assert image[16, 0].mean() > 30 and image[0, 16].mean() > 30  # touches all four sides


def test_black_photo_has_no_retina(tmp_path: Path):
    write_retina(tmp_path / "2_left.jpeg", 0, visible=False)
    assert crop_retina(str(tmp_path / "2_left.jpeg"), 32) is None
    assert cache_image((str(tmp_path / "2_left.jpeg"), str(tmp_path / "c.jpeg"), 32, ())) == "black"


def test_minority_levels_get_rotations_and_a_mirror(tmp_path: Path):
    assert VARIANTS[0] == ("mirror",) and len(VARIANTS[3]) == 5
    write_retina(tmp_path / "3_left.jpeg", 0)
    target = str(tmp_path / "cache.jpeg")
    assert cache_image((str(tmp_path / "3_left.jpeg"), target, 24, VARIANTS[4])) == ""
    base = np.asarray(Image.open(target), dtype=float)
    mirror = np.asarray(Image.open(variant_path(target, "mirror")), dtype=float)
    assert np.abs(mirror[:, ::-1] - base).mean() < 8  # JPEG noise only
    for name in VARIANTS[4]:
        assert Image.open(variant_path(target, name)).size == (24, 24)
    assert not list(tmp_path.glob("*.tmp"))
