"""Demo reduction script: writes a small summary of the data file into the output directory.

The agent runs it as ``python3 reduce_CNCS.py <data file> <output directory>``.
"""

import os
import sys


def main(data_file: str, out_dir: str) -> None:
    size = os.path.getsize(data_file)
    name = os.path.basename(data_file).split(".")[0]
    with open(os.path.join(out_dir, "%s_summary.txt" % name), "w", encoding="utf-8") as handle:
        handle.write("data file: %s\nsize: %d bytes\n" % (data_file, size))
    print("reduced %s (%d bytes)" % (data_file, size))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
