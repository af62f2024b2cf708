"""``GET /_perf/metrics``: Prometheus and OpenMetrics, read back by real parsers and servers.

The exposition is parsed with ``prometheus_client``'s own parsers and
checked against ``/_perf/stats`` of the same real uvicorn server; the slow
test starts a real Prometheus server (Debian package ``prometheus``) that
scrapes two apps and answers ``histogram_quantile`` through its HTTP API.
"""

from __future__ import annotations

import asyncio
import gzip
import math
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from asgi_perf import PerfMiddleware
from asgi_perf.api._prometheus import (
    EDGE_INDICES,
    EDGES_NS,
    LE_LABELS,
    NOMINAL_EDGES_S,
    cumulative_buckets,
)
from asgi_perf.stats.histogram import Histogram, bucket_index
from asgi_perf.stats.merge import merge_snapshots

OPENMETRICS = "application/openmetrics-text; version=1.0.0"
# What Prometheus 2.x sends when it scrapes.
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
TEXT_0_0_4 = "text/plain; version=0.0.4; charset=utf-8"
PLAIN = {"Accept-Encoding": "identity"}
BUDGETS = {
    "/sleep/*": {"p99_ms": 10_000},  # 25 samples: pass
    "/boom": {"error_rate": 0.01, "min_samples": 1},  # every request fails
    "/teapot": {"p50_ms": 1_000},  # 2 samples of 20 needed: insufficient
}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def sleep_ms(request: Request) -> Response:
    await asyncio.sleep(request.path_params["ms"] / 1000)
    return PlainTextResponse("slept")


async def boom(request: Request) -> Response:
    raise RuntimeError("boom")


async def teapot(request: Request) -> Response:
    return PlainTextResponse("no coffee", status_code=418)


def make_app(**perf: Any) -> PerfMiddleware:
    routes = [Route("/sleep/{ms:int}", sleep_ms), Route("/boom", boom), Route("/teapot", teapot)]
    return PerfMiddleware(Starlette(routes=routes), **perf)


