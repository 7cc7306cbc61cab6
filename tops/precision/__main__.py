"""``python -m tops.precision report [options]``: see ``tops.precision.report``."""

import sys

from tops.precision.report import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "report":
        sys.exit("usage: python -m tops.precision report [--help]")
    sys.exit(main(sys.argv[2:]))
