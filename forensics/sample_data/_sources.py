"""Readers for the raw public data the bundled samples are built from (only the builder uses them).

- Fashion-MNIST (MIT licence): the original idx/gz files, as installed by Debian's ``dataset-fashion-mnist``.
- Amazon fine-food reviews (``small_fine_foods`` of the R package modeldata, MIT licence): read from the Debian
  package ``r-cran-modeldata`` without R. The data sits in R's lazy-load database (``Rdata.rdx`` index,
  ``Rdata.rdb`` blobs); each blob is a 4-byte big-endian length, a compression type byte and an R-serialized
  object, which the ``rdata`` package parses.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import subprocess
import tempfile
import warnings
import zlib
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
MODELDATA_DEB_GLOB = "r-cran-modeldata_*_all.deb"
_RDATA_IN_DEB = "usr/lib/R/site-library/modeldata/data"


def _missing(what: str, fix: str) -> InputError:
    return InputError(f"{what} not found. {fix}")


def read_idx(path: Path) -> np.ndarray:
    """One idx file (gzip'd or not) as a numpy array."""
    data = Path(path).read_bytes()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise InputError(f"{path}: not an idx file of unsigned bytes")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise InputError(f"{path}: holds {arr.size} values but declares shape {shape}")
    return arr.reshape(shape)


def read_fashion_mnist(folder: Path = FASHION_MNIST_DIR) -> dict[str, np.ndarray]:
    """Fashion-MNIST as ``{"train_images", "train_labels", "test_images", "test_labels"}``."""
    folder = Path(folder)
    files = {
        "train_images": "train-images-idx3-ubyte.gz",
        "train_labels": "train-labels-idx1-ubyte.gz",
        "test_images": "t10k-images-idx3-ubyte.gz",
        "test_labels": "t10k-labels-idx1-ubyte.gz",
    }
    for f in files.values():
        if not (folder / f).is_file():
            raise _missing(
                f"Fashion-MNIST file {folder / f}",
                "Install it with: apt-get install -y dataset-fashion-mnist (Debian), or pass the folder holding "
                "the four idx .gz files.",
            )
    return {k: read_idx(folder / f) for k, f in files.items()}


def _rdb_object(rdb: bytes, offset: int, length: int):
    import rdata

    blob = rdb[offset : offset + length]
    kind = blob[4:5]
    body = blob[5:]
    if kind == b"Z":
        raw = lzma.decompress(body, format=lzma.FORMAT_RAW, filters=[{"id": lzma.FILTER_LZMA2}])
    elif kind == b"2":
        raw = bz2.decompress(body)
    elif kind == b"1":
        raw = zlib.decompress(body)
    elif kind == b"0":
        raw = body
    else:  # older lazy-load databases: plain zlib right after the length
        raw = zlib.decompress(blob[4:])
    return rdata.conversion.convert(rdata.parser.parse_data(raw, extension="rds"))


def find_modeldata_deb(search: Path) -> Path:
    debs = sorted(Path(search).glob(MODELDATA_DEB_GLOB))
    if not debs:
        raise _missing(
            f"the Debian package r-cran-modeldata in {search}",
            f"Fetch it with: (cd {search} && apt-get download r-cran-modeldata)",
        )
    return debs[-1]


def read_fine_foods(deb: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The fine-food reviews as (training, testing) tables with columns product, review, score."""
    try:
        import rdata  # noqa: F401
    except ImportError as e:
        raise InputError(
            "building the text sample data needs the 'rdata' package: pip install 'poison-forensics[build-data]'"
        ) from e
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["dpkg-deb", "-x", str(deb), tmp], check=True)
        data = Path(tmp) / _RDATA_IN_DEB
        rdx, rdb = (data / "Rdata.rdx").read_bytes(), (data / "Rdata.rdb").read_bytes()
    with warnings.catch_warnings():
        # rdata cannot tell the index's format from its bytes and says so; it is an RDS stream.
        warnings.simplefilter("ignore", UserWarning)
        import rdata

        index = rdata.conversion.convert(rdata.parser.parse_data(rdx, extension="rds"))
        variables = index["variables"]
        tables = []
        for name in ("training_data", "testing_data"):
            offset, length = (int(v) for v in variables[name])
            tables.append(_rdb_object(rdb, offset, length).reset_index(drop=True))
    return tables[0], tables[1]
