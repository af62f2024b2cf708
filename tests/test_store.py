from asgi_perf.routes import OTHER, UNMATCHED
from asgi_perf.stats.store import Recorder

SECOND = 1_000_000_000


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000 * SECOND

    def __call__(self) -> int:
        return self.now


def record(rec: Recorder, key: str, ms: float, clock: FakeClock, status: int = 200) -> None:
    ns = int(ms * 1e6)
    rec.record(key, ns // 2, ns, status, 10, None, 0, clock.now)


def test_recent_window_forgets_old_requests_but_cumulative_keeps_them():
    clock = FakeClock()
    rec = Recorder(window_s=60, clock_ns=clock)
    for _ in range(10):
        record(rec, "GET /a", 5, clock)
    clock.now += 120 * SECOND
    for _ in range(4):
        record(rec, "GET /a", 50, clock)
    route = rec.snapshot()["routes"][0]
    assert route["count"] == 14
    assert route["recent"]["count"] == 4
    assert (
        route["recent"]["latency_ms"]["p50"] == 50.0
        or abs(route["recent"]["latency_ms"]["p50"] - 50) <= 0.5
    )
    assert route["latency_ms"]["p50"] < 5.1
    assert route["recent"]["rps"] == round(4 / 60, 3)


def test_status_classes_errors_and_bytes():
    clock = FakeClock()
    rec = Recorder(clock_ns=clock)
    for status in (200, 201, 302, 404, 500, 503):
        record(rec, "GET /x", 1, clock, status)
    route = rec.snapshot()["routes"][0]
    assert route["status"] == {"1xx": 0, "2xx": 2, "3xx": 1, "4xx": 1, "5xx": 2, "none": 0}
    assert route["errors"] == 2
    assert route["bytes"] == 60
    assert (route["method"], route["template"]) == ("GET", "/x")


def test_route_cap_sends_overflow_to_other_and_specials_do_not_count():
    clock = FakeClock()
    rec = Recorder(max_routes=2, clock_ns=clock)
    record(rec, UNMATCHED, 1, clock)
    for i in range(5):
        record(rec, f"GET /r{i}", 1, clock)
    keys = {r["route"]: r["count"] for r in rec.snapshot()["routes"]}
    assert keys == {"GET /r0": 1, "GET /r1": 1, OTHER: 3, UNMATCHED: 1}
    assert rec.snapshot()["routes_dropped"] == 3


def test_reset_clears_everything():
    clock = FakeClock()
    rec = Recorder(clock_ns=clock)
    record(rec, "GET /a", 1, clock)
    rec.reset()
    snap = rec.snapshot()
    assert snap["routes"] == []
    assert snap["requests"] == 0


def test_in_flight_route_without_finished_requests_is_listed():
    rec = Recorder(clock_ns=FakeClock())
    snap = rec.snapshot(in_flight={"GET /slow": 2})
    assert snap["in_flight"] == 2
    assert snap["routes"][0]["route"] == "GET /slow"
    assert snap["routes"][0]["in_flight"] == 2
    assert snap["routes"][0]["count"] == 0
