"""`make bench-scale`: the costs that could grow with what the proxy holds, not its traffic.

Each part is its own module and runs in turn; today: grants (grant_scale_bench.py, 1 grant
against 1,000,000 in SQLite and in Redis). Arguments are passed to every part.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import grant_scale_bench


def main() -> int:
    return grant_scale_bench.main()


if __name__ == "__main__":
    sys.exit(main())
