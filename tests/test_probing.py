"""Probing ``/_perf`` with generated requests (issue #13), over a real uvicorn.

Hypothesis throws paths (every endpoint, with generated ids, extensions and
suffixes, percent-encoded bytes, ``..``, very long segments), query strings
(known and unknown names, generated values, repeats, broken percent
escapes), headers (generated names and values, forwarding headers, values
of kilobytes) and methods at one server, started once for the module.

Every answer must be below 500, come before the timeout and hold nothing of
the files beside the profile directory (a canary); the server logs no error
and no traceback, and asgi_perf counts no internal error.

The default run is sized for the suite; ``ASGI_PERF_PROBE_EXAMPLES=10000``
runs the issue's long probe.
"""

from __future__ import annotations

import logging
import os
import secrets
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from conftest import LiveServer
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_perf import PerfMiddleware
from asgi_perf.renderers import RENDERERS

PREFIX = "/_perf"
EXAMPLES = int(os.environ.get("ASGI_PERF_PROBE_EXAMPLES", "250"))
# A hung request fails the example; the slowest honest answer is a 1 s
# window (max_window_seconds below) rendered, or a tracemalloc snapshot.
TIMEOUT_S = 20.0
# h11 refuses a request head over 16 KiB (uvicorn's default): stay under it,
# so that every request reaches asgi_perf.
MAX_HEADER_BYTES = 4000
MAX_HEADERS = 5
# Examples run with tracemalloc on, once a probe started it, before it is stopped.
TRACED_EXAMPLES = 25

# (method, path, the parameters it takes). {id}: a profile reference;
# {ext}: a format's extension; {seg}: any segment.
VIEW = ("route", "idle")
WINDOW = ("seconds", "engine", "tag", "native", "pid")
TEMPLATES = [
    ("GET", "", ()),
    ("GET", "/", ()),
    ("GET", "/stats", ("histograms",)),
    ("GET", "/budgets", ()),
    ("POST", "/reset", ()),
    ("GET", "/metrics", ()),
    ("GET", "/profiles", ("route", "kind", "tag", "limit")),
    ("GET", "/profiles/{id}", ("route",)),
    ("GET", "/profiles/{id}.{ext}", ("route", "ids", "idle", "download")),
    ("GET", "/profiles/{id}/snakeviz", VIEW),
    ("GET", "/profiles/{id}/speedscope", VIEW),
    ("GET", "/profiles/{id}/routes", VIEW),
    ("GET", "/profiles/merged.{ext}", ("route", "ids", "idle", "download")),
    ("GET", "/profile", (*WINDOW, "format", "last", "route", "idle")),
    ("GET", "/windows", WINDOW),
    ("POST", "/windows", WINDOW),
    ("POST", "/windows/{id}/stop", ()),
    ("GET", "/loop", ()),
    ("GET", "/loop/blocks.{ext}", ()),
    ("GET", "/memory", ()),
    ("GET", "/memory/timeline", ("format",)),
    ("GET", "/memory/top", ("top", "group_by")),
    ("GET", "/memory/diff", ("top", "group_by")),
    ("POST", "/memory/snapshot", ()),
    ("POST", "/memory/tracemalloc/start", ("frames",)),
    ("POST", "/memory/tracemalloc/stop", ()),
    ("GET", "/snakeviz-static/{seg}", ()),
    ("GET", "/speedscope-static/{seg}", ()),
    ("GET", "/dashboard/{seg}", ()),
    ("GET", "/dashboard/dashboard.js", ()),
    ("GET", "/{seg}", ()),
]
PARAMETERS = [
    "histograms", "route", "kind", "tag", "limit", "ids", "idle", "download", "seconds",
    "engine", "format", "last", "native", "pid", "frames", "top", "group_by",
]  # fmt: skip
FORWARDING = [
    "x-forwarded-for", "forwarded", "x-real-ip", "true-client-ip", "x-client-ip",
    "cf-connecting-ip", "x-cluster-client-ip", "x-forwarded", "x-forwarded-host",
    "x-forwarded-proto", "via",
]  # fmt: skip
HEADER_NAMES = [
    "authorization", "x-perf-profile", "accept", "accept-encoding", "range",
    "if-none-match", "if-modified-since", "cookie", "content-type", "origin", "referer",
    "user-agent", "x-request-id", "accept-language",
]  # fmt: skip
# Framing belongs to httpx and h11: a generated one would only break the request.
FRAMING = {"host", "content-length", "transfer-encoding", "connection", "expect", "upgrade", "te"}
TOKEN_CHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
TRICKY_SEGMENTS = [
    "..", ".", "%2e%2e", "%2E%2E%2F", "%2F", "%5C", "%00", "%0A", "%0D%0A", "%", "%zz", "%4",
    "%C2", "%FF", "~", "*", "..%2F..%2Fcanary.txt", "%2e%2e%2fcanary.txt", "latest", "slowest",
    "merged", "index.html", "dashboard.js", "api.js", "..;", "%252e%252e",
]  # fmt: skip


