"""Start-up cost of the analysis layer: fresh-interpreter imports against the pandas floor they cannot avoid.

Each row is the wall time of `python -c "import X"` in a new interpreter (best of --rounds, rounds
interleaved so that machine load affects every row alike): the floor (numpy + pandas, which reading a
predictions file needs anyway), the analysis, the predictions contract, the CLI with its parser
built (what every `dfew_mm` command pays before its work), and torch for reference.

    python benchmarks/import_bench.py
    PYTHONPATH=/tmp/older_checkout python benchmarks/import_bench.py   # the same rows for other code

The target: `import dfew_mm.analysis` under 1.5 s on a 2-core machine. The last line is the ratio
analysis / floor.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time

ROWS = {
    "floor: numpy + pandas": "import numpy, pandas",
    "dfew_mm.analysis": "import dfew_mm.analysis",
    "dfew_mm.predictions": "import dfew_mm.predictions",
    "dfew_mm CLI parser": "from dfew_mm.cli import build_parser; build_parser()",
    "torch (reference)": "import torch",
}
HEAVY = ("torch", "transformers")


def time_import(code: str) -> tuple[float, list[str]]:
    """Seconds for a fresh interpreter to run `code` and exit, and the HEAVY modules it loaded."""
    probe = f"{code}\nimport sys\nprint(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    tic = time.perf_counter()
    # run outside the checkout, so that PYTHONPATH (not the current folder) decides which dfew_mm is imported
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                         cwd=tempfile.gettempdir()).stdout
    return time.perf_counter() - tic, [m for m in out.strip().split(",") if m]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds, best of each (default 5)")
    args = parser.parse_args()
    best = dict.fromkeys(ROWS, float("inf"))
    loaded: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        for name, code in ROWS.items():
            seconds, loaded[name] = time_import(code)
            best[name] = min(best[name], seconds)
    print(f"fresh-interpreter start-up, best of {args.rounds} rounds")
    for name, seconds in best.items():
        print(f"{name:<24} {seconds:6.2f} s   loads {', '.join(loaded[name]) or 'neither torch nor transformers'}")
    print(f"dfew_mm.analysis / floor: {best['dfew_mm.analysis'] / best['floor: numpy + pandas']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
