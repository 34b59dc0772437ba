"""EyeNet preprocessing of Diabetic5 (Chase 2018, the paper's [4]), run once into a disk cache.

Kaggle's retina photos are JPEGs of up to 5184x3456 px, much of them black border. Each is
decoded at reduced scale (JPEG DCT scaling, PIL's draft mode: several times faster than a full
decode), cropped to the bounding box of the retina (pixels brighter than THRESHOLD), padded to a
square and resized to `size`. Images without a visible retina are dropped, as EyeNet does.
EyeNet's offline augmentation counters the class imbalance (73% of the images are level 0):
level-0 images get one mirrored copy, images of levels 1-4 rotations by 90, 120, 180 and 270
degrees and a mirrored copy (VARIANTS); the DataModule uses the copies for training only.

Every file is written under a temporary name and renamed (os.replace), so an interrupted run
leaves no half-written image and resumes where it stopped; `manifest.json`, written last, marks
the cache complete so later runs skip all of this.
"""

import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image

THRESHOLD = 20  # grey level separating the retina from the (JPEG-noisy) black border
VARIANTS: dict[int, tuple[str, ...]] = {
    0: ("mirror",),
    **{level: ("rot90", "rot120", "rot180", "rot270", "mirror") for level in range(1, 5)},
}
UNREADABLE = "unreadable"


def crop_retina(path: str, size: int) -> Image.Image | None:
    """The retina of the photo at `path`, square, `size` px; None if the photo is black."""
    with Image.open(path) as photo:
        photo.draft("RGB", (size, size))
        image = photo.convert("RGB")
    box = image.convert("L").point(lambda v: 255 if v > THRESHOLD else 0).getbbox()
    if box is None:
        return None
    image = image.crop(box)
    side = max(image.size)
    square = Image.new("RGB", (side, side))
    square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
    return square.resize((size, size), Image.Resampling.BICUBIC)


def variant(image: Image.Image, name: str) -> Image.Image:
    """EyeNet's copy `name` of an image: "mirror" (left-right) or "rot<degrees>"."""
    if name == "mirror":
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return image.rotate(int(name.removeprefix("rot")), resample=Image.Resampling.BICUBIC)


def variant_path(base: str, name: str) -> str:
    """The cached copy `name` of the cached image `base` (<image>.jpeg -> <image>.<name>.jpeg)."""
    return f"{base.removesuffix('.jpeg')}.{name}.jpeg"


def save_atomically(image: Image.Image, path: str) -> None:
    """Write, then rename: readers (and a rerun after a crash) never see half a file."""
    temporary = f"{path}.{os.getpid()}.tmp"
    image.save(temporary, "JPEG", quality=95)
    os.replace(temporary, path)


def cache_image(job: tuple[str, str, int, tuple[str, ...]]) -> str:
    """Write one preprocessed image and its copies; '' when done, else why it was dropped."""
    source, target, size, variants = job
    paths = {None: target, **{name: variant_path(target, name) for name in variants}}
    if all(os.path.exists(path) for path in paths.values()):
        return ""
    try:
        image = crop_retina(source, size)
    except (OSError, ValueError) as err:
        return f"{UNREADABLE}: {' '.join(str(err).split())}"
    if image is None:
        return "black"
    for name, path in paths.items():
        save_atomically(image if name is None else variant(image, name), path)
    return ""


def build_cache(
    images: dict[str, tuple[str, int]],
    folder: Path,
    size: int,
    workers: int,
    keep_unreadable_out: bool,
) -> dict[str, str]:
    """Preprocess `images` (name -> (photo, level)) into `folder` as <name>.jpeg and copies.

    Returns the dropped images with the reason. The cache is marked complete unless an image was
    unreadable and `keep_unreadable_out` is off: the caller reports the error, a rerun retries.
    """
    manifest = folder / "manifest.json"
    if manifest.exists():
        return json.loads(manifest.read_text())["dropped"]
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [
        (photo, str(folder / f"{name}.jpeg"), size, VARIANTS[level])
        for name, (photo, level) in images.items()
    ]
    if workers > 0:
        with ProcessPoolExecutor(workers) as pool:
            reasons = list(pool.map(cache_image, jobs, chunksize=16))
    else:
        reasons = [cache_image(job) for job in jobs]
    dropped = {name: why for name, why in zip(images, reasons, strict=True) if why}
    if keep_unreadable_out or not any(why.startswith(UNREADABLE) for why in dropped.values()):
        temporary = folder / f"manifest.json.{os.getpid()}.tmp"
        temporary.write_text(json.dumps({"size": size, "images": len(images), "dropped": dropped}))
        os.replace(temporary, manifest)
    return dropped
