"""Locust plugin: import it in a locustfile and every run reports what asgi_perf saw.

.. code-block:: python

    # locustfile.py
    import asgi_perf.integrations.locust  # noqa: F401

Against ``--host`` (an app wrapped by ``PerfMiddleware``), on the master or a
standalone Locust:

- test start: reset the app's stats and start a profile window tagged with the
  run id (``<UTC time>-<random>``, or ``--perf-run-id``);
- during the run: every ``HttpUser`` / ``FastHttpUser`` request carries
  ``X-Perf-Tag: <run id>``, on workers too;
- test stop: stop the window and save ``window.prof``, ``window.svg``,
  ``stats.json`` and ``budgets.json`` into ``<--perf-results>/<run id>/``, print
  the budget verdicts, and make Locust exit with 1 when a budget fails.

A target without asgi_perf, or one that refuses access, gets one warning and
the load test runs as if the plugin were not there.
"""

from __future__ import annotations

import functools
import json
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from locust import FastHttpUser, HttpUser, events
from locust.env import Environment
from locust.runners import WorkerRunner

from asgi_perf.budgets import load_budgets
from asgi_perf.client import PerfClient, PerfClientError
from asgi_perf.errors import ConfigError
from asgi_perf.integrations._locust_options import Settings, add_arguments
from asgi_perf.integrations._summary import broken, summary

__all__ = ["TAG_HEADER"]

TAG_HEADER = "X-Perf-Tag"
# The server's default max_window_seconds: a longer request is a 400, so it is
# retried without ``seconds`` (the server then uses its own maximum).
_DEFAULT_MAX_WINDOW_S = 300
# Room for the ramp-up and the stop after --run-time, so the window does not end first.
_WINDOW_SLACK_S = 30

log = logging.getLogger("asgi_perf.locust")


# --------------------------------------------------------------------------- state


@dataclass
class _Run:
    id: str
    host: str
    client: PerfClient
    settings: Settings
    window_id: str | None = None


class _State:
    # One Locust process runs one environment; the users read ``tag`` when
    # they are created, so it is module state rather than per environment.
    tag: str | None = None
    run: _Run | None = None
    # --perf-run-id as given: the option itself carries each run's id to the workers.
    requested_run_id: str | None = None


def _on_init(environment: Environment, **_: Any) -> None:
    if environment.parsed_options is not None and not isinstance(environment.runner, WorkerRunner):
        _State.requested_run_id = getattr(environment.parsed_options, "perf_run_id", None)


class _QuietOwnRequests(logging.Filter):
    """Drops httpx's INFO line for the plugin's own calls to the app's API.

    Locust logs at INFO, so each of them would show up among its output; the
    plugin logs what it did in its own words.
    """

    def __init__(self) -> None:
        super().__init__()
        self.prefixes: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if record.levelno > logging.INFO or not isinstance(args, tuple) or len(args) < 2:
            return True
        return not str(args[1]).startswith(tuple(self.prefixes))


_quiet_httpx = _QuietOwnRequests()
logging.getLogger("httpx").addFilter(_quiet_httpx)


# --------------------------------------------------------------------------- tagging


def _tag_user(user: Any) -> None:
    tag = _State.tag
    if tag is None:
        return
    client = getattr(user, "client", None)
    # HttpUser: a requests.Session; FastHttpUser: geventhttpclient's UserAgent
    # holds the headers sent with every request.
    headers = getattr(client, "headers", None)
    if headers is None:
        headers = getattr(getattr(client, "client", None), "default_headers", None)
    if headers is not None and TAG_HEADER not in headers:
        headers[TAG_HEADER] = tag


def _install_tagging(user_class: type[Any]) -> None:
    """Wrap ``user_class.__init__`` so every new user's session sends the tag.

    Locust has no per-user event and builds ``self.client`` inside
    ``__init__``; wrapping the two base classes reaches every user class of the
    locustfile (they call ``super().__init__``) without asking users to change
    code, and the default header can still be overridden per request.
    """
    original: Callable[..., None] = user_class.__init__
    if getattr(original, "_asgi_perf_tagging", False):
        return

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        _tag_user(self)

    __init__._asgi_perf_tagging = True  # type: ignore[attr-defined]
    setattr(user_class, "__init__", __init__)  # noqa: B010 - mypy refuses a method assignment


_install_tagging(HttpUser)
_install_tagging(FastHttpUser)


# --------------------------------------------------------------------------- test start


def _on_test_start(environment: Environment, **_: Any) -> None:
    options = environment.parsed_options
    if isinstance(environment.runner, WorkerRunner):
        # The master chose the id; Locust copied its options (perf_run_id
        # included) into this worker's from the spawn message that started the test.
        _State.tag = getattr(options, "perf_run_id", None)
        return
    if _State.run is not None:
        # A test started without the previous one stopping (web UI): close it first.
        _finish(environment)
    _State.run = _begin(environment)
    _State.tag = _State.run.id if _State.run is not None else None
    if options is not None:
        # Custom options travel to the workers with every spawn message, ahead
        # of their test_start and of their users: late-joining workers included.
        options.perf_run_id = _State.tag


def _new_run_id() -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-{secrets.token_hex(2)}"


