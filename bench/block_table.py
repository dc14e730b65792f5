"""Print the block conv timing table: python bench/block_table.py [--quick] [--markdown].

Same code as ``python -m fuseops bench block`` (fuseops.benchmarking.block).
"""

from fuseops.benchmarking.block import main

if __name__ == "__main__":
    main()
