"""The ``forensics`` command line."""

from __future__ import annotations

import argparse
import sys

from .errors import ForensicsError


def _demo(args: argparse.Namespace) -> int:
    import pandas as pd

    from . import sample_data

    table = sample_data.describe()
    with pd.option_context("display.width", 120, "display.max_columns", 20):
        print("Bundled sample data (" + str(sample_data.data_dir()) + "):\n")
        print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    for name in sample_data.NAMES:
        data = sample_data.load(name)
        print(f"\n{name}: {data.info['description']}")
        print(f"  train: {data.train}")
        print(f"  test:  {data.test}")
        print(f"  from:  {data.info['origin']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="forensics", description="Forensics for data poisoning.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="summarize the bundled sample data and its reference models")
    args = parser.parse_args(argv)
    try:
        return {"demo": _demo}[args.command](args)
    except ForensicsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