@dataclass
class Probed:
    """The server under probe and what the probes may not see."""

    server: LiveServer
    middleware: PerfMiddleware
    canary: bytes
    ids: list[str]
    client: httpx.Client
    records: list[logging.LogRecord] = field(default_factory=list)
    traced_examples: int = 0


class _Keep(logging.Handler):
    def __init__(self, into: list[logging.LogRecord]) -> None:
        super().__init__(logging.WARNING)
        self._into = into

    def emit(self, record: logging.LogRecord) -> None:
        self._into.append(record)


async def _hello(request: Request) -> Response:
    return PlainTextResponse("hello")


@pytest.fixture(scope="module")
def probed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Probed]:
    base = tmp_path_factory.mktemp("probe")
    canary = f"CANARY-{secrets.token_hex(16)}".encode()
    # Beside the profile directory, under names a traversal would try.
    for name in ("canary.txt", "0123456789abcdef.prof", "0123456789abcdef.json", "index.html"):
        (base / name).write_bytes(canary)
    was_tracing = tracemalloc.is_tracing()
    middleware = PerfMiddleware(
        Starlette(routes=[Route("/hello/{name}", _hello)]),
        strict=True,
        profile_dir=str(base / "profiles"),
        # Every window a probe may open is short: no probe waits long.
        max_window_seconds=1,
        continuous=True,
        continuous_minutes=1,
    )
    server = LiveServer(middleware)
    server.start()
    records: list[logging.LogRecord] = []
    handler = _Keep(records)
    # uvicorn's loggers do not propagate to the root: listen to them directly.
    loggers = [logging.getLogger(name) for name in ("uvicorn", "asgi_perf")]
    for logger in loggers:
        logger.addHandler(handler)
    # One client for every example: a connection per request would cost more
    # than most answers.
    client = httpx.Client(base_url=server.url, trust_env=False, timeout=TIMEOUT_S)
    try:
        ids = [
            client.get("/hello/x", headers={"X-Perf-Profile": "1"}).headers["x-perf-profile-id"]
            for _ in range(3)
        ]
        yield Probed(server, middleware, canary, ids, client, records)
    finally:
        client.close()
        for logger in loggers:
            logger.removeHandler(handler)
        server.stop()
        # A probe may have started tracemalloc: it must not slow the rest of the suite.
        if tracemalloc.is_tracing() and not was_tracing:
            tracemalloc.stop()


# --------------------------------------------------------------------------- strategies


def _encoded(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe="")


def _bytes_encoded(data: bytes) -> str:
    return "".join(f"%{b:02X}" for b in data)


def _one_in(n: int) -> st.SearchStrategy[bool]:
    """True about once in ``n`` draws."""
    return st.sampled_from([False] * (n - 1) + [True])


segments = st.one_of(
    st.sampled_from(TRICKY_SEGMENTS),
    st.text(max_size=30).map(_encoded),
    st.binary(max_size=20).map(_bytes_encoded),
    st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=30),
    # Very long segments.
    st.integers(256, 3000).map(lambda n: "a" * n),
    st.integers(100, 900).map(lambda n: "%41" * n),
)
# The seeded profiles' ids, filled in when the request is sent: strategies
# (and explicit examples) are built before the server runs.
ID_SLOTS = ("{id0}", "{id1}", "{id2}")
profile_refs = st.one_of(
    st.sampled_from([*ID_SLOTS, "latest", "slowest", "merged"]),
    st.tuples(
        st.sampled_from([*ID_SLOTS, "latest"]),
        st.sampled_from(["%0A", "%0D", "%0D%0A", "%00", "%20", "/..", "%2F..", "0", "X"]),
    ).map("".join),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=14, max_size=18),
    segments,
)
extensions = st.one_of(
    st.sampled_from([r.file_extension.lstrip(".") for r in RENDERERS.values()]),
    st.sampled_from(["svg%0A", "prof/..", "json.", "", "SVG", "exe"]),
    segments,
)

