"""The `specdec` command."""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="specdec", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and kernel info")
    args = parser.parse_args(argv)
    import specdec
    from specdec_kernels.info import report

    print(f"specdec {specdec.__version__}")
    print(report())
    return 0


if __name__ == "__main__":
    sys.exit(main())
