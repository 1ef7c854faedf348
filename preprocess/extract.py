"""Turn a DFEW root (or any folder of videos) into a feature store; same as `dfew_mm extract`.

    python preprocess/extract.py --dfew-root /data/DFEW --out features --workers 8
    python preprocess/extract.py --help
"""

import sys

from dfew_mm.cli import main

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
