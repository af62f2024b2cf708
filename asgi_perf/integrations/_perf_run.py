"""One load-test run against an app wrapped by ``PerfMiddleware``, tool-neutral.

``PerfRun`` is what the Locust plugin does at test start and stop, without
Locust: reset the app's stats and start a profile window tagged with the run
id, then stop the window, save ``window.prof``, ``window.svg``, ``stats.json``
and ``budgets.json`` into ``<results>/<run id>/``, print the summary and say
which exit code the run deserves. It never imports Locust (which patches the
process with gevent), so a test drives it directly.
"""

from __future__ import annotations

import json
import logging
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from asgi_perf.budgets import BudgetReport, load_budgets
from asgi_perf.client import DEFAULT_PREFIX, PerfClient, PerfClientError
from asgi_perf.errors import ConfigError
from asgi_perf.integrations._summary import broken, summary

TAG_HEADER = "X-Perf-Tag"
DEFAULT_RESULTS = "perf-results"
# The server's default max_window_seconds: a longer request is a 400, so it is
# retried without ``seconds`` (the server then uses its own maximum).
_DEFAULT_MAX_WINDOW_S = 300
# Room for the ramp-up and the stop after the run time, so the window does not end first.
_WINDOW_SLACK_S = 30

log = logging.getLogger("asgi_perf.locust")


@dataclass(frozen=True)
class Settings:
    """What a run is asked to do (the Locust plugin reads it from its ``--perf-*`` options)."""

    results: Path = Path(DEFAULT_RESULTS)
    token: str | None = None
    prefix: str = DEFAULT_PREFIX
    engine: str | None = None
    budgets: str | None = None
    run_id: str | None = None
    window: bool = True
    run_time: int | None = None


