"""Small offline data loaders (no download): Fashion-MNIST from IDX files.

The Debian package ``dataset-fashion-mnist`` installs the four IDX ``.gz`` files
under ``/usr/share/datasets/fashion-mnist``; any directory holding the same
files (gzipped or not) works through ``data_dir``.
"""

import gzip
import os
import struct

import numpy as np

__all__ = ["load_fashion_mnist", "FASHION_MNIST_DIR", "DataNotFoundError"]

#: where the Debian package puts the files
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


class DataNotFoundError(FileNotFoundError):
    """An IDX file is missing; ``directory`` and ``missing`` (the file's stem) let a caller word its own hint."""

    def __init__(self, directory, missing):
        super().__init__(
            f"load_fashion_mnist: neither {missing}.gz nor {missing} is in {directory!r}. Install the Debian "
            "package 'dataset-fashion-mnist' or pass data_dir= a directory holding the IDX files."
        )
        self.directory = directory
        self.missing = missing


def _find(data_dir, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise DataNotFoundError(data_dir, stem)


def read_idx(path):
    """Read one IDX file (optionally gzipped) into a NumPy array of its stored dtype and shape."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"read_idx: {path!r} is not an IDX file (bad magic number {raw[:4]!r}).")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    shape = struct.unpack(">" + "I" * ndim, raw[4:4 + 4 * ndim])
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"read_idx: {path!r} holds {data.size} values, its header says shape {shape}.")
    return data.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def load_fashion_mnist(split="train", *, data_dir=None):
    """Fashion-MNIST images as float32 in [0, 1], shape (n, 784), and int64 labels (n,).

    Parameters
    ----------
    split : {"train", "test"}
    data_dir : str or None
        Directory of the IDX files; default :data:`FASHION_MNIST_DIR`.
    """
    if split not in _FILES:
        raise ValueError(f"The 'split' parameter of load_fashion_mnist must be 'train' or 'test'. Got {split!r} instead.")
    data_dir = FASHION_MNIST_DIR if data_dir is None else os.fspath(data_dir)
    img_stem, lab_stem = _FILES[split]
    X = read_idx(_find(data_dir, img_stem))
    y = read_idx(_find(data_dir, lab_stem))
    if X.shape[0] != y.shape[0]:
        raise ValueError(f"load_fashion_mnist: {X.shape[0]} images but {y.shape[0]} labels in {data_dir!r}.")
    return (X.reshape(X.shape[0], -1).astype(np.float32) / 255.0), y.astype(np.int64)


def fashion_mnist_available(data_dir=None):
    """True when the Fashion-MNIST IDX files are present."""
    try:
        for stems in _FILES.values():
            for stem in stems:
                _find(FASHION_MNIST_DIR if data_dir is None else os.fspath(data_dir), stem)
    except FileNotFoundError:
        return False
    return True
