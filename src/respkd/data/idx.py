"""Readers for the raw formats MNIST-style datasets ship in: IDX (LeCun's format, optionally gzipped) and CSV."""

from __future__ import annotations

import gzip
import math
import warnings
from pathlib import Path

import numpy as np

from respkd.errors import RespkdError

__all__ = ["read_idx", "read_label_pixel_csv"]

# IDX type codes -> numpy dtype (big-endian as the format prescribes).
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or plain) into a numpy array, checking its header against its length."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as err:
        raise RespkdError(f"{path}: cannot read IDX file ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise RespkdError(f"{path}: not an IDX file (bad magic number)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(shape) * dtype.itemsize  # exact: np.prod would wrap around on absurd dimensions
    if len(raw) != expected:
        raise RespkdError(f"{path}: IDX file is {len(raw)} bytes, its header promises {expected} (truncated?)")
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def read_label_pixel_csv(path: Path, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Read a CSV whose rows are ``label, pixel_1, ..., pixel_HW`` (0-255), with or without a header row."""
    try:
        with open(path, "rb") as f, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy warns on stderr about a file without rows; that is said below
            first = f.readline()
            has_header = not first.split(b",")[0].strip().isdigit()
            f.seek(0)
            table = np.loadtxt(f, delimiter=",", dtype=np.int32, skiprows=int(has_header), ndmin=2)
    except (OSError, ValueError) as err:
        raise RespkdError(f"{path}: cannot read label,pixels CSV ({err})") from None
    if len(table) == 0:
        raise RespkdError(f"{path}: no rows of label,pixels")
    pixels = int(np.prod(image_shape))
    if table.shape[1] != pixels + 1:
        raise RespkdError(f"{path}: rows have {table.shape[1]} columns, expected 1 label + {pixels} pixels")
    if table.min() < 0 or table[:, 1:].max() > 255:
        raise RespkdError(f"{path}: pixel values outside 0-255")
    return table[:, 1:].astype(np.uint8).reshape(-1, *image_shape), table[:, 0].astype(np.int64)