def new_run_id() -> str:
    """``<UTC time>-<random>``: sorts by start time, and two runs in a second differ."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(2)}"


class PerfRun:
    """One run: ``start()`` when the load starts, ``finish()`` when it stops.

    ``client`` talks to the app's ``/_perf`` API and is closed by the run
    (when ``start`` fails, or in ``finish``). ``host`` is the target as the
    load tool names it, for the messages. Every request of the run should
    carry ``TAG_HEADER: run.id``; the load tool's users send it.
    """

    def __init__(self, settings: Settings, client: PerfClient, host: str) -> None:
        self.settings = settings
        self.client = client
        self.host = host
        self.id = settings.run_id or new_run_id()
        self.window_id: str | None = None
        self.results = settings.results / self.id
        self._started = False

    def start(self) -> bool:
        """Reset the app's stats and start the window; False, after one warning
        and with the client closed, when the target has no usable asgi_perf."""
        settings = self.settings
        reason: str | None
        try:
            cleared = self.client.reset()
        except PerfClientError as exc:
            reason = _reason(self.host, settings.prefix, exc)
        else:
            # An app that answers every path (a catch-all route) is not asgi_perf.
            reason = (
                None if "routes" in cleared else f"{self.host}: {settings.prefix}/ is not asgi_perf"
            )
        if reason is not None:
            self.client.close()
            log.warning("asgi_perf: %s; the load test runs without it", reason)
            return False
        self._started = True
        if settings.window:
            self.window_id = self._start_window()
        log.info(
            "asgi_perf: run %s on %s: stats reset%s; results in %s",
            self.id,
            self.host,
            f", profile window {self.window_id}" if self.window_id else "",
            self.results,
        )
        return True

    def finish(self, exit_code: int | None = None) -> int | None:
        """Collect the run (once) and return the process's exit code.

        ``exit_code`` is the one set so far (by the locustfile's own checks):
        it wins when set; otherwise a failed budget makes it 1.
        """
        if not self._started:
            return exit_code
        self._started = False
        try:
            verdicts = self._collect()
        finally:
            self.client.close()
        if verdicts is not None and _failed(verdicts) and not exit_code:
            return 1
        return exit_code

    # ----------------------------------------------------------------- start

    def _start_window(self) -> str | None:
        settings = self.settings
        seconds: float | None = None
        if settings.run_time:
            seconds = min(settings.run_time + _WINDOW_SLACK_S, _DEFAULT_MAX_WINDOW_S)
        try:
            try:
                answer = self.client.start_window(seconds, engine=settings.engine, tag=self.id)
            except PerfClientError as exc:
                if seconds is None or exc.status != 400:
                    raise
                # The app allows shorter windows than the default: take its maximum.
                answer = self.client.start_window(None, engine=settings.engine, tag=self.id)
        except PerfClientError as exc:
            log.warning("asgi_perf: no profile window for this run: %s", exc)
            return None
        window_id = str(answer["id"])
        ends_at, started = answer.get("ends_at"), answer.get("started")
        if isinstance(ends_at, (int, float)) and isinstance(started, (int, float)):
            length = ends_at - started
            if settings.run_time and length < settings.run_time:
                log.warning(
                    "asgi_perf: the profile window covers the first %.0f s of the %d s run "
                    "(the app's max_window_seconds)",
                    length,
                    settings.run_time,
                )
        return window_id

    # ----------------------------------------------------------------- finish

    def _collect(self) -> BudgetReport | None:
        """Save the run's files and print the verdicts; the verdicts, or None."""
        out = self.results
        saved: list[Path] = []
        window_links: dict[str, str] = {}
        if self.window_id is not None:
            try:
                meta = self.client.stop_window(self.window_id)
            except PerfClientError as exc:
                log.warning("asgi_perf: could not stop the profile window: %s", exc)
            else:
                window_links = dict(meta.get("links") or {})
                if not window_links:
                    log.warning(
                        "asgi_perf: the profile window was not kept: %s",
                        meta.get("error", "no links in the answer"),
                    )
        try:
            stats = self.client.stats()
        except PerfClientError as exc:
            log.warning("asgi_perf: no results for run %s: %s", self.id, exc)
            return None
        verdicts = self._verdicts(stats)
        try:
            out.mkdir(parents=True, exist_ok=True)
            saved.append(_write_json(out / "stats.json", stats))
            if verdicts is not None:
                saved.append(_write_json(out / "budgets.json", verdicts))
            # The window as pstats and a flame graph, and where each route
            # spent its time (a sampler window's breakdown).
            for link, name in (
                ("prof", "window.prof"),
                ("svg", "window.svg"),
                ("routes", "routes.json"),
            ):
                if link in window_links:
                    try:
                        body = self.client.download_link(window_links[link])
                    except PerfClientError as exc:
                        log.warning("asgi_perf: could not download the window's %s: %s", name, exc)
                        continue
                    path = out / name
                    path.write_bytes(body)
                    saved.append(path)
        except OSError as exc:
            log.error("asgi_perf: could not save the results of run %s: %s", self.id, exc)
        self._report(stats, verdicts, saved)
        return verdicts

    def _verdicts(self, stats: dict[str, Any]) -> BudgetReport | None:
        if self.settings.budgets is not None:
            try:
                return load_budgets(self.settings.budgets).check(stats)
            except (ConfigError, OSError) as exc:
                log.warning("asgi_perf: --perf-budgets: %s", exc)
                return None
        try:
            return self.client.budgets()
        except PerfClientError as exc:
            log.warning("asgi_perf: could not fetch the budget verdicts: %s", exc)
            return None

    def _report(
        self, stats: dict[str, Any], verdicts: BudgetReport | None, saved: list[Path]
    ) -> None:
        for line in broken(verdicts):
            log.warning("asgi_perf: budget broken: %s", line)
        log.info("asgi_perf: run %s: results in %s", self.id, self.results)
        # print, not only logging: the summary belongs next to the load tool's own
        # final stats on stdout, whatever the log level or --skip-log-setup.
        print("\n".join(summary(self.id, self.host, stats, verdicts, saved)), flush=True)


def _reason(host: str, prefix: str, exc: PerfClientError) -> str:
    status = exc.status
    if status == 404:
        return f"{host}: 404 on {prefix}/ — no asgi_perf there (or another --perf-prefix)"
    if status == 401:
        return f"{host}: 401 on {prefix}/ — a token is needed (--perf-token or ASGI_PERF_TOKEN)"
    if status == 403:
        return (
            f"{host}: 403 on {prefix}/ — not allowed from this client "
            "(asgi_perf answers loopback clients, or any client with its token)"
        )
    # The client's message names the URL and the cause (refused, timed out...).
    return str(exc)


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def _failed(verdicts: BudgetReport) -> bool:
    return any(v.get("verdict") == "fail" for v in verdicts.get("verdicts") or ())