generic_values = st.one_of(
    st.integers().map(str),
    st.sampled_from(["", "0", "1", "-1", "maybe", "latest", "<process>", "%", "\x00"]),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=40),
)
whole_numbers = st.one_of(
    st.integers(-5, 20_000).map(str),
    st.sampled_from(["", "-1", "1e3", "0x10", "1_0", " 1", "+1", "1.0", "²", "٣", "\uff11"]),
    # Past what asgi_perf bounds, and past what int() takes (4300 digits).
    st.sampled_from([19, 20, 4301, 6000]).map(lambda n: "9" * n),
)
numbers = st.one_of(
    whole_numbers,
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "inf", "-inf", "1e309", "0.5", "1", "1.0", "0x1p0", "1e-400"]),
)
switches = st.sampled_from(["", "0", "1", "true", "false", "yes", "no", "maybe", "TRUE", "1 "])
# What each parameter takes, valid or nearly: probes get past the first check.
TYPED_VALUES: dict[str, st.SearchStrategy[str]] = {
    "limit": whole_numbers,
    "last": whole_numbers,
    "pid": st.one_of(whole_numbers, st.just(str(os.getpid()))),
    "frames": whole_numbers,
    "top": whole_numbers,
    "seconds": numbers,
    "histograms": switches,
    "idle": switches,
    "download": switches,
    "native": switches,
    "engine": st.sampled_from(["sampler", "pyinstrument", "yappi", "cprofile", "pyspy", "x"]),
    "format": st.sampled_from([*RENDERERS, "csv", "svg ", "SVG", "prof.", "../prof"]),
    "group_by": st.sampled_from(["lineno", "filename", "traceback", "LINENO", "x"]),
    "kind": st.sampled_from(["request", "window", "lifespan", "x"]),
    "route": st.one_of(
        st.sampled_from(["GET /hello/{name}", "<process>", "GET /nope", "/hello/{name}"]),
        st.text(max_size=30),
    ),
    "tag": st.text(max_size=80),
    "ids": st.lists(
        st.sampled_from([*ID_SLOTS, "0123456789abcdef", "latest", "x"]), max_size=4
    ).map(",".join),
}


@st.composite
def queries(draw: st.DrawFn, accepted: tuple[str, ...]) -> str:
    # Mostly the endpoint's own parameters with values of their kind, so
    # that probes get past the check of names to the values; now and then
    # any other name, or any value.
    own = st.sampled_from(accepted) if accepted else st.sampled_from(PARAMETERS)
    other = st.one_of(st.sampled_from(PARAMETERS), st.text(max_size=12))
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        name = draw(other if draw(_one_in(8)) else own)
        kind = TYPED_VALUES.get(name)
        value = draw(generic_values if kind is None or draw(_one_in(5)) else kind)
        style = draw(st.sampled_from(["encoded"] * 6 + ["bare", "broken"]))
        if style == "bare":
            parts.append(_encoded(name))  # a name without '='
        elif style == "broken":
            bad = draw(st.sampled_from(["%", "%z", "%zz", "%C2", "%E2%82", "%%", "%G0"]))
            parts.append(f"{_encoded(name)}={_encoded(value)[:20]}{bad}")
        else:
            parts.append(f"{_encoded(name)}={_encoded(value)}")
    # Repeats: the same parameter twice, as parsers may take the first or the last.
    if draw(_one_in(4)):
        parts.append(draw(st.sampled_from(parts)))
    return "&".join(parts)


header_values = st.one_of(
    st.sampled_from(
        [
            "127.0.0.1",
            "for=127.0.0.1",
            "1",
            "Bearer x",
            "Bearer",
            "bearer x",
            "gzip",
            "bytes=0-1",
            "text/html",
            "*/*",
            "application/openmetrics-text; version=1.0.0",
        ]
    ),
    # Visible ASCII and obs-text: what h11 accepts in a value.
    st.binary(min_size=1, max_size=200).map(
        lambda b: bytes(c if 0x21 <= c <= 0x7E or c >= 0x80 else 0x61 for c in b)
    ),
    st.integers(1000, MAX_HEADER_BYTES - 100).map(lambda n: b"v" * n),
)
header_names = st.one_of(
    st.sampled_from(HEADER_NAMES),
    st.text(alphabet=TOKEN_CHARS, min_size=1, max_size=30).filter(
        lambda n: n.lower() not in FRAMING
    ),
)


@st.composite
def headers(draw: st.DrawFn) -> list[tuple[str, bytes | str]]:
    drawn = draw(st.lists(st.tuples(header_names, header_values), max_size=MAX_HEADERS))
    # One request in ten from behind a proxy: the gate refuses it (403), and
    # a probe refused at the gate reaches nothing further.
    if draw(_one_in(10)):
        drawn.insert(0, (draw(st.sampled_from(FORWARDING)), draw(header_values)))
    found: list[tuple[str, bytes | str]] = []
    budget = MAX_HEADER_BYTES
    for name, value in drawn:
        size = len(name) + len(value) + 4
        if size <= budget:
            budget -= size
            found.append((name, value))
    return found


