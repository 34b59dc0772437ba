"""The served API's wire format: arrays as `.npy` bytes (`application/x-npy`), little-endian,
C order, never pickled. `read_array` checks a payload strictly, from its header, before a byte
of data is used: a bad one raises `WireError` with the HTTP status and a one-line reason."""

import io
import math

import numpy as np

NPY = "application/x-npy"
NPZ = "application/x-npz"
IMAGE_DTYPES = ("<f2", "<f4")  # float16 or float32 images


class WireError(ValueError):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def to_npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def to_npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def from_npy(payload: bytes) -> np.ndarray:
    """A reply's array (the server's bytes: trusted, still never unpickled)."""
    return np.load(io.BytesIO(payload), allow_pickle=False)


def from_npz(payload: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(payload), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def read_array(
    payload: bytes,
    image_shape: tuple[int, ...] | None,
    max_count: int,
    max_abs: float = float("inf"),
) -> np.ndarray:
    """The (N, *image_shape) float16/float32 images of a request body, or a `WireError`: 400 not
    an .npy array, 422 wrong dtype, rank, image shape, count (1..max_count), length, a
    non-finite value or one of magnitude over `max_abs`."""
    stream = io.BytesIO(payload)
    try:
        version = np.lib.format.read_magic(stream)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"npy version {version}")
        read = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else (np.lib.format.read_array_header_2_0)
        )
        shape, fortran, dtype = read(stream)  # a literal header: nothing is unpickled
    except Exception as err:  # numpy's own message names the fault
        raise WireError(400, f"the body is not an .npy array ({err})") from None
    if dtype.str not in IMAGE_DTYPES or dtype.hasobject:
        raise WireError(422, f"images must be float16 or float32 (<f2, <f4), got {dtype.str}")
    if fortran:
        raise WireError(422, "images must be in C order (fortran_order False)")
    if len(shape) != 4:
        raise WireError(422, f"images must be (N, channels, H, W), got shape {shape}")
    if image_shape is not None and tuple(shape[1:]) != tuple(image_shape):
        raise WireError(422, f"each image must be {tuple(image_shape)}, got {tuple(shape[1:])}")
    if not 1 <= shape[0] <= max_count:
        raise WireError(422, f"a request holds 1 to {max_count} images, got {shape[0]}")
    expected = math.prod(shape) * dtype.itemsize
    data = payload[stream.tell() :]
    if len(data) != expected:
        raise WireError(422, f"shape {shape} needs {expected} data bytes, the body has {len(data)}")
    images = np.frombuffer(data, dtype=dtype).reshape(shape)
    if not np.isfinite(images).all():
        bad = int((~np.isfinite(images.reshape(len(images), -1))).any(axis=1).sum())
        raise WireError(422, f"{bad} of {shape[0]} images hold non-finite values (NaN or inf)")
    if len(images) and float(np.abs(images).max()) > max_abs:
        raise WireError(
            422, f"image values must lie within +-{max_abs:g}, got {np.abs(images).max():g}"
        )
    return images
