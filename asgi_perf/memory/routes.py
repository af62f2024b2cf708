"""Which requests of each route have their memory measured, and how.

A route is only known once the app has run, so the choice is made at the
end of a request, per route: its first ``first`` requests are measured
(enough for a budget verdict however rarely it is hit), then every
``every``-th. The middleware's fast path asks one question, ``key in
settled``: a settled route is measured on none of its requests until the
recorder's fold says its ``every``-th request is due again.

What a measured request grew is its end RSS less the last reading taken
before it began (``RSSHistory``): no reading is paid at the start of a
request whose route turns out not to be due.
"""

from __future__ import annotations

from asgi_perf.memory.rss import RSSHistory

# Measurements a route can owe at once: a fold comes every ~128 requests.
_MAX_OWED = 16


class RouteMemory:
    """The per-route schedule of RSS measurements, bounded by ``max_keys``."""

    def __init__(self, history: RSSHistory, *, first: int, every: int, max_keys: int) -> None:
        self.history = history
        self.first = max(1, first)
        self.every = max(1, every)
        self.max_keys = max_keys
        # Routes needing no measurement now: the fast path's one look-up.
        self.settled: set[str] = set()
        self._samples: dict[str, int] = {}
        # Route -> the request count at which its next measurement is due.
        self._due_at: dict[str, int] = {}
        # Route -> measurements due and not taken yet (folds come in batches).
        self._owed: dict[str, int] = {}

    def measure(self, key: str, t0_ns: int) -> int | None:
        """Bytes of RSS the request that began at ``t0_ns`` grew; None when not measured."""
        if key in self.settled:
            return None
        samples = self._samples.get(key)
        if samples is None:
            if len(self._samples) >= self.max_keys:
                return None  # past the bound: such keys are recorded as <other>
            samples = 0
        start = self.history.before(t0_ns)
        end = self.history.read()
        if start is None:
            return None  # no reading from before it began (the first request)
        samples += 1
        self._samples[key] = samples
        if samples >= self.first:
            owed = self._owed.get(key, 0) - 1
            if owed > 0:
                self._owed[key] = owed
            else:
                self._owed.pop(key, None)
                self.settled.add(key)
                self._due_at.setdefault(key, samples + self.every)
        return end - start

    def folded(self, key: str, count: int) -> None:
        """The recorder folded requests of ``key``: it now counts ``count`` of them.

        Every ``every`` requests since the last due point owe one
        measurement; the next requests of the route pay them.
        """
        due = self._due_at.get(key)
        if due is None or count < due:
            return
        owed = 1 + (count - due) // self.every
        self._due_at[key] = due + owed * self.every
        self._owed[key] = min(self._owed.get(key, 0) + owed, _MAX_OWED)
        self.settled.discard(key)

    def clear(self) -> None:
        self.settled.clear()
        self._samples.clear()
        self._due_at.clear()
        self._owed.clear()
