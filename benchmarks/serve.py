"""``uvicorn benchmarks.serve:app``: the variant named by ``BENCH_VARIANT`` (default bare).

``BENCH_OPTIONS`` (a JSON object) passes options to PerfMiddleware;
``BENCH_APP`` picks the app under the middleware: ``trivial`` (default), ``shop``
or ``attribution``.
"""

from __future__ import annotations

import os

from benchmarks.apps import make_app, options_from_env

app = make_app(
    os.environ.get("BENCH_VARIANT", "bare"),
    options_from_env(),
    app=os.environ.get("BENCH_APP", "trivial"),
)
