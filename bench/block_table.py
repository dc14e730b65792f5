"""Print the block conv timing table: python bench/block_table.py [--quick] [--markdown].

Same code as ``python -m fuseops bench block`` (fuseops.benchmarking.block).
"""

import sys

from fuseops.benchmarking.block import cli_main

if __name__ == "__main__":
    sys.exit(cli_main())
