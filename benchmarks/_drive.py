"""``python -m benchmarks._drive VARIANT N PATH``: serve N requests in-process, then exit.

The unit of work that ``callgrind_instructions.py`` counts instructions of.
``BENCH_OPTIONS`` (JSON) passes options to PerfMiddleware.
"""

from __future__ import annotations

import asyncio
import sys

from benchmarks._driver import drive
from benchmarks.apps import make_app, options_from_env


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m benchmarks._drive VARIANT N PATH", file=sys.stderr)
        return 2
    variant, n, path = argv[0], int(argv[1]), argv[2]
    app = make_app(variant, options_from_env())
    answered = asyncio.run(drive(app, path, n))
    if answered != n:
        print(f"{variant}: only {answered} of {n} requests answered 200", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
