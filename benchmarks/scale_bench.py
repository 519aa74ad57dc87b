"""`make bench-scale`: the costs that could grow with what the proxy holds, not its traffic.

Each part is its own module; `--part grants` (the default: grant_scale_bench.py, 1 grant
against 1,000,000 in SQLite and in Redis) or `--part listing` (listing_scale_bench.py: listing
1,000,000 grants page by page through the admin API and the CLI). The other arguments go to
the part.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import grant_scale_bench, listing_scale_bench


def main() -> int:
    argv = sys.argv[1:]
    part = "grants"
    if "--part" in argv:
        at = argv.index("--part")
        part = argv[at + 1] if at + 1 < len(argv) else ""
        del argv[at:at + 2]
    if part == "listing":
        return listing_scale_bench.main(argv)
    if part != "grants":
        print("scale_bench.py: --part is grants or listing", file=sys.stderr)
        return 2
    sys.argv[1:] = argv
    return grant_scale_bench.main()


if __name__ == "__main__":
    sys.exit(main())
