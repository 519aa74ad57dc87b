"""Compare two tracemalloc snapshots written by a proxy run with BROKER_PROXY_TRACEMALLOC.

Prints the allocation sites (grouped by traceback, or by line with --by lineno) whose live
memory grew most between the two, with their growth in KiB and in blocks. Sizes and code
locations only: a snapshot holds no allocated bytes, so no value can show here.
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import smoke


def own_snapshots() -> tuple[tracemalloc.Snapshot, tracemalloc.Snapshot]:
    """Two snapshots of this process around an allocation that stays: what --smoke compares."""
    tracemalloc.start(8)
    before = tracemalloc.take_snapshot()
    kept = [bytearray(1024) for _ in range(1000)]
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    del kept
    return before, after


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("before", nargs="?", help="a snapshot file (not with --smoke)")
    parser.add_argument("after", nargs="?")
    parser.add_argument("--by", choices=("traceback", "lineno", "filename"), default="traceback")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--frames", type=int, default=8, help="traceback lines to print")
    smoke.add_flag(parser)  # compares two snapshots of this process, taken for the purpose
    args = parser.parse_args()
    if args.smoke:
        before, after = own_snapshots()
    elif args.before and args.after:
        before = tracemalloc.Snapshot.load(args.before)
        after = tracemalloc.Snapshot.load(args.after)
    else:
        parser.error("give the two snapshot files to compare")
    total = (sum(t.size for t in after.traces) - sum(t.size for t in before.traces)) / 1024
    print(f"traced memory {total:+.1f} KiB between the snapshots")
    for stat in after.compare_to(before, args.by)[:args.top]:
        print(f"{stat.size_diff / 1024:+9.1f} KiB {stat.count_diff:+8d} blocks "
              f"(now {stat.size / 1024:.1f} KiB)")
        if args.by == "traceback":
            for line in stat.traceback.format(limit=args.frames, most_recent_first=True):
                print("      " + line.strip())
        else:
            print("      " + str(stat.traceback[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