def _begin(environment: Environment) -> _Run | None:
    settings = Settings.of(environment, _State.requested_run_id)
    host = environment.host
    if not host:
        log.warning("asgi_perf: no --host; the load test runs without it")
        return None
    try:
        client = PerfClient(host, token=settings.token, prefix=settings.prefix)
    except PerfClientError as exc:
        log.warning("asgi_perf: %s; the load test runs without it", exc)
        return None
    _quiet_httpx.prefixes.add(client.api_url)
    reason: str | None
    try:
        cleared = client.reset()
    except PerfClientError as exc:
        reason = _reason(host, settings.prefix, exc)
    else:
        # An app that answers every path (a catch-all route) is not asgi_perf.
        reason = None if "routes" in cleared else f"{host}: {settings.prefix}/ is not asgi_perf"
    if reason is not None:
        client.close()
        log.warning("asgi_perf: %s; the load test runs without it", reason)
        return None
    run = _Run(settings.run_id or _new_run_id(), host, client, settings)
    if settings.window:
        run.window_id = _start_window(run)
    log.info(
        "asgi_perf: run %s on %s: stats reset%s; results in %s",
        run.id,
        host,
        f", profile window {run.window_id}" if run.window_id else "",
        settings.results / run.id,
    )
    return run


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


def _start_window(run: _Run) -> str | None:
    settings = run.settings
    seconds: float | None = None
    if settings.run_time:
        seconds = min(settings.run_time + _WINDOW_SLACK_S, _DEFAULT_MAX_WINDOW_S)
    try:
        try:
            answer = run.client.start_window(seconds, engine=settings.engine, tag=run.id)
        except PerfClientError as exc:
            if seconds is None or exc.status != 400:
                raise
            # The app allows shorter windows than the default: take its maximum.
            answer = run.client.start_window(None, engine=settings.engine, tag=run.id)
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


# --------------------------------------------------------------------------- test stop


def _on_test_stop(environment: Environment, **_: Any) -> None:
    if not isinstance(environment.runner, WorkerRunner):
        _finish(environment)


def _on_quitting(environment: Environment, **_: Any) -> None:
    # Ctrl+C in a headless run fires ``quitting`` before ``test_stop`` and
    # before Locust reads the exit code: collect now so it still counts.
    if not isinstance(environment.runner, WorkerRunner):
        _finish(environment)


def _finish(environment: Environment) -> None:
    run = _State.run
    if run is None:
        return  # no asgi_perf on the target, or this run is already collected
    _State.run = None
    _State.tag = None
    try:
        verdicts = _collect(run)
    finally:
        run.client.close()
    # A code set by the locustfile's own checks wins over ours.
    if verdicts is not None and _failed(verdicts) and not environment.process_exit_code:
        environment.process_exit_code = 1


def _collect(run: _Run) -> dict[str, Any] | None:
    """Save the run's files and print the verdicts; the verdicts, or None."""
    settings = run.settings
    out = settings.results / run.id
    saved: list[Path] = []
    window_links: dict[str, str] = {}
    if run.window_id is not None:
        try:
            meta = run.client.stop_window(run.window_id)
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
        stats = run.client.stats()
    except PerfClientError as exc:
        log.warning("asgi_perf: no results for run %s: %s", run.id, exc)
        return None
    verdicts = _verdicts(run, stats)
    try:
        out.mkdir(parents=True, exist_ok=True)
        saved.append(_write_json(out / "stats.json", stats))
        if verdicts is not None:
            saved.append(_write_json(out / "budgets.json", verdicts))
        for fmt in ("prof", "svg"):
            if fmt in window_links:
                try:
                    body = run.client.download_link(window_links[fmt])
                except PerfClientError as exc:
                    log.warning("asgi_perf: could not download the window's .%s: %s", fmt, exc)
                    continue
                path = out / f"window.{fmt}"
                path.write_bytes(body)
                saved.append(path)
    except OSError as exc:
        log.error("asgi_perf: could not save the results of run %s: %s", run.id, exc)
    _report(run, stats, verdicts, saved)
    return verdicts


def _verdicts(run: _Run, stats: dict[str, Any]) -> dict[str, Any] | None:
    if run.settings.budgets is not None:
        try:
            return load_budgets(run.settings.budgets).check(stats)
        except (ConfigError, OSError) as exc:
            log.warning("asgi_perf: --perf-budgets: %s", exc)
            return None
    try:
        return run.client.budgets()
    except PerfClientError as exc:
        log.warning("asgi_perf: could not fetch the budget verdicts: %s", exc)
        return None


def _write_json(path: Path, data: Any) -> Path:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path


def _failed(verdicts: dict[str, Any]) -> bool:
    return any(v.get("verdict") == "fail" for v in verdicts.get("verdicts") or ())


def _report(
    run: _Run, stats: dict[str, Any], verdicts: dict[str, Any] | None, saved: list[Path]
) -> None:
    for line in broken(verdicts):
        log.warning("asgi_perf: budget broken: %s", line)
    log.info("asgi_perf: run %s: results in %s", run.id, run.settings.results / run.id)
    # print, not only logging: the summary belongs next to Locust's own final
    # stats on stdout, whatever the log level or --skip-log-setup.
    print("\n".join(summary(run.id, run.host, stats, verdicts, saved)), flush=True)


# --------------------------------------------------------------------------- registration


def _listen(hook: Any, handler: Callable[..., None]) -> None:
    # Locust's EventHook is untyped: one Any here keeps the handlers typed.
    hook.add_listener(handler)


_listen(events.init_command_line_parser, add_arguments)
_listen(events.init, _on_init)
_listen(events.test_start, _on_test_start)
_listen(events.test_stop, _on_test_stop)
_listen(events.quitting, _on_quitting)