methods = st.one_of(
    st.sampled_from(["GET", "POST", "HEAD", "PUT", "DELETE", "PATCH", "OPTIONS"]),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=10).filter(
        lambda m: m != "CONNECT"
    ),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str]:
    """(method, raw request target)."""
    template_method, template, accepted = draw(st.sampled_from(TEMPLATES))
    path = template
    if "{id}" in path:
        path = path.replace("{id}", draw(profile_refs))
    if "{ext}" in path:
        path = path.replace("{ext}", draw(extensions))
    if "{seg}" in path:
        path = path.replace("{seg}", draw(segments))
    # Now and then more after it: a trailing slash, a segment, a traversal.
    if draw(_one_in(5)):
        path += draw(st.one_of(st.just("/"), segments.map(lambda s: "/" + s)))
    method = draw(methods) if draw(_one_in(5)) else template_method
    query = "" if draw(_one_in(4)) else draw(queries(accepted))
    return method, f"{PREFIX}{path}" + (f"?{query}" if query else "")


# --------------------------------------------------------------------------- the probe


# The cases of issue #13, always tried first; then generated ones.
@example(request=("GET", "/_perf/profiles?limit=%C2%B2"), sent=[], body=b"")
@example(request=("GET", "/_perf/profiles?limit=" + "9" * 5000), sent=[], body=b"")
@example(request=("GET", "/_perf/memory/top?top=%D9%A3"), sent=[], body=b"")
@example(request=("POST", "/_perf/windows?pid=1e3"), sent=[], body=b"")
@example(request=("GET", "/_perf/profiles/{id0}%0A.svg"), sent=[], body=b"")
@example(request=("POST", "/_perf/windows/{id0}%0A/stop"), sent=[], body=b"")
@example(request=("GET", "/_perf/stats"), sent=[("True-Client-IP", "127.0.0.1")], body=b"")
@example(request=("GET", "/_perf/snakeviz-static/..%2F..%2Fcanary.txt"), sent=[], body=b"")
@example(request=("GET", "/_perf/profiles/..%2F0123456789abcdef.prof"), sent=[], body=b"")
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(request=requests(), sent=headers(), body=st.one_of(st.just(b""), st.binary(max_size=64)))
def test_no_request_breaks_the_perf_api(
    probed: Probed,
    request: tuple[str, str],
    sent: list[tuple[str, bytes | str]],
    body: bytes,
) -> None:
    method, target = request
    # Only what this example caused: a failure is not blamed on the next one.
    logged_before = len(probed.records)
    errors_before = probed.middleware.core.internal_errors
    for slot, profile_id in zip(ID_SLOTS, probed.ids, strict=True):
        target = target.replace(slot, profile_id)
    client = probed.client
    built = client.build_request(
        method,
        "/",
        headers=sent,
        content=body or None,
        # The target exactly as generated: httpx would normalise it.
        extensions={"target": target.encode("ascii")},
    )
    response = client.send(built)
    # For --hypothesis-show-statistics: what the probes got back.
    event(f"status {response.status_code}")
    assert response.status_code < 500, (response.status_code, response.text[:500])
    assert probed.canary not in response.content
    if response.status_code >= 400 and method != "HEAD" and target.startswith(PREFIX + "/"):
        # Every error under the prefix is asgi_perf's own JSON answer.
        assert response.headers.get("content-type") == "application/json", response.text[:200]
    records = probed.records[logged_before:]
    logged = [(r.name, r.levelname, r.getMessage()) for r in records]
    assert not [r for r in records if r.exc_info or r.levelno >= logging.ERROR], logged
    assert probed.middleware.core.internal_errors == errors_before
    if tracemalloc.is_tracing():
        # A probe started it: probes see it on for a while, then it is
        # stopped, as it slows every allocation of the process, Hypothesis's too.
        probed.traced_examples += 1
        if probed.traced_examples >= TRACED_EXAMPLES:
            probed.traced_examples = 0
            client.post(f"{PREFIX}/memory/tracemalloc/stop").raise_for_status()


def test_the_probe_left_no_error_behind(probed: Probed) -> None:
    # Runs after the probe in file order: anything logged after its last answer.
    stats = probed.client.get(f"{PREFIX}/stats").json()
    assert stats["internal_errors"] == 0
    assert probed.middleware.core.internal_errors == 0
    serious = [r.getMessage() for r in probed.records if r.levelno >= logging.ERROR or r.exc_info]
    assert serious == []
    # The canary is still where it was, next to the profile directory.
    directory = Path(str(probed.middleware.core.store.profile_dir))
    assert (directory.parent / "canary.txt").read_bytes() == probed.canary
