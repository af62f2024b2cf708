"""The sampler's parts on their own: the thread, labels and views, the ring, the budget.

Real threads burn real CPU; the ring and the profile budget take a fake
clock, since what they do depends on time passing.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import Any

import pytest

from asgi_perf import PerfMiddleware
from asgi_perf.capture import Capture, FrameId
from asgi_perf.config import PerfConfig
from asgi_perf.continuous import SLICE_S, Ring
from asgi_perf.engines.sampler_impl import SWITCH_INTERVAL_S, Sampler, StackCounts
from asgi_perf.errors import ConfigError
from asgi_perf.labels import (
    IDLE,
    LOOP_THREAD,
    NO_REQUEST,
    OTHER_THREAD,
    NotAttributed,
    route_frame,
    route_table,
    view,
)
from asgi_perf.profiling import HookTime


class FakeClock:
    def __init__(self, now: float = 1_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def f(name: str) -> FrameId:
    return FrameId(name, "app.py", 1)


def labelled(route: str, *names: str) -> tuple[FrameId, ...]:
    return (route_frame(route), LOOP_THREAD, *(f(n) for n in names))


def sampled_capture() -> Capture:
    return Capture(
        engine="sampler",
        stacks={
            labelled("GET /a", "handler_a", "work_a"): 0.30,
            labelled("GET /a", "handler_a"): 0.06,
            labelled("GET /b", "handler_b", "work_b"): 0.12,
            (route_frame(IDLE), LOOP_THREAD): 0.50,
        },
        duration_s=1.0,
        meta={"interval_s": 0.01, "route": "<process>"},
    )


# --------------------------------------------------------------------------- views


def test_a_route_view_keeps_only_that_routes_samples() -> None:
    only_b = view(sampled_capture(), route="GET /b")
    assert set(only_b.stacks) == {labelled("GET /b", "handler_b", "work_b")}
    assert only_b.meta["route_filter"] == "GET /b"
    assert only_b.pstats is None  # rebuilt from the kept stacks


def test_idle_is_out_of_the_default_view_and_in_on_request() -> None:
    capture = sampled_capture()
    default = view(capture)
    assert all(s[0].function != IDLE for s in default.stacks)
    assert view(capture, idle=True) is capture


def test_a_profile_that_was_idle_throughout_is_shown_as_such() -> None:
    idle_only = Capture("sampler", {(route_frame(IDLE), LOOP_THREAD): 1.0}, 1.0)
    assert view(idle_only) is idle_only


def test_a_route_with_no_samples_and_an_unattributed_profile_are_told_apart() -> None:
    with pytest.raises(KeyError):
        view(sampled_capture(), route="GET /nowhere")
    request = Capture("pyinstrument", {(f("x"),): 1.0}, 1.0, meta={"route": "GET /x"})
    assert view(request, route="GET /x") is request
    with pytest.raises(NotAttributed, match="sampler"):
        view(request, route="GET /y")


def test_the_route_table_shares_and_top_functions() -> None:
    rows = route_table(sampled_capture())
    assert [r["route"] for r in rows] == ["GET /a", "GET /b"]
    a, b = rows
    assert a["share"] == pytest.approx(0.75) and b["share"] == pytest.approx(0.25)
    assert a["samples"] == 36 and b["samples"] == 12
    top = {t["function"]: t for t in a["top"]}
    assert top["work_a"]["self_share"] == pytest.approx(0.30 / 0.36, abs=1e-3)
    assert top["handler_a"]["total_share"] == pytest.approx(1.0)
    assert all(not t["file"].startswith("<") for t in a["top"])  # labels are not functions
    with_idle = {r["route"] for r in route_table(sampled_capture(), idle=True)}
    assert IDLE in with_idle


def test_stack_counts_are_bounded() -> None:
    counts = StackCounts(max_stacks=2)
    for name in ("a", "b", "c", "d"):
        counts.add(labelled("GET /x", name), 0.01)
    assert len(counts.stacks) == 3  # two kept, and one for the rest
    assert counts.dropped == 2 and counts.samples == 4
    assert sum(counts.stacks.values()) == pytest.approx(0.04)


# --------------------------------------------------------------------------- the thread


def burn_in_a_thread_of_its_own(stop: threading.Event) -> None:
    while not stop.is_set():
        sum(range(1000))


def wait_in_a_thread_of_its_own(stop: threading.Event) -> None:
    stop.wait()


def sleep_in_a_thread_of_its_own(stop: threading.Event) -> None:
    while not stop.is_set():
        time.sleep(0.01)


def sample_for(seconds: float, **options: Any) -> tuple[StackCounts, Sampler]:
    errors: list[BaseException] = []
    sampler = Sampler(
        options.pop("hz", 200),
        options.pop("max_cpu", 0.5),
        lambda scope: (),
        lambda kind, exc: errors.append(exc),
    )
    stop = threading.Event()
    threads = [
        threading.Thread(target=t, args=(stop,))
        for t in (
            burn_in_a_thread_of_its_own,
            wait_in_a_thread_of_its_own,
            sleep_in_a_thread_of_its_own,
        )
    ]
    for t in threads:
        t.start()
    counts = StackCounts()
    try:
        sampler.subscribe(counts)
        time.sleep(seconds)
        sampler.unsubscribe(counts)
    finally:
        stop.set()
        for t in threads:
            t.join()
        sampler.stop()
    assert errors == []
    return counts, sampler


def test_a_thread_using_the_cpu_is_sampled_and_waiting_ones_are_not() -> None:
    counts, sampler = sample_for(1.0)
    functions = {frame.function for stack in counts.stacks for frame in stack}
    assert "burn_in_a_thread_of_its_own" in functions
    assert "wait_in_a_thread_of_its_own" not in functions
    assert "sleep_in_a_thread_of_its_own" not in functions
    burning = [s for s in counts.stacks if s[-1].function == "burn_in_a_thread_of_its_own"]
    assert all(s[0] == route_frame(NO_REQUEST) and s[1] == OTHER_THREAD for s in burning)
    assert sampler.samples > 20


def test_the_gil_switch_interval_is_short_while_sampling_and_restored_after() -> None:
    before = sys.getswitchinterval()
    sampler = Sampler(100, 0.01, lambda scope: (), lambda kind, exc: None)
    counts = StackCounts()
    sampler.subscribe(counts)
    try:
        assert sys.getswitchinterval() == pytest.approx(min(before, SWITCH_INTERVAL_S))
    finally:
        sampler.unsubscribe(counts)
        sampler.stop()
    assert sys.getswitchinterval() == pytest.approx(before)


def test_the_thread_ends_when_nothing_needs_it() -> None:
    sampler = Sampler(100, 0.01, lambda scope: (), lambda kind, exc: None)
    counts = StackCounts()
    sampler.subscribe(counts)
    assert sampler.stats()["running"] is True
    sampler.unsubscribe(counts)
    deadline = time.monotonic() + 2
    while sampler.stats()["running"] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sampler.stats()["running"] is False


# --------------------------------------------------------------------------- the ring


def test_the_ring_keeps_only_its_minutes_and_cuts_the_last_n_seconds() -> None:
    clock = FakeClock()
    sampler = Sampler(100, 0.01, lambda scope: (), lambda kind, exc: None)
    ring = Ring(sampler, minutes=1, clock=clock)
    ring._current.start = clock.now  # as start() would, without the thread
    for i in range(20):  # 200 s of slices, one sample each
        ring.add(labelled("GET /x", f"step{i}"), 1.0)
        clock.now += SLICE_S
        ring._rotate(0.0)
    assert ring.stats()["slices"] == 60 // int(SLICE_S) + 1  # the ring and the open slice
    recent = ring.last(25)
    steps = {s[-1].function for s in recent.stacks}
    assert steps == {"step17", "step18", "step19"}  # the slices that overlap the last 25 s
    everything = {s[-1].function for s in ring.last(60).stacks}
    assert everything == {f"step{i}" for i in range(14, 20)}


# --------------------------------------------------------------------------- budget


def test_the_hook_budget_lets_profiles_through_until_its_share_is_spent() -> None:
    clock = FakeClock()
    budget = HookTime(0.02, clock=clock)
    assert budget.allows()
    budget.on()
    clock.now += 0.25  # one long profile: more than the burst of 0.2 s
    budget.off()
    assert not budget.allows()
    clock.now += 10  # the budget refills at 2 % of wall-clock time
    assert budget.allows()
    assert budget.share() == pytest.approx(0.25 / 10.25)


def test_a_budget_of_one_never_refuses() -> None:
    clock = FakeClock()
    budget = HookTime(1.0, clock=clock)
    budget.on()
    clock.now += 100
    assert budget.allows()


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("engine", "sampler"),
        ("engine", "pyspy"),
        ("window_engine", "nope"),
        ("sampler_hz", 0),
        ("sampler_max_cpu", 0),
        ("continuous", "yes"),
        ("continuous_minutes", 0),
        ("profile_budget", 1.5),
        ("loop_monitor", 1),
        ("block_threshold_ms", 1),
        ("max_loop_blocks", 0),
    ],
)
def test_bad_sampler_options_name_themselves(option: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=option):
        PerfConfig(**{option: value})


def test_the_defaults_and_the_environment() -> None:
    cfg = PerfConfig()
    assert cfg.window_engine == "sampler" and cfg.engine == "pyinstrument"
    assert (cfg.sampler_hz, cfg.sampler_max_cpu, cfg.profile_budget) == (100, 0.01, 0.02)
    assert cfg.loop_monitor is True and cfg.block_threshold_ms == 100
    assert cfg.continuous is False and cfg.continuous_minutes == 10
    env = {
        "ASGI_PERF_CONTINUOUS": "1",
        "ASGI_PERF_WINDOW_ENGINE": "pyinstrument",
        "ASGI_PERF_SAMPLER_HZ": "50",
        "ASGI_PERF_LOOP_MONITOR": "0",
    }
    cfg = PerfConfig.from_options(env=env)
    assert cfg.continuous and cfg.window_engine == "pyinstrument"
    assert cfg.sampler_hz == 50 and not cfg.loop_monitor


def test_a_disabled_middleware_starts_no_thread() -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        pass

    mw = PerfMiddleware(app, enabled=False, continuous=True)
    assert mw.core.loop is None
    assert mw.core.sampler.stats()["running"] is False
