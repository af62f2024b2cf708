"""Several instances at once: ``stats``, ``check`` and ``profile`` over ``URL [URL…]``.

Every instance is asked at the same time, one thread each. All of them must
answer: the sum of the ones that did would be a wrong total that looks
right, so one failure fails the command, and its message names the URL.
"""

from __future__ import annotations

import argparse
import re
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from asgi_perf.cli._common import CLIError, client_for
from asgi_perf.cli._exit import EXIT_SERVER
from asgi_perf.client import PerfClient, PerfClientError
from asgi_perf.stats.merge import NotMergeable, merge_snapshots

T = TypeVar("T")

_POLL_S = 0.1
_PART_RE = re.compile(r"^part \d+[,:]\s*")


def clients(args: argparse.Namespace, urls: Sequence[str]) -> list[PerfClient]:
    """A client per URL; the same instance twice is refused (it would count twice)."""
    made: dict[str, PerfClient] = {}
    try:
        for url in urls:
            client = client_for(args, url)
            if client.base_url in made:
                client.close()
                raise CLIError(f"{client.base_url} is given twice")
            made[client.base_url] = client
    except BaseException:
        for client in made.values():
            client.close()
        raise
    return list(made.values())


class Each(Generic[T]):
    """``fetch(client)`` for every client at once, each in a daemon thread.

    Each thread owns its client and closes it when done: closed from another
    thread mid-request, a socket being opened would leak. Daemon threads: on
    Ctrl+C, or once one instance has failed, the process exits without
    waiting for the others; their sockets close with it, and a server aborts
    a window whose client left.
    """

    def __init__(self, clients: Sequence[PerfClient], fetch: Callable[[PerfClient], T]) -> None:
        self._clients = list(clients)
        self._results: dict[int, T] = {}
        self._failures: dict[int, BaseException] = {}
        self._lock = threading.Lock()
        self._changed = threading.Event()
        self._threads = [
            threading.Thread(
                target=self._run, args=(i, c, fetch), name=f"asgi-perf-{i}", daemon=True
            )
            for i, c in enumerate(self._clients)
        ]
        for thread in self._threads:
            thread.start()

    def _run(self, i: int, client: PerfClient, fetch: Callable[[PerfClient], T]) -> None:
        try:
            with client:
                result = fetch(client)
        except BaseException as exc:  # handed to the main thread, which reports it
            with self._lock:
                self._failures[i] = exc
        else:
            with self._lock:
                self._results[i] = result
        self._changed.set()

    def done(self) -> bool:
        """Every instance answered, or one failed (no need to wait for the rest)."""
        with self._lock:
            return bool(self._failures) or len(self._results) == len(self._clients)

    def wait_changed(self, timeout: float) -> None:
        """Return when an instance has answered or failed, or after ``timeout`` seconds."""
        if self._changed.wait(timeout):
            self._changed.clear()

    def wait(self) -> list[T]:
        """The answers in the order of the URLs, once all are in (see ``results``)."""
        while not self.done():
            self.wait_changed(_POLL_S)
        return self.results()

    def results(self) -> list[T]:
        """The answers in the order of the URLs; raises the first URL's failure.

        With several URLs its message says that nothing was merged.
        """
        with self._lock:
            failures = dict(self._failures)
            results = dict(self._results)
        if not failures:
            return [results[i] for i in range(len(self._clients))]
        exc = failures[min(failures)]
        n = len(self._clients)
        if n == 1:
            raise exc
        note = f"({len(failures)} of {n} instances failed: nothing merged)"
        if isinstance(exc, PerfClientError):
            raise PerfClientError(f"{exc} {note}", status=exc.status, url=exc.url) from None
        if isinstance(exc, CLIError):
            raise CLIError(f"{exc} {note}", exc.code) from None
        raise exc


def merged_stats(clients: Sequence[PerfClient], *, histograms: bool = False) -> dict[str, Any]:
    """The snapshots of ``clients`` added up exactly, with ``instances``: their URLs.

    Each is asked with its histograms (the merge adds them bucket by bucket);
    ``histograms`` keeps the merged ones in the answer. The clients are
    closed once done (``Each``).
    """
    parts = Each(clients, lambda c: c.stats(histograms=True)).wait()
    try:
        merged = merge_snapshots(parts, histograms=histograms)
    except NotMergeable as exc:
        raise _not_mergeable(clients, parts, exc) from None
    return {
        "schema": merged.pop("schema"),
        "instances": [c.base_url for c in clients],
        **merged,
    }


def _not_mergeable(
    clients: Sequence[PerfClient], parts: Sequence[dict[str, Any]], exc: NotMergeable
) -> CLIError:
    """The error of the instance whose snapshot cannot be merged, by its URL."""
    for client, part in zip(clients, parts, strict=True):
        try:
            merge_snapshots([part])
        except NotMergeable as own:
            reason = _PART_RE.sub("", str(own))
            return CLIError(
                f"cannot merge the stats of {client.api_url}/stats: {reason}", EXIT_SERVER
            )
    return CLIError(f"cannot merge the stats of {len(parts)} instances: {exc}", EXIT_SERVER)
