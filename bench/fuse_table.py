"""Print the fuse_conv2d CPU benchmark table and write bench/results/fuse_cpu.{json,csv}.

    taskset -c 0,1 python bench/fuse_table.py [--quick] [--markdown]

The same as ``python -m fuseops bench fuse``; the table code lives in
fuseops/benchmarking/fuse.py so both share it.
"""

import sys

from fuseops.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "fuse", *sys.argv[1:]]))
