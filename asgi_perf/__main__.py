"""``python -m asgi_perf``: the ``asgi-perf`` command line."""

from asgi_perf.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
