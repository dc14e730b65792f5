"""``python -m fuseops.cli.hwmodel``: the ``hwmodel`` console script without the script."""

import sys

from fuseops.cli.hwmodel import main

if __name__ == "__main__":
    sys.exit(main())
