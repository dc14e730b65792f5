"""Entry point of ``python -m fuseops`` and the ``fuseops`` console script."""

import sys

from fuseops.cli import main

if __name__ == "__main__":
    sys.exit(main())
