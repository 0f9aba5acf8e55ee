"""``python -m mafr``: the same command line as ``mafr``."""

import sys

from mafr.cli import main

if __name__ == "__main__":
    sys.exit(main())
