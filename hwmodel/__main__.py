"""``python -m hwmodel``: the hwmodel CLI."""

import sys

from hwmodel.cli import main

if __name__ == "__main__":
    sys.exit(main())
