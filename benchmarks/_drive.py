"""``python -m benchmarks._drive VARIANT N PATH``: serve N requests in-process, then exit.

The unit of work that ``callgrind_instructions.py`` counts instructions of.
``BENCH_OPTIONS`` (JSON) passes options to PerfMiddleware.
"""

from __future__ import annotations

import asyncio
import gc
import sys

from asgi_perf._types import ASGIApp
from benchmarks._driver import drive
from benchmarks.apps import make_app, options_from_env


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: python -m benchmarks._drive VARIANT N PATH", file=sys.stderr)
        return 2
    variant, n, path = argv[0], int(argv[1]), argv[2]
    app = make_app(variant, options_from_env())
    answered = asyncio.run(_warm_then_drive(app, path, n))
    if answered != n:
        print(f"{variant}: only {answered} of {n} requests answered 200", file=sys.stderr)
        return 1
    return 0


async def _warm_then_drive(app: ASGIApp, path: str, n: int) -> int:
    # The first request builds the app's middleware stack. Everything alive
    # after it is set aside from the garbage collector (gc.freeze), so that a
    # full collection, whose cost depends on how many objects start-up left
    # and not on the request, does not land in one run and not the other.
    await drive(app, path, 1)
    gc.collect()
    gc.freeze()
    return await drive(app, path, n)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
