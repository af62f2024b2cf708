"""A small synchronous client for the ``/_perf`` API of a running app.

Used by the ``asgi-perf`` CLI and the Locust plugin. Every failure (network,
HTTP status, a body that is not what asgi_perf sends) becomes one
:class:`PerfClientError` whose message is a single line a person can act on.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import quote

import httpx

from asgi_perf.config import PerfConfig

if TYPE_CHECKING:
    from asgi_perf.budgets import BudgetReport

__all__ = ["DEFAULT_PREFIX", "PerfClient", "PerfClientError"]

# Where the middleware serves the API unless told otherwise: its own default.
DEFAULT_PREFIX: str = PerfConfig.prefix
TOKEN_ENV = "ASGI_PERF_TOKEN"
# Content-Disposition as the server writes it: attachment; filename="name.ext"
_FILENAME_RE = re.compile(r'filename\*?=(?:UTF-8\'\')?"?([^";]+)"?', re.IGNORECASE)
_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


class PerfClientError(Exception):
    """One line that says what went wrong and, where possible, what to do.

    ``status`` is the HTTP status when the server answered (else None) and
    ``url`` the URL asked for.
    """

    def __init__(self, message: str, *, status: int | None = None, url: str = "") -> None:
        # Callers print the message as is: never let it span lines.
        super().__init__(" ".join(message.split()))
        self.status = status
        self.url = url


class PerfClient:
    """The ``/_perf`` API of the app at ``base_url`` (``http://127.0.0.1:8000``).

    A URL that already ends with the prefix works too. ``token`` defaults to
    the ``ASGI_PERF_TOKEN`` environment variable.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        prefix: str = DEFAULT_PREFIX,
        timeout: float = 30.0,
    ) -> None:
        url = base_url.strip()
        if "://" not in url:
            # "localhost:8000" is what people type; httpx needs a scheme.
            url = f"http://{url}"
        prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
        url = url.rstrip("/")
        if prefix and url.endswith(prefix):
            url = url[: -len(prefix)]
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise PerfClientError(f"invalid URL {base_url!r}: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise PerfClientError(f"invalid URL {base_url!r}: expected http(s)://host[:port]")
        self.base_url = url
        self.prefix = prefix
        self.api_url = url + prefix
        self.timeout = timeout
        token = token if token is not None else os.environ.get(TOKEN_ENV) or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        # trust_env=False: a proxy from the environment must not intercept
        # requests to a loopback app, and .netrc must not add credentials.
        # No keep-alive: a pooled connection the server closes as a request
        # goes out on it (its idle timeout, uvicorn's 5 s, against a CLI
        # polling every 5 s) fails that request with "Server disconnected
        # without sending a response". Retrying would not do: POSTs (reset,
        # windows) and GET /profile (it starts a window) are not safe to send
        # twice. A connection per request costs a handshake, on a client
        # that makes a request every few seconds at most.
        self._http = httpx.Client(
            timeout=timeout,
            headers=headers,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    # ----------------------------------------------------------------- lifecycle

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> PerfClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- JSON API

    def stats(self, *, histograms: bool = False) -> dict[str, Any]:
        """``GET {prefix}/stats``: the snapshot.

        ``histograms``: each route with its histograms too (``?histograms=1``),
        what ``asgi_perf.stats.merge.merge_snapshots`` needs to add instances exactly.
        """
        return self._json("GET", "/stats", params={"histograms": "1"} if histograms else None)

    def budgets(self) -> BudgetReport:
        """``GET {prefix}/budgets``: the verdicts of the app's own budgets."""
        # As the server wrote it (BudgetSet.check); a JSON object, not checked further.
        return cast("BudgetReport", self._json("GET", "/budgets"))

    def reset(self) -> dict[str, Any]:
        """``POST {prefix}/reset``: clears the numbers; the snapshot it cleared."""
        return self._json("POST", "/reset")

    def start_window(
        self, seconds: float | None, engine: str | None = None, tag: str | None = None
    ) -> dict[str, Any]:
        """``POST {prefix}/windows``: a profile window; ``None`` seconds = the app's maximum."""
        params = _params(seconds=seconds, engine=engine, tag=tag)
        return self._json("POST", "/windows", params=params)

    def stop_window(self, window_id: str) -> dict[str, Any]:
        """``POST {prefix}/windows/{id}/stop``: the stored profile's metadata with links."""
        return self._json("POST", f"/windows/{quote(window_id, safe='')}/stop")

    def profiles(
        self,
        route: str | None = None,
        kind: str | None = None,
        tag: str | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        """``GET {prefix}/profiles``: stored profiles, newest first."""
        params = _params(route=route, kind=kind, tag=tag, limit=limit)
        found = self._json("GET", "/profiles", params=params).get("profiles")
        return [p for p in found if isinstance(p, dict)] if isinstance(found, list) else []

    def meta(self, ref: str, route: str | None = None) -> dict[str, Any]:
        """``GET {prefix}/profiles/{ref}``: metadata of an id, ``latest`` or ``slowest``."""
        return self._json("GET", f"/profiles/{quote(ref, safe='')}", params=_params(route=route))

    def memory(self) -> dict[str, Any]:
        """``GET {prefix}/memory``: now, the leak slope and its verdict, routes, budgets."""
        return self._json("GET", "/memory")

    def memory_timeline(self) -> dict[str, Any]:
        """``GET {prefix}/memory/timeline``: every point kept (409 when the timeline is off)."""
        return self._json("GET", "/memory/timeline", params={"format": "json"})

    def tracemalloc_start(self, frames: int) -> dict[str, Any]:
        """``POST {prefix}/memory/tracemalloc/start``; ``started`` says whether this call did."""
        return self._json("POST", "/memory/tracemalloc/start", params=_params(frames=frames))

    def tracemalloc_stop(self) -> dict[str, Any]:
        """``POST {prefix}/memory/tracemalloc/stop``."""
        return self._json("POST", "/memory/tracemalloc/stop")

    def memory_baseline(self) -> dict[str, Any]:
        """``POST {prefix}/memory/snapshot``: the baseline the next diff compares with."""
        return self._json("POST", "/memory/snapshot")

    def memory_diff(self, top: int, group_by: str) -> dict[str, Any]:
        """``GET {prefix}/memory/diff``: what grew since the baseline, largest first."""
        return self._json("GET", "/memory/diff", params=_params(top=top, group_by=group_by))

    def db(self, route: str | None = None, limit: int | None = None) -> dict[str, Any]:
        """``GET {prefix}/db``: routes by DB time, N+1s, slow statements (409: DB capture off)."""
        return self._json("GET", "/db", params=_params(route=route, limit=limit))

    # ----------------------------------------------------------------- downloads

    def profile(
        self,
        seconds: float | None,
        engine: str | None = None,
        fmt: str = "prof",
        *,
        route: str | None = None,
        last: int | None = None,
    ) -> tuple[bytes, str]:
        """``GET {prefix}/profile``: profile the process for ``seconds``, then download.

        ``last`` instead: the last N seconds of the app's continuous sampler,
        at once. ``route`` keeps one route's samples. Returns the body and
        the file name the server suggests.
        """
        params = _params(seconds=seconds, engine=engine, format=fmt, route=route, last=last)
        # The answer only starts once the window has ended.
        timeout = httpx.Timeout(self.timeout, read=(seconds or 0) + 30.0)
        response = self._request("GET", self.api_url + "/profile", params, timeout)
        return response.content, _filename(response, f"profile.{fmt}")

    def download(self, ref: str, fmt: str = "prof", route: str | None = None) -> tuple[bytes, str]:
        """``GET {prefix}/profiles/{ref}.{fmt}``; the body and the suggested file name."""
        url = f"{self.api_url}/profiles/{quote(ref, safe='')}.{quote(fmt, safe='.')}"
        response = self._request("GET", url, _params(route=route))
        return response.content, _filename(response, f"{_safe(ref)}.{fmt}")

    def download_link(self, path: str) -> bytes:
        """GET a path from an answer's ``links`` (``/_perf/profiles/…``) or a full URL."""
        url = path if "://" in path else self.base_url + "/" + path.lstrip("/")
        return self._request("GET", url, None).content

    # ----------------------------------------------------------------- plumbing

    def _json(
        self, method: str, path: str, params: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        url = self.api_url + path
        response = self._request(method, url, params)
        try:
            data = response.json()
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise PerfClientError(
                f"{url}: the answer is not JSON (is asgi_perf installed at {self.prefix}?)",
                status=response.status_code,
                url=url,
            ) from None
        if not isinstance(data, dict):
            raise PerfClientError(
                f"{url}: unexpected answer (a JSON object was expected)",
                status=response.status_code,
                url=url,
            )
        return data

    def _request(
        self,
        method: str,
        url: str,
        params: Mapping[str, str] | None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(
                method,
                url,
                params=params,
                timeout=timeout if timeout is not None else self.timeout,
            )
        except httpx.ConnectError as exc:
            raise PerfClientError(f"cannot reach {url}: {_connect_reason(exc)}", url=url) from None
        except httpx.TimeoutException:
            raise PerfClientError(f"{url}: no answer (timed out)", url=url) from None
        except httpx.HTTPError as exc:
            raise PerfClientError(
                f"{url}: {type(exc).__name__}: {exc or 'request failed'}", url=url
            ) from None
        if response.status_code >= 400:
            raise _status_error(response, url, self.prefix)
        return response


def _params(**values: Any) -> dict[str, str]:
    """Query parameters without the ones left at None; numbers without a needless '.0'."""
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        out[name] = str(value)
    return out


def _connect_reason(exc: httpx.ConnectError) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "connection refused"
    if "name or service not known" in text or "nodename nor servname" in text:
        return "unknown host"
    return str(exc) or "connection failed"


def _server_message(response: httpx.Response) -> str | None:
    """The ``error`` text of an asgi_perf JSON error body, if that is what came back."""
    try:
        data = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    return None


def _status_error(response: httpx.Response, url: str, prefix: str) -> PerfClientError:
    status = response.status_code
    said = _server_message(response)
    if status == 401:
        message = f"401 from {url}: a valid token is required (--token or {TOKEN_ENV})"
    elif status == 403:
        message = f"403 from {url}: {said or 'forbidden'}"
        if said is None or "loopback" not in said:
            message += " (asgi_perf answers loopback clients, or any client with the token)"
    elif status == 404 and said is None:
        # Not asgi_perf's own 404 (those are JSON with "error"): the app's.
        message = f"404: no asgi_perf at {url} (is PerfMiddleware installed, prefix {prefix}?)"
    else:
        reason = said or response.reason_phrase or "error"
        message = f"{status} from {url}: {reason}"
    return PerfClientError(message, status=status, url=url)


def _filename(response: httpx.Response, fallback: str) -> str:
    """The file name from Content-Disposition, reduced to a safe base name."""
    header = response.headers.get("content-disposition", "")
    match = _FILENAME_RE.search(header)
    name = match.group(1) if match else fallback
    return _safe(os.path.basename(name.replace("\\", "/"))) or _safe(fallback)


def _safe(name: str) -> str:
    # A hostile server must not pick a path (../, /etc/...) or a dotfile.
    return _SAFE_NAME_RE.sub("-", name).lstrip(".-") or "profile"
