"""Compare two tracemalloc snapshots written by a proxy run with BROKER_PROXY_TRACEMALLOC.

Prints the allocation sites (grouped by traceback, or by line with --by lineno) whose live
memory grew most between the two, with their growth in KiB and in blocks. Sizes and code
locations only: a snapshot holds no allocated bytes, so no value can show here.
"""

from __future__ import annotations

import argparse
import sys
import tracemalloc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("before")
    parser.add_argument("after")
    parser.add_argument("--by", choices=("traceback", "lineno", "filename"), default="traceback")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--frames", type=int, default=8, help="traceback lines to print")
    args = parser.parse_args()
    before = tracemalloc.Snapshot.load(args.before)
    after = tracemalloc.Snapshot.load(args.after)
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