def parse(text: str, parser: Callable[[str], Any] = text_string_to_metric_families) -> Samples:
    """Every sample by name and sorted labels."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in parser(text)
        for s in family.samples
    }


def labelled(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def buckets_of(samples: Samples, route: str) -> list[tuple[float, float]]:
    """(le, cumulative count) of a route, by le."""
    found = [
        (float(dict(labels)["le"]), value)
        for (name, labels), value in samples.items()
        if name == "asgi_perf_request_duration_seconds_bucket" and dict(labels)["route"] == route
    ]
    return sorted(found)


async def send_traffic(client: httpx.AsyncClient, paths: list[str]) -> None:
    # A connection of its own per request: uvicorn closes the one a request
    # that raised came on, and a pooled client may send the next request on
    # it just as it closes (httpx.ReadError).
    async with httpx.AsyncClient(
        base_url=client.base_url,
        headers=client.headers,
        trust_env=False,
        timeout=30,
        limits=httpx.Limits(max_keepalive_connections=0),
    ) as fresh:
        for start in range(0, len(paths), 20):
            answers = await asyncio.gather(*(fresh.get(p) for p in paths[start : start + 20]))
            assert all(a.status_code in (200, 404, 418, 500) for a in answers)


# --------------------------------------------------------------------------- bucket edges


def test_edges_sit_on_our_bucket_boundaries():
    assert 20 <= len(EDGES_NS) <= 40
    assert len(set(LE_LABELS)) == len(LE_LABELS) == len(EDGE_INDICES) == len(NOMINAL_EDGES_S)
    assert 0.49e6 < EDGES_NS[0] < 0.51e6 and 59.4e9 < EDGES_NS[-1] < 60.6e9
    for nominal, index, ns, le in zip(
        NOMINAL_EDGES_S, EDGE_INDICES, EDGES_NS, LE_LABELS, strict=True
    ):
        # The last whole nanosecond of our bucket `index`: the next one starts a new bucket.
        assert bucket_index(ns) == index and bucket_index(ns + 1) == index + 1
        assert round(float(le) * 1e9) == ns
        assert abs(ns / (nominal * 1e9) - 1) < 0.01  # the nearest boundary: within half a bucket
    ratios = [b / a for a, b in pairwise(EDGES_NS)]
    assert min(ratios) > 1.2 and max(ratios) < 1.53


def test_cumulative_counts_are_exact():
    rng = random.Random(7)
    # Whole nanoseconds, as the middleware records them, from 0 to past the last edge.
    values = [0, 1, *EDGES_NS, *(e + 1 for e in EDGES_NS), 90 * 10**9]
    values += [int(rng.lognormvariate(17, 2.5)) for _ in range(20_000)]
    h = Histogram()
    h.record_many(values)
    got = cumulative_buckets(h.to_dict())
    want = [
        (le, sum(1 for v in values if v <= ns)) for le, ns in zip(LE_LABELS, EDGES_NS, strict=True)
    ]
    assert got == [*want, ("+Inf", len(values))]


def test_cumulative_buckets_refuse_another_layout_or_a_bad_count():
    h = Histogram()
    h.record_many([1_000_000, 2_000_000])
    with pytest.raises(ValueError, match="layout"):
        cumulative_buckets({**h.to_dict(), "layout_alpha": 0.02})
    with pytest.raises(ValueError, match="add up"):
        cumulative_buckets({**h.to_dict(), "count": 3})


# --------------------------------------------------------------------------- a real server


async def test_metrics_agree_with_stats(live_server, client_for):
    server = live_server(make_app(budgets=BUDGETS, loop_monitor=True))
    paths = ["/sleep/2"] * 20 + ["/sleep/15"] * 5 + ["/boom"] * 3 + ["/teapot"] * 2 + ["/nope"]
    async with client_for(server.url) as client:
        await send_traffic(client, paths)
        response = await client.get("/_perf/metrics", headers=PLAIN)
        stats = (await client.get("/_perf/stats", params={"histograms": "1"})).json()
        verdicts = (await client.get("/_perf/budgets")).json()["verdicts"]
    assert response.status_code == 200
    assert response.headers["content-type"] == TEXT_0_0_4
    assert "content-encoding" not in response.headers
    assert response.headers["cache-control"] == "no-store"
    assert not response.text.rstrip().endswith("# EOF")
    families = {f.name: f.type for f in text_string_to_metric_families(response.text)}
    assert families["asgi_perf_request_duration_seconds"] == "histogram"
    assert families["asgi_perf_requests"] == "counter"
    assert families["asgi_perf_in_flight"] == "gauge"
    samples = parse(response.text)

    assert stats["requests"] == len(paths)
    assert len(stats["routes"]) == 4  # sleep, boom, teapot, <unmatched>
    for route in stats["routes"]:
        key = route["route"]
        for cls, n in route["status"].items():
            assert labelled(samples, "asgi_perf_requests_total", route=key, status_class=cls) == n
        assert labelled(samples, "asgi_perf_exceptions_total", route=key) == route["exceptions"]
        assert labelled(samples, "asgi_perf_in_flight", route=key) == 0
        count = labelled(samples, "asgi_perf_request_duration_seconds_count", route=key)
        assert count == route["count"]
        total_s = labelled(samples, "asgi_perf_request_duration_seconds_sum", route=key)
        assert total_s == pytest.approx(route["histograms"]["latency_ns"]["sum"] / 1e9, rel=1e-9)
        buckets = buckets_of(samples, key)
        assert [le for le, _ in buckets] == [*(float(le) for le in LE_LABELS), math.inf]
        counts = [n for _, n in buckets]
        assert counts == sorted(counts) and counts[-1] == count
        # Our own p99 lies in the Prometheus bucket where the cumulative count reaches 99 %.
        p99_s = route["latency_ms"]["p99"] / 1000
        rank = math.ceil(0.99 * count)
        first = next(i for i, n in enumerate(counts) if n >= rank)
        assert (buckets[first - 1][0] if first else 0.0) < p99_s <= buckets[first][0]

    sleep = next(r for r in stats["routes"] if r["route"].startswith("GET /sleep/"))
    assert sleep["status"]["2xx"] == 25
    boom = next(r for r in stats["routes"] if r["route"] == "GET /boom")
    assert boom["exceptions"] == 3 and boom["status"]["5xx"] == 3

    assert {v["verdict"] for v in verdicts} == {"pass", "fail", "insufficient"}
    for v in verdicts:
        labels = (("metric", v["metric"]), ("route", v["route"]))
        ok = samples.get(("asgi_perf_budget_ok", labels))
        assert ok == {"pass": 1, "fail": 0, "insufficient": None}[v["verdict"]]
        insufficient = samples[("asgi_perf_budget_insufficient", labels)]
        assert insufficient == (v["verdict"] == "insufficient")

    rss = samples[("asgi_perf_process_rss_bytes", ())]
    assert rss == pytest.approx(stats["process"]["rss_mb"] * 2**20, rel=0.2)
    assert samples[("asgi_perf_internal_errors_total", ())] == stats["internal_errors"] == 0
    # Taken before /stats: the loop's counters can only have grown since.
    assert samples[("asgi_perf_loop_blocks_total", ())] <= stats["loop"]["block_count"]
    lag = [labelled(samples, "asgi_perf_loop_lag_seconds", stat=s) for s in ("p50", "p99", "max")]
    assert 0 <= lag[0] <= lag[1] <= lag[2]


async def test_in_flight_requests_are_a_gauge(live_server, client_for, eventually):
    server = live_server(make_app(loop_monitor=False))
    async with client_for(server.url) as client:
        slow = asyncio.create_task(client.get("/sleep/1500"))

        async def started() -> bool:
            return bool((await client.get("/_perf/stats")).json()["in_flight"])

        await eventually(started)
        samples = parse((await client.get("/_perf/metrics")).text)
        assert (await slow).status_code == 200
    in_flight = {
        dict(k[1])["route"]: v for k, v in samples.items() if k[0] == "asgi_perf_in_flight"
    }
    assert list(in_flight.values()) == [1]
    (route,) = in_flight
    # Not finished yet: an empty histogram, and no loop metrics with the monitor off.
    assert labelled(samples, "asgi_perf_request_duration_seconds_count", route=route) == 0
    assert not any(name.startswith("asgi_perf_loop_") for name, _ in samples)


@pytest.mark.parametrize(
    ("accept", "openmetrics"),
    [
        (None, False),
        ("text/plain;version=0.0.4", False),
        ("application/json", False),
        (OPENMETRICS, True),
        (PROMETHEUS_ACCEPT, True),
    ],
    ids=["none", "text", "other", "openmetrics", "prometheus"],
)
async def test_openmetrics_when_the_scraper_asks(live_server, client_for, accept, openmetrics):
    server = live_server(make_app(budgets=BUDGETS, loop_monitor=True))
    async with client_for(server.url) as client:
        await send_traffic(client, ["/sleep/1"] * 3 + ["/teapot"])
        headers = {**PLAIN, **({} if accept is None else {"Accept": accept})}
        response = await client.get("/_perf/metrics", headers=headers)
    assert response.status_code == 200
    assert response.headers["vary"] == "Accept, Accept-Encoding"
    ctype = response.headers["content-type"]
    if openmetrics:
        assert ctype.startswith("application/openmetrics-text; version=1.0.0; charset=utf-8")
        assert response.text.endswith("# EOF\n")
        # The OpenMetrics parser is strict: it checks every family against its type.
        samples = parse(response.text, openmetrics_families)
    else:
        assert ctype == TEXT_0_0_4
        samples = parse(response.text)
    route = next(dict(k[1])["route"] for k in samples if "GET /sleep/" in str(k))
    assert labelled(samples, "asgi_perf_requests_total", route=route, status_class="2xx") == 3
    assert labelled(samples, "asgi_perf_request_duration_seconds_bucket", route=route, le="+Inf")
    assert ("asgi_perf_loop_lag_seconds", (("stat", "p99"),)) in samples


async def test_gzip_when_accepted(live_server):
    server = live_server(make_app())
    # A raw client: httpx would undo the gzip on its own.
    with socket.create_connection(("127.0.0.1", int(server.url.rsplit(":", 1)[1])), 10) as sock:
        request = "GET /_perf/metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: gzip\r\n"
        sock.sendall(f"{request}Connection: close\r\n\r\n".encode())
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    head, _, body = raw.partition(b"\r\n\r\n")
    assert b"content-encoding: gzip" in head.lower()
    text = gzip.decompress(body).decode()
    assert "# TYPE asgi_perf_request_duration_seconds histogram" in text


# --------------------------------------------------------------------------- the gate


@pytest.mark.parametrize("client", [("203.0.113.5", 1234), ("10.0.0.1", 1), ("2001:db8::1", 1)])
async def test_remote_clients_are_refused(asgi, client):
    result = await asgi(make_app(), "GET", "/_perf/metrics", client=client)
    assert result.status == 403
    assert b"asgi_perf_" not in result.body


async def test_a_forwarded_request_is_refused(asgi):
    headers = [(b"x-forwarded-for", b"127.0.0.1")]
    result = await asgi(make_app(), "GET", "/_perf/metrics", headers=headers)
    assert result.status == 403


async def test_with_a_token_the_scraper_needs_it(asgi):
    mw = make_app(token="s3cret")
    assert (await asgi(mw, "GET", "/_perf/metrics")).status == 401
    wrong = [(b"authorization", b"Bearer s3cre")]
    assert (await asgi(mw, "GET", "/_perf/metrics", headers=wrong)).status == 401
    right = [(b"authorization", b"Bearer s3cret")]
    result = await asgi(mw, "GET", "/_perf/metrics", client=("203.0.113.5", 1), headers=right)
    assert result.status == 200
    assert result.header("content-type") == TEXT_0_0_4


@pytest.mark.parametrize(
    ("method", "query", "status"), [("GET", b"name[]=x", 400), ("POST", b"", 405)]
)
async def test_no_parameters_and_no_other_method(asgi, method, query, status):
    result = await asgi(make_app(), method, "/_perf/metrics", query=query)
    assert result.status == status
    assert result.header("content-type") == "application/json"


# --------------------------------------------------------------------------- real Prometheus

PROMETHEUS = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="needs a Prometheus server: apt-get install prometheus (Debian, Ubuntu)",
)
PROMTOOL = shutil.which("promtool")
PROMETHEUS_START_S = 30.0


@dataclass
class PrometheusServer:
    url: str
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[str], PrometheusServer]]:
    """Factory: ``prometheus(scrape_configs_yaml)`` -> a ready server on a loopback port.

    Its own port, config and data directory (a system service the package may
    have started is left alone); stopped at teardown.
    """
    started: list[tuple[subprocess.Popen[bytes], Any]] = []

    def start(scrape_configs: str) -> PrometheusServer:
        assert PROMETHEUS is not None
        config = tmp_path / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
            f"scrape_configs:\n{scrape_configs}"
        )
        log_path = tmp_path / "prometheus.log"
        log = log_path.open("wb")
        url = f"http://127.0.0.1:{free_port()}"
        command = [
            PROMETHEUS,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address={url.removeprefix('http://')}",
        ]
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        started.append((proc, log))
        deadline = time.monotonic() + PROMETHEUS_START_S
        while True:
            if proc.poll() is not None:
                pytest.fail(f"prometheus exited ({proc.returncode}):\n{log_path.read_text()}")
            try:
                if httpx.get(f"{url}/-/ready", timeout=1, trust_env=False).status_code == 200:
                    return PrometheusServer(url, log_path)
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"prometheus not ready in {PROMETHEUS_START_S} s")
            time.sleep(0.1)

    yield start
    for proc, log in started:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:  # pragma: no cover - a stuck server
            proc.kill()
            proc.wait(10)
        log.close()


async def query(prom: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
    response = await prom.get("/api/v1/query", params={"query": promql})
    body = response.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def prometheus_bucket(value_s: float) -> tuple[float, float]:
    """The edges (lo, hi] of the Prometheus bucket holding ``value_s``."""
    edges = [0.0, *(float(le) for le in LE_LABELS), math.inf]
    i = next(i for i, e in enumerate(edges) if value_s <= e)
    return edges[i - 1], edges[i]


@pytest.mark.slow
@needs_prometheus
async def test_prometheus_quantiles_agree_with_ours(live_server, client_for, prometheus):
    # Two instances, one with a token: a fleet of two scraped by one Prometheus.
    a = live_server(make_app(token="s3cret"))
    b = live_server(make_app())
    prom_server = prometheus(
        f"""\
  - job_name: a
    metrics_path: /_perf/metrics
    authorization:
      credentials: s3cret
    static_configs:
      - targets: ["{a.url.removeprefix("http://")}"]
  - job_name: b
    metrics_path: /_perf/metrics
    static_configs:
      - targets: ["{b.url.removeprefix("http://")}"]
"""
    )
    # Latencies we choose: p99 of a is in its 120 ms tail, the fleet's too.
    traffic = {
        "a": ["/sleep/3"] * 80 + ["/sleep/25"] * 15 + ["/sleep/120"] * 5,
        "b": ["/sleep/8"] * 50 + ["/sleep/40"] * 50,
    }
    headers = {"a": {"Authorization": "Bearer s3cret"}, "b": {}}
    stats = {}
    for name, server in (("a", a), ("b", b)):
        async with client_for(server.url, headers=headers[name]) as client:
            await send_traffic(client, traffic[name])
            stats[name] = (await client.get("/_perf/stats", params={"histograms": "1"})).json()
    (route,) = {r["route"] for s in stats.values() for r in s["routes"]}
    selector = f'asgi_perf_request_duration_seconds_bucket{{route="{route}"}}'

    async with httpx.AsyncClient(base_url=prom_server.url, trust_env=False, timeout=10) as prom:
        # Wait until both targets are up and their last scrape holds all the traffic.
        deadline = time.monotonic() + 30
        while True:
            counts = await query(
                prom, f'asgi_perf_request_duration_seconds_count{{route="{route}"}}'
            )
            ups = await query(prom, "up")
            got = {c["metric"]["job"]: float(c["value"][1]) for c in counts}
            if got == {"a": 100.0, "b": 100.0} and all(u["value"][1] == "1" for u in ups):
                break
            if time.monotonic() > deadline:
                pytest.fail(f"not scraped: {got}, up={ups}\n{prom_server.log.read_text()}")
            await asyncio.sleep(0.5)

        per_job = await query(prom, f"histogram_quantile(0.99, {selector})")
        fleet = await query(prom, f"histogram_quantile(0.99, sum by (le, route) ({selector}))")
        # The README's query for Grafana runs too (its value depends on timing).
        await query(
            prom,
            "histogram_quantile(0.99, sum by (le, route) "
            "(rate(asgi_perf_request_duration_seconds_bucket[5m])))",
        )

    ours = {
        "a": stats["a"]["routes"][0]["latency_ms"]["p99"] / 1000,
        "b": stats["b"]["routes"][0]["latency_ms"]["p99"] / 1000,
        "fleet": merge_snapshots(list(stats.values()))["routes"][0]["latency_ms"]["p99"] / 1000,
    }
    theirs = {r["metric"]["job"]: float(r["value"][1]) for r in per_job}
    (fleet_result,) = fleet
    assert fleet_result["metric"] == {"route": route}
    theirs["fleet"] = float(fleet_result["value"][1])
    assert theirs.keys() == ours.keys()
    for name, p99 in ours.items():
        lo, hi = prometheus_bucket(p99)
        assert lo < theirs[name] <= hi, (name, p99, theirs[name], (lo, hi))


@pytest.mark.slow
@pytest.mark.skipif(
    PROMTOOL is None, reason="needs promtool: apt-get install prometheus (Debian, Ubuntu)"
)
async def test_promtool_finds_nothing_to_lint(live_server, client_for):
    server = live_server(make_app(budgets=BUDGETS, loop_monitor=True))
    async with client_for(server.url) as client:
        await send_traffic(client, ["/sleep/1", "/teapot", "/nope"])
        text = (await client.get("/_perf/metrics")).text
    assert PROMTOOL is not None
    # Prometheus's own linter: names, units, suffixes, help texts, reserved labels.
    lint = subprocess.run(
        [PROMTOOL, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60
    )
    assert lint.returncode == 0, lint.stdout.decode() + lint.stderr.decode()
