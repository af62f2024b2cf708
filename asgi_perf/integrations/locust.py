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

The run itself is ``PerfRun`` (``_perf_run.py``), which knows nothing of Locust;
the event handlers here read Locust's options, tag its users and hand over.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from locust import FastHttpUser, HttpUser, events
from locust.env import Environment
from locust.runners import WorkerRunner

from asgi_perf.client import PerfClient, PerfClientError
from asgi_perf.integrations._locust_options import add_arguments, settings_of
from asgi_perf.integrations._perf_run import TAG_HEADER, PerfRun

__all__ = ["TAG_HEADER"]

log = logging.getLogger("asgi_perf.locust")


# --------------------------------------------------------------------------- state


class _State:
    # One Locust process runs one environment; the users read ``tag`` when
    # they are created, so it is module state rather than per environment.
    tag: str | None = None
    run: PerfRun | None = None
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


def _begin(environment: Environment) -> PerfRun | None:
    settings = settings_of(environment, _State.requested_run_id)
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
    run = PerfRun(settings, client, host)
    return run if run.start() else None


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
    environment.process_exit_code = run.finish(environment.process_exit_code)


# --------------------------------------------------------------------------- registration


def _listen(hook: Any, handler: Callable[..., None]) -> None:
    # Locust's EventHook is untyped: one Any here keeps the handlers typed.
    hook.add_listener(handler)


_listen(events.init_command_line_parser, add_arguments)
_listen(events.init, _on_init)
_listen(events.test_start, _on_test_start)
_listen(events.test_stop, _on_test_stop)
_listen(events.quitting, _on_quitting)
